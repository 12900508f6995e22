"""Run the whole server comparison on this machine.

    python -m benchmarks.run [--quick] [--chart] [--workers 2] [--duration 3]
                             [--repeat 3] [--servers a,b] [--scenarios x,y]

Starts every installed server with the same number of workers, each on its own
free port of 127.0.0.1, drives it with wrk (or the built-in client when wrk is
missing), and stops it by pid. Repetitions are interleaved: every server runs
each scenario once before any runs it a second time, so slow drift of a shared
machine hits all servers alike. Prints Markdown tables and writes
benchmarks/results/latest.json (and latest.md; latest.png with --chart).
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import client, micro, report, servers, wrk
from benchmarks.apps import POST_BODY_SIZE

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
WORK_DIR = BENCH_DIR / ".work"  # server logs and wrk scripts; git-ignored

WARM_UP_S = 0.3
WARM_UP_CONNECTIONS = 8

Json = dict[str, Any]


# Short name -> WSGI path. Each app is one server start per repetition.
APPS = {
    "hello": "benchmarks.apps:hello",
    "flask": "benchmarks.flask_app:app",
    "stream": "benchmarks.apps:stream",
    "echo": "benchmarks.apps:echo",
}


@dataclass(frozen=True)
class Scenario:
    """One measured situation: an app, a request and how many clients send it."""

    name: str
    app_label: str  # a key of APPS
    description: str
    connections: int
    close: bool = False
    method: str = "GET"
    path: str = "/"
    body_size: int = 0
    fairness: bool = False

    @property
    def kind(self) -> str:
        return "fairness" if self.fairness else "load"

    @property
    def app(self) -> str:
        return APPS[self.app_label]

    def request_bytes(self, port: int) -> bytes:
        return client.build_request(
            port, method=self.method, path=self.path, body=b"x" * self.body_size, close=self.close
        )

    def wrk_request(self) -> wrk.WrkRequest:
        return wrk.WrkRequest(self.method, self.path, self.body_size, self.close)


HELLO = "hello"
SCENARIOS: list[Scenario] = [
    Scenario("hello-keepalive", HELLO, "hello world, 50 keep-alive connections", 50),
    Scenario("hello-close", HELLO,
             "hello world, 50 connections sending `Connection: close` (a new TCP connection "
             "per request)", 50, close=True),
    Scenario("hello-latency", HELLO, "hello world, 1 keep-alive connection: per-request latency",
             1),
    Scenario("fairness", HELLO,
             "hello world, 50 keep-alive clients tracked one by one (built-in client): how many "
             "were served at least once, and their latency", 50, fairness=True),
    Scenario("flask-keepalive", "flask",
             "Flask route returning JSON built from the query string, 50 keep-alive "
             "connections", 50, path="/items?a=1&b=two"),
    Scenario("stream-1mib", "stream",
             "1 MiB response streamed as 16 chunks of 64 KiB, 50 keep-alive connections", 50),
    Scenario("post-64kib", "echo",
             "POST of a 64 KiB body echoed back, 50 keep-alive connections", 50,
             method="POST", body_size=POST_BODY_SIZE),
]
SCENARIO_NAMES = [s.name for s in SCENARIOS]
STARTUP_SAMPLES = 5  # extra starts per server, hello and Flask (see measure_startup)


@dataclass(frozen=True)
class Options:
    workers: int
    duration_s: int
    repeat: int
    servers: list[str]
    scenarios: list[Scenario]
    load_tool: str  # "wrk" or "builtin"
    wrk_threads: int
    client_processes: int
    chart: bool
    micro: bool
    quick: bool
    results_dir: Path
    startup_samples: int = 0  # extra starts per server (hello, Flask), beyond one per repetition


# --- options --------------------------------------------------------------------


def _csv(choices: list[str]) -> Any:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown)}; choose from {', '.join(choices)}"
            )
        return names

    return parse


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark forkserve against gunicorn, uWSGI, waitress and granian.",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes per server")
    parser.add_argument("--duration", type=int, help="seconds per run (default 3; quick: 1)")
    parser.add_argument("--repeat", type=int,
                        help="interleaved repetitions (default 3; quick: 1)")
    parser.add_argument("--servers", type=_csv(list(servers.SERVERS)),
                        default=list(servers.SERVERS), help="comma-separated; default all")
    parser.add_argument("--scenarios", type=_csv(SCENARIO_NAMES), default=SCENARIO_NAMES,
                        help="comma-separated; default all")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 s per run, 1 repetition (about 2 minutes)")
    parser.add_argument("--chart", action="store_true",
                        help="also render benchmarks/results/latest.png (needs matplotlib)")
    parser.add_argument("--load", choices=["auto", "wrk", "builtin"], default="auto",
                        help="load generator; auto = wrk when installed")
    parser.add_argument("--wrk-threads", type=int, default=1,
                        help="wrk threads (default 1: leaves the cores to the servers)")
    parser.add_argument("--client-processes", type=int, default=2,
                        help="processes of the built-in load generator")
    parser.add_argument("--no-micro", action="store_true", help="skip the micro-benchmark")
    parser.add_argument("--startup-samples", type=int,
                        help="extra interleaved starts per server for the hello and Flask "
                             "apps, for the start-up medians (default 5; quick: 0)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.load == "wrk" and wrk.wrk_binary() is None:
        parser.error("--load wrk: wrk is not installed (apt-get install wrk)")
    load_tool = args.load if args.load != "auto" else ("wrk" if wrk.wrk_binary() else "builtin")
    duration = args.duration if args.duration is not None else (1 if args.quick else 3)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    startup_samples = (args.startup_samples if args.startup_samples is not None
                       else (0 if args.quick else STARTUP_SAMPLES))
    if duration < 1 or repeat < 1 or args.workers < 1 or startup_samples < 0:
        parser.error("--duration, --repeat and --workers must be at least 1, "
                     "--startup-samples at least 0")
    return Options(
        workers=args.workers,
        duration_s=duration,
        repeat=repeat,
        servers=args.servers,
        scenarios=[s for s in SCENARIOS if s.name in args.scenarios],
        load_tool=load_tool,
        wrk_threads=max(1, args.wrk_threads),
        client_processes=max(1, args.client_processes),
        chart=args.chart,
        micro=not args.no_micro,
        quick=args.quick,
        results_dir=args.results_dir,
        startup_samples=startup_samples,
    )


# --- measuring ------------------------------------------------------------------


def _load_record_from_wrk(numbers: dict[str, float], framing: str) -> Json:
    duration_s = numbers["duration_us"] / 1e6
    requests = int(numbers["requests"])
    read_errors = int(numbers["read"])
    extra: Json = {"wrk": numbers, "framing": framing}
    if framing == "close-delimited":
        # wrk counts the EOF that ends a close-delimited body (valid HTTP/1.1,
        # RFC 9112 section 6.3) as a read error, after counting the response
        # itself; up to one such "error" per request is the framing, not a failure.
        excused = min(read_errors, requests)
        read_errors -= excused
        extra["wrk_read_errors_from_framing"] = excused
    errors = int(numbers["connect"] + read_errors + numbers["write"] + numbers["timeout"])
    return _load_record(
        requests=requests,
        duration_s=duration_s,
        p50_ms=numbers["p50_us"] / 1000,
        p99_ms=numbers["p99_us"] / 1000,
        max_ms=numbers["max_us"] / 1000,
        errors=errors,
        non_2xx=int(numbers["status"]),
        extra=extra,
    )


def _load_record_from_client(result: client.ClientResult) -> Json:
    latencies = sorted(result.latencies_s)
    return _load_record(
        requests=result.completed,
        duration_s=result.duration_s,
        p50_ms=report.percentile(latencies, 50) * 1000,
        p99_ms=report.percentile(latencies, 99) * 1000,
        max_ms=max(latencies + result.pending_s, default=0.0) * 1000,
        errors=result.errors,
        non_2xx=result.non_200,
        extra={"reconnects": result.reconnects},
    )


def _load_record(
    *, requests: int, duration_s: float, p50_ms: float, p99_ms: float, max_ms: float,
    errors: int, non_2xx: int, extra: Json,
) -> Json:
    record: Json = {
        "rps": requests / duration_s if duration_s > 0 else 0.0,
        "requests": requests,
        "duration_s": duration_s,
        "p50_ms": p50_ms,
        "p99_ms": p99_ms,
        "max_ms": max_ms,
        "errors": errors,
        "non_2xx": non_2xx,
        **extra,
    }
    bad = errors + non_2xx
    if requests == 0:
        record.update(failed=True, reason="no request completed")
    elif bad > report.MAX_ERROR_SHARE * requests:
        record.update(failed=True, reason=f"{bad} errors in {requests} requests")
    else:
        record["failed"] = False
    return record


def measure_load(scenario: Scenario, port: int, opts: Options) -> Json:
    if opts.load_tool == "wrk":
        # One request first, to learn how the server frames this response.
        status, framing = client.fetch_once(port, scenario.request_bytes(port))
        if status != 200:
            return {"failed": True, "reason": f"probe request: status {status}, {framing}"}
        numbers = wrk.run_wrk(
            port, scenario.wrk_request(), connections=scenario.connections,
            duration_s=opts.duration_s, threads=opts.wrk_threads, script_dir=WORK_DIR,
        )
        return _load_record_from_wrk(numbers, framing)
    result = client.run_load(
        port, scenario.request_bytes(port), connections=scenario.connections,
        duration_s=opts.duration_s, processes=opts.client_processes,
    )
    return _load_record_from_client(result)


def measure_fairness(scenario: Scenario, port: int, opts: Options) -> Json:
    """One process, every client on its own socket, so each one's count is known."""
    result = client.run_client(
        port, scenario.request_bytes(port), connections=scenario.connections,
        duration_s=opts.duration_s,
    )
    latencies = sorted(result.latencies_s)
    served = sum(1 for count in result.served_per_conn if count > 0)
    record: Json = {
        "connections": scenario.connections,
        "served": served,
        "served_per_conn": result.served_per_conn,
        "rps": result.completed / result.duration_s if result.duration_s else 0.0,
        "requests": result.completed,
        "p50_ms": report.percentile(latencies, 50) * 1000,
        "p99_ms": report.percentile(latencies, 99) * 1000,
        # A client still waiting at the end has waited at least this long.
        "max_ms": max(latencies + result.pending_s, default=0.0) * 1000,
        "max_pending_ms": max(result.pending_s, default=0.0) * 1000,
        "errors": result.errors,
        "non_2xx": result.non_200,
        "reconnects": result.reconnects,
        "failed": served < scenario.connections,
    }
    if record["failed"]:
        record["reason"] = f"{scenario.connections - served} of {scenario.connections} starved"
    return record


