"""The smallest WSGI application: chapter 1 of the guide.

    cd examples && forkserve hello:app
"""


def app(environ, start_response):
    body = b"Hello, World!\n"
    start_response("200 OK", [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
    ])
    return [body]
