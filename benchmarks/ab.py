"""Compare this tree's forkserve with another checkout's, in interleaved wrk runs.

    git worktree add /tmp/fs-old <commit>
    python -m benchmarks.ab /tmp/fs-old [--app hello|flask] [--close] [--pairs 4]
                                       [--server forkserve|forkserve-httptools]
    python -m benchmarks.ab . --this-args "--metrics-bind 127.0.0.1:0"

Each pair starts the other tree's server, loads it with wrk, stops it, then
does the same for this tree, so drift of a shared machine hits both alike.
Prints requests/s per pair and the median ratio (this tree / other tree).
Both trees are byte-compiled first (`run.byte_compile`). `--server` is the
suite's row to start (`--http h11` or `--http httptools`): both trees must
know `--http` (the parser seam, issue 13, and later). `--this-args` and
`--other-args` add flags to either side's command line: with the same tree
on both sides, that measures what a setting costs.

Beside requests/s it prints the workers' CPU time per request (user + system,
from /proc, over the wrk run): on a shared machine other processes change
how many requests a run gets far more than how much CPU each one costs, so
a small per-request cost shows in this column long before it shows in
requests/s.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/ab.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import servers, wrk
from benchmarks.run import APPS, WORK_DIR, byte_compile


def children_cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by the live children of `pid` (its workers)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def requests_per_second(tree: Path, app: str, close: bool, duration_s: int,
                        extra_args: list[str], server: str = "forkserve") -> tuple[float, float]:
    """Start forkserve from `tree` with 2 workers, load it with wrk, stop it by pid.

    Returns requests/s and the workers' CPU µs per request.
    """
    running = servers.start(servers.SERVERS[server], app, 2, WORK_DIR, tree=tree,
                            extra_args=extra_args)
    try:
        cpu_before = children_cpu_s(running.pid)
        numbers = wrk.run_wrk(running.port, wrk.WrkRequest(close=close), connections=50,
                              duration_s=duration_s, threads=1, script_dir=WORK_DIR)
        cpu = children_cpu_s(running.pid) - cpu_before
    finally:
        servers.stop(running)
    return (numbers["requests"] / (numbers["duration_us"] / 1e6),
            cpu / numbers["requests"] * 1e6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="the other checkout's root")
    parser.add_argument("--app", choices=sorted(APPS), default="hello")
    parser.add_argument("--close", action="store_true", help="Connection: close requests")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    parser.add_argument("--server", choices=["forkserve", "forkserve-httptools"],
                        default="forkserve", help="the row to start: --http h11 or httptools")
    parser.add_argument("--this-args", default="", help="extra flags for this tree's server")
    parser.add_argument("--other-args", default="", help="extra flags for the other server")
    args = parser.parse_args(argv)
    other = args.other.resolve()
    if not (other / "forkserve" / "__init__.py").exists():
        parser.error(f"{other} is not a forkserve checkout")
    for tree in (other, servers.REPO_ROOT):
        byte_compile(tree)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    ratios, cpu_ratios = [], []
    for _ in range(args.pairs):
        theirs, their_cpu = requests_per_second(other, APPS[args.app], args.close,
                                                args.duration, shlex.split(args.other_args),
                                                args.server)
        ours, our_cpu = requests_per_second(servers.REPO_ROOT, APPS[args.app], args.close,
                                            args.duration, shlex.split(args.this_args),
                                            args.server)
        ratios.append(ours / theirs)
        cpu_ratios.append(our_cpu / their_cpu)
        print(f"other {theirs:9,.0f}/s {their_cpu:6.1f} µs cpu  this {ours:9,.0f}/s "
              f"{our_cpu:6.1f} µs cpu  ratio {ours / theirs:.3f} (cpu {our_cpu / their_cpu:.3f})",
              flush=True)
    print(f"median ratio (this / other): {statistics.median(ratios):.3f} requests/s, "
          f"{statistics.median(cpu_ratios):.3f} CPU per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
