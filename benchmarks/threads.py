"""I/O-bound scenario: threads against processes, forkserve against gunicorn (issue 15).

    python -m benchmarks.threads [--rounds 3] [--duration 5] [--connections 50]

Every server serves `benchmarks.apps:io_wait` (each request waits 50 ms with
the GIL released, as on a database call) to wrk's 50 keep-alive connections:

- forkserve -w 2 --threads 8 and gunicorn gthread -w 2 --threads 8;
- forkserve and gunicorn sync with 16 workers, the same 16 requests at once
  bought with processes instead of threads.

Rounds are interleaved (every server once per round, in turn), so drift of a
shared machine hits all alike; medians are printed, with the ratios to
gunicorn gthread. After each load run, before stopping it, the memory of the
server's whole process group is read from /proc: RSS (what `ps` shows, shared
pages counted in every process) and PSS (shared pages split between the
processes that share them: the memory the server really costs).
Each server is started, loaded and stopped by pid (servers.start/stop).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python -m benchmarks.threads` from the root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import servers, wrk
from benchmarks.run import WORK_DIR, byte_compile

APP = "benchmarks.apps:io_wait"
PY = sys.executable


def _spec(name: str, note: str, argv: list[str]) -> servers.ServerSpec:
    return servers.ServerSpec(
        name=name, note=note,
        build=lambda app, port, n: [PY, "-m", *argv[:1], app, *argv[1:],
                                    "--bind", f"{servers.HOST}:{port}"],
        missing=lambda: None, version=lambda: "")


SCENARIOS = [
    _spec("forkserve 2x8 threads", "forkserve -w 2 --threads 8",
          ["forkserve", "--workers", "2", "--threads", "8"]),
    _spec("gunicorn gthread 2x8", "gunicorn -k gthread -w 2 --threads 8",
          ["gunicorn", "--workers", "2", "--worker-class", "gthread", "--threads", "8"]),
    _spec("forkserve sync x16", "forkserve -w 16",
          ["forkserve", "--workers", "16"]),
    _spec("gunicorn sync x16", "gunicorn -k sync -w 16",
          ["gunicorn", "--workers", "16", "--worker-class", "sync"]),
]


def group_memory_kib(pgid: int) -> tuple[int, int, int]:
    """RSS and PSS (KiB) summed over every process in the group, and how many processes."""
    rss = pss = count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            rollup = (entry / "smaps_rollup").read_text()
        except (OSError, ProcessLookupError):
            continue
        count += 1
        for line in rollup.splitlines():
            key, _, value = line.partition(":")
            if key == "Rss":
                rss += int(value.split()[0])
            elif key == "Pss":
                pss += int(value.split()[0])
    return rss, pss, count


def one_run(spec: servers.ServerSpec, connections: int, duration_s: int) -> dict[str, float]:
    running = servers.start(spec, APP, 0, WORK_DIR)
    try:
        numbers = wrk.run_wrk(running.port, wrk.WrkRequest(), connections=connections,
                              duration_s=duration_s, threads=1, script_dir=WORK_DIR)
        rss, pss, processes = group_memory_kib(running.pid)
    finally:
        servers.stop(running)
    errors = sum(numbers[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {"rps": numbers["requests"] / (numbers["duration_us"] / 1e6),
            "p50_ms": numbers["p50_us"] / 1000, "p99_ms": numbers["p99_us"] / 1000,
            "errors": errors, "rss_mib": rss / 1024, "pss_mib": pss / 1024,
            "processes": processes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args(argv)
    if wrk.wrk_binary() is None:
        parser.error("wrk is not installed (apt-get install wrk)")
    byte_compile(servers.REPO_ROOT)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, float]]] = {s.name: [] for s in SCENARIOS}
    for round_no in range(args.rounds):
        for spec in SCENARIOS:
            result = one_run(spec, args.connections, args.duration)
            runs[spec.name].append(result)
            print(f"round {round_no + 1} {spec.name:22} {result['rps']:7.1f} req/s  "
                  f"p50 {result['p50_ms']:6.1f} ms  p99 {result['p99_ms']:6.1f} ms  "
                  f"errors {result['errors']:.0f}  RSS {result['rss_mib']:6.1f} MiB  "
                  f"PSS {result['pss_mib']:6.1f} MiB ({result['processes']:.0f} processes)",
                  flush=True)
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
           for name, rs in runs.items()}
    base = med["gunicorn gthread 2x8"]
    print(f"\nmedians of {args.rounds} interleaved rounds, {args.connections} connections, "
          f"{args.duration} s each; ratios against gunicorn gthread 2x8")
    print("| server | req/s | x gthread | p50 ms | p99 ms | RSS MiB | PSS MiB | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in med.items():
        print(f"| {name} | {m['rps']:.0f} | {m['rps'] / base['rps']:.2f}x | {m['p50_ms']:.1f} "
              f"| {m['p99_ms']:.1f} | {m['rss_mib']:.0f} | {m['pss_mib']:.0f} "
              f"| {m['errors']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
