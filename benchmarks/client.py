"""Built-in HTTP/1.1 load client: many non-blocking sockets on one selector.

Used where wrk cannot help:

- the fairness scenario, which needs per-connection counts (wrk only reports
  totals), so every one of the 50 client connections is tracked on its own;
- the warm-up before measuring;
- the load generator when wrk is not installed (`run_load`, several processes
  of the same loop), which is less precise than wrk: a Python client spends
  CPU that, on a small machine, the server under test would otherwise get.

One request at a time per connection (no pipelining), like a browser or a
proxy. A connection the server closes is reopened and counts as the same
client, so "served at least once" is per client, whatever the server's
keep-alive policy. Every loop stops at a deadline and after a maximum number of
requests, whichever comes first.
"""

from __future__ import annotations

import errno
import gc
import multiprocessing
import selectors
import socket
import ssl
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"  # the only address this suite ever talks to
RECV_SIZE = 256 * 1024
MAX_HEAD = 64 * 1024
DEFAULT_MAX_REQUESTS = 5_000_000

# Connection states, in the order a request goes through them.
CONNECTING, SENDING, READING = "connecting", "sending", "reading"

# Body framing of the response being read (RFC 9112 section 6.3).
HEAD, LENGTH, CHUNK_SIZE, CHUNK_DATA, TRAILERS, UNTIL_EOF = range(6)


def build_request(
    port: int,
    *,
    method: str = "GET",
    path: str = "/",
    body: bytes = b"",
    close: bool = False,
) -> bytes:
    """The exact bytes one request puts on the wire."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", "User-Agent: forkserve-bench"]
    if body or method == "POST":
        lines.append("Content-Type: application/octet-stream")
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class ClientResult:
    """What one run of the client saw; latencies in seconds."""

    duration_s: float
    served_per_conn: list[int]
    latencies_s: list[float] = field(default_factory=list)
    pending_s: list[float] = field(default_factory=list)
    errors: int = 0
    non_200: int = 0
    reconnects: int = 0
    bytes_received: int = 0

    @property
    def completed(self) -> int:
        return len(self.latencies_s)

    def merge(self, other: ClientResult) -> ClientResult:
        return ClientResult(
            duration_s=max(self.duration_s, other.duration_s),
            served_per_conn=self.served_per_conn + other.served_per_conn,
            latencies_s=self.latencies_s + other.latencies_s,
            pending_s=self.pending_s + other.pending_s,
            errors=self.errors + other.errors,
            non_200=self.non_200 + other.non_200,
            reconnects=self.reconnects + other.reconnects,
            bytes_received=self.bytes_received + other.bytes_received,
        )


class ResponseReader:
    """Incremental HTTP/1.1 response framing: just enough to know where a response ends.

    Only framing is parsed (status, Content-Length, chunked, close); the body
    is counted and dropped so a 1 MiB response costs no copies.
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self.state = HEAD
        self.remaining = 0
        self.status = 0
        self.keep_alive = True
        self.received = 0
        self.framing = ""  # how the last response's body was delimited

    def reset(self) -> None:
        self.buf.clear()
        self.state = HEAD
        self.remaining = 0
        self.received = 0

    def feed(self, data: bytes) -> bool:
        """Add bytes from the socket; True once the response is complete."""
        self.received += len(data)
        if self.state == UNTIL_EOF:
            return False  # only EOF ends it; nothing to keep
        self.buf += data
        return self._advance()

    def feed_eof(self) -> bool:
        """The server closed; True if that completed a close-delimited response."""
        return self.state == UNTIL_EOF

    def _advance(self) -> bool:
        while True:
            if self.state == HEAD:
                if not self._parse_head():
                    return False
            elif self.state in (LENGTH, CHUNK_DATA):
                take = min(self.remaining, len(self.buf))
                del self.buf[:take]
                self.remaining -= take
                if self.remaining:
                    return False
                if self.state == LENGTH:
                    return True
                self.state = CHUNK_SIZE
            elif self.state == CHUNK_SIZE:
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return False
                size = int(bytes(self.buf[:end]).split(b";", 1)[0], 16)
                del self.buf[: end + 2]
                if size == 0:
                    self.state = TRAILERS
                else:
                    self.state, self.remaining = CHUNK_DATA, size + 2  # data + CRLF
            elif self.state == TRAILERS:
                if self.buf[:2] == b"\r\n":
                    del self.buf[:2]
                    return True
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return False
                del self.buf[: end + 4]
                return True
            else:  # UNTIL_EOF
                self.buf.clear()
                return False

    def _parse_head(self) -> bool:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                raise ValueError("response head too large")
            return False
        head = bytes(self.buf[:end])
        del self.buf[: end + 4]
        status_line, _, header_block = head.partition(b"\r\n")
        version, status, _ = (status_line.split(b" ", 2) + [b"", b""])[:3]
        self.status = int(status)
        if 100 <= self.status < 200:
            return True  # interim response (100 Continue): the real head follows
        length: int | None = None
        chunked = False
        connection = b""
        for line in header_block.split(b"\r\n"):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                connection = value.strip().lower()
        if version == b"HTTP/1.1":
            self.keep_alive = b"close" not in connection
        else:
            self.keep_alive = b"keep-alive" in connection
        if self.status in (204, 304):
            self.state, self.remaining, self.framing = LENGTH, 0, "no-body"
        elif chunked:
            self.state, self.framing = CHUNK_SIZE, "chunked"
        elif length is not None:
            self.state, self.remaining, self.framing = LENGTH, length, "content-length"
        else:
            self.state, self.framing = UNTIL_EOF, "close-delimited"
            self.keep_alive = False
        return True


