"""Rescuing a frozen worker's parked connections (issue 11). Master side only.

A worker that is stopped (SIGSTOP) or frozen is killed by the master
(arbiter.IDLE_STALE_S); the kernel then closes its sockets. A keep-alive
client that had already sent its next request on a connection parked in that
worker would get a reset, and its request would be lost. Before the kill,
the master takes its own copies of the parked connections that are safe to
move: those the worker published as having nothing read into user space
(heartbeat.movable_code: idle between requests, or accepted and unread),
never the one in the app, never a TLS one (no handoff channel with TLS).
It takes them with pidfd_getfd(2), kills the worker, waits until it is gone,
and sends them to the handoff queue (forkserve.handoff) with their listener,
peer and fresh/kept, where the first free worker takes each one and reads
the waiting request as if the connection had always been its own.

pidfd_getfd needs ptrace rights over the worker (the master is its parent
with the same user: allowed, unless a seccomp profile or an old kernel says
no; a worker that dropped privileges with --user may not be dumpable). When
the kernel refuses, the master logs why once and kills frozen workers as
before: their clients see a reset and reconnect.
"""

from __future__ import annotations

import collections
import errno
import os
import platform
import select
import signal
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ctypes

from forkserve.handoff import HandoffChannel, Moved
from forkserve.heartbeat import movable_listener, unchanged
from forkserve.log import log

# pidfd_getfd(2) has no wrapper in Python 3.11's os module. Since Linux 5.1
# every architecture numbers new system calls alike (424 on), except where
# the table is offset as a whole: 438 + the offset. Unknown machines (and the
# MIPS ABIs, whose offset depends on the ABI, not the machine name) get no
# rescue rather than a wrong system call.
PIDFD_GETFD = 438
_SYSCALL_OFFSET = {
    "x86_64": 0, "aarch64": 0, "arm64": 0, "i386": 0, "i486": 0, "i586": 0, "i686": 0,
    "armv6l": 0, "armv7l": 0, "armv8l": 0, "riscv64": 0, "ppc64le": 0, "ppc64": 0,
    "s390x": 0, "loongarch64": 0, "alpha": 110,
}
# The kernel refused: no rescue on this machine (logged once, then as before).
_UNAVAILABLE = (errno.EPERM, errno.EACCES, errno.ENOSYS)
STOP_WAIT_S = 0.2  # how long a frozen (not yet stopped) worker may take to stop
EXIT_WAIT_S = 1.0  # how long a SIGKILLed worker may take to be gone
# A rescued connection waits in the master while the handoff queue is full
# (the pair's send buffer: about 270 messages with Linux's default 208 KiB;
# a socket pair is not limited by net.unix.max_dgram_qlen) until a worker
# takes some; past this it is closed, as the kill would have closed it.
GIVE_UP_S = 30.0


@dataclass
class Rescued:
    """One connection taken out of a frozen worker, on its way to another."""

    sock: socket.socket
    listener: int
    peer: tuple[str, int] | None
    fresh: bool
    give_up_at: float


class PidfdGetfd:
    """pidfd_getfd(2) through libc's syscall(): a copy of another process's descriptor.

    ctypes is loaded at the first call, in the master, when a frozen worker
    is rescued: not at start (~10 ms, and the master never needs it otherwise).
    """

    def __init__(self, machine: str | None = None) -> None:
        self.machine = machine or platform.machine()
        offset = _SYSCALL_OFFSET.get(self.machine)
        self.number = None if offset is None else PIDFD_GETFD + offset
        self.libc: ctypes.CDLL | None = None

    def __call__(self, pidfd: int, fd: int) -> int:
        """A new descriptor (close-on-exec) for `fd` in the process of `pidfd`; OSError if not."""
        if self.number is None:
            raise OSError(errno.ENOSYS, f"no pidfd_getfd system call known for {self.machine}")
        import ctypes

        if self.libc is None:
            self.libc = ctypes.CDLL(None, use_errno=True)
            self.libc.syscall.restype = ctypes.c_long
        syscall: Any = self.libc.syscall
        result = syscall(ctypes.c_long(self.number), ctypes.c_int(pidfd), ctypes.c_int(fd),
                         ctypes.c_uint(0))
        if result < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return int(result)


