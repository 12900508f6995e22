"""Fixture apps for the observability process tests (metrics, statsd, logs, request ids).

`app` is wrapped in wsgiref's validator. `/status/NNN` answers NNN, `/slow`
sleeps (marks itself in OBSERVE_MARKS first, so a test knows it is inside),
`/pid` returns the worker's pid, `/env` returns the request id the app saw.
`multiproc_app` counts with prometheus_client in multiprocess mode.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.validate import validator

StartResponse = Callable[..., Any]
MARKS = os.environ.get("OBSERVE_MARKS", "")
REASONS = {200: "OK", 201: "Created", 204: "No Content", 404: "Not Found",
           418: "I'm a teapot", 500: "Internal Server Error", 503: "Service Unavailable"}


def _mark(text: str) -> None:
    if MARKS:
        with open(MARKS, "a") as f:
            f.write(text + "\n")


def _text(start_response: StartResponse, body: bytes, status: str = "200 OK",
          extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain"),
                            ("Content-Length", str(len(body))), *(extra or [])])
    return [body] if body else []


def _app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path.startswith("/status/"):
        code = int(path.rsplit("/", 1)[1])
        return _text(start_response, b"", f"{code} {REASONS.get(code, 'Whatever')}")
    if path == "/slow":
        _mark(f"slow {os.getpid()}")
        time.sleep(float(environ.get("QUERY_STRING") or "3"))
        return _text(start_response, b"slept\n")
    if path == "/pid":
        return _text(start_response, str(os.getpid()).encode())
    if path == "/env":
        seen = {k: v for k, v in environ.items() if k.startswith("HTTP_X_")}
        return _text(start_response, json.dumps(seen).encode())
    if path == "/own-id":
        return _text(start_response, b"", extra=[("X-Request-ID", "set-by-the-app")])
    if path == "/error":
        raise RuntimeError("boom")
    return _text(start_response, b"hello\n")


app = validator(_app)


def multiproc_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Counts every request, and holds a livesum gauge at 1 per worker."""
    from prometheus_client import Counter, Gauge

    global _counter, _gauge
    if _counter is None:
        _counter = Counter("app_hits", "Requests the app saw.")
        _gauge = Gauge("app_workers_alive", "Workers alive.", multiprocess_mode="livesum")
        _gauge.set(1)
    _counter.inc()
    if environ["PATH_INFO"] == "/pid":
        return _text(start_response, str(os.getpid()).encode())
    return _text(start_response, b"counted\n")


_counter: Any = None
_gauge: Any = None
