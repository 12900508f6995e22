"""The servers under test: how to start each one, see it is up, measure and stop it.

Every server is started by this suite as a child in its own session (so its
process group id is its pid), on a free port of 127.0.0.1 and nowhere else,
with output going to a log file (a full pipe would stall a server). It is
stopped by pid: SIGTERM to the master, then SIGKILL to whatever is left of the
process group, so no worker outlives a run.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.client import HOST, get_status

REPO_ROOT = Path(__file__).resolve().parent.parent
GTHREAD_THREADS = 4  # a common gthread deployment; recorded in every result
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

CommandBuilder = Callable[[str, int, int], list[str]]


@dataclass(frozen=True)
class ServerSpec:
    """One server configuration: a name, how it runs, and why it is shaped so."""

    name: str
    note: str
    build: CommandBuilder
    missing: Callable[[], str | None]  # why it cannot run here, or None
    version: Callable[[], str]


def _module_missing(module: str, hint: str) -> Callable[[], str | None]:
    def check() -> str | None:
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        return None if found else f"{module} is not importable ({hint})"

    return check


def _dist_version(dist: str) -> Callable[[], str]:
    def version() -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "source tree" if dist == "forkserve" else "unknown"

    return version


def uwsgi_binary() -> str | None:
    """The uwsgi next to this Python first: the pip-built one embeds this interpreter."""
    beside = Path(sysconfig.get_path("scripts")) / "uwsgi"
    if beside.exists():
        return str(beside)
    return shutil.which("uwsgi")


def _uwsgi_missing() -> str | None:
    return None if uwsgi_binary() else "uwsgi binary not found (pip install uwsgi)"


def _uwsgi_version() -> str:
    binary = uwsgi_binary()
    if binary is None:
        return "unknown"
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return done.stdout.strip() or "unknown"


def _bind(port: int) -> str:
    return f"{HOST}:{port}"


# Each server runs through `python -m` where it can, never through a wrapper
# script (a pyenv shim adds a bash start-up to the measured start-up time).
PY = sys.executable

SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in [
        ServerSpec(
            name="forkserve",
            note="prefork sync workers; keep-alive connections parked in the worker's "
                 "selector; --http h11",
            build=lambda app, port, n: [
                PY, "-m", "forkserve", app, "--bind", _bind(port), "--workers", str(n),
                "--http", "h11",
            ],
            missing=_module_missing("forkserve.cli", "the server package is not written yet"),
            version=_dist_version("forkserve"),
        ),
        ServerSpec(
            name="forkserve-httptools",
            note="the same server with --http httptools (the fast extra)",
            build=lambda app, port, n: [
                PY, "-m", "forkserve", app, "--bind", _bind(port), "--workers", str(n),
                "--http", "httptools",
            ],
            missing=_module_missing("httptools", "pip install 'forkserve[fast]'"),
            version=_dist_version("httptools"),
        ),
        ServerSpec(
            name="gunicorn-sync",
            note="prefork sync workers; closes every connection after its response",
            build=lambda app, port, n: [
                PY, "-m", "gunicorn", app, "--bind", _bind(port), "--workers", str(n),
                "--worker-class", "sync",
            ],
            missing=_module_missing("gunicorn", "pip install gunicorn"),
            version=_dist_version("gunicorn"),
        ),
        ServerSpec(
            name="gunicorn-gthread",
            note=f"prefork, {GTHREAD_THREADS} threads per worker; keeps connections alive",
            build=lambda app, port, n: [
                PY, "-m", "gunicorn", app, "--bind", _bind(port), "--workers", str(n),
                "--worker-class", "gthread", "--threads", str(GTHREAD_THREADS),
            ],
            missing=_module_missing("gunicorn", "pip install gunicorn"),
            version=_dist_version("gunicorn"),
        ),
        ServerSpec(
            name="uwsgi",
            note="C server: --master, N processes, --http-socket (closes after each response)",
            build=lambda app, port, n: [
                uwsgi_binary() or "uwsgi", "--http-socket", _bind(port),
                "--master", "--processes", str(n), "--module", app,
                "--pythonpath", str(REPO_ROOT),
                # uWSGI logs every request by default; the others do not.
                "--disable-logging",
                # uWSGI 2.0 treats SIGTERM as "reload" unless told otherwise.
                "--die-on-term",
                # --http-socket closes after every response but answers
                # HTTP/1.1 without saying so; wrk then counts a read error for
                # each request. The header tells clients what happens anyway.
                "--add-header", "Connection: close",
                "--need-app",
            ],
            missing=_uwsgi_missing,
            version=_uwsgi_version,
        ),
        ServerSpec(
            name="waitress",
            note="one process with N threads (no worker processes), asyncore-style I/O loop",
            build=lambda app, port, n: [
                PY, "-m", "waitress", f"--host={HOST}", f"--port={port}", f"--threads={n}", app,
            ],
            missing=_module_missing("waitress", "pip install waitress"),
            version=_dist_version("waitress"),
        ),
        ServerSpec(
            name="h11-floor",
            note="reference, not a server: N forked children, a selectors loop, h11 and a "
                 "minimal environ; no checks, limits or timeouts (benchmarks/h11_floor.py)",
            build=lambda app, port, n: [
                PY, "-m", "benchmarks.h11_floor", app, "--port", str(port), "--workers", str(n),
            ],
            missing=_module_missing("h11", "pip install h11"),
            version=_dist_version("h11"),
        ),
        ServerSpec(
            name="httptools-floor",
            note="reference, not a server: the h11 floor's loop with httptools parsing "
                 "(benchmarks/httptools_floor.py)",
            build=lambda app, port, n: [
                PY, "-m", "benchmarks.httptools_floor", app, "--port", str(port),
                "--workers", str(n),
            ],
            missing=_module_missing("httptools", "pip install httptools"),
            version=_dist_version("httptools"),
        ),
        ServerSpec(
            name="bjoern",
            note="C ceiling: libev loop and C HTTP parsing in one process per worker, forked "
                 "by benchmarks/bjoern_run.py (bjoern has no prefork of its own)",
            build=lambda app, port, n: [
                PY, "-m", "benchmarks.bjoern_run", app, "--port", str(port), "--workers", str(n),
            ],
            missing=_module_missing("bjoern", "apt-get install libev-dev; pip install bjoern"),
            version=_dist_version("bjoern"),
        ),
        ServerSpec(
            name="granian",
            note="Rust HTTP I/O (hyper/tokio), N worker processes running the WSGI app",
            build=lambda app, port, n: [
                PY, "-m", "granian", "--interface", "wsgi", "--workers", str(n),
                "--host", HOST, "--port", str(port), app,
            ],
            missing=_module_missing("granian", "pip install granian"),
            version=_dist_version("granian"),
        ),
    ]
}


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (free unless raced)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class StartFailed(Exception):
    """The server exited or never answered 200; the message carries its log tail."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


