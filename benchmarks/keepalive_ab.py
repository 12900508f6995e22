"""Issue 11's measurements: this tree against another checkout (and gunicorn), interleaved.

    git archive <commit> | tar -x -C /tmp/fs-old
    python -m benchmarks.keepalive_ab cpu /tmp/fs-old [--pairs 6] [--close]
    python -m benchmarks.keepalive_ab c500 /tmp/fs-old [--rounds 3]
    python -m benchmarks.keepalive_ab balance /tmp/fs-old [--rounds 3]
    python -m benchmarks.keepalive_ab together /tmp/fs-old [--rounds 10]

- `cpu`: hello world, 2 workers, `wrk -c50`; besides requests/s it reports
  the workers' CPU time per request (from /proc), which a loaded shared
  machine disturbs far less than throughput: the cost of a change shows there.
- `c500`: `wrk -c500 -t2` against both trees and gunicorn sync: p50, p99, max.
- `together`: hello world keep-alive on both trees at the same time (one
  worker each, one `wrk -c10` each, the two runs overlapping exactly): what
  the box's other load does to one run it does to the other, so the ratio of
  their requests/s resolves a few percent where back-to-back runs swing ±25%.
- `balance`: `wrk -c4 -H "Connection: close"`, alone and beside 10 idle
  keep-alive connections; the ratio is the throughput kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/keepalive_ab.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import servers, wrk
from benchmarks.run import WORK_DIR

HELLO = "benchmarks.apps:hello"
THIS_TREE = servers.REPO_ROOT


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def _spec(spec: str, tree: Path) -> servers.ServerSpec:
    """The server to start from `tree`: a checkout older than `--http` gets no `--http` flag."""
    chosen = servers.SERVERS[spec]
    if spec != "forkserve" or "httptools" in (tree / "forkserve" / "config.py").read_text():
        return chosen
    return dataclasses.replace(chosen, build=lambda app, port, n: [
        arg for arg in chosen.build(app, port, n) if arg not in ("--http", "h11")])


def _run(spec: str, tree: Path, connections: int, close: bool = False, duration_s: int = 5,
         threads: int = 1) -> tuple[dict[str, float], float]:
    """One wrk run on a fresh server; returns wrk's numbers and the workers' CPU seconds."""
    running = servers.start(_spec(spec, tree), HELLO, 2, WORK_DIR, tree=tree)
    try:
        time.sleep(0.3)
        workers = servers._children(running.pid)
        before = _cpu_seconds(workers)
        numbers = wrk.run_wrk(running.port, wrk.WrkRequest(close=close),
                              connections=connections, duration_s=duration_s,
                              threads=threads, script_dir=WORK_DIR)
        cpu = _cpu_seconds(workers) - before
    finally:
        servers.stop(running)
    return numbers, cpu


def _rate(numbers: dict[str, float]) -> float:
    return numbers["requests"] / (numbers["duration_us"] / 1e6)


def cpu(other: Path, pairs: int, close: bool) -> None:
    cpu_ratios, rate_ratios = [], []
    for _ in range(pairs):
        (a, cpu_a), (b, cpu_b) = (_run("forkserve", tree, 50, close) for tree in (other, THIS_TREE))
        us_a, us_b = cpu_a / a["requests"] * 1e6, cpu_b / b["requests"] * 1e6
        cpu_ratios.append(us_b / us_a)
        rate_ratios.append(_rate(b) / _rate(a))
        print(f"other {us_a:6.1f} µs/req {_rate(a):8,.0f} r/s | this {us_b:6.1f} µs/req "
              f"{_rate(b):8,.0f} r/s | CPU ratio {us_b / us_a:.3f}", flush=True)
    print(f"median CPU per request (this / other): {statistics.median(cpu_ratios):.3f}")
    print(f"median requests/s (this / other): {statistics.median(rate_ratios):.3f}")


def together(other: Path, rounds: int, duration_s: int = 5) -> None:
    import concurrent.futures

    ratios = []
    trees = (("other", other), ("this", THIS_TREE))
    for round_ in range(rounds):
        running: list[servers.Running] = []
        try:
            for _label, tree in (trees if round_ % 2 else trees[::-1]):
                running.append(servers.start(_spec("forkserve", tree), HELLO, 1, WORK_DIR,
                                             tree=tree))
            if not round_ % 2:
                running.reverse()  # started in the other order, listed other-first
            time.sleep(0.5)
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                # Each wrk its own script directory: both write their script as they start.
                dirs = [WORK_DIR / label for label, _tree in trees]
                for directory in dirs:
                    directory.mkdir(exist_ok=True)
                runs = [pool.submit(wrk.run_wrk, r.port, wrk.WrkRequest(), connections=10,
                                    duration_s=duration_s, threads=1, script_dir=directory)
                        for r, directory in zip(running, dirs, strict=True)]
                rate_other, rate_this = (_rate(run.result()) for run in runs)
        finally:
            for r in running:
                servers.stop(r)
        ratios.append(rate_this / rate_other)
        print(f"round {round_ + 1}: other {rate_other:8,.0f} r/s | this {rate_this:8,.0f} r/s"
              f" | ratio {rate_this / rate_other:.3f}", flush=True)
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    print(f"requests/s this / other: median {statistics.median(ratios):.3f}, "
          f"quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}, range "
          f"{min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} rounds")


def c500(other: Path, rounds: int) -> None:
    runs = (("this", "forkserve", THIS_TREE), ("other", "forkserve", other),
            ("gunicorn-sync", "gunicorn-sync", THIS_TREE))
    for round_ in range(rounds):
        for label, spec, tree in runs:
            n, _ = _run(spec, tree, 500, duration_s=8, threads=2)
            print(f"round {round_ + 1} {label:14s} {_rate(n):8,.0f} r/s  p50 "
                  f"{n['p50_us'] / 1000:7.1f} ms  p99 {n['p99_us'] / 1000:7.1f} ms  max "
                  f"{n['max_us'] / 1000:7.1f} ms  timeouts {n.get('timeout', 0):.0f}", flush=True)


def _park(port: int, count: int) -> list[socket.socket]:
    """`count` keep-alive connections, each answered once and left idle."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        data = b""
        while b"Hello, world!" not in data:
            data += sock.recv(4096)
        socks.append(sock)
    return socks


