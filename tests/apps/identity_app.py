"""Which user and group serve the request, for the privilege-dropping test.

It imports only `os`, which the server has already loaded: a worker that
dropped to `nobody` may be unable to read the interpreter's files (a Python
installed under root's 0700 home, as on this project's CI machine), and the
test is about the identity, not about where Python lives.
"""

import os


def app(environ, start_response):  # type: ignore[no-untyped-def]
    body = b"%d %d" % (os.getuid(), os.getgid())
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
