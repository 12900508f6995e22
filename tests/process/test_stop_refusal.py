"""A full stop closes the door first: no connection enters a backlog that is about to close.

On TERM each worker accepts what is queued, then closes its copy of the
listening socket. A connection the kernel completed after that waited in the
backlog until the last copy closed and was then reset, after its client had
sent a request into it (issue 11). Now the master makes the sockets it bound
refuse new connections before it signals the workers (docs/signals.md, "What
happens to connections on a stop"), and never touches sockets that outlive it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.helpers import end, get_json, wait_for
from tests.process.lifecycle_support import alive, booted_pids, wait_until
from tests.support import REPO, TESTS, Server

pytestmark = pytest.mark.process

APP = "lifecycle_apps:app"
GET = b"GET /pid HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
SLOW_S = 2.5  # the request the only worker is in while the stop drains
# A connect(2) that does not complete within this is a client kept out: the
# kernel drops its SYNs while the port is closing, then refuses it.
CONNECT_TIMEOUT_S = 6.0

# What a client saw. KEPT_OUT and ANSWERED are the two acceptable outcomes: a
# request either reached a worker and was answered, or it was never sent.
ANSWERED = "answered"
KEPT_OUT = "kept out (refused or no connection)"


def fetch_after_connect(address: str | tuple[str, int], before_send: threading.Event | None
                        = None, family: int = socket.AF_INET) -> str:
    """Connect, then (after `before_send`, if given) send a GET and read to EOF: the outcome."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT_S)
    try:
        try:
            sock.connect(address)
        except (ConnectionRefusedError, FileNotFoundError, TimeoutError):
            return KEPT_OUT
        if before_send is not None:
            before_send.wait(20)
        try:
            sock.sendall(GET)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        except OSError as exc:
            return f"request sent, then {type(exc).__name__}"
        if data.startswith(b"HTTP/1.1 200 "):
            return ANSWERED
        return f"request sent, then EOF after {len(data)} bytes"
    finally:
        sock.close()


