"""Relaying a TLS connection whose requests another worker serves (issue 11).

A TLS connection cannot move to another process: its session (keys,
sequence numbers, OpenSSL's buffers) lives in this worker. When this worker
is inside a slow request and a parked TLS client starts its next request,
the handoff watcher (forkserve.worker.WorkerLoop.watch) makes a unix socket
pair, hands one end to an idle peer as an already-decrypted connection of
the same listener (forkserve.handoff.Moved.relay), and from then on moves
bytes between the TLS socket and its own end: what the client sends,
decrypted, to the peer; what the peer answers, encrypted, to the client.
The peer serves the plaintext as it would have served the TLS connection
(same listener environ, so `wsgi.url_scheme` https, the client's address).

Where it runs: in the worker's watcher thread, never in the serving
thread; a relay exists only once a request ran past HANDOFF_AFTER_S, so a
worker that never meets a slow request pays nothing. It knows nothing of
HTTP: the worker at the other end decides when the connection ends, and the
relay carries that end over.

- Bounded: at most one read (`RELAY_READ`, plus what OpenSSL holds of the
  same record) waits per direction. While it waits the relay does not read
  that side, so a client that stops reading fills the kernel's buffers and
  the peer's write times out there (--write-timeout); the relay gives up on
  it after the same time without progress.
- Ends as any connection does: a client's close_notify or FIN becomes a
  half-close toward the peer; the peer's FIN (after `Connection: close`,
  its keep-alive timeout, a refusal) becomes close_notify and a FIN toward
  the client, after which what the client still sends is read and dropped
  for LINGER_S before the close, so nothing it sent is answered with a reset.
- A draining worker stops relaying only when the peers have closed their
  ends: a peer sees the relaying worker leave (heartbeat.Peers.gone) and
  ends the connection as a draining worker would (WorkerLoop.sweep, run).
"""

from __future__ import annotations

import select
import socket
import ssl
import time

RELAY_READ = 65536  # bytes read from one side at a time: the bound per direction
TLS_WRITE = 16384  # one TLS record per SSL_write, retried with the same bytes until taken
LINGER_S = 0.5  # as connection.IDLE_LINGER_SECONDS: reading after our FIN
CHECK_S = 0.25  # how often deadlines are looked at
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class Pipe:
    """One relayed connection: the client's TLS socket and this worker's end of the pair."""

    __slots__ = ("tls", "inner", "to_inner", "to_client", "client_done", "inner_done",
                 "inner_shut", "closing_until", "stuck_since", "masks")

    def __init__(self, tls: ssl.SSLSocket, inner: socket.socket) -> None:
        self.tls = tls
        self.inner = inner
        self.to_inner = b""  # decrypted from the client, not yet taken by the peer
        self.to_client = b""  # from the peer, not yet taken by OpenSSL
        self.client_done = False  # the client's close_notify or FIN was read
        self.inner_done = False  # the peer's end was closed or shut for writing
        self.inner_shut = False  # the client's end was passed on to the peer
        self.closing_until = 0.0  # our FIN is out: read and drop until then (0 = not yet)
        self.stuck_since = 0.0  # bytes for the client waiting since (0 = none waiting)
        self.masks = {tls.fileno(): 0, inner.fileno(): 0}  # registered events, 0 = not

    def pump(self, now: float) -> bool:
        """Move what can move now, without blocking; False once the relay is over."""
        moved = True
        while moved:
            moved = False
            if self.closing_until:
                return self._drop_input()
            if not self.to_inner and not self.client_done:
                data = _read_tls(self.tls)
                if data == b"":
                    self.client_done = True
                    moved = True
                elif data:
                    self.to_inner = data
            if self.to_inner:
                sent = _send(self.inner, self.to_inner)
                self.to_inner = self.to_inner[sent:]
                moved = moved or sent > 0
            elif self.client_done and not self.inner_shut:
                self.inner_shut = True
                self.inner.shutdown(socket.SHUT_WR)  # the peer sees the client's half-close
            if not self.to_client and not self.inner_done:
                data = _recv(self.inner)
                if data == b"":
                    self.inner_done = True
                    moved = True
                elif data:
                    self.to_client = data
                    self.stuck_since = now
            if self.to_client:
                sent = _send(self.tls, self.to_client[:TLS_WRITE])
                self.to_client = self.to_client[sent:]
                if sent:
                    moved = True
                    self.stuck_since = now if self.to_client else 0.0
            elif self.inner_done:
                _close_notify(self.tls)
                if self.client_done:
                    return False  # both sides said all they had to say
                self.closing_until = now + LINGER_S
                moved = True
        return True

    def _drop_input(self) -> bool:
        """After our FIN: read the client's last bytes and drop them; False once it closed."""
        try:
            for _ in range(16):  # a client sending flat out waits for the next wake-up
                if not self.tls.recv(RELAY_READ):
                    return False
        except _WOULD_BLOCK:
            pass
        return True

    def wanted(self) -> dict[int, int]:
        """The events each socket waits for now (0: none)."""
        tls_in = self.closing_until or not (self.to_inner or self.client_done)
        inner_in = not (self.to_client or self.inner_done or self.closing_until)
        return {
            self.tls.fileno(): (select.EPOLLIN if tls_in else 0)
            | (select.EPOLLOUT if self.to_client else 0),
            self.inner.fileno(): (select.EPOLLIN if inner_in else 0)
            | (select.EPOLLOUT if self.to_inner and not self.closing_until else 0),
        }

    def close(self) -> None:
        for sock in (self.tls, self.inner):
            try:
                sock.close()
            except OSError:
                pass


