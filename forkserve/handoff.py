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

Only connections with nothing buffered in user space move: idle keep-alive
connections, and new ones accepted in the same batch as the slow request and
parked unread. The bytes that matter are all still in the kernel: nothing
has to be copied and nothing can be lost on the way. TLS connections never move (their session
state lives in the worker's OpenSSL), so with TLS this is off.
"""

from __future__ import annotations

import socket

# Run in the app longer than this and the parked connections that have a
# request waiting move to an idle worker. Short against the 100 ms a user
# notices, long against a typical fast request, so a hello-world keep-alive
# run never pays for a move.
HANDOFF_AFTER_S = 0.03
# How often the watcher thread looks at the request in progress. It only
# reads two attributes, under the GIL, 50 times a second.
WATCH_INTERVAL_S = 0.02
_MAX_MESSAGE = 512  # listener index and client address: a few dozen bytes


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

    def send(self, fd: int, listener: int, peer: tuple[str, int] | None, fresh: bool) -> bool:
        """Send the connection `fd` to whichever worker takes it first; False if not sent.

        `fresh`: accepted but never read (its PROXY header, if any, is still
        to come); otherwise a kept-alive connection between requests.
        """
        host, port = peer if peer is not None else ("", 0)
        message = f"{listener} {int(fresh)} {port} {host}".encode("ascii", "replace")
        try:
            socket.send_fds(self.send_end, [message], [fd])
        except OSError:  # BlockingIOError: the queue is full; the worker keeps it
            return False
        return True

    def receive(self) -> tuple[socket.socket, int, tuple[str, int] | None, bool] | None:
        """A connection another worker sent: (socket, listener index, peer, fresh); None if none."""
        try:
            message, fds, _flags, _addr = socket.recv_fds(self.receive_end, _MAX_MESSAGE, 1)
        except (BlockingIOError, InterruptedError):
            return None
        if not fds:
            return None
        try:
            index_text, fresh_text, port_text, host = message.decode("ascii").split(" ", 3)
            index, fresh, port = int(index_text), fresh_text == "1", int(port_text)
        except ValueError:
            for fd in fds:
                _close_fd(fd)
            return None
        sock = socket.socket(fileno=fds[0])
        sock.setblocking(False)
        peer = (host, port) if host else None
        return sock, index, peer, fresh

    def close(self) -> None:
        self.send_end.close()
        self.receive_end.close()


def _close_fd(fd: int) -> None:
    try:
        socket.close(fd)
    except OSError:
        pass
