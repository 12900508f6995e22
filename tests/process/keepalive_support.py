"""Clients that keep their connections alive, for the keep-alive process tests (issue 11).

Three kinds, used as users use them: `requests.Session` loops (urllib3's pool,
which reuses a connection until the server closes it), bare urllib3
`PoolManager` loops with retries disabled (so no error is hidden by a retry),
and raw sockets that send request after request on one connection and open a
new one only after a response that says `Connection: close`. All count every request that got no
response as a failure, whatever the cause (a reset, a close before the
response, a timeout).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass, field

import requests
import urllib3

CLOSE_RE = re.compile(rb"(?i)\r\nconnection: *close\r\n")
LENGTH_RE = re.compile(rb"(?i)\r\ncontent-length: *(\d+)\r\n")


def read_response(sock: socket.socket, buf: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """One response with a Content-Length from `sock`: (head, body, bytes left over)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before the response ({len(buf)} bytes)")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    m = LENGTH_RE.search(head + b"\r\n")
    length = int(m.group(1)) if m else 0
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the middle of the body")
        rest += chunk
    return head, rest[:length], rest[length:]


@dataclass
class KeepAliveClients:
    """`sessions` requests.Session, `pools` urllib3 and `sockets` raw-socket loops, in threads.

    `ok` counts answered requests; `failures` lists every request that was sent
    and got no complete response. `refused` counts connection attempts that
    failed before a request was sent (only expected once the port closes, on a
    TERM), and, with `port_closing`, new connections reset at their first
    request; those are not requests that reached the server.
    """

    url: str
    address: tuple[str, int]
    sessions: int = 2
    sockets: int = 2
    pools: int = 0
    path: str = "/pid"
    ok: int = 0
    refused: int = 0
    failures: list[str] = field(default_factory=list)
    closes_seen: int = 0
    # Set once the server stops for good (TERM to the master): from then on a
    # reset on the first request of a new connection counts as `refused`.
    port_closing: bool = False

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._session_loop, daemon=True)
                         for _ in range(self.sessions)]
        self._threads += [threading.Thread(target=self._socket_loop, daemon=True)
                          for _ in range(self.sockets)]
        self._threads += [threading.Thread(target=self._pool_loop, daemon=True)
                          for _ in range(self.pools)]

    def _count(self, ok: bool, failure: str = "") -> None:
        with self._lock:
            if ok:
                self.ok += 1
            else:
                self.failures.append(failure)

    def _session_loop(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            try:
                r = session.get(self.url + self.path, timeout=10)
            except requests.ConnectionError as exc:
                if "refused" in str(exc).lower():
                    with self._lock:
                        self.refused += 1
                    time.sleep(0.01)
                    continue
                self._count(False, f"session: {type(exc).__name__}: {exc}")
                continue
            except Exception as exc:
                self._count(False, f"session: {type(exc).__name__}: {exc}")
                continue
            self._count(r.status_code == 200, f"session: status {r.status_code}")
        session.close()

    def _pool_loop(self) -> None:
        # One kept-alive connection per loop, as an app's client library holds
        # it. retries=False: urllib3 raises whatever went wrong on a request
        # instead of sending it again. (It still opens a new connection when
        # the pooled one was closed by the server before this request, or
        # after a response that said Connection: close: that is no retry.)
        pool = urllib3.PoolManager(maxsize=1, block=True, retries=False,
                                   timeout=urllib3.Timeout(connect=10, read=10))
        while not self._stop.is_set():
            try:
                r = pool.request("GET", self.url + self.path)
            except urllib3.exceptions.NewConnectionError as exc:
                if "refused" in str(exc).lower():
                    with self._lock:
                        self.refused += 1
                    time.sleep(0.01)
                    continue
                self._count(False, f"pool: {type(exc).__name__}: {exc}")
                continue
            except Exception as exc:
                self._count(False, f"pool: {type(exc).__name__}: {exc}")
                continue
            self._count(r.status == 200, f"pool: status {r.status}")
        pool.clear()

    def _socket_loop(self) -> None:
        sock: socket.socket | None = None
        buf = b""
        fresh = True  # no response yet on this connection
        request = f"GET {self.path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()
        while not self._stop.is_set():
            if sock is None:
                try:
                    sock = socket.create_connection(self.address, timeout=10)
                except OSError:
                    with self._lock:
                        self.refused += 1
                    time.sleep(0.01)
                    continue
                buf = b""
                fresh = True
            try:
                sock.sendall(request)
                head, _body, buf = read_response(sock, buf)
            except OSError as exc:
                if (fresh and self.port_closing and isinstance(exc, ConnectionResetError)):
                    # A handshake still unfinished when the last worker took
                    # its last connections, reset when the last copy of the
                    # socket closed: no process ever had it. A stop refuses
                    # new handshakes and waits up to 1 s for those under way,
                    # so only a stalled one can (docs/signals.md, "What
                    # happens to connections on a stop").
                    with self._lock:
                        self.refused += 1
                else:
                    self._count(False, f"socket: {type(exc).__name__}: {exc}")
                sock.close()
                sock = None
                continue
            fresh = False
            self._count(head.startswith(b"HTTP/1.1 200 "), f"socket: {head[:40]!r}")
            if CLOSE_RE.search(head + b"\r\n"):
                with self._lock:
                    self.closes_seen += 1
                sock.close()
                sock = None
        if sock is not None:
            sock.close()

    def __enter__(self) -> KeepAliveClients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)

    def wait_for(self, answered: int, timeout: float = 10.0) -> None:
        """Wait until `answered` more requests got their response."""
        deadline = time.monotonic() + timeout
        start = self.ok
        while self.ok - start < answered and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.ok - start >= answered, f"only {self.ok - start} answered in {timeout}s"


class FastLoops:
    """`clients` requests.Session loops on a fast URL, recording each request's latency.

    `verify`: the CA file for an HTTPS URL. Subclasses look into each 200
    answer by overriding `answered`.
    """

    def __init__(self, url: str, clients: int, verify: str | bool = True) -> None:
        self.url = url
        self.verify = verify
        self.latencies: list[tuple[float, float]] = []  # (start, duration)
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True)
                         for _ in range(clients)]

    def _loop(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    # verify= on each request: a REQUESTS_CA_BUNDLE in the
                    # environment would override Session.verify.
                    r = session.get(self.url, timeout=15, verify=self.verify)
                except requests.RequestException as exc:
                    self.failures.append(repr(exc))
                    continue
                self.latencies.append((t0, time.monotonic() - t0))
                if r.status_code != 200:
                    self.failures.append(f"status {r.status_code}")
                else:
                    self.answered(r)
                time.sleep(0.005)

    def answered(self, response: requests.Response) -> None:
        """A 200 answer (client thread)."""

    def __enter__(self) -> FastLoops:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(20)

    def worst_since(self, since: float) -> float:
        return max(d for t0, d in self.latencies if t0 >= since)

    def count(self) -> int:
        return len(self.latencies)
