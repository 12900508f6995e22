"""Compare this tree's forkserve with another checkout's, in interleaved wrk runs.

    git worktree add /tmp/fs-old <commit>
    python -m benchmarks.ab /tmp/fs-old [--app hello|flask] [--close] [--pairs 4]

Each pair starts the other tree's server, loads it with wrk, stops it, then
does the same for this tree, so drift of a shared machine hits both alike.
Prints requests/s per pair and the median ratio (this tree / other tree).
Both trees are byte-compiled first (see `run.compile_bytecode`).
"""

from __future__ import annotations

import argparse
import compileall
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/ab.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import wrk
from benchmarks.client import HOST, get_status
from benchmarks.run import APPS
from benchmarks.servers import REPO_ROOT, START_TIMEOUT_S, free_port


def requests_per_second(tree: Path, app: str, close: bool, duration_s: int) -> float:
    """Start forkserve from `tree` with 2 workers, load it with wrk, stop it by pid."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(tree))
    server = subprocess.Popen(
        [sys.executable, "-m", "forkserve", app, "-b", f"{HOST}:{port}", "-w", "2"],
        cwd=tree, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while get_status(port) != 200:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"forkserve from {tree} did not start")
            time.sleep(0.02)
        command = [wrk.wrk_binary() or "wrk", "-t1", "-c50", f"-d{duration_s}s"]
        if close:
            command += ["-H", "Connection: close"]
        out = subprocess.run([*command, f"http://{HOST}:{port}/"], capture_output=True,
                             text=True, timeout=duration_s + 30).stdout
        return float(next(line.split()[1] for line in out.splitlines()
                          if line.startswith("Requests/sec")))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=15)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="the other checkout's root")
    parser.add_argument("--app", choices=sorted(APPS), default="hello")
    parser.add_argument("--close", action="store_true", help="Connection: close requests")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    args = parser.parse_args(argv)
    other = args.other.resolve()
    if not (other / "forkserve" / "__init__.py").exists():
        parser.error(f"{other} is not a forkserve checkout")
    for tree in (other, REPO_ROOT):
        compileall.compile_dir(tree / "forkserve", quiet=1)
        compileall.compile_dir(tree / "benchmarks", quiet=1)
    ratios = []
    for _ in range(args.pairs):
        theirs = requests_per_second(other, APPS[args.app], args.close, args.duration)
        ours = requests_per_second(REPO_ROOT, APPS[args.app], args.close, args.duration)
        ratios.append(ours / theirs)
        print(f"other {theirs:9,.0f}  this {ours:9,.0f}  ratio {ours / theirs:.3f}", flush=True)
    print(f"median ratio (this / other): {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
