"""Handing a parked keep-alive connection to another worker (issue 11).

A sync worker runs one request at a time. The keep-alive connections parked
in it cost nothing while it waits, but while it is inside a slow request
(or writing to a client that stopped reading), a parked client that sends
its next request would wait for that request to end, though another worker
sits idle. The way out is to move the connection, not the request:

- The master makes one `SOCK_SEQPACKET` socket pair before the first fork;
  every worker inherits both ends (`HandoffChannel`).
- In each worker a small watcher thread sleeps; only once the request in
  the app has run past `HANDOFF_AFTER_S` does it look at the worker's parked
  connections, and each one whose next request has started to arrive (its
  bytes still unread in the kernel) is sent over the pair with SCM_RIGHTS,
  together with which listener it came from and the client's address.
- The receiving end is in every worker's epoll set (EPOLLEXCLUSIVE): the
  kernel wakes one worker waiting in epoll_wait, passing over the busy ones,
  and that worker reads the request from the socket as if it had always
  been its own. If every worker is busy the connection waits in the pair's
  queue, and the first to be free takes it: no worker is ever worse off.

What moves is what can be rebuilt exactly on the other side from the
socket, the bytes already read from it (a request head partly received, or
the start of the next one after a keep-alive response), the listener, the
client's address and whether its PROXY header is still to come: a
connection between requests, with its head arriving, or with a complete
request without a body waiting for its turn (its head as received goes
along), up to `MAX_CARRIED` bytes (Connection.carried). One whose body is
arriving or that is in the app stays where it is.

TLS connections cannot move (their session state lives in this worker's
OpenSSL). For them the busy worker keeps the TLS socket and hands over one
end of a unix socket pair instead, marked with the worker relaying it; its
watcher thread then relays the bytes between the two (forkserve.relay), and
the peer serves the plaintext as it would have served the TLS connection.
"""

from __future__ import annotations

import socket
from typing import NamedTuple

# Run in the app longer than this and the parked connections that have a
# request waiting move to an idle worker. Short against the 100 ms a user
# notices, long against a typical fast request, so a hello-world keep-alive
# run never pays for a move.
HANDOFF_AFTER_S = 0.03
# How often the watcher thread looks at the request in progress. It only
# reads two attributes, under the GIL, 50 times a second.
WATCH_INTERVAL_S = 0.02
# The most bytes already read that a connection takes along: the default
# --limit-request-head, so a head partly received moves whole. A message is
# one SOCK_SEQPACKET datagram, and the pair's buffer (about 200 KiB by
# default) must hold a few; a connection with more read stays where it is.
MAX_CARRIED = 65536
_MAX_HEADER = 512  # the text line before the bytes: a few dozen characters
_FRESH, _RELAYED = 1, 2  # flags in the message


class Moved(NamedTuple):
    """What a worker taking a connection needs besides its socket (forkserve.handoff)."""

    listener: int  # index of the listener it came from, the same in every worker
    peer: tuple[str, int] | None  # the client's address (None: a unix socket listener)
    # Nothing consumed from it yet: its PROXY header, if the listener wants
    # one, is still to come. Otherwise it is a kept-alive connection.
    fresh: bool
    data: bytes = b""  # read from it already: the start of its next request head
    deadline: float = 0.0  # with `data`: when that head times out (CLOCK_MONOTONIC is system-wide)
    # A TLS connection relayed by another worker: (its heartbeat slot, its pid).
    # The socket is the plaintext end of the relay; None = the client's own socket.
    relay: tuple[int, int] | None = None


def encode(moved: Moved) -> bytes:
    """The message that goes with the descriptor: one text line, then the bytes read."""
    host, port = moved.peer if moved.peer is not None else ("", 0)
    flags = (_FRESH if moved.fresh else 0) | (_RELAYED if moved.relay is not None else 0)
    slot, pid = moved.relay if moved.relay is not None else (0, 0)
    line = f"{moved.listener} {flags} {slot} {pid} {moved.deadline!r} {port} {host}\n"
    return line.encode("ascii", "replace") + moved.data


def decode(message: bytes) -> Moved | None:
    """The fields of `encode`'s message; None if it is not one."""
    line, newline, data = message.partition(b"\n")
    if not newline or len(line) > _MAX_HEADER or len(data) > MAX_CARRIED:
        return None
    try:
        listener, flags, slot, pid, deadline, port, host = line.decode("ascii").split(" ", 6)
        moved = Moved(int(listener), (host, int(port)) if host else None,
                      bool(int(flags) & _FRESH), data, float(deadline),
                      (int(slot), int(pid)) if int(flags) & _RELAYED else None)
    except ValueError:
        return None
    return moved if moved.listener >= 0 else None


class HandoffChannel:
    """The socket pair that moves connections between workers (made in the master, pre-fork).

    Both ends are non-blocking: a full queue (every worker busy for long)
    makes `send` fail, and the connection simply stays where it is.
    """

    def __init__(self) -> None:
        self.send_end, self.receive_end = socket.socketpair(socket.AF_UNIX,
                                                            socket.SOCK_SEQPACKET)
        for end in (self.send_end, self.receive_end):
            end.setblocking(False)
            end.set_inheritable(False)  # forked workers share it; an exec'd master does not

    def fileno(self) -> int:
        """The end workers wait on for connections to take."""
        return self.receive_end.fileno()

    def send(self, fd: int, moved: Moved) -> bool:
        """Send the connection `fd` to whichever worker takes it first; False if not sent."""
        if len(moved.data) > MAX_CARRIED:
            return False
        try:
            socket.send_fds(self.send_end, [encode(moved)], [fd])
        except OSError:  # BlockingIOError: the queue is full; the worker keeps it
            return False
        return True

    def receive(self) -> tuple[socket.socket, Moved] | None:
        """A connection another worker sent, and what goes with it; None if none (or unusable).

        A message that is not ours, cut short, or without exactly one
        descriptor is dropped, and every descriptor that came with it closed.
        """
        try:
            message, fds, flags, _addr = socket.recv_fds(self.receive_end,
                                                         _MAX_HEADER + MAX_CARRIED, 1)
        except (BlockingIOError, InterruptedError):
            return None
        moved = decode(message) if not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) else None
        if moved is None or len(fds) != 1:
            for fd in fds:
                _close_fd(fd)
            return None
        sock = socket.socket(fileno=fds[0])
        sock.setblocking(False)
        return sock, moved

    def close(self) -> None:
        self.send_end.close()
        self.receive_end.close()


def _close_fd(fd: int) -> None:
    try:
        socket.close(fd)
    except OSError:
        pass
