"""Compare this tree's forkserve with another checkout's, in interleaved wrk runs.

    git worktree add /tmp/fs-old <commit>
    python -m benchmarks.ab /tmp/fs-old [--app hello|flask] [--close] [--pairs 4]
                                       [--server forkserve|forkserve-httptools]

Each pair starts the other tree's server, loads it with wrk, stops it, then
does the same for this tree, so drift of a shared machine hits both alike.
Prints requests/s per pair and the median ratio (this tree / other tree).
Both trees are byte-compiled first (`run.byte_compile`). `--server` is the
suite's row to start (`--http h11` or `--http httptools`): both trees must
know `--http` (the parser seam, issue 13, and later).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/ab.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import servers, wrk
from benchmarks.run import APPS, WORK_DIR, byte_compile


def requests_per_second(tree: Path, app: str, close: bool, duration_s: int,
                        server: str = "forkserve") -> float:
    """Start forkserve from `tree` with 2 workers, load it with wrk, stop it by pid."""
    running = servers.start(servers.SERVERS[server], app, 2, WORK_DIR, tree=tree)
    try:
        numbers = wrk.run_wrk(running.port, wrk.WrkRequest(close=close), connections=50,
                              duration_s=duration_s, threads=1, script_dir=WORK_DIR)
    finally:
        servers.stop(running)
    return numbers["requests"] / (numbers["duration_us"] / 1e6)


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
    for _ in range(args.pairs):
        theirs = requests_per_second(other, APPS[args.app], args.close, args.duration,
                                     args.server)
        ours = requests_per_second(servers.REPO_ROOT, APPS[args.app], args.close, args.duration,
                                   args.server)
        ratios.append(ours / theirs)
        print(f"other {theirs:9,.0f}  this {ours:9,.0f}  ratio {ours / theirs:.3f}", flush=True)
    print(f"median ratio (this / other): {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
