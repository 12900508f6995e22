"""The environ and start_response in depth: chapter 2 of the guide.

    cd examples && forkserve wsgi_tour:app

Each path shows one part of PEP 3333: /path/..., /upload, /stream, /file,
/write, /fail and /crash.
"""

import sys

ROUTES = {}


def route(prefix):
    def register(view):
        ROUTES[prefix] = view
        return view
    return register


def app(environ, start_response):
    path = environ["PATH_INFO"]
    for prefix, view in ROUTES.items():
        if path.startswith(prefix):
            return view(environ, start_response)
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"try /path/caf%C3%A9, /upload, /stream, /file, /write, /fail or /crash\n"]


def text(start_response, body, status="200 OK"):
    data = body.encode("utf-8")
    start_response(status, [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(data))),
    ])
    return [data]


@route("/path/")
def show_path(environ, start_response):
    raw = environ["PATH_INFO"]                      # bytes decoded as latin-1
    real = raw.encode("latin-1").decode("utf-8")    # what the client meant
    return text(start_response, (
        f"PATH_INFO    {raw!r}\n"
        f"as UTF-8     {real!r}\n"
        f"QUERY_STRING {environ['QUERY_STRING']!r}\n"
    ))


@route("/upload")
def upload(environ, start_response):
    stream = environ["wsgi.input"]
    received = 0
    while True:
        block = stream.read(65536)      # b"" at the end of the body, never a hang
        if not block:
            break
        received += len(block)
    return text(start_response, (
        f"CONTENT_LENGTH    {environ.get('CONTENT_LENGTH', '')!r}\n"
        f"Transfer-Encoding {environ.get('HTTP_TRANSFER_ENCODING', '')!r}\n"
        f"received          {received} bytes\n"
    ))


class Countdown:
    """A response body made piece by piece; the server calls close() when done."""

    def __init__(self, errors):
        self.errors = errors
        self.sent = 0

    def __iter__(self):
        for n in (3, 2, 1):
            self.sent += 1
            yield f"{n}...\n".encode()
        yield b"liftoff\n"

    def close(self):
        # Called once the response is over: sent in full, or the client left.
        self.errors.write(f"countdown closed after {self.sent} of 3 steps\n")


@route("/stream")
def stream(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])   # no Content-Length
    return Countdown(environ["wsgi.errors"])


@route("/file")
def send_file(environ, start_response):
    f = open(__file__, "rb")
    size = str(len(f.read()))
    f.seek(0)
    start_response("200 OK", [("Content-Type", "text/x-python"), ("Content-Length", size)])
    return environ["wsgi.file_wrapper"](f, 65536)   # the server closes f


@route("/write")
def legacy_write(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"sent by write()\n")     # the old, imperative way: bytes go out now
    return [b"then returned\n"]


@route("/fail")
def fail(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise RuntimeError("the report could not be built")
    except RuntimeError as exc:
        # Nothing was sent yet, so the app may change its mind: exc_info
        # replaces the 200 it set above.
        body = f"sorry: {exc}\n".encode()
        start_response("503 Service Unavailable",
                       [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
                       sys.exc_info())
        return [body]


@route("/crash")
def crash(environ, start_response):
    raise KeyError("a bug")     # the server logs the traceback and answers 500
