"""Apps for the threaded worker's process tests (tests/process/test_threads.py).

Each response names the process and thread that ran it and how many requests
were in the app in that process at the time, so a test can see concurrency
without timing it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

_lock = threading.Lock()
_in_app = 0


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """/sleep?SECONDS sleeps; /stuck sleeps a minute; anything else answers at once.

    The body is `PATH PID THREAD PEAK`: PEAK is the most requests this process
    had in the app at once while this one was in it.
    """
    global _in_app
    path = environ["PATH_INFO"]
    if path == "/multithread":
        text = f"{environ['wsgi.multithread']}\n".encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [text]
    with _lock:
        _in_app += 1
        peak = _in_app
    try:
        if path == "/stuck":
            time.sleep(60)
        elif path.startswith("/sleep"):
            seconds = float(environ.get("QUERY_STRING") or "0.05")
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                time.sleep(0.01)
                with _lock:
                    peak = max(peak, _in_app)
    finally:
        with _lock:
            _in_app -= 1
    body = f"{path} {os.getpid()} {threading.current_thread().name} {peak}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