class _Conn:
    """One client: a socket that is reopened whenever the server closes it."""

    def __init__(self, index: int, request: bytes) -> None:
        self.index = index
        self.request = request
        self.sock: socket.socket | None = None
        self.state = CONNECTING
        self.out = memoryview(request)
        self.reader = ResponseReader()
        self.started = 0.0
        self.served = 0
        self.got_bytes = False
        self.events = 0  # what the selector watches for, to skip no-op modify() calls


class _Loop:
    """The selector loop shared by the fairness client, warm-up and fallback load."""

    def __init__(self, port: int, request: bytes, connections: int) -> None:
        self.port = port
        self.sel = selectors.DefaultSelector()
        self.conns = [_Conn(i, request) for i in range(connections)]
        self.result = ClientResult(duration_s=0.0, served_per_conn=[])

    def run(self, duration_s: float, max_requests: int) -> ClientResult:
        # A full collection in this process (the runner holds every result so
        # far) stalls all 50 clients at once and would count as the server's
        # latency; the loop makes no reference cycles, so nothing piles up.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        begin = time.perf_counter()
        deadline = begin + duration_s
        for conn in self.conns:
            self._open(conn, begin)
        try:
            while self.result.completed < max_requests:
                now = time.perf_counter()
                if now >= deadline:
                    break
                for key, mask in self.sel.select(min(0.05, deadline - now)):
                    self._on_event(key.data, mask)
        finally:
            end = time.perf_counter()
            self._close_all(end)
            if gc_was_enabled:
                gc.enable()
        self.result.duration_s = end - begin
        self.result.served_per_conn = [c.served for c in self.conns]
        return self.result

    def _open(self, conn: _Conn, started: float) -> None:
        # Non-blocking connect: a full accept backlog must stall this one
        # client (SYN retry), not every client in the loop.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex((HOST, self.port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            raise OSError(err, f"connect to {HOST}:{self.port} failed")
        conn.sock = sock
        conn.state = CONNECTING
        conn.out = memoryview(conn.request)
        conn.reader.reset()
        conn.got_bytes = False
        conn.started = started
        conn.events = selectors.EVENT_WRITE
        self.sel.register(sock, conn.events, conn)

    def _reopen(self, conn: _Conn, started: float) -> None:
        self._drop(conn)
        self.result.reconnects += 1
        self._open(conn, started)

    def _drop(self, conn: _Conn) -> None:
        if conn.sock is not None:
            self.sel.unregister(conn.sock)
            conn.sock.close()
            conn.sock = None

    def _on_event(self, conn: _Conn, mask: int) -> None:
        assert conn.sock is not None
        try:
            if conn.state == CONNECTING:
                err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, "connect failed")
                conn.state = SENDING
            if conn.state == SENDING:
                self._send(conn)
            elif conn.state == READING and mask & selectors.EVENT_READ:
                self._receive(conn)
        except (OSError, ValueError):
            self._on_failure(conn)

    def _send(self, conn: _Conn) -> None:
        assert conn.sock is not None
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            sent = 0
        conn.out = conn.out[sent:]
        if not conn.out:
            conn.state = READING
            self._watch(conn, selectors.EVENT_READ)
        else:
            self._watch(conn, selectors.EVENT_WRITE)

    def _watch(self, conn: _Conn, events: int) -> None:
        # One epoll_ctl per request would be a fifth of this loop's cost on
        # keep-alive, and most requests go out in one send() anyway.
        if conn.events != events and conn.sock is not None:
            conn.events = events
            self.sel.modify(conn.sock, events, conn)

    def _receive(self, conn: _Conn) -> None:
        assert conn.sock is not None
        try:
            data = conn.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        if not data:
            self._on_eof(conn)
            return
        conn.got_bytes = True
        self.result.bytes_received += len(data)
        if conn.reader.feed(data):
            self._complete(conn, keep_open=conn.reader.keep_alive)

    def _on_eof(self, conn: _Conn) -> None:
        if conn.reader.feed_eof():
            self._complete(conn, keep_open=False)
        elif not conn.got_bytes:
            # The server closed an idle keep-alive connection just as this
            # request went out (its keep-alive timeout or request limit):
            # retry on a new connection, keeping the original start time.
            self._reopen(conn, conn.started)
        else:
            self._on_failure(conn)

    def _on_failure(self, conn: _Conn) -> None:
        if conn.state == READING and not conn.got_bytes and conn.served:
            self._reopen(conn, conn.started)  # reset instead of EOF: same case as above
            return
        self.result.errors += 1
        self._reopen(conn, time.perf_counter())

    def _complete(self, conn: _Conn, keep_open: bool) -> None:
        now = time.perf_counter()
        self.result.latencies_s.append(now - conn.started)
        if conn.reader.status != 200:
            self.result.non_200 += 1
        conn.served += 1
        if not keep_open:
            self._reopen(conn, now)
            return
        # Next request right away on the same connection; the latency clock
        # starts now, as it would for a client that always has work queued.
        conn.started = now
        conn.out = memoryview(conn.request)
        conn.reader.reset()
        conn.got_bytes = False
        conn.state = SENDING
        self._send(conn)

    def _close_all(self, now: float) -> None:
        for conn in self.conns:
            if conn.sock is not None:
                # Every open connection has a request in flight. One still
                # unanswered at the deadline: a starved client has waited at
                # least this long, so it must show in "max".
                self.result.pending_s.append(now - conn.started)
            self._drop(conn)
        self.sel.close()


