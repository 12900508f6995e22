"""Compare the in-process hello path of two checkouts, CPU time only.

    python -m benchmarks.compare OLD_CHECKOUT NEW_CHECKOUT [--pairs 4] [-n 2000]

Each checkout runs in a process of its own (two versions of `forkserve`
cannot share one), old and new alternating, `--pairs` times. A run times
four rows, hello world with and without the request-id layer, under h11 and
httptools, 7 turns of `-n` requests each, and reports the median µs per
request in `time.process_time`: on a shared machine CPU time holds still
where wall time does not. Printed: each run's medians, then per row the
median of the paired differences (new minus old). New always runs second
in a pair, so compare rows within a run too (the request-id rows minus the
plain ones do not depend on the order).

Used for issue 13's "what was taken out, measured" (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

# Run inside the checkout under test (the micro-benchmark's 71-byte GET);
# prints one JSON object of row -> µs.
_CHILD = """
import gc, json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
from forkserve.inprocess import process_request_bytes
from forkserve.parser import httptools_parser, parse_h11
from forkserve.requestid import IdSource, with_request_id
from benchmarks.apps import hello
from benchmarks.micro import RAW_REQUEST as raw
n = int(sys.argv[2])
fast = httptools_parser()
rid = with_request_id(hello, "X-Request-ID", IdSource())
rows = {"h11": (hello, parse_h11), "httptools": (hello, fast),
        "h11+request id": (rid, parse_h11), "httptools+request id": (rid, fast)}
gc.disable()
for app, parse in rows.values():
    for _ in range(200):
        process_request_bytes(app, raw, parse_head=parse)
times = {row: [] for row in rows}
for _ in range(7):
    for row, (app, parse) in rows.items():
        t = time.process_time()
        for _ in range(n):
            process_request_bytes(app, raw, parse_head=parse)
        times[row].append((time.process_time() - t) / n * 1e6)
print(json.dumps({row: statistics.median(v) for row, v in times.items()}))
"""


def run(checkout: str, n: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _CHILD, checkout, str(n)], check=True,
                         capture_output=True, text=True, timeout=600).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("-n", type=int, default=2000)
    args = parser.parse_args()
    diffs: dict[str, list[float]] = {}
    olds: dict[str, list[float]] = {}
    for _ in range(args.pairs):
        old, new = run(args.old, args.n), run(args.new, args.n)
        for name, res in (("old", old), ("new", new)):
            print(f"{name}: " + "  ".join(f"{row} {us:.2f}" for row, us in res.items()))
        for row in old:
            diffs.setdefault(row, []).append(new[row] - old[row])
            olds.setdefault(row, []).append(old[row])
    print("median of paired differences (new - old):")
    for row, d in diffs.items():
        med = statistics.median(d)
        print(f"  {row}: {med:+.2f} us ({100 * med / statistics.median(olds[row]):+.1f}%)")


if __name__ == "__main__":
    main()
