"""Small clients and process helpers shared by the integration tests."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket (what nginx does with `server unix:...`)."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def get(target: str | tuple[str, int], path: str = "/", method: str = "GET",
        headers: dict[str, str] | None = None, source: str | None = None,
        timeout: float = 5.0) -> tuple[int, bytes, dict[str, str]]:
    """One request; `target` is a unix socket path or (host, port)."""
    conn: http.client.HTTPConnection
    if isinstance(target, str):
        conn = UnixHTTPConnection(target, timeout)
    else:
        conn = http.client.HTTPConnection(
            target[0], target[1], timeout=timeout,
            source_address=(source, 0) if source else None,
        )
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def get_json(target: str | tuple[str, int], path: str = "/", **kw: Any) -> dict[str, Any]:
    status, body, _ = get(target, path, **kw)
    assert status == 200, (status, body)
    data: dict[str, Any] = json.loads(body)
    return data


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process from /proc, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, state) of every process whose parent is `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = proc_stat(int(entry.name))
            if st and st[1] == pid:
                out.append((int(entry.name), st[0]))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def end(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
    """Stop a helper process we started, by pid; SIGKILL its group if it lingers."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait(5)
        raise
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything it left in its session
        except (ProcessLookupError, PermissionError):
            pass
