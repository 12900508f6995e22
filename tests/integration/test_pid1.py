"""forkserve as PID 1, as in a container: orphans reaped, TERM graceful, INT fast."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration.helpers import children, get, get_json, wait_for
from tests.support import Server

pytestmark = [pytest.mark.process, pytest.mark.integration]

UNSHARE = shutil.which("unshare")


def _can_unshare() -> bool:
    if UNSHARE is None:
        return False
    probe = subprocess.run([UNSHARE, "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True, timeout=10)
    return probe.returncode == 0


pytestmark.append(pytest.mark.skipif(not _can_unshare(), reason="needs unshare(1) and the "
                                     "right to create PID namespaces (root)"))


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _start(*args: str) -> tuple[Server, int]:
    """forkserve as PID 1 of a new PID namespace; returns it and the master's host pid."""
    assert UNSHARE is not None
    server = Server("deploy_apps:app", *args, wait_workers=1, command=[
        UNSHARE, "--pid", "--fork", "--mount-proc", sys.executable, "-m", "forkserve"])
    server.start()
    master = wait_for(lambda: [pid for pid, _ in children(server.pid)], what="the master")[0]
    return server, master


def test_orphans_are_reaped_and_term_is_graceful() -> None:
    server, master = _start("--workers", "2")
    with server:
        assert "Listening at: http://127.0.0.1:" in server.log
        assert get_json(server.address)["ppid"] == 1  # the master is PID 1 in there
        for _ in range(3):
            assert get_json(server.address, "/spawn?0.5")["path"] == "/spawn"
        # The shells exit at once: their `sleep`s are orphans, re-parented to PID 1...
        wait_for(lambda: [p for p, _ in children(master) if _comm(p) == "sleep"],
                 what="orphaned sleeps adopted by the master")
        # ... and once they exit, PID 1 must reap them, or they stay zombies.
        wait_for(lambda: not [p for p, st in children(master) if st == "Z" or
                              _comm(p) == "sleep"], what="no zombies under the master")
        os.kill(master, signal.SIGTERM)
        assert server.wait_exit() == 0  # unshare passes on the master's status
        assert "Shutting down: Master" in server.log
        assert children(server.pid) == []


def test_int_stops_fast_as_pid_1() -> None:
    server, master = _start("--graceful-timeout", "60")
    with server:
        result: list[object] = []

        def slow() -> None:
            try:
                result.append(get(server.address, "/slow?30", timeout=40))
            except OSError as exc:
                result.append(exc)

        client = threading.Thread(target=slow)
        client.start()
        time.sleep(0.5)  # the request is in the app now
        os.kill(master, signal.SIGINT)
        # Not the 60 s a graceful stop would allow the request: INT does not wait.
        assert server.wait_exit(timeout=15) == 0
        client.join(15)
        assert result and isinstance(result[0], OSError)
