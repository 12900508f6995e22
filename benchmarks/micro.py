"""Micro-benchmark: the in-process request path, next to a bare round trip with each parser.

    python -m benchmarks.micro [--quick] [--json]

Numbers for one hello-world request, in µs, all in this process with no
network between client and server:

- `h11 round trip`: the floor forkserve is built on. One h11 server
  Connection: receive_data, next_event (Request, EndOfMessage), send Response,
  Data and EndOfMessage, start_next_cycle. No environ, no app.
- `httptools round trip` (when httptools is installed): the floor under
  `--http httptools`, as an httptools server does it: a new llhttp parser fed
  the request with a callbacks object collecting the target and fields, and
  a response head formatted with `%`. No environ, no app.
- `app call`: the hello app itself with a prepared environ, so the app's own
  share is visible.
- `forkserve request path`: `forkserve.inprocess.process_request_bytes(app,
  raw)`, bytes in to bytes out through the server's real code (pre-check,
  h11, environ, app, response writer) on a connection held in memory, so
  that, like the h11 row, it has no sockets. Imported lazily: reported as
  "not available" while the server does not provide it.
- `the same over a socketpair`: that path with a real socket pair under it
  (a send and a receive on each end), to show what the kernel adds.
- `forkserve request path, httptools`: the in-memory path with
  `parse_head` set to the httptools adapter (`--http httptools`).

The rows take turns, one batch each, nine times; the ratio to the h11 row
is the median of the ratios within each turn. Timed one row after the other,
the rows of one run differed by a third in either direction on this
machine, and forkserve's row once came out slower in memory than over a
socketpair.

Targets: forkserve (h11) / h11 round trip <= 1.3; forkserve (httptools) /
httptools round trip <= 2.5.
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
HTTPTOOLS_TARGET_RATIO = 2.5


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


def httptools_round_trip() -> Callable[[], object] | None:
    """One hello-world cycle with httptools alone (None where it is not installed)."""
    try:
        import httptools
    except ImportError:
        return None

    class Request:
        __slots__ = ("url", "headers", "done")

        def __init__(self) -> None:
            self.url = b""
            self.headers: list[tuple[bytes, bytes]] = []
            self.done = False

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name, value))

        def on_message_complete(self) -> None:
            self.done = True

    new_parser = httptools.HttpRequestParser

    def once() -> bytes:
        request = Request()
        parser = new_parser(request)
        parser.feed_data(RAW_REQUEST)
        assert request.done
        return (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s"
                % (len(HELLO_BODY), HELLO_BODY))

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


def forkserve_path(socketpair: bool = False, http: str = "h11"
                   ) -> tuple[Callable[[], object] | None, str]:
    """The server's in-process request path, or None and why it is missing.

    In memory by default (no sockets, as the h11 row); `socketpair=True` adds a
    kernel send and receive on each side of a real socket pair. `http` is the
    parser (`--http`): a tree without the parser seam has only h11.
    """
    try:
        module = importlib.import_module("forkserve.inprocess")
    except ImportError as exc:
        return None, f"not available (import forkserve.inprocess failed: {exc})"
    process = getattr(module, "process_request_bytes", None)
    if process is None:
        return None, "not available (forkserve.inprocess.process_request_bytes is missing)"
    kwargs: dict[str, Any] = {"socketpair": socketpair}
    if http != "h11":
        try:
            kwargs["parse_head"] = importlib.import_module("forkserve.parser").head_parser(http)
        except Exception as exc:  # no seam in this tree, or httptools is not installed
            return None, f"not available ({type(exc).__name__}: {exc})"
    try:
        response = process(hello, RAW_REQUEST, **kwargs)
    except TypeError as exc:  # an older tree without the socketpair mode or the seam
        return None, f"not available ({exc})"
    if not (response.startswith(b"HTTP/1.1 200") and response.endswith(HELLO_BODY)):
        return None, f"not available (unexpected response: {response[:80]!r})"

    def once() -> bytes:
        return bytes(process(hello, RAW_REQUEST, **kwargs))

    return once, "ok"


def batch_size(func: Callable[[], object], target_s: float) -> int:
    """How many calls of `func` take about `target_s` (its first call warms caches)."""
    func()  # first call pays for imports and caches
    batch = 1
    while True:
        elapsed = _time_batch(func, batch)
        if elapsed >= target_s / 4 or batch >= 1 << 22:
            break
        batch *= 4
    return max(1, int(batch * target_s / max(elapsed, 1e-9)))


def time_interleaved(funcs: dict[str, Callable[[], object]], *, repeats: int,
                     target_s: float) -> tuple[dict[str, float], dict[str, float]]:
    """Median µs per call of each row, and each row's median ratio to the first row.

    The rows take turns, one batch each, `repeats` times (A B C, A B C, ...):
    this machine's speed drifts by a third within a minute, so rows timed one
    after the other compare two different machines. The ratio is taken within
    each turn, then the median of those.
    """
    sizes = {name: batch_size(func, target_s) for name, func in funcs.items()}
    samples: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(repeats):
        for name, func in funcs.items():
            samples[name].append(_time_batch(func, sizes[name]) / sizes[name] * 1e6)
    first = next(iter(funcs))
    us = {name: statistics.median(values) for name, values in samples.items()}
    ratios = {
        name: statistics.median(v / b for v, b in zip(values, samples[first], strict=True))
        for name, values in samples.items()
    }
    return us, ratios


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
    """Measure the rows, interleaved; None for a row that cannot run here."""
    repeats, target_s = (3, 0.1) if quick else (9, 0.25)
    rows: dict[str, Callable[[], object]] = {"h11": h11_round_trip(), "app": app_call()}
    path, status = forkserve_path()
    if path is not None:
        rows["memory"] = path
    pair, _ = forkserve_path(socketpair=True)
    if pair is not None:
        rows["socketpair"] = pair
    bare_httptools = httptools_round_trip()
    fast, fast_status = forkserve_path(http="httptools")
    if bare_httptools is not None:
        rows["httptools"] = bare_httptools
        if fast is not None:
            rows["memory_httptools"] = fast
    else:
        fast_status = "not available (httptools is not installed)"
    us, ratios = time_interleaved(rows, repeats=repeats, target_s=target_s)
    fast_over = None
    if "memory_httptools" in ratios:
        # Both ratios are to the h11 row, taken within each turn: their quotient
        # is forkserve (httptools) over the bare httptools round trip.
        fast_over = ratios["memory_httptools"] / ratios["httptools"]
    return {
        "unit": "us_per_request",
        "request": RAW_REQUEST.decode("latin-1"),
        "h11_round_trip_us": us["h11"],
        "app_call_us": us["app"],
        "target_ratio": TARGET_RATIO,
        "forkserve_status": status,
        "forkserve_request_path_us": us.get("memory"),
        "forkserve_over_h11": ratios.get("memory"),
        "forkserve_socketpair_us": us.get("socketpair"),
        "socketpair_over_h11": ratios.get("socketpair"),
        "interleaved_repeats": repeats,
        "httptools_round_trip_us": us.get("httptools"),
        "httptools_target_ratio": HTTPTOOLS_TARGET_RATIO,
        "forkserve_httptools_status": fast_status,
        "forkserve_httptools_us": us.get("memory_httptools"),
        "forkserve_httptools_over_httptools": fast_over,
    }


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
        pair_ratio = result.get("socketpair_over_h11") or pair_us / h11_us
        lines.append(f"| the same over a socketpair (4 syscalls) | {pair_us:.2f} |"
                     f" {pair_ratio:.2f} |")
    bare = result.get("httptools_round_trip_us")
    if bare is not None:
        lines.append(f"| httptools round trip (floor under --http httptools) | {bare:.2f} |"
                     f" {bare / h11_us:.2f} |")
        fast_us = result.get("forkserve_httptools_us")
        over = result.get("forkserve_httptools_over_httptools")
        if fast_us is None or over is None:
            status = result.get("forkserve_httptools_status", "not available")
            lines.append(f"| forkserve request path, --http httptools | {status} | - |")
        else:
            target = result.get("httptools_target_ratio", HTTPTOOLS_TARGET_RATIO)
            verdict = "ok" if over <= target else "over target"
            lines.append(f"| forkserve request path, --http httptools | {fast_us:.2f} |"
                         f" {fast_us / h11_us:.2f} ({over:.2f}x the httptools round trip:"
                         f" {verdict}, target <= {target}) |")
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
