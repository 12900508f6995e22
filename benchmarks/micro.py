"""Micro-benchmark: the in-process request path, next to a bare h11 round trip.

    python -m benchmarks.micro [--quick] [--json]

Three numbers for one hello-world request, in µs, all in this process with no
network between client and server:

- `h11 round trip`: the floor forkserve is built on. One h11 server
  Connection: receive_data, next_event (Request, EndOfMessage), send Response,
  Data and EndOfMessage, start_next_cycle. No environ, no app.
- `app call`: the hello app itself with a prepared environ, so the app's own
  share is visible.
- `forkserve request path`: `forkserve.connection.process_request_bytes(app,
  raw)`, bytes in to bytes out through the server's real code (pre-check,
  h11, environ, app, response writer) on a connection held in memory, so
  that, like the h11 row, it has no sockets. Imported lazily: reported as
  "not available" while the server does not provide it.
- `the same over a socketpair`: that path with a real socket pair under it
  (a send and a receive on each end), to show what the kernel adds.

The issue's target is forkserve / h11 <= 1.3.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/micro.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.apps import HELLO_BODY, hello

RAW_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: forkserve-bench\r\n\r\n"
TARGET_RATIO = 1.3


def h11_round_trip() -> Callable[[], object]:
    """One hello-world request/response cycle through h11 alone, on a reused connection."""
    import h11

    conn = h11.Connection(h11.SERVER)
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"13")]

    def once() -> bytes:
        conn.receive_data(RAW_REQUEST)
        conn.next_event()  # Request
        conn.next_event()  # EndOfMessage
        out = conn.send(h11.Response(status_code=200, headers=headers))
        out += conn.send(h11.Data(data=HELLO_BODY))
        out += conn.send(h11.EndOfMessage())
        conn.start_next_cycle()
        return out

    return once


def app_call() -> Callable[[], object]:
    """The hello app alone, with a fresh shallow copy of a prepared environ."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "wsgi.input": BytesIO(),
        "wsgi.url_scheme": "http",
    }

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        return None

    def once() -> bytes:
        return b"".join(hello(dict(environ), start_response))

    return once


def forkserve_path(socketpair: bool = False) -> tuple[Callable[[], object] | None, str]:
    """The server's in-process request path, or None and why it is missing.

    In memory by default (no sockets, as the h11 row); `socketpair=True` adds a
    kernel send and receive on each side of a real socket pair.
    """
    try:
        module = importlib.import_module("forkserve.connection")
    except ImportError as exc:
        return None, f"not available (import forkserve.connection failed: {exc})"
    process = getattr(module, "process_request_bytes", None)
    if process is None:
        return None, "not available (forkserve.connection.process_request_bytes is missing)"
    try:
        response = process(hello, RAW_REQUEST, socketpair=socketpair)
    except TypeError as exc:  # an older tree without the socketpair mode
        return None, f"not available ({exc})"
    if not (response.startswith(b"HTTP/1.1 200") and response.endswith(HELLO_BODY)):
        return None, f"not available (unexpected response: {response[:80]!r})"

    def once() -> bytes:
        return bytes(process(hello, RAW_REQUEST, socketpair=socketpair))

    return once, "ok"


def time_per_call(func: Callable[[], object], *, repeats: int, target_s: float) -> float:
    """Median µs per call over `repeats` batches, each sized to last about `target_s`."""
    func()  # first call pays for imports and caches
    batch = 1
    while True:
        elapsed = _time_batch(func, batch)
        if elapsed >= target_s / 4 or batch >= 1 << 22:
            break
        batch *= 4
    batch = max(1, int(batch * target_s / max(elapsed, 1e-9)))
    samples = [_time_batch(func, batch) / batch * 1e6 for _ in range(repeats)]
    return statistics.median(samples)


def _time_batch(func: Callable[[], object], batch: int) -> float:
    # The collector running mid-batch would charge one row for another's garbage.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(batch):
            func()
        return time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()


def run_micro(quick: bool = False) -> dict[str, Any]:
    """Measure the three rows; None for a row that cannot run here."""
    repeats, target_s = (3, 0.1) if quick else (7, 0.3)
    result: dict[str, Any] = {
        "unit": "us_per_request",
        "request": RAW_REQUEST.decode("latin-1"),
        "h11_round_trip_us": time_per_call(h11_round_trip(), repeats=repeats, target_s=target_s),
        "app_call_us": time_per_call(app_call(), repeats=repeats, target_s=target_s),
        "target_ratio": TARGET_RATIO,
    }
    path, status = forkserve_path()
    result["forkserve_status"] = status
    if path is None:
        result["forkserve_request_path_us"] = None
        result["forkserve_over_h11"] = None
    else:
        us = time_per_call(path, repeats=repeats, target_s=target_s)
        result["forkserve_request_path_us"] = us
        result["forkserve_over_h11"] = us / result["h11_round_trip_us"]
    pair, _ = forkserve_path(socketpair=True)
    result["forkserve_socketpair_us"] = (
        None if pair is None else time_per_call(pair, repeats=repeats, target_s=target_s)
    )
    return result


def format_micro(result: dict[str, Any]) -> str:
    """Markdown table of the micro-benchmark."""
    h11_us = result["h11_round_trip_us"]
    rows = [
        ("h11 round trip (floor)", h11_us, "1.00"),
        ("hello app call alone", result["app_call_us"], f"{result['app_call_us'] / h11_us:.2f}"),
    ]
    lines = [
        "| in-process, hello world | µs/request | x h11 |",
        "|---|---:|---:|",
        *(f"| {name} | {us:.2f} | {ratio} |" for name, us, ratio in rows),
    ]
    fs_us = result["forkserve_request_path_us"]
    if fs_us is None:
        lines.append(f"| forkserve request path | {result['forkserve_status']} | - |")
    else:
        verdict = "ok" if result["forkserve_over_h11"] <= result["target_ratio"] else "over target"
        lines.append(
            f"| forkserve request path | {fs_us:.2f} | {result['forkserve_over_h11']:.2f}"
            f" ({verdict}, target <= {result['target_ratio']}) |"
        )
    pair_us = result.get("forkserve_socketpair_us")
    if pair_us is not None:
        lines.append(f"| the same over a socketpair (4 syscalls) | {pair_us:.2f} |"
                     f" {pair_us / h11_us:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter batches")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    result = run_micro(quick=args.quick)
    print(json.dumps(result, indent=2) if args.json else format_micro(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
