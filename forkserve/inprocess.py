"""The request path in one process, without a worker loop: for benchmarks and tests.

`InProcessClient` drives one keep-alive `Connection` on a `MemorySocket` (no
descriptor, no system calls) or a real socket pair, so the micro-benchmark
and the unit tests run exactly the code a worker runs between its epoll
wake-up and its last write.
"""

from __future__ import annotations

import errno
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from forkserve.connection import RECV_SIZE, ClientSocket, Connection, RequestHooks, Settings, State
from forkserve.environ import ServerFacts
from forkserve.http import Limits
from forkserve.log import AccessLog
from forkserve.parser import HeadParser, parse_h11
from forkserve.wsgi import FileWrapper


class MemorySocket:
    """A client connection held in memory: no descriptor, no system calls.

    What the client sent waits in `inbox` for `recv`; what the server sends
    collects in `outbox`. Writes never block and reads never wait, so the
    connection code runs exactly its own Python path: what the in-process
    micro-benchmark measures (syscalls are measured by the load runs).
    """

    family = socket.AF_INET

    def __init__(self) -> None:
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.client_closed = False
        self.closed = False

    def fileno(self) -> int:
        return -1  # not a kernel socket: sendfile falls back to reading the file

    def recv(self, size: int) -> bytes:
        if self.closed:
            raise OSError(errno.EBADF, "closed")
        if not self.inbox:
            if self.client_closed:
                return b""
            raise BlockingIOError(errno.EAGAIN, "nothing sent yet")
        data = bytes(self.inbox[:size])
        del self.inbox[:size]
        return data

    def send(self, data: bytes | memoryview) -> int:
        if self.closed:
            raise OSError(errno.EBADF, "closed")
        self.outbox += data
        return len(data)

    def shutdown(self, how: int) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class InProcessClient:
    """One keep-alive connection, driven without a worker loop.

    For benchmarks and tests of the request path: bytes in -> pre-check -> parser
    -> environ -> app -> response bytes out, through the same `Connection`
    code a worker runs, minus the epoll wake-up. In memory by default (see
    `MemorySocket`); `socketpair=True` puts a real socket pair underneath, so
    each request also pays the kernel's send and receive on both ends.
    """

    def __init__(self, app: Callable[..., Any], socketpair: bool = False,
                 parse_head: HeadParser = parse_h11, limits: Limits | None = None) -> None:
        self.app = app
        self.client: socket.socket | None = None
        self.memory: MemorySocket | None = None
        server: ClientSocket
        if socketpair:
            self.client, server = socket.socketpair()
            self.client.setblocking(False)
            server.setblocking(False)
        else:
            server = self.memory = MemorySocket()
        settings = Settings(limits or Limits(), 5.0, 10.0, 10.0, 10.0, 1 << 20,
                            parse_head=parse_head)
        base = ServerFacts("localhost", "80").base_environ(sys.stderr, FileWrapper)
        self.conn = Connection(server, ("127.0.0.1", 1), base, settings, time.monotonic())
        self.access_log = AccessLog(None, "")
        self.hooks = RequestHooks()

    def request(self, raw: bytes) -> bytes:
        """Send `raw`, run every complete request in it, return what the server wrote."""
        if self.memory is not None:
            self.memory.inbox += raw
        else:
            assert self.client is not None
            self.client.sendall(raw)
        state = self.conn.on_readable(time.monotonic())
        while state is State.READY:
            self.conn.run(self.app, self.access_log, self.hooks)
            state = self.conn.state
        if self.memory is not None:
            out = bytes(self.memory.outbox)
            self.memory.outbox.clear()
            return out
        assert self.client is not None
        # Everything the server wrote is already in the socket buffer: a read
        # shorter than asked for has taken it all (no EAGAIN round trip).
        chunks = []
        while True:
            try:
                chunk = self.client.recv(RECV_SIZE)
            except BlockingIOError:
                break
            chunks.append(chunk)
            if len(chunk) < RECV_SIZE:
                break
        return b"".join(chunks)

    @property
    def open(self) -> bool:
        return self.conn.state is not State.CLOSED

    def close(self) -> None:
        self.conn.close()
        if self.client is not None:
            self.client.close()


_IN_PROCESS: dict[tuple[int, bool, int], InProcessClient] = {}


def process_request_bytes(app: Callable[..., Any], raw: bytes, socketpair: bool = False,
                          parse_head: HeadParser = parse_h11) -> bytes:
    """Run the request(s) in `raw` through the whole request path in memory.

    Reuses one keep-alive connection per app, as a real client would, so a
    loop of calls measures the per-request cost, not connection setup. With
    `socketpair=True` the bytes cross a real socket pair both ways.
    """
    key = (id(app), socketpair, id(parse_head))
    client = _IN_PROCESS.get(key)
    if client is None or not client.open or client.app is not app:
        if client is not None:
            client.close()
        client = _IN_PROCESS[key] = InProcessClient(app, socketpair, parse_head)
    return client.request(raw)