def warm_up(scenario: Scenario, port: int) -> None:
    # First requests pay for lazy imports, page faults and caches; none of
    # that is what the runs measure.
    client.run_client(
        port, scenario.request_bytes(port), connections=WARM_UP_CONNECTIONS,
        duration_s=WARM_UP_S, max_requests=2000,
    )


# --- the suite ------------------------------------------------------------------


def new_raw(opts: Options) -> Json:
    return {
        "meta": machine_meta(opts),
        "servers": {},
        "scenarios": {
            s.name: {"kind": s.kind, "description": s.description, "app": s.app,
                     "connections": s.connections, "runs": {}}
            for s in opts.scenarios
        },
        "memory": {},
        "startup": {},
        "notes": [],
    }


def note(raw: Json, text: str) -> None:
    """Say it now and keep it in the results: nothing is skipped silently."""
    print(f"note: {text}", flush=True)
    raw["notes"].append(text)


def check_servers(opts: Options, raw: Json) -> list[servers.ServerSpec]:
    usable = []
    for name in opts.servers:
        spec = servers.SERVERS[name]
        reason = spec.missing()
        info: Json = {"note": spec.note, "command": spec.build("APP", 0, opts.workers)}
        if reason:
            info.update(status="skipped", reason=reason)
            note(raw, f"{name} skipped: {reason}")
        else:
            info.update(status="measured", version=spec.version())
            usable.append(spec)
        raw["servers"][name] = info
    return usable