class Rescuer:
    """Master side: takes a frozen worker's movable connections, kills it, passes them on.

    Made in the master before the first fork, with the handoff channel the
    workers share (the master keeps both of its ends open for this).
    """

    def __init__(self, channel: HandoffChannel, ports: set[int], unix: bool) -> None:
        self.channel = channel
        self.ports = ports  # the TCP listeners' ports
        self.unix = unix  # a unix socket listener exists
        self.getfd = PidfdGetfd()
        self.unavailable = ""  # why the kernel refused (logged once); "" = try
        self.pending: collections.deque[Rescued] = collections.deque()

    def kill(self, pid: int, read_records: Callable[[], dict[int, int]],
             kill: Callable[[int, int], None]) -> int:
        """Rescue what `pid` published as movable, SIGKILL it, and send the rescued on.

        `read_records` reads the worker's movable table (heartbeat.read_movable);
        `kill` sends a signal. Returns how many connections were rescued. The
        worker is killed whatever happens here.
        """
        # The master keeps both ends of the channel it made before the first
        # fork (the workers hold theirs): one closed here means no way to send.
        if self.unavailable or self.channel.send_end.fileno() < 0 or not read_records():
            kill(pid, signal.SIGKILL)
            return 0
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                self.give_up(f"pidfd_open failed: {exc.strerror}")
            kill(pid, signal.SIGKILL)
            return 0
        try:
            return self._rescue(pid, pidfd, read_records, kill)
        finally:
            os.close(pidfd)

    def _rescue(self, pid: int, pidfd: int, read_records: Callable[[], dict[int, int]],
                kill: Callable[[int, int], None]) -> int:
        # Its descriptors and records must not change under us: it is stopped
        # (SIGSTOP, which is why it is killed), or stopped here if it is frozen
        # some other way (blocked outside the app, swapped out).
        if not stopped(pid):
            kill(pid, signal.SIGSTOP)
            deadline = time.monotonic() + STOP_WAIT_S
            while not stopped(pid) and time.monotonic() < deadline:
                time.sleep(0.005)
            if not stopped(pid):
                log.warning("Worker %d did not stop within %.1fs; its parked connections "
                            "are closed with it", pid, STOP_WAIT_S)
                kill(pid, signal.SIGKILL)
                return 0
        before = read_records()
        copies: dict[int, socket.socket] = {}
        for fd in before:
            try:
                new_fd = self.getfd(pidfd, fd)
            except OSError as exc:
                if exc.errno in _UNAVAILABLE:
                    self.give_up(f"pidfd_getfd failed: {exc.strerror}")
                    break
                continue  # EBADF: not open any more (a record not yet cleared)
            sock = client_socket(new_fd, self.ports, self.unix)
            if sock is not None:
                copies[fd] = sock
        kill(pid, signal.SIGKILL)
        # Sent only once it is gone: while its epoll set exists, the kernel
        # may hand the queue's wake-up to it (EPOLLEXCLUSIVE) instead of to a
        # live worker.
        exited = wait_readable(pidfd, EXIT_WAIT_S)
        trusted = unchanged(before, read_records()) if exited else {}
        now = time.monotonic()
        count = 0
        for fd, sock in copies.items():
            code = trusted.get(fd)
            peer = peer_of(sock)
            if code is None or (peer is None and sock.family != socket.AF_UNIX):
                sock.close()  # the worker touched it after all, or the client is gone
                continue
            listener, fresh = movable_listener(code)
            self.pending.append(Rescued(sock, listener, peer, fresh, now + GIVE_UP_S))
            count += 1
        self.send_pending(now)
        return count

    def send_pending(self, now: float) -> None:
        """Put the rescued connections into the handoff queue, oldest first, while it has room."""
        while self.pending:
            item = self.pending[0]
            if not self.channel.send(item.sock.fileno(),
                                     Moved(item.listener, item.peer, item.fresh)):
                break  # full: the loop waits for room (writable_fd) and comes back
            self.pending.popleft()
            item.sock.close()  # our copy: the one in the queue keeps the connection
        while self.pending and self.pending[0].give_up_at <= now:
            item = self.pending.popleft()
            log.warning("Closing a connection rescued from a frozen worker: no worker took "
                        "it within %.0fs", GIVE_UP_S)
            item.sock.close()

    def writable_fd(self) -> int | None:
        """While connections wait for room in the queue: the end to wait on (writable)."""
        return self.channel.send_end.fileno() if self.pending else None

    def close_in_child(self) -> None:
        """In a new worker, after fork: the master's copies are not its own.

        A copy left open there would keep the client's connection open after
        the worker that serves it closes it.
        """
        while self.pending:
            self.pending.popleft().sock.close()

    def give_up(self, why: str) -> None:
        if not self.unavailable:
            self.unavailable = why
            log.warning("Cannot rescue the parked connections of frozen workers (%s: it needs "
                        "ptrace rights over the worker, which a seccomp profile, an old kernel "
                        "or --user may deny); a frozen worker's clients see their connection "
                        "reset and reconnect", why)


def stopped(pid: int) -> bool:
    """Every thread of `pid` is stopped (SIGSTOP, or a debugger), or gone."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue  # that thread has exited
        state = raw[raw.rfind(b")") + 2 : raw.rfind(b")") + 3]
        if state not in (b"T", b"t", b"Z", b"X"):
            return False
    return True


def wait_readable(fd: int, timeout: float) -> bool:
    """A pidfd is readable once its process has exited (and its descriptors are closed)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return bool(poller.poll(max(0.0, deadline - time.monotonic()) * 1000))
        except InterruptedError:
            continue


def client_socket(fd: int, ports: set[int], unix: bool) -> socket.socket | None:
    """`fd` as a socket if it is a stream connection accepted on one of our listeners.

    A guard on top of the worker's records: whatever else the number names
    (a file, the app's own connection to its database) is closed, not sent.
    `ports`: the TCP listeners' ports; `unix`: whether a unix listener exists.
    """
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        sock = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return None
    try:
        if sock.type == socket.SOCK_STREAM and not sock.getsockopt(socket.SOL_SOCKET,
                                                                   socket.SO_ACCEPTCONN):
            if sock.family == socket.AF_UNIX:
                if unix:
                    return sock
            elif sock.family in (socket.AF_INET, socket.AF_INET6):
                if sock.getsockname()[1] in ports:
                    return sock
    except OSError:
        pass
    sock.close()
    return None


def peer_of(sock: socket.socket) -> tuple[str, int] | None:
    """The client's address as the handoff message carries it; None for unix sockets or gone."""
    if sock.family == socket.AF_UNIX:
        return None
    try:
        address = sock.getpeername()
    except OSError:
        return None
    return str(address[0]), int(address[1])
