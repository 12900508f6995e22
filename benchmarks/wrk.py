"""Run wrk for one scenario and read its numbers back as JSON.

wrk's text report rounds and changes units ("1.23ms", "45.6us"); a Lua `done`
hook prints exact microseconds instead, on one line with a marker. The same
script sets the method, body and `Connection: close` header, which wrk's
command line cannot.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchmarks.client import HOST

MARKER = "WRKJSON "
TIMEOUT_S = 5  # per request; a slower answer counts as a wrk timeout error

_DONE_HOOK = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "mean_us": %.1f}\\n',
    "{marker}", summary.requests, summary.duration, summary.bytes, e.connect, e.read,
    e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass(frozen=True)
class WrkRequest:
    """What every request of a run looks like."""

    method: str = "GET"
    path: str = "/"
    body_size: int = 0
    close: bool = False


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def wrk_version() -> str:
    binary = wrk_binary()
    if binary is None:
        return "not installed"
    # wrk has no --version; its usage text starts with the version line.
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0] if first else "unknown"


def lua_script(request: WrkRequest) -> str:
    lines = [f'wrk.method = "{request.method}"', f'wrk.path = "{request.path}"']
    if request.body_size:
        # A body of the right size is all the echo app needs; its content is
        # irrelevant, and string.rep builds it once, not per request.
        lines.append(f'wrk.body = string.rep("x", {request.body_size})')
        lines.append('wrk.headers["Content-Type"] = "application/octet-stream"')
    if request.close:
        lines.append('wrk.headers["Connection"] = "close"')
    return "\n".join(lines) + "\n" + _DONE_HOOK.replace("{marker}", MARKER)


def run_wrk(
    port: int,
    request: WrkRequest,
    *,
    connections: int,
    duration_s: int,
    threads: int,
    script_dir: Path,
) -> dict[str, float]:
    """One wrk run; returns its JSON numbers (latencies in µs) or raises RuntimeError."""
    binary = wrk_binary()
    if binary is None:
        raise RuntimeError("wrk is not installed")
    script = script_dir / f"wrk-{request.method.lower()}-{request.body_size}-{request.close}.lua"
    script.write_text(lua_script(request))
    command = [
        binary,
        f"--threads={min(threads, connections)}",
        f"--connections={connections}",
        f"--duration={duration_s}s",
        f"--timeout={TIMEOUT_S}s",
        f"--script={script}",
        f"http://{HOST}:{port}{request.path}",
    ]
    # wrk stops itself after --duration; the timeout is a backstop for a hang.
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 30)
    for line in done.stdout.splitlines():
        if line.startswith(MARKER):
            parsed: dict[str, float] = json.loads(line[len(MARKER) :])
            return parsed
    raise RuntimeError(f"wrk gave no result (exit {done.returncode}): {done.stderr.strip()}")
