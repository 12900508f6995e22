"""Rescuing a frozen worker's parked connections: the records the worker publishes, and the
master's side (forkserve.rescue) against a real child process holding a real connection."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from forkserve.handoff import HandoffChannel, Moved
from forkserve.heartbeat import (
    MAX_MOVABLE_LISTENER,
    MOVABLE_FDS,
    NOT_MOVABLE,
    Heartbeats,
    movable_code,
    movable_listener,
    unchanged,
)
from forkserve.rescue import GIVE_UP_S, PidfdGetfd, Rescuer


def test_a_record_says_listener_and_fresh_or_kept() -> None:
    for listener in (0, 1, 7, MAX_MOVABLE_LISTENER):
        for fresh in (False, True):
            code = movable_code(listener, fresh)
            assert 0 < code <= 255
            assert movable_listener(code) == (listener, fresh)
    assert movable_code(MAX_MOVABLE_LISTENER + 1, False) == NOT_MOVABLE  # not published


def test_the_master_reads_only_its_workers_records_and_a_new_worker_starts_clean() -> None:
    beats = Heartbeats(3)
    mine, other = beats.movable_table(1), beats.movable_table(2)
    mine[5] = movable_code(0, False)
    mine[9] = movable_code(1, True)
    mine[MOVABLE_FDS - 1] = movable_code(0, True)
    other[5] = movable_code(0, True)
    assert beats.read_movable(1) == {5: movable_code(0, False), 9: movable_code(1, True),
                                     MOVABLE_FDS - 1: movable_code(0, True)}
    assert beats.read_movable(0) == {}
    beats.reset(1, 0)  # the next worker in slot 1: the dead one's records are gone
    assert beats.read_movable(1) == {}
    assert beats.read_movable(2) == {5: movable_code(0, True)}


def test_a_record_that_changed_while_the_master_worked_is_not_trusted() -> None:
    kept, fresh = movable_code(0, False), movable_code(0, True)
    before = {5: kept, 6: kept, 7: fresh, 8: kept}
    # 5: untouched; 6: cleared (the worker woke and began to read it); 7: re-parked
    # as a kept connection (fd number reused, or a request answered); 8: closed.
    after = {5: kept, 7: kept, 9: kept}
    assert unchanged(before, after) == {5: kept}


# -- the master's side, against a child process standing in for a frozen worker --

@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0))
    yield sock
    sock.close()


def park_in_child(listener: socket.socket, count: int,
                  ) -> tuple[int, list[socket.socket], list[int]]:
    """A child process holding `count` accepted connections (the parent keeps no copy).

    Returns the child's pid, the clients, and the descriptor numbers in the child.
    """
    clients, accepted = [], []
    for _ in range(count):
        clients.append(socket.create_connection(listener.getsockname()))
        accepted.append(listener.accept()[0])
    pid = os.fork()
    if pid == 0:
        try:
            time.sleep(60)
        finally:
            os._exit(0)
    fds = [sock.fileno() for sock in accepted]
    for sock in accepted:
        sock.close()
    return pid, clients, fds


def killer(signals: list[int]) -> Callable[[int, int], None]:
    def kill(pid: int, sig: int) -> None:
        signals.append(sig)
        os.kill(pid, sig)
    return kill


def reap(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def pidfd_getfd_works() -> bool:
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    try:
        pidfd = os.pidfd_open(pid)
        try:
            os.close(PidfdGetfd()(pidfd, 0))
        finally:
            os.close(pidfd)
        return True
    except OSError:
        return False
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


needs_pidfd_getfd = pytest.mark.skipif(not pidfd_getfd_works(),
                                       reason="pidfd_getfd is refused on this machine")


@needs_pidfd_getfd
def test_published_connections_move_to_the_queue_and_the_worker_is_killed(
        listener: socket.socket) -> None:
    pid, clients, fds = park_in_child(listener, 3)
    beats = Heartbeats(2)
    table = beats.movable_table(0)
    table[fds[0]] = movable_code(0, False)
    table[fds[1]] = movable_code(0, True)
    # fds[2] is not published (a half-read head, or the one in the app): it dies with it.
    channel = HandoffChannel()
    signals: list[int] = []
    try:
        rescuer = Rescuer(channel, {listener.getsockname()[1]}, unix=False)
        # Not stopped yet (frozen some other way): the master stops it before it reads.
        assert rescuer.kill(pid, lambda: beats.read_movable(0), killer(signals)) == 2
        assert signals == [signal.SIGSTOP, signal.SIGKILL]
        assert reap(pid) == -signal.SIGKILL
        for client, fresh in ((clients[0], False), (clients[1], True)):
            got = channel.receive()
            assert got is not None
            sock, moved = got
            assert (moved.listener, moved.peer, moved.fresh) == (0, client.getsockname(), fresh)
            client.sendall(b"GET / HTTP/1.1\r\n\r\n")  # the same connection, alive
            sock.settimeout(5)
            assert sock.recv(100) == b"GET / HTTP/1.1\r\n\r\n"
            sock.close()
        assert channel.receive() is None
        clients[2].settimeout(5)
        assert clients[2].recv(100) == b""  # closed with the worker
    finally:
        channel.close()
        for client in clients:
            client.close()


@needs_pidfd_getfd
def test_a_record_changed_before_the_kill_is_not_sent(listener: socket.socket) -> None:
    pid, clients, fds = park_in_child(listener, 1)
    code = movable_code(0, False)
    reads = iter([{fds[0]: code}, {fds[0]: code}, {}])  # the worker cleared it meanwhile
    channel = HandoffChannel()
    try:
        rescuer = Rescuer(channel, {listener.getsockname()[1]}, unix=False)
        assert rescuer.kill(pid, lambda: next(reads), killer([])) == 0
        reap(pid)
        assert channel.receive() is None
        clients[0].settimeout(5)
        assert clients[0].recv(100) == b""  # our copy was closed too: nothing holds it
    finally:
        channel.close()
        clients[0].close()


@needs_pidfd_getfd
def test_a_descriptor_that_is_not_a_client_of_our_listeners_is_not_sent(
        listener: socket.socket) -> None:
    # A stale record naming the app's own connection (another port) or a file.
    with socket.create_server(("127.0.0.1", 0)) as elsewhere:
        pid, clients, fds = park_in_child(elsewhere, 1)
    beats = Heartbeats(1)
    beats.movable_table(0)[fds[0]] = movable_code(0, False)
    beats.movable_table(0)[2] = movable_code(0, False)  # stderr
    channel = HandoffChannel()
    try:
        rescuer = Rescuer(channel, {listener.getsockname()[1]}, unix=False)
        assert rescuer.kill(pid, lambda: beats.read_movable(0), killer([])) == 0
        reap(pid)
        assert channel.receive() is None
    finally:
        channel.close()
        clients[0].close()


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_without_pidfd_getfd_the_worker_is_killed_as_before_and_why_is_logged_once(
        listener: socket.socket) -> None:
    channel = HandoffChannel()
    collect = Collect()  # (the forkserve logger may not propagate: an error log was set up)
    logging.getLogger("forkserve").addHandler(collect)
    try:
        rescuer = Rescuer(channel, {listener.getsockname()[1]}, unix=False)
        rescuer.getfd = PidfdGetfd(machine="an-unknown-machine")  # ENOSYS, as on old kernels
        beats = Heartbeats(1)
        for _ in range(2):
            pid, clients, fds = park_in_child(listener, 1)
            beats.movable_table(0)[fds[0]] = movable_code(0, False)
            signals: list[int] = []
            assert rescuer.kill(pid, lambda: beats.read_movable(0), killer(signals)) == 0
            assert signals[-1] == signal.SIGKILL
            assert reap(pid) == -signal.SIGKILL
            clients[0].settimeout(5)
            assert clients[0].recv(100) == b""
            clients[0].close()
        assert channel.receive() is None
        warnings = [line for line in collect.lines if "Cannot rescue" in line]
        assert len(warnings) == 1 and "pidfd_getfd" in warnings[0], warnings
    finally:
        logging.getLogger("forkserve").removeHandler(collect)
        channel.close()


@needs_pidfd_getfd
def test_a_full_queue_keeps_the_rescued_in_the_master_until_there_is_room(
        listener: socket.socket) -> None:
    channel = HandoffChannel()
    filler, other_end = socket.socketpair()
    queued = 0
    while channel.send(filler.fileno(), Moved(0, None, False)):  # every worker busy: none taken
        queued += 1
    filler.close()
    other_end.close()
    pid, clients, fds = park_in_child(listener, 2)
    beats = Heartbeats(1)
    for fd in fds:
        beats.movable_table(0)[fd] = movable_code(0, False)
    try:
        rescuer = Rescuer(channel, {listener.getsockname()[1]}, unix=False)
        assert rescuer.kill(pid, lambda: beats.read_movable(0), killer([])) == 2
        reap(pid)
        assert len(rescuer.pending) == 2 and rescuer.writable_fd() is not None
        for _ in range(queued):  # a worker frees up and takes what waited before them
            got = channel.receive()
            assert got is not None
            got[0].close()
        rescuer.send_pending(time.monotonic())
        assert not rescuer.pending and rescuer.writable_fd() is None
        for client in clients:
            got = channel.receive()
            assert got is not None and got[1].peer == client.getsockname()
            client.sendall(b"still here")
            got[0].settimeout(5)
            assert got[0].recv(100) == b"still here"
            got[0].close()
    finally:
        channel.close()
        for client in clients:
            client.close()


@needs_pidfd_getfd
def test_a_rescued_connection_nobody_takes_is_closed_after_a_while(
        listener: socket.socket) -> None:
    channel = HandoffChannel()
    filler, other_end = socket.socketpair()
    while channel.send(filler.fileno(), Moved(0, None, False)):
        pass
    filler.close()
    other_end.close()
    pid, clients, fds = park_in_child(listener, 1)
    beats = Heartbeats(1)
    beats.movable_table(0)[fds[0]] = movable_code(0, False)
    try:
        rescuer = Rescuer(channel, {listener.getsockname()[1]}, unix=False)
        assert rescuer.kill(pid, lambda: beats.read_movable(0), killer([])) == 1
        reap(pid)
        rescuer.send_pending(time.monotonic() + GIVE_UP_S - 1)
        assert len(rescuer.pending) == 1
        rescuer.send_pending(time.monotonic() + GIVE_UP_S + 1)
        assert not rescuer.pending
        clients[0].settimeout(5)
        assert clients[0].recv(100) == b""  # closed, as the kill alone would have
    finally:
        channel.close()
        clients[0].close()
