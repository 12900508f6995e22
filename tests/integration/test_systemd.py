"""systemd: socket activation with the real systemd-socket-activate, and sd_notify messages."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration.helpers import end, free_port, get, get_json, wait_for
from tests.support import REPO, TESTS, serve

pytestmark = [pytest.mark.process, pytest.mark.integration]

ACTIVATE = shutil.which("systemd-socket-activate")


def _fd_inode(pid: int, fd: int) -> str:
    return os.readlink(f"/proc/{pid}/fd/{fd}")


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate (Debian: systemd) "
                    "is not installed")
def test_socket_activation_serves_on_the_passed_socket_across_hup(tmp_path: Path) -> None:
    assert ACTIVATE is not None
    port = free_port()
    log_path = tmp_path / "log"
    log = open(log_path, "wb")
    pythonpath = f"{REPO}{os.pathsep}{TESTS / 'apps'}"
    # --bind names a port nobody listens on: the passed socket must win over it.
    proc = subprocess.Popen(
        [ACTIVATE, "-l", f"127.0.0.1:{port}", "--fdname=web", "-E", f"PYTHONPATH={pythonpath}",
         sys.executable, "-m", "forkserve", "deploy_apps:app", "--workers", "2",
         "--bind", "127.0.0.1:1"],
        cwd=TESTS / "apps", stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for(lambda: b"Listening on" in log_path.read_bytes(), what="activator listening")
        # The first connection makes the activator exec forkserve in its place
        # (same pid), with the listening socket as fd 3 and LISTEN_FDNAMES=web.
        seen = get_json(("127.0.0.1", port), timeout=20)
        assert seen["ppid"] == proc.pid
        text = log_path.read_text()
        assert "Using 1 socket(s) passed by systemd" in text
        assert f"Listening at: http://127.0.0.1:{port}" in text
        before = _fd_inode(proc.pid, 3)
        assert before.startswith("socket:")
        old_workers = {get_json(("127.0.0.1", port))["pid"] for _ in range(6)}

        failures: list[BaseException] = []
        served = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                try:
                    served.append(get_json(("127.0.0.1", port))["pid"])
                except BaseException as exc:  # noqa: BLE001 - reported below
                    failures.append(exc)

        client = threading.Thread(target=hammer)
        client.start()
        try:
            os.kill(proc.pid, signal.SIGHUP)
            wait_for(lambda: set(served[-4:]).isdisjoint(old_workers) and len(served) > 4,
                     timeout=20, what="the new generation serving")
        finally:
            stop.set()
            client.join(10)
        assert failures == []  # not one connection refused or reset during the reload
        assert _fd_inode(proc.pid, 3) == before  # the same listening socket throughout
        assert end(proc) == 0
    finally:
        if proc.poll() is None:
            end(proc, signal.SIGKILL)
        log.close()


class NotifyListener:
    """The systemd side of sd_notify: a unix datagram socket, messages with arrival times."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []

    def poll(self) -> list[tuple[float, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return self.messages
            self.messages.append((time.monotonic(), data.decode()))

    def wait(self, prefix: str, count: int = 1, timeout: float = 20.0) -> float:
        """Arrival time of the `count`th message starting with `prefix`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = [t for t, m in self.poll() if m.startswith(prefix)]
            if len(hits) >= count:
                return hits[count - 1]
        raise AssertionError(f"no {prefix!r} #{count} in {timeout}s: {self.messages}")


def test_sd_notify_sequence_for_start_hup_and_term(tmp_path: Path) -> None:
    listener = NotifyListener(tmp_path / "notify.sock")
    boot = 1.0
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "DEPLOY_BOOT_SECONDS": str(boot),
           "WATCHDOG_USEC": "1000000"}
    started = time.monotonic()
    with serve("deploy_slow_boot:app", "--workers", "2", env=env) as s:
        ready = listener.wait("READY=1")
        # READY=1 only once every worker imported the app (which takes `boot`
        # seconds) and serves: a request sent now is answered at once.
        assert ready - started >= boot
        assert get(s.address, "/", timeout=boot / 2)[0] == 200
        s.send_signal(signal.SIGHUP)
        reloading = listener.wait("RELOADING=1")
        ready_again = listener.wait("READY=1", count=2)
        assert ready_again - reloading >= boot  # the new generation imported first
        time.sleep(0.6)  # one more loop turn: a STATUS line with the request count
        assert s.stop() == 0
        listener.wait("STOPPING=1")
    state = [m for _, m in listener.poll() if not m.startswith(("STATUS=", "WATCHDOG=1"))]
    usec = state[1].split("\n")[1]
    assert usec.startswith("MONOTONIC_USEC=")
    # The clock is the one systemd reads: CLOCK_MONOTONIC, in microseconds.
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 < now_usec - int(usec.split("=")[1]) < 60_000_000
    assert state == [
        f"READY=1\nMAINPID={s.pid}",
        f"RELOADING=1\n{usec}",
        f"READY=1\nMAINPID={s.pid}",
        "STOPPING=1",
    ]
    statuses = [m for _, m in listener.messages if m.startswith("STATUS=")]
    assert statuses[0] == "STATUS=Starting workers: 0 of 2 serving"
    assert any(m.startswith("STATUS=Serving: 2 workers, ") for m in statuses)
    assert statuses[-1] == "STATUS=Stopping"
    # WATCHDOG_USEC=1s: a ping at least every half second while it ran (> 3s).
    pings = [t for t, m in listener.messages if m == "WATCHDOG=1"]
    assert len(pings) >= 4
    listener.sock.close()


def test_no_watchdog_pings_for_another_process(tmp_path: Path) -> None:
    listener = NotifyListener(tmp_path / "notify.sock")
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "200000",
           "WATCHDOG_PID": "1"}
    with serve("deploy_apps:app", env=env):
        listener.wait("READY=1")
        time.sleep(0.6)
    assert not [m for _, m in listener.poll() if m == "WATCHDOG=1"]
    listener.sock.close()


def test_new_master_announces_mainpid_after_usr2(tmp_path: Path) -> None:
    listener = NotifyListener(tmp_path / "notify.sock")
    with serve("deploy_apps:app", env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}) as s:
        listener.wait("READY=1")
        s.send_signal(signal.SIGUSR2)
        listener.wait("READY=1", count=2)
        ready = [m for _, m in listener.poll() if m.startswith("READY=1")]
        new_master = int(ready[1].split("MAINPID=")[1])
        assert ready[0] == f"READY=1\nMAINPID={s.pid}"
        assert new_master != s.pid  # systemd now follows the upgraded master
        os.kill(new_master, signal.SIGTERM)
    listener.sock.close()