def app_groups(scenarios: list[Scenario]) -> list[tuple[str, list[Scenario]]]:
    """Scenarios sharing an app run on one server start, in declaration order."""
    groups: dict[str, list[Scenario]] = {}
    for scenario in scenarios:
        groups.setdefault(scenario.app, []).append(scenario)
    return list(groups.items())


def run_suite(opts: Options, raw: Json) -> None:
    specs = check_servers(opts, raw)
    if opts.load_tool == "builtin":
        note(raw, "wrk not used: the built-in Python load generator is less precise "
             "(it competes with the servers for CPU); install wrk for real numbers")
    broken: set[tuple[str, str]] = set()
    for rep in range(opts.repeat):
        # Rotate who goes first so no server always runs right after the
        # same neighbour (e.g. after a Connection: close storm).
        order = specs[rep % len(specs):] + specs[: rep % len(specs)] if specs else []
        for app, scenarios in app_groups(opts.scenarios):
            for spec in order:
                if (spec.name, app) in broken:
                    continue
                if not run_block(spec, app, scenarios, rep, opts, raw):
                    broken.add((spec.name, app))
    measure_startup(specs, opts, raw, broken)
    if opts.micro:
        print("micro-benchmark (in-process request path)...", flush=True)
        raw["micro"] = micro.run_micro(quick=opts.quick)


