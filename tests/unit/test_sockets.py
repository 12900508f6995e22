"""Listener.refuse_new_connections against this kernel, on loopback sockets (no server).

What a full stop relies on (forkserve.sockets, docs/signals.md): what is
queued stays acceptable, a handshake under way completes, a new one does not.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import sys
import time
from pathlib import Path

import pytest

from forkserve import sockets
from forkserve.sockets import bind_one

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="socket filters and unix shutdown semantics are Linux's")


def accept_all(listener: socket.socket) -> list[bytes]:
    """Every queued connection's first bytes (accepted without blocking)."""
    listener.setblocking(False)
    seen = []
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return seen
        with conn:
            conn.settimeout(2)
            seen.append(conn.recv(100))


def test_tcp_queued_and_half_done_connections_stay_and_new_ones_are_kept_out() -> None:
    listener = bind_one("127.0.0.1:0", 16)
    address = listener.sock.getsockname()
    queued = socket.create_connection(address, timeout=2)
    queued.sendall(b"queued")
    # Connected from the client's side, nothing sent yet: under TCP_DEFER_ACCEPT
    # the kernel still holds it as a handshake in progress, outside the queue.
    under_way = socket.create_connection(address, timeout=2)
    time.sleep(0.05)
    late = socket.socket()
    try:
        assert listener.refuse_new_connections() == ""
        under_way.sendall(b"under way")  # its first segment after the filter: passes
        late.setblocking(False)
        assert late.connect_ex(address) == errno.EINPROGRESS
        # The new SYN is dropped: no answer, the client keeps retransmitting.
        assert select.select([], [late], [], 0.5)[1] == []
        time.sleep(0.05)
        assert sorted(accept_all(listener.sock)) == [b"queued", b"under way"]
        listener.close()
        # The port has closed: the retransmitted SYN is refused (about 1 s in).
        assert select.select([], [late], [], 5)[1] == [late]
        assert late.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
    finally:
        for sock in (queued, under_way, late):
            sock.close()
        listener.close()


def test_connections_accepted_after_the_filter_inherit_it_harmlessly() -> None:
    # Linux copies the listener's filter to each connection it completes; ours
    # drops only a SYN without ACK, which an established connection never needs.
    listener = bind_one("127.0.0.1:0", 16)
    under_way = socket.create_connection(listener.sock.getsockname(), timeout=2)
    try:
        time.sleep(0.05)
        assert listener.refuse_new_connections() == ""
        under_way.sendall(b"one")
        listener.sock.settimeout(2)
        conn, _ = listener.sock.accept()
        with conn:
            conn.settimeout(2)
            assert conn.recv(3) == b"one"
            under_way.sendall(b"two")
            assert conn.recv(3) == b"two"
            conn.sendall(b"back")
            assert under_way.recv(4) == b"back"
    finally:
        under_way.close()
        listener.close()


def test_unix_new_connects_are_refused_and_the_queued_ones_stay(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    listener = bind_one(f"unix:{path}", 16)
    queued = socket.socket(socket.AF_UNIX)
    late = socket.socket(socket.AF_UNIX)
    try:
        queued.connect(path)
        queued.sendall(b"queued")
        assert listener.refuse_new_connections() == ""
        with pytest.raises(ConnectionRefusedError):
            late.connect(path)
        assert accept_all(listener.sock) == [b"queued"]
    finally:
        queued.close()
        late.close()
        listener.close()


def test_where_it_cannot_refuse_it_says_why_and_changes_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sockets.sys, "platform", "darwin")
    listener = bind_one("127.0.0.1:0", 16)
    try:
        assert listener.refuse_new_connections() == "needs Linux"
        with socket.create_connection(listener.sock.getsockname(), timeout=2) as client:
            client.sendall(b"still open")
            listener.sock.settimeout(2)
            conn, _ = listener.sock.accept()
            conn.close()
    finally:
        listener.close()


def test_only_sockets_bound_here_are_ours_to_refuse() -> None:
    passed = socket.socket()
    passed.bind(("127.0.0.1", 0))
    passed.listen(4)
    listeners = [bind_one("127.0.0.1:0", 16),
                 bind_one(f"fd://{os.dup(passed.fileno())}", 16),  # from a parent
                 # From an old master (USR2): bound by it, then passed in by it.
                 *sockets.adopt_fds([(os.dup(passed.fileno()), True),
                                     (os.dup(passed.fileno()), False)])]
    try:
        assert [listener.owned for listener in listeners] == [True, False, True, False]
        assert sockets.reexec_fds(listeners[:2]) == (
            f"+{listeners[0].sock.fileno()},{listeners[1].sock.fileno()}")
    finally:
        for listener in listeners:
            listener.close()
        passed.close()


def test_handshakes_under_way_counts_the_unfinished_ones_on_the_port() -> None:
    listener = bind_one("127.0.0.1:0", 16)
    port = listener.sock.getsockname()[1]
    other = bind_one("127.0.0.1:0", 16)
    clients = []
    try:
        assert sockets.handshakes_under_way({port}) == 0
        # Under TCP_DEFER_ACCEPT a connection without bytes stays a handshake.
        clients = [socket.create_connection(listener.sock.getsockname(), timeout=2)
                   for _ in range(2)]
        clients.append(socket.create_connection(other.sock.getsockname(), timeout=2))
        time.sleep(0.05)
        assert sockets.handshakes_under_way({port}) == 2
        clients[0].sendall(b"x")  # finished: now in the accept queue
        time.sleep(0.05)
        assert sockets.handshakes_under_way({port}) == 1
    finally:
        for client in clients:
            client.close()
        listener.close()
        other.close()


@pytest.mark.parametrize(("text", "fds"), [
    ("+3,4", [(3, True), (4, False)]),
    ("3,4", [(3, False), (4, False)]),  # from a forkserve before the mark: not ours
    ("", []),
])
def test_inherited_fds_read_which_sockets_a_forkserve_bound(text: str,
                                                           fds: list[tuple[int, bool]]) -> None:
    env = {sockets.REEXEC_FDS_ENV: text}
    assert sockets.inherited_fds(env) == fds
    assert sockets.REEXEC_FDS_ENV not in env
    # An older forkserve (a USR2 downgrade) reads the list as before: int("+3") == 3.
    assert [int(part) for part in text.split(",") if part.strip()] == [fd for fd, _ in fds]
