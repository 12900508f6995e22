"""Fixture apps for the hardening tests (tests/conformance, tests/process/test_hardening*).

`echo` answers every request with what it received, as JSON, and appends a
line to the file named by $HARDENING_HITS for each request that reaches it,
so a test can prove a refused request never got to the app.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.validate import validator

HITS = os.environ.get("HARDENING_HITS")


def _record(environ: dict[str, Any]) -> None:
    if HITS:
        line = f"{environ['REQUEST_METHOD']} {environ.get('RAW_URI', '')}\n"
        with open(HITS, "a", encoding="latin-1") as f:
            f.write(line)


def _echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    _record(environ)
    pieces = []
    while True:  # wsgi.input_terminated: read until b"" (the validator wants a size)
        piece = environ["wsgi.input"].read(65536)
        if not piece:
            break
        pieces.append(piece)
    body = b"".join(pieces)
    data = {
        "method": environ["REQUEST_METHOD"],
        "path": environ["PATH_INFO"],
        "query": environ["QUERY_STRING"],
        "raw_uri": environ.get("RAW_URI", ""),
        "protocol": environ["SERVER_PROTOCOL"],
        "scheme": environ["wsgi.url_scheme"],
        "remote_addr": environ.get("REMOTE_ADDR", ""),
        "remote_port": environ.get("REMOTE_PORT", ""),
        "server_name": environ["SERVER_NAME"],
        "headers": {k: v for k, v in environ.items()
                    if k.startswith("HTTP_") or k in ("CONTENT_TYPE", "CONTENT_LENGTH")},
        "body": body.decode("latin-1"),
        "pid": os.getpid(),
    }
    out = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(out)))])
    return [out]


_validated_echo = validator(_echo)


_KNOWN_METHODS = {"GET", "HEAD", "POST", "OPTIONS", "PATCH", "PUT", "DELETE", "TRACE"}


def echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    # wsgiref's validator insists PATH_INFO starts with "/", which `OPTIONS *`
    # (RFC 9112 §3.2.4) cannot satisfy, and warns (an error under the test
    # suite's PYTHONWARNINGS) on extension methods, which RFC 9110 §9.1 allows.
    # Every other request is validated.
    if environ.get("PATH_INFO") == "*" or environ["REQUEST_METHOD"] not in _KNOWN_METHODS:
        return _echo(environ, start_response)
    return _validated_echo(environ, start_response)


def _big(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """64 MiB in 64 KiB pieces: far more than socket buffers hold."""
    piece = b"x" * 65536
    count = int(environ["QUERY_STRING"] or "1024")
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(piece) * count)),
                              ("X-Pid", str(os.getpid()))])

    def pieces() -> Iterator[bytes]:
        for _ in range(count):
            yield piece

    return pieces()


def _sleep(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    import time

    time.sleep(float(environ["QUERY_STRING"] or "1"))
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


def _file(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """This very file, through wsgi.file_wrapper (sendfile on plain TCP)."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    result: Iterable[bytes] = environ["wsgi.file_wrapper"](open(__file__, "rb"))
    return result


def slow_clients(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """/big?N: N x 64 KiB; /file: this file via file_wrapper; /sleep?S: answers after S
    seconds; anything else: echo."""
    if environ["PATH_INFO"] == "/big":
        return _big(environ, start_response)
    if environ["PATH_INFO"] == "/file":
        return _file(environ, start_response)
    if environ["PATH_INFO"] == "/sleep":
        return _sleep(environ, start_response)
    return echo(environ, start_response)


# Not wrapped in the validator: these break PEP 3333's response rules on
# purpose, and the server (not wsgiref) must catch it.
BAD_RESPONSES: dict[str, tuple[Any, Any]] = {
    "/status-crlf": ("200 OK\r\nX-Injected: 1", [("Content-Length", "2")]),
    "/status-lf": ("200 OK\nX-Injected: 1", [("Content-Length", "2")]),
    "/status-nul": ("200 O\x00K", [("Content-Length", "2")]),
    "/status-short": ("20 OK", [("Content-Length", "2")]),
    "/status-no-reason-space": ("200", [("Content-Length", "2")]),
    "/status-bytes": (b"200 OK", [("Content-Length", "2")]),
    "/status-unicode": ("200 \u2603", [("Content-Length", "2")]),
    "/status-informational": ("101 Switching Protocols", [("Content-Length", "2")]),
    "/header-crlf": ("200 OK", [("X-A", "1\r\nX-Injected: 1"), ("Content-Length", "2")]),
    "/header-lf": ("200 OK", [("X-A", "1\nX-Injected: 1"), ("Content-Length", "2")]),
    "/header-cr": ("200 OK", [("X-A", "1\rX-Injected: 1"), ("Content-Length", "2")]),
    "/header-nul": ("200 OK", [("X-A", "1\x00"), ("Content-Length", "2")]),
    "/header-name-space": ("200 OK", [("X A", "1"), ("Content-Length", "2")]),
    "/header-name-colon": ("200 OK", [("X-Injected: 1\r\nX-A", "1"), ("Content-Length", "2")]),
    "/header-name-empty": ("200 OK", [("", "1"), ("Content-Length", "2")]),
    "/header-unicode": ("200 OK", [("X-A", "\u2603"), ("Content-Length", "2")]),
    "/header-not-tuple": ("200 OK", [["X-A", "1"], ("Content-Length", "2")]),
    "/header-bytes": ("200 OK", [(b"X-A", b"1"), ("Content-Length", "2")]),
    "/content-length-bad": ("200 OK", [("Content-Length", "2, 2")]),
    "/ok": ("200 OK", [("Content-Length", "2")]),
}


def bad_responses(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    status, headers = BAD_RESPONSES[environ["PATH_INFO"]]
    start_response(status, headers)
    return [b"ok"]