@dataclass
class Running:
    """A started server: its master pid, port and how long it took to answer."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path
    startup_s: float

    @property
    def pid(self) -> int:
        return self.popen.pid


def _server_env(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The apps (and a not-yet-installed forkserve) import from the tree's root.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(tree), env.get("PYTHONPATH", "")] if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


def log_tail(path: Path) -> str:
    """The last line of a server's log (the exception, usually) and where the rest is."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        lines = []
    last = lines[-1].strip() if lines else "(empty log)"
    return f"{last} (log: {path})"


def start(spec: ServerSpec, app: str, workers: int, log_dir: Path,
          tree: Path = REPO_ROOT, extra_args: Sequence[str] = (),
          tls: ssl.SSLContext | None = None) -> Running:
    """Start `spec` serving `app` and wait for the first 200; time it from the spawn.

    `tree` is the checkout the apps (and forkserve, run with `-m` from there)
    come from: another one for `benchmarks.ab`, which may also add `extra_args`
    to the command line (`--metrics-bind ...` against none). `tls`: the
    client context to reach a server that `extra_args` made serve HTTPS.
    """
    port = free_port()
    log_path = log_dir / f"{spec.name}-{port}.log"
    command = [*spec.build(app, port, workers), *extra_args]
    with open(log_path, "wb") as log:
        began = time.perf_counter()
        popen = subprocess.Popen(
            command,
            cwd=tree,
            env=_server_env(tree),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, to stop it whole
        )
    running = Running(spec.name, popen, port, log_path, startup_s=0.0)
    try:
        running.startup_s = _wait_ready(running, began, tls)
    except BaseException:
        stop(running)
        raise
    return running


def _wait_ready(running: Running, began: float, tls: ssl.SSLContext | None = None) -> float:
    deadline = began + START_TIMEOUT_S
    while time.perf_counter() < deadline:
        if running.popen.poll() is not None:
            raise StartFailed(
                f"exited with code {running.popen.returncode}: {log_tail(running.log_path)}"
            )
        status = get_status(running.port, timeout_s=1.0, tls=tls)
        if status == 200:
            return time.perf_counter() - began
        # Short naps: start-up is measured to the first 200, so the polling
        # interval bounds its error.
        time.sleep(0.005)
    raise StartFailed(
        f"no 200 within {START_TIMEOUT_S:.0f}s: {log_tail(running.log_path)}", timed_out=True
    )


def stop(running: Running) -> bool:
    """SIGTERM the master, wait, then SIGKILL the process group; True if it stopped cleanly."""
    clean = True
    try:
        os.kill(running.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        running.popen.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        clean = False
    # Sweep the group: workers of a master that died or hung go too.
    _kill_group(running.pid)
    if running.popen.poll() is None:
        running.popen.wait(timeout=STOP_TIMEOUT_S)
    return clean


def _kill_group(pgid: int) -> None:
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return  # nobody left in the group
        except PermissionError:
            return
        time.sleep(0.02)


# --- memory, from /proc -------------------------------------------------------


def _status_kib(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _pss_kib(pid: int) -> int | None:
    # PSS splits pages shared by copy-on-write between the processes that
    # share them, so the sum over a prefork tree is its real footprint
    # (summing RSS counts the shared pages once per worker).
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # Field 4 is the ppid; split after the ")" closing the command name,
        # which may itself hold spaces or parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return sorted(kids)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return "?"


def memory(pid: int) -> dict[str, object]:
    """VmRSS and PSS of the master and each child process, in KiB."""
    children = [
        {"pid": kid, "comm": _comm(kid), "rss_kib": _status_kib(kid, "VmRSS"),
         "pss_kib": _pss_kib(kid)}
        for kid in _children(pid)
    ]
    master_rss = _status_kib(pid, "VmRSS")
    master_pss = _pss_kib(pid)
    pss_values = [master_pss] + [c["pss_kib"] for c in children]
    return {
        "master_rss_kib": master_rss,
        "master_pss_kib": master_pss,
        "children": children,
        "total_pss_kib": sum(v for v in pss_values if isinstance(v, int)),
    }
