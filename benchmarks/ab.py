"""Compare this tree's forkserve with another checkout's, in interleaved wrk runs.

    git worktree add /tmp/fs-old <commit>
    python -m benchmarks.ab /tmp/fs-old [--app hello|flask] [--close] [--pairs 4]
                                       [--server forkserve|forkserve-httptools]

Each pair starts the other tree's server, loads it with wrk, stops it, then
does the same for this tree, so drift of a shared machine hits both alike.
Prints requests/s per pair and the median ratio (this tree / other tree),
and the server's CPU time per request (user + system of the master and its
workers, read from /proc before the stop): on a machine others load too,
requests/s swings by 2x between runs, and the CPU a request costs moves
less. Both trees are byte-compiled first (`run.byte_compile`). `--server` is
the suite's row to start (`--http h11` or `--http httptools`): both trees
must know `--http` (the parser seam, issue 13, and later).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/ab.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import servers, wrk
from benchmarks.run import APPS, WORK_DIR, byte_compile


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of the live processes in a process group."""
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def requests_per_second(tree: Path, app: str, close: bool, duration_s: int,
                        server: str = "forkserve") -> tuple[float, float]:
    """Start forkserve from `tree` with 2 workers, load it with wrk, stop it by pid.

    Returns requests/s and the server's CPU µs per request.
    """
    running = servers.start(servers.SERVERS[server], app, 2, WORK_DIR, tree=tree)
    try:
        before = group_cpu_s(running.pid)
        numbers = wrk.run_wrk(running.port, wrk.WrkRequest(close=close), connections=50,
                              duration_s=duration_s, threads=1, script_dir=WORK_DIR)
        cpu = group_cpu_s(running.pid) - before
    finally:
        servers.stop(running)
    return (numbers["requests"] / (numbers["duration_us"] / 1e6),
            cpu * 1e6 / max(1, numbers["requests"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="the other checkout's root")
    parser.add_argument("--app", choices=sorted(APPS), default="hello")
    parser.add_argument("--close", action="store_true", help="Connection: close requests")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    parser.add_argument("--server", choices=["forkserve", "forkserve-httptools"],
                        default="forkserve", help="the row to start: --http h11 or httptools")
    args = parser.parse_args(argv)
    other = args.other.resolve()
    if not (other / "forkserve" / "__init__.py").exists():
        parser.error(f"{other} is not a forkserve checkout")
    for tree in (other, servers.REPO_ROOT):
        byte_compile(tree)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    ratios = []
    cpu_ratios = []
    for _ in range(args.pairs):
        theirs, their_cpu = requests_per_second(other, APPS[args.app], args.close,
                                                args.duration, args.server)
        ours, our_cpu = requests_per_second(servers.REPO_ROOT, APPS[args.app], args.close,
                                            args.duration, args.server)
        ratios.append(ours / theirs)
        cpu_ratios.append(our_cpu / their_cpu)
        print(f"other {theirs:9,.0f}  this {ours:9,.0f}  ratio {ours / theirs:.3f}   "
              f"CPU/request other {their_cpu:6.1f} µs  this {our_cpu:6.1f} µs  "
              f"ratio {our_cpu / their_cpu:.3f}", flush=True)
    print(f"median ratio (this / other): {statistics.median(ratios):.3f} requests/s, "
          f"{statistics.median(cpu_ratios):.3f} CPU per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
