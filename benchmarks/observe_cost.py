"""What the observability features cost one request, in-process and interleaved.

    python -m benchmarks.observe_cost [--repeats 15]

Rows, each one hello-world request through the real connection code on a
memory socket (`forkserve.inprocess`), with the worker's own per-request
hooks (`worker._Hooks`):

- `plain`: the hooks as a worker without --metrics-bind runs them, and the
  app without request ids (`--no-request-id`);
- `counters`: the same with the shared-memory counters (--metrics-bind);
- `request id`: plain, with the request-id layer around the app (the default);
- `both`: counters and request ids.

The rows take turns batch by batch and each ratio is to `plain` within the
same turn; the median of those is reported. Time is this process's CPU time
(`time.process_time`), not the wall clock: on a machine shared with other
work, time spent descheduled swamps a difference of a few per cent. Sockets
are left out for the same reason: they cost every row the same (wrk runs,
`benchmarks.ab --this-args`, are the end-to-end check).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/observe_cost.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.apps import hello
from benchmarks.micro import RAW_REQUEST
from forkserve.config import Config
from forkserve.heartbeat import Heartbeats
from forkserve.inprocess import InProcessClient
from forkserve.requestid import IdSource, with_request_id
from forkserve.stats import StatsTable
from forkserve.worker import Worker, _Hooks


def row(counters: bool, request_id: bool) -> Callable[[], object]:
    beats = Heartbeats(4)
    table = StatsTable(4) if counters else None
    worker = Worker(Config(app="bench:hello"), [], 0, beats, stats=table)
    app = with_request_id(hello, "X-Request-ID", IdSource()) if request_id else hello
    client = InProcessClient(app)
    client.hooks = _Hooks(worker, beats.writer(0), table.writer(0) if table else None)

    def once() -> bytes:
        out = client.request(RAW_REQUEST)
        assert out.startswith(b"HTTP/1.1 200 "), out[:40]
        return out

    return once


def cpu_batch(func: Callable[[], object], batch: int) -> float:
    """CPU seconds for `batch` calls, with the collector off (as micro._time_batch)."""
    gc.disable()
    try:
        start = time.process_time()
        for _ in range(batch):
            func()
        return time.process_time() - start
    finally:
        gc.enable()


def interleaved(rows: dict[str, Callable[[], object]], repeats: int, batch: int
                ) -> tuple[dict[str, float], dict[str, float]]:
    """Median CPU µs per call of each row, and its median ratio to the first row."""
    for func in rows.values():
        func()  # warm up
    samples: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(repeats):
        for name, func in rows.items():
            samples[name].append(cpu_batch(func, batch) / batch * 1e6)
    first = samples[next(iter(rows))]
    us = {name: statistics.median(values) for name, values in samples.items()}
    ratios = {name: statistics.median(v / b for v, b in zip(values, first, strict=True))
              for name, values in samples.items()}
    return us, ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--batch", type=int, default=2000, help="requests per batch")
    args = parser.parse_args(argv)
    rows = {"plain": row(False, False), "counters": row(True, False),
            "request id": row(False, True), "both": row(True, True)}
    us, ratios = interleaved(rows, args.repeats, args.batch)
    print("| row | µs per request | / plain |")
    print("|---|---:|---:|")
    for name in rows:
        print(f"| {name} | {us[name]:.2f} | {ratios[name]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
