"""Fixture apps for tests/process/test_faults.py: apps that fail in the request path.

`faulty` dispatches on the path; every path but /ok breaks a rule or fails.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

StartResponse = Callable[..., Any]
PLAIN = [("Content-Type", "text/plain")]


def _exc_info_after_headers(start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", list(PLAIN))
    yield b"abc"
    try:
        raise RuntimeError("failed after the first chunk")
    except RuntimeError:
        # PEP 3333: with the head already out this must raise, not return.
        start_response("500 Internal Server Error", list(PLAIN), sys.exc_info())
    yield b"def"


def _too_long_first_chunk(start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [*PLAIN, ("Content-Length", "3")])
    yield b"abcdef"


def faulty(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes] | None:
    path = environ["PATH_INFO"]
    if path == "/exit":
        sys.exit(4)  # APP_LOAD_ERROR's number: the master must not read it as one
    if path == "/interrupt":
        raise KeyboardInterrupt
    if path == "/exc-info":
        return _exc_info_after_headers(start_response)
    if path == "/too-long":
        return _too_long_first_chunk(start_response)
    if path == "/none":
        start_response("200 OK", list(PLAIN))
        return None
    if path == "/boom":
        raise ValueError("boom")
    if path == "/sleep":
        time.sleep(float(environ.get("QUERY_STRING") or "60"))
    if path == "/protocol":
        out = environ["SERVER_PROTOCOL"].encode()
        start_response("200 OK", [*PLAIN, ("Content-Length", str(len(out)))])
        return [out]
    if path == "/stream/ignore":
        start_response("200 OK", [*PLAIN, ("Content-Length", "7")])
        return [b"ignored"]
    if path == "/upload" or path.startswith("/stream/"):
        wsgi_input = environ["wsgi.input"]
        body = wsgi_input.read()
        seekable = wsgi_input.seekable() and wsgi_input.seek(0) == 0 and wsgi_input.read() == body
        out = b"%d %s" % (len(body), b"seekable" if seekable else b"stream")
        start_response("200 OK", [*PLAIN, ("Content-Length", str(len(out)))])
        return [out]
    start_response("200 OK", [*PLAIN, ("Content-Length", "2")])
    return [b"ok"]