def slow_request(address: str | tuple[str, int], family: int, result: dict[str, bytes],
                 done: threading.Event) -> None:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(20)
    try:
        sock.connect(address)
        sock.sendall(f"GET /slow?{SLOW_S} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
            data += chunk
        result["head"] = data
    finally:
        sock.close()
        done.set()


def drain_with_clients(stop: Callable[[], None], address: str | tuple[str, int],
                       family: int) -> tuple[Counter[str], Counter[str], bytes]:
    """The only worker is in a slow request; TERM; clients arrive during the drain.

    Returns what the clients that send right after connecting saw, what the
    late clients saw (connected shortly before the slow request ends, their
    request sent only after it ended, when the worker has made its last
    accepts), and the slow request's response head.
    """
    slow: dict[str, bytes] = {}
    slow_done = threading.Event()
    started = time.monotonic()
    threading.Thread(target=slow_request, args=(address, family, slow, slow_done),
                     daemon=True).start()
    time.sleep(0.4)  # the only worker is inside the app
    stop()  # TERM to the master
    time.sleep(0.2)  # the master has had its turn: the drain is on
    prompt: Counter[str] = Counter()
    late: Counter[str] = Counter()
    lock = threading.Lock()
    after_slow = threading.Event()

    def prompt_clients() -> None:
        while not slow_done.is_set():
            outcome = fetch_after_connect(address, family=family)
            with lock:
                prompt[outcome] += 1
            time.sleep(0.05)

    def late_client() -> None:
        # Connected 0.6 s before the slow request ends: under TCP_DEFER_ACCEPT
        # the kernel keeps such a connection out of the accept queue until its
        # first bytes come (or about 1 s, its SYN-ACK retransmission), so the
        # worker's last accepts cannot see it.
        time.sleep(max(0.0, started + SLOW_S - 0.6 - time.monotonic()))
        outcome = fetch_after_connect(address, before_send=after_slow, family=family)
        with lock:
            late[outcome] += 1

    threads = [threading.Thread(target=prompt_clients, daemon=True) for _ in range(3)]
    threads += [threading.Thread(target=late_client, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    assert slow_done.wait(20)
    time.sleep(0.3)  # the worker has accepted what it will ever accept, and closed
    after_slow.set()
    for t in threads:
        t.join(20)
    return prompt, late, slow.get("head", b"")


@pytest.mark.usefixtures("worker_threads")  # sync, then --threads 4
def test_term_lets_no_connection_into_the_closing_backlog_tcp() -> None:
    s = Server(APP, "--workers", "1", "--graceful-timeout", "10", wait_workers=1).start()
    try:
        prompt, late, slow_head = drain_with_clients(
            lambda: s.send_signal(signal.SIGTERM), s.address, socket.AF_INET)
        assert slow_head.startswith(b"HTTP/1.1 200 "), slow_head
        assert set(prompt) <= {ANSWERED, KEPT_OUT}, prompt
        # Before: both late clients connected, sent their request after the
        # worker's last accept, and were reset when the port closed.
        assert late == Counter({KEPT_OUT: 2}), late
        assert s.wait_exit(15) == 0
        assert "not refused during the stop" not in s.log
    finally:
        s.kill()


@pytest.mark.usefixtures("worker_threads")  # sync, then --threads 4
def test_term_serves_a_handshake_that_was_under_way_when_the_stop_began() -> None:
    # A client far away: its connection was accepted by the kernel (SYN-ACK)
    # just before the stop, and its request arrives a round trip later. The
    # idle worker used to make its last accept at once and close the port;
    # the request then met a reset.
    s = Server(APP, "--workers", "1", "--graceful-timeout", "10", wait_workers=1).start()
    try:
        client = socket.create_connection(s.address, timeout=10)
        try:
            time.sleep(0.05)
            s.send_signal(signal.SIGTERM)
            time.sleep(0.2)  # the client's round trip
            client.sendall(GET)
            data = b""
            while chunk := client.recv(65536):
                data += chunk
        finally:
            client.close()
        assert data.startswith(b"HTTP/1.1 200 "), data[:80]
        assert s.wait_exit(15) == 0
        assert "TCP handshake(s) under way" in s.log
    finally:
        s.kill()

@pytest.mark.usefixtures("worker_threads")  # sync, then --threads 4
def test_term_refuses_new_connections_at_once_on_a_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "fs.sock")
    s = Server(APP, "--workers", "1", "--graceful-timeout", "10", bind=[f"unix:{path}"],
               wait_workers=1).start()
    try:
        prompt, late, slow_head = drain_with_clients(
            lambda: s.send_signal(signal.SIGTERM), path, socket.AF_UNIX)
        assert slow_head.startswith(b"HTTP/1.1 200 "), slow_head
        assert set(prompt) <= {ANSWERED, KEPT_OUT}, prompt
        # A unix connect has no handshake to drop: the kernel refuses it at
        # once. (Before, each was queued until the worker's last accepts: one
        # queued just after them was reset when the port closed.)
        assert prompt[KEPT_OUT] >= 3 and late == Counter({KEPT_OUT: 2}), (prompt, late)
        assert s.wait_exit(15) == 0
    finally:
        s.kill()


def test_after_a_usr2_upgrade_the_new_master_closes_the_door_on_its_own_stop(
        tmp_path: Path) -> None:
    # The sockets the old master bound pass to the new one as its own: once
    # the old master is gone, the new master's stop keeps clients out of the
    # closing backlog just the same. (While both run, neither touches them:
    # tests/process/test_signals.py and test_keepalive.py, USR2 then TERM.)
    pidfile = tmp_path / "fs.pid"
    s = Server(APP, "--workers", "1", "--graceful-timeout", "10", "--pid", str(pidfile),
               wait_workers=1).start()
    try:
        s.send_signal(signal.SIGUSR2)
        wait_until(lambda: len(booted_pids(s.log)) >= 2, what="the new master's worker")
        new_master = int(pidfile.read_text())
        s.send_signal(signal.SIGTERM)  # the old master: its worker drains, it exits
        assert s.wait_exit(15) == 0
        s.wait_for_log(r"The old master \(pid \d+\) is gone")
        prompt, late, slow_head = drain_with_clients(
            lambda: os.kill(new_master, signal.SIGTERM), s.address, socket.AF_INET)
        assert slow_head.startswith(b"HTTP/1.1 200 "), slow_head
        assert set(prompt) <= {ANSWERED, KEPT_OUT}, prompt
        assert late == Counter({KEPT_OUT: 2}), late
        wait_until(lambda: not alive(new_master), what="the new master exits")
        assert "not refused during the stop" not in s.log
    finally:
        s.kill()

# Plays systemd (or any parent passing a socket): puts the inherited socket at
# fd 3 and names this process in LISTEN_PID, then becomes forkserve.
SYSTEMD_SHIM = (
    "import os, sys\n"
    "os.dup2(int(sys.argv[1]), 3)\n"
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'forkserve', *sys.argv[2:]])\n"
)


@pytest.mark.parametrize("how", ["systemd", "fd-tcp", "fd-unix"])
def test_a_passed_socket_still_takes_connections_after_forkserve_stops(
        how: str, tmp_path: Path) -> None:
    # systemd keeps a socket-activated socket for the service's next start;
    # a parent passing fd://N keeps its copy too. Neither may be left refusing
    # connections by a stop: the one who passed it accepts on it afterwards.
    if how == "fd-unix":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: str | tuple[str, int] = str(tmp_path / "passed.sock")
        listener.bind(address)
    else:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        address = listener.getsockname()
    listener.listen(16)
    fd = listener.fileno()
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{TESTS / 'apps'}")
    if how == "systemd":
        argv = [sys.executable, "-c", SYSTEMD_SHIM, str(fd), "deploy_apps:app"]
    else:
        argv = [sys.executable, "-m", "forkserve", "deploy_apps:app", "--bind", f"fd://{fd}"]
    log_path = tmp_path / "log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, pass_fds=[fd], cwd=TESTS / "apps", env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: b"Booted worker" in log_path.read_bytes(), timeout=20, what="boot")
        if how == "systemd":
            assert b"Using 1 socket(s) passed by systemd" in log_path.read_bytes()
        assert get_json(address)["path"] == "/"
        assert end(proc) == 0
        family = socket.AF_UNIX if how == "fd-unix" else socket.AF_INET
        client = socket.socket(family, socket.SOCK_STREAM)
        client.settimeout(5)
        try:
            client.connect(address)  # a refusal or a timeout here: the stop left it closed
            client.sendall(b"hello")  # (forkserve set TCP_DEFER_ACCEPT on it: bytes first)
            listener.settimeout(5)
            conn, _peer = listener.accept()
            with conn:
                conn.settimeout(5)
                assert conn.recv(5) == b"hello"
        finally:
            client.close()
    finally:
        if proc.poll() is None:
            end(proc, signal.SIGKILL)
        listener.close()
