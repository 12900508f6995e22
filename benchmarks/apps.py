"""The WSGI applications every server is measured with.

Each is importable as `benchmarks.apps:NAME` with the repository root on
`sys.path` (the runner sets `PYTHONPATH` for the servers it starts); the
Flask app lives in `benchmarks.flask_app:app` so that the hello-world runs do
not pay for importing Flask in their start-up time and memory. Every app
answers any method on any path with 200, so the runner can use a plain
`GET /` to see that a server is up, whichever app it serves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

Environ = dict[str, Any]
StartResponse = Callable[..., Any]

HELLO_BODY = b"Hello, world!"
STREAM_CHUNK = 64 * 1024
STREAM_CHUNKS = 16  # 16 x 64 KiB = 1 MiB
POST_BODY_SIZE = 64 * 1024


def hello(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """13-byte body with Content-Length: the floor of every server's per-request cost."""
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO_BODY)))],
    )
    return [HELLO_BODY]


def stream(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """1 MiB as an iterable of 64 KiB chunks, without Content-Length.

    No Content-Length on purpose: the server has to choose the framing
    (chunked on HTTP/1.1, or close-delimited), as it must for any generator
    app that does not know its length up front.
    """
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    chunk = b"x" * STREAM_CHUNK
    for _ in range(STREAM_CHUNKS):
        yield chunk


def echo(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Read the whole request body and send it back with Content-Length."""
    body = _read_body(environ)
    start_response(
        "200 OK",
        [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))],
    )
    return [body]


def _read_body(environ: Environ) -> bytes:
    # CONTENT_LENGTH may be absent or empty (PEP 3333); read() with no size on
    # a stream without a length is not portable across servers, so only read
    # what was declared.
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length <= 0:
        return b""
    stream_in = environ["wsgi.input"]
    parts: list[bytes] = []
    remaining = length
    while remaining > 0:
        part = stream_in.read(min(remaining, 65536))
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


IO_WAIT_S = 0.05


def io_wait(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Waits 50 ms (a database or upstream call, GIL released), then says hello.

    The I/O-bound scenario (benchmarks/threads.py): what one worker can do at
    once decides the throughput, not the server's own speed.
    """
    import time

    time.sleep(IO_WAIT_S)
    return hello(environ, start_response)


def mixed(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """hello, except `/slow?SECONDS`, which sleeps first: a slow request among fast ones."""
    if environ.get("PATH_INFO") == "/slow":
        import time

        time.sleep(float(environ.get("QUERY_STRING") or "1"))
    return hello(environ, start_response)
