"""Apps for the master-lifecycle process tests (signals, timeouts, recycling, hooks)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.validate import validator

StartResponse = Callable[..., Any]
BALLAST: list[bytes] = []  # memory a worker keeps, for --max-worker-memory


def _reply(start_response: StartResponse, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(data)))])
    return [data]


def stuck_in_the_app(seconds: float) -> None:
    """A named frame for the timeout traceback test to find."""
    time.sleep(seconds)


def _stream_then_stuck(start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first chunk"
    stuck_in_the_app(3600)
    yield b"never"


def _background_thread() -> None:
    while True:
        time.sleep(60)


def _app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    query = environ.get("QUERY_STRING", "")
    if path == "/slow":
        time.sleep(float(query or 1))
    elif path == "/stuck":
        threading.Thread(target=_background_thread, name="helper-thread", daemon=True).start()
        stuck_in_the_app(float(query or 3600))
    elif path == "/stream-then-stuck":
        return _stream_then_stuck(start_response)
    elif path == "/grow":
        BALLAST.append(b"x" * (int(query or 1) * 1024 * 1024))
    elif path == "/busy-in-c":
        # One long C loop that never returns to the interpreter (sum over a
        # range checks no signals): no Python signal handler can run.
        sum(range(10**15))
    elif path == "/crash":
        os._exit(7)
    return _reply(start_response, {"pid": os.getpid(), "version": VERSION,
                                   "imported_in": IMPORTED_IN})


VERSION = os.environ.get("LIFECYCLE_VERSION", "1")
IMPORTED_IN = os.getpid()  # the master's pid with --preload
app = validator(_app)
