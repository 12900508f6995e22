"""Two WSGI middlewares: chapter 3 of the guide.

A middleware is a WSGI app that wraps another WSGI app. Each one below logs
when it is entered and left, so the error log shows the order of calls.
"""

import re
import time
import uuid

# A request id we accept from outside: short, and nothing that could break a log line.
SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class Timing:
    """Measures how long the wrapped app takes, up to its last byte of body."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        log = environ["wsgi.errors"]
        log.write("timing: enter\n")
        started = time.perf_counter()
        body = self.app(environ, start_response)
        try:
            yield from body             # the body may still be being made here
        finally:
            if hasattr(body, "close"):
                body.close()            # PEP 3333: whoever iterates calls close()
            elapsed = (time.perf_counter() - started) * 1000
            log.write(f"timing: leave after {elapsed:.1f} ms\n")


class RequestID:
    """Gives each request an id: the client's X-Request-ID if sane, else a new one."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        log = environ["wsgi.errors"]
        given = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = given if SAFE_ID.fullmatch(given) else uuid.uuid4().hex
        environ["HTTP_X_REQUEST_ID"] = request_id       # the app sees it here
        log.write(f"request-id: enter {request_id}\n")

        def start_response_with_id(status, headers, exc_info=None):
            headers.append(("X-Request-ID", request_id))    # and the client sees it
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, start_response_with_id)
        finally:
            log.write("request-id: leave\n")


def hello(environ, start_response):
    environ["wsgi.errors"].write("app: called\n")
    body = f"Hello, request {environ['HTTP_X_REQUEST_ID']}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


# Timing is outermost: it sees the request first and the response last.
app = Timing(RequestID(hello))