def measure_startup(specs: list[servers.ServerSpec], opts: Options, raw: Json,
                    broken: set[tuple[str, str]]) -> None:
    """More start-to-first-200 samples: start, answer, stop, each server in turn.

    One start per repetition gives three samples, and on a noisy machine a
    third of a second moves by a tenth from one start to the next: enough to
    flip a target. These starts do nothing but start; only the apps the
    targets name get them.
    """
    for sample in range(opts.startup_samples if specs else 0):
        for app, scenarios in app_groups(opts.scenarios):
            label = scenarios[0].app_label
            if label not in report.MEMORY_TARGET_APPS:
                continue
            for spec in specs[sample % len(specs):] + specs[: sample % len(specs)]:
                if (spec.name, app) in broken:
                    continue
                try:
                    running = servers.start(spec, app, opts.workers, WORK_DIR)
                except servers.StartFailed:
                    continue  # the load repetitions already noted why
                try:
                    raw["startup"].setdefault(label, {}).setdefault(spec.name, []).append(
                        running.startup_s)
                finally:
                    servers.stop(running)
        print(f"start-up samples: {sample + 1}/{opts.startup_samples}", flush=True)


def run_block(
    spec: servers.ServerSpec, app: str, scenarios: list[Scenario], rep: int,
    opts: Options, raw: Json,
) -> bool:
    """Start one server with one app, run its scenarios, measure memory, stop it.

    False means: do not try this server with this app again.
    """
    label = scenarios[0].app_label
    try:
        running = servers.start(spec, app, opts.workers, WORK_DIR)
    except servers.StartFailed as exc:
        note(raw, f"{spec.name} did not start with {app} (repetition {rep + 1}), its {label} "
             f"runs are skipped: {exc}")
        for scenario in scenarios:
            _record(raw, scenario, spec.name, {"failed": True, "reason": "did not start"})
        # A quick exit costs nothing to retry next repetition (a tree being
        # edited may be fixed by then); a hang costs START_TIMEOUT_S each time.
        return not exc.timed_out
    try:
        raw["startup"].setdefault(label, {}).setdefault(spec.name, []).append(running.startup_s)
        warm_up(scenarios[0], running.port)
        for scenario in scenarios:
            record = _measure(scenario, running, opts)
            _record(raw, scenario, spec.name, record)
            _progress(rep, opts.repeat, scenario, spec.name, record)
            if running.popen.poll() is not None:
                note(raw, f"{spec.name} exited during {scenario.name}: "
                     f"{servers.log_tail(running.log_path)}")
                return False
        # After warm-up and the load runs: the steady-state size of each process.
        sample = servers.memory(running.pid)
        raw["memory"].setdefault(label, {}).setdefault(spec.name, []).append(sample)
    finally:
        if not servers.stop(running):
            note(raw, f"{spec.name} ignored SIGTERM for {servers.STOP_TIMEOUT_S:.0f}s; killed")
    return True