def run_client(
    port: int,
    request: bytes,
    *,
    connections: int,
    duration_s: float,
    max_requests: int = DEFAULT_MAX_REQUESTS,
) -> ClientResult:
    """Drive `connections` clients from this process for `duration_s` seconds."""
    return _Loop(port, request, connections).run(duration_s, max_requests)


def _run_client_args(args: tuple[int, bytes, int, float, int]) -> ClientResult:
    port, request, connections, duration_s, max_requests = args
    return run_client(
        port, request, connections=connections, duration_s=duration_s, max_requests=max_requests
    )


def run_load(
    port: int,
    request: bytes,
    *,
    connections: int,
    duration_s: float,
    processes: int,
    max_requests: int = DEFAULT_MAX_REQUESTS,
) -> ClientResult:
    """The fallback load generator: `connections` spread over `processes` processes."""
    processes = max(1, min(processes, connections))
    shares = [connections // processes + (i < connections % processes) for i in range(processes)]
    jobs = [(port, request, share, duration_s, max_requests // processes) for share in shares]
    if processes == 1:
        return _run_client_args(jobs[0])
    # fork: the children need nothing but this module, already imported.
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(processes) as pool:
        parts = pool.map_async(_run_client_args, jobs).get(timeout=duration_s + 30)
    result = parts[0]
    for part in parts[1:]:
        result = result.merge(part)
    return result


def get_status(port: int, timeout_s: float = 1.0, path: str = "/",
               tls: ssl.SSLContext | None = None) -> int | None:
    """One blocking GET with `Connection: close`; the status code, or None if no answer.

    `tls`: the client context for a server started with --certfile.
    """
    request = build_request(port, path=path, close=True)
    try:
        sock = socket.create_connection((HOST, port), timeout=timeout_s)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=HOST)
        with sock:
            sock.sendall(request)
            reader = ResponseReader()
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                data = sock.recv(RECV_SIZE)
                if not data:
                    return reader.status if reader.feed_eof() or reader.status else None
                if reader.feed(data) or reader.state != HEAD:
                    return reader.status
    except (OSError, ValueError):
        return None
    return None


def fetch_once(port: int, request: bytes, timeout_s: float = 5.0) -> tuple[int, str]:
    """Send one request; its status and body framing ("chunked", ...), or (0, why)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
            sock.sendall(request)
            reader = ResponseReader()
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                data = sock.recv(RECV_SIZE)
                if (not data and reader.feed_eof()) or (data and reader.feed(data)):
                    return reader.status, reader.framing
                if not data:
                    return 0, "closed before the response ended"
    except (OSError, ValueError) as exc:
        return 0, f"error: {exc}"
    return 0, "timed out"