def balance(other: Path, rounds: int) -> None:
    for round_ in range(rounds):
        for label, tree in (("other", other), ("this", THIS_TREE)):
            running = servers.start(_spec("forkserve", tree), HELLO, 2, WORK_DIR, tree=tree)
            try:
                time.sleep(0.3)
                alone = wrk.run_wrk(running.port, wrk.WrkRequest(close=True), connections=4,
                                    duration_s=4, threads=1, script_dir=WORK_DIR)
                idle = _park(running.port, 10)
                time.sleep(0.3)
                beside = wrk.run_wrk(running.port, wrk.WrkRequest(close=True), connections=4,
                                     duration_s=4, threads=1, script_dir=WORK_DIR)
                for sock in idle:
                    sock.close()
            finally:
                servers.stop(running)
            print(f"round {round_ + 1} {label}: close alone {_rate(alone):,.0f} r/s | beside 10 "
                  f"idle keep-alive {_rate(beside):,.0f} r/s (p50 {beside['p50_us'] / 1000:.2f}"
                  f" ms) | kept {_rate(beside) / _rate(alone):.2f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("cpu", "c500", "balance", "together"))
    parser.add_argument("other", type=Path, help="the other checkout's root")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--close", action="store_true")
    args = parser.parse_args(argv)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    if args.what == "cpu":
        cpu(args.other, args.pairs, args.close)
    elif args.what == "together":
        together(args.other, args.rounds)
    elif args.what == "c500":
        c500(args.other, args.rounds)
    else:
        balance(args.other, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