def _measure(scenario: Scenario, running: servers.Running, opts: Options) -> Json:
    try:
        if scenario.fairness:
            return measure_fairness(scenario, running.port, opts)
        return measure_load(scenario, running.port, opts)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return {"failed": True, "reason": f"load generator failed: {exc}"}


def _record(raw: Json, scenario: Scenario, server: str, record: Json) -> None:
    raw["scenarios"][scenario.name]["runs"].setdefault(server, []).append(record)


def _progress(rep: int, repeat: int, scenario: Scenario, server: str, record: Json) -> None:
    if record.get("rps") is None:
        detail = f"FAILED ({record.get('reason')})"
    else:
        detail = (f"{record['rps']:>9,.0f} req/s  p50 {record['p50_ms']:6.2f} ms  "
                  f"p99 {record['p99_ms']:7.2f} ms")
        if scenario.fairness:
            detail += f"  served {record['served']}/{record['connections']}"
        if record.get("failed"):
            detail += f"  FAILED ({record.get('reason')})"
    print(f"[{rep + 1}/{repeat}] {scenario.name:<16} {server:<17} {detail}", flush=True)


# --- machine description --------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gib() -> float:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1024 * 1024)
    except OSError:
        pass
    return 0.0


def _git_commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCH_DIR,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"


def machine_meta(opts: Options) -> Json:
    if opts.load_tool == "wrk":
        load = f"{wrk.wrk_version().split(' Copyright')[0]}, {opts.wrk_threads} thread(s)"
    else:
        load = f"built-in Python client, {opts.client_processes} processes (less precise)"
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_tool": load,
        "workers": opts.workers,
        "duration_s": opts.duration_s,
        "repeat": opts.repeat,
        "startup_samples": opts.startup_samples + opts.repeat,
        "quick": opts.quick,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": _git_commit(),
        "command": " ".join(["python -m benchmarks.run", *sys.argv[1:]]),
    }


# --- entry point ----------------------------------------------------------------


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Unwind through the `finally` blocks so the server being measured is
    # stopped and the partial results are still written.
    raise SystemExit(128 + signum)


def write_outputs(opts: Options, raw: Json) -> None:
    summary = report.summarize(raw)
    raw["summary"] = summary
    text = report.format_report(raw, summary)
    print("\n" + text)
    opts.results_dir.mkdir(parents=True, exist_ok=True)
    (opts.results_dir / "latest.json").write_text(json.dumps(raw, indent=1) + "\n")
    (opts.results_dir / "latest.md").write_text("# Benchmark run\n\n" + text)
    print(f"wrote {opts.results_dir / 'latest.json'} and latest.md")
    if opts.chart:
        problem = report.render_chart(raw, summary, opts.results_dir / "latest.png")
        print(problem or f"wrote {opts.results_dir / 'latest.png'}")


def compile_bytecode(raw: Json) -> None:
    """Byte-compile forkserve and the apps, as pip does for the installed peers.

    The peers run from site-packages with their .pyc files written at install
    time; forkserve and the apps run from this tree. Where
    PYTHONDONTWRITEBYTECODE is set (containers and CI often set it), nothing
    would ever write theirs, and every start would recompile from source:
    tens of milliseconds of start-up and extra memory that no installed
    forkserve pays. compileall writes the files whatever that variable says.
    """
    if not byte_compile(servers.REPO_ROOT):
        note(raw, "byte-compiling forkserve or the apps failed: start-up includes compiling")


def byte_compile(tree: Path) -> bool:
    """Write the .pyc files of `tree`'s forkserve and benchmarks; False if one failed."""
    return all(compileall.compile_dir(tree / name, quiet=1) for name in ("forkserve", "benchmarks"))


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    raw = new_raw(opts)
    compile_bytecode(raw)
    began = time.monotonic()
    completed = False
    try:
        run_suite(opts, raw)
        completed = True
    finally:
        raw["meta"]["elapsed_s"] = round(time.monotonic() - began, 1)
        if not completed:
            raw["notes"].append("run interrupted: partial results")
        write_outputs(opts, raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
