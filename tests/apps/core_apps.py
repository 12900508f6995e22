"""Fixture apps for the core process tests, each wrapped in wsgiref's validator.

The validator turns PEP 3333 violations by the server into assertion errors
(a 500 the tests see) and warnings (errors too: tests/support.py runs servers
with PYTHONWARNINGS=error::wsgiref.validate.WSGIWarning).
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.validate import validator

StartResponse = Callable[..., Any]
MARKS = os.environ.get("CORE_APPS_MARKS", "")
# Imported by the worker after fork (no --preload): what the master froze.
FROZEN_AT_IMPORT = gc.get_freeze_count()


def mark(text: str) -> None:
    """Append a line to the marks file the test reads (close() calls, hits)."""
    if MARKS:
        with open(MARKS, "a") as f:
            f.write(text + "\n")


def _read_body(environ: dict[str, Any]) -> bytes:
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        return stream.read(int(length))
    parts = []
    while True:
        piece = stream.read(65536)
        if not piece:
            return b"".join(parts)
        parts.append(piece)


def _json(start_response: StartResponse, payload: Any, status: str = "200 OK") -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]


class Tracked:
    """An iterable that records whether the server called close()."""

    def __init__(self, tag: str, chunks: list[bytes], fail_after: int | None = None) -> None:
        self.tag, self.chunks, self.fail_after = tag, chunks, fail_after

    def __iter__(self) -> Iterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if self.fail_after is not None and i == self.fail_after:
                raise RuntimeError("boom in the middle of the body")
            yield chunk

    def close(self) -> None:
        mark(f"closed {self.tag}")


def _app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path.startswith("/echo"):
        body = _read_body(environ)
        keys = {k: v for k, v in environ.items() if isinstance(v, str)}
        return _json(start_response, {"environ": keys, "body": body.decode("latin-1"),
                                      "pid": os.getpid()})
    if path == "/readline":
        stream = environ["wsgi.input"]
        lines = [stream.readline().decode()]
        lines += [line.decode() for line in stream.readlines()]
        return _json(start_response, {"lines": lines})
    if path == "/iterate":
        return _json(start_response, {"lines": [line.decode() for line in
                                                environ["wsgi.input"]]})
    if path == "/hello":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
        return [b"Hello, world!"]
    if path == "/stream":
        size = int(environ["QUERY_STRING"] or "1048576")
        chunk = b"x" * 65536
        start_response("200 OK", [("Content-Type", "application/octet-stream")])

        def generate() -> Iterator[bytes]:
            left = size
            while left > 0:
                yield chunk[: min(left, len(chunk))]
                left -= len(chunk)

        return generate()
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        write(b"then ")
        return [b"returned"]
    if path == "/file":
        f = open(__file__, "rb")
        start_response("200 OK", [("Content-Type", "text/x-python")])
        return environ["wsgi.file_wrapper"](f, 8192)  # type: ignore[no-any-return]
    if path == "/error":
        raise RuntimeError("the app failed on purpose")
    if path == "/error-mid":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Tracked(environ["QUERY_STRING"], [b"first ", b"second"], fail_after=1)
    if path == "/tracked":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Tracked(environ["QUERY_STRING"], [b"a" * 65536] * 64)
    if path == "/slow":
        time.sleep(float(environ["QUERY_STRING"] or "1"))
        return _json(start_response, {"slept": environ["QUERY_STRING"], "pid": os.getpid()})
    if path == "/no-content":
        start_response("204 No Content", [])
        return []
    if path == "/wrong-length":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "100")])
        return [b"too short"]
    if path == "/bad-header":
        start_response("200 OK", [("X-Bad", "a\r\nSet-Cookie: injected=1")])
        return [b"never"]
    if path == "/pid":
        return _json(start_response, {"pid": os.getpid()})
    if path == "/gc":
        garbage: list[Any] = []
        garbage.append(garbage)  # a cycle: only the collector frees it
        return _json(start_response, {"frozen_at_import": FROZEN_AT_IMPORT,
                                      "frozen": gc.get_freeze_count(),
                                      "collected": gc.collect()})
    return _json(start_response, {"error": "not found", "path": path}, "404 Not Found")


app = validator(_app)
raw_app = _app


def create_app() -> Callable[..., Any]:
    """A factory, for `core_apps:create_app()`."""
    return app


not_callable = 42