class Relays:
    """A worker's relayed TLS connections (post-fork, the watcher thread only)."""

    def __init__(self, write_timeout: float) -> None:
        self.epoll = select.epoll()
        self.pipes: dict[int, Pipe] = {}  # by both of its descriptors
        self.count = 0  # relayed connections still open (read by the serving thread)
        self.write_timeout = write_timeout
        self.check_at = 0.0

    def add(self, tls: ssl.SSLSocket, inner: socket.socket) -> None:
        """Relay between `tls` (the client) and `inner` (this end of the pair to the peer)."""
        inner.setblocking(False)
        pipe = Pipe(tls, inner)
        for fd in pipe.masks:
            self.pipes[fd] = pipe
        self.count += 1
        self._update(pipe, time.monotonic())

    def wait(self, timeout: float) -> None:
        """Wait up to `timeout` for the sockets, and move what is ready."""
        try:
            events = self.epoll.poll(timeout)
        except InterruptedError:
            events = []
        now = time.monotonic()
        done: set[Pipe] = set()
        for fd, _mask in events:
            pipe = self.pipes.get(fd)
            if pipe is not None and pipe not in done:
                done.add(pipe)
                self._update(pipe, now)
        if now >= self.check_at:
            self.check_at = now + CHECK_S
            for pipe in set(self.pipes.values()):
                if ((pipe.closing_until and now >= pipe.closing_until)
                        or (pipe.stuck_since and now - pipe.stuck_since > self.write_timeout)):
                    self._end(pipe)  # (the peer's write timed out long before)

    def _update(self, pipe: Pipe, now: float) -> None:
        try:
            if not pipe.pump(now):
                self._end(pipe)
                return
            for fd, want in pipe.wanted().items():
                have = pipe.masks[fd]
                if want == have:
                    continue
                # A socket waiting for nothing leaves the set: a closed end would
                # otherwise report EPOLLHUP on every wait.
                if not want:
                    self.epoll.unregister(fd)
                elif not have:
                    self.epoll.register(fd, want)
                else:
                    self.epoll.modify(fd, want)
                pipe.masks[fd] = want
        except (OSError, ValueError):  # a reset, a TLS error, the peer gone
            self._end(pipe)

    def _end(self, pipe: Pipe) -> None:
        if self.pipes.get(pipe.tls.fileno()) is not pipe:
            return  # ended already
        for fd, mask in pipe.masks.items():
            self.pipes.pop(fd, None)
            if mask:
                try:
                    self.epoll.unregister(fd)
                except (OSError, ValueError):
                    pass
        pipe.close()
        self.count -= 1


def _read_tls(tls: ssl.SSLSocket) -> bytes | None:
    """Decrypted bytes from the client; b"" at its end; None if none yet."""
    try:
        data = tls.recv(RELAY_READ)
        # The rest of a record already decrypted: epoll would not report it.
        while data and tls.pending():
            data += tls.recv(RELAY_READ)
    except _WOULD_BLOCK:
        return None
    return data


def _recv(sock: socket.socket) -> bytes | None:
    try:
        return sock.recv(RELAY_READ)
    except (BlockingIOError, InterruptedError):
        return None


def _send(sock: socket.socket, data: bytes) -> int:
    try:
        return sock.send(data)
    except _WOULD_BLOCK:
        return 0


def _close_notify(tls: ssl.SSLSocket) -> None:
    """Send TLS close_notify, then a FIN: the client sees a clean end of the stream."""
    try:
        tls.unwrap()  # sends close_notify; on a non-blocking socket it does not wait for theirs
    except (ssl.SSLError, OSError, ValueError):
        pass
    tls.shutdown(socket.SHUT_WR)  # from here on the socket reads raw bytes (LINGER_S)
