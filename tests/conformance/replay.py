"""Replaying raw requests against a real forkserve and reading what comes back.

A request is sent whole, line by line, byte by byte or in random chunks
(`split`); the answer is read as a sequence of HTTP/1.1 responses plus
whether the server closed the connection.
"""

from __future__ import annotations

import json
import random
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import Server

MODES = ("whole", "lines", "bytes", "random")
READ_TIMEOUT = 5.0
PAUSE = 0.0005  # between pieces, so the server sees them in separate reads

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) [^\r\n]*\r\n")


@dataclass
class Target:
    """A running worker under test and the file its echo app appends a line to per hit."""

    server: Server
    hits: Path

    def hit_count(self) -> int:
        return len(self.hits.read_bytes().splitlines())


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def echo(self) -> dict[str, Any]:
        """The echo app's JSON (tests/apps/hardening_apps.py)."""
        data: dict[str, Any] = json.loads(self.body)
        return data

    @property
    def says_close(self) -> bool:
        return "close" in self.headers.get("connection", "").lower()


@dataclass
class Exchange:
    responses: list[Response]
    closed: bool  # the server closed (FIN or RST) within the read timeout
    garbage: bytes = b""  # bytes that did not parse as a response (must stay empty)

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


def split(data: bytes, mode: str, seed: str = "") -> list[bytes]:
    if mode == "whole":
        return [data]
    if mode == "lines":
        return [line for line in data.splitlines(keepends=True) if line]
    if mode == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(f"{seed}:{len(data)}")
    pieces, pos = [], 0
    while pos < len(data):
        step = rng.randint(1, 16)
        pieces.append(data[pos : pos + step])
        pos += step
    return pieces


def _parse_one(buf: bytes) -> tuple[Response, int] | None:
    """One complete response at the start of `buf` (and its length), or None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    m = _STATUS_LINE.match(buf)
    if m is None:
        raise ValueError(f"not a response: {buf[:80]!r}")
    headers: dict[str, str] = {}
    for line in buf[m.end() : end].split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            headers[name.decode("latin-1").lower()] = value.decode("latin-1").strip()
    status = int(m.group(1))
    pos = end + 4
    if 100 <= status < 200:
        return Response(status, headers), pos
    if "content-length" in headers:
        length = int(headers["content-length"])
        if len(buf) < pos + length:
            return None
        return Response(status, headers, buf[pos : pos + length]), pos + length
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            lf = buf.find(b"\r\n", pos)
            if lf < 0:
                return None
            size = int(buf[pos:lf].split(b";")[0], 16)
            if len(buf) < lf + 2 + size + 2:
                return None
            body += buf[lf + 2 : lf + 2 + size]
            pos = lf + 2 + size + 2
            if size == 0:
                return Response(status, headers, body), pos
    raise ValueError("response without framing")


def converse(
    sock: socket.socket,
    pieces: list[bytes],
    want: int,
    expect_close: bool,
    half_close: bool = False,
    timeout: float = READ_TIMEOUT,
) -> Exchange:
    """Send `pieces`, then read until `want` final responses (and EOF if `expect_close`)."""
    # Pause between pieces so the server sees them in separate reads; for long
    # inputs only every few pieces, to keep the whole corpus fast.
    every = max(1, len(pieces) // 64)
    for i, piece in enumerate(pieces):
        try:
            sock.sendall(piece)
        except OSError:
            break  # the server refused and closed while we were still sending
        if i + 1 < len(pieces) and i % every == 0:
            time.sleep(PAUSE)
    if half_close:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    return read_responses(sock, want, expect_close, timeout)


def read_responses(sock: socket.socket, want: int, expect_close: bool,
                   timeout: float = READ_TIMEOUT) -> Exchange:
    deadline = time.monotonic() + timeout
    buf = b""
    responses: list[Response] = []
    closed = False
    while True:
        while True:
            parsed = _parse_one(buf)
            if parsed is None:
                break
            response, used = parsed
            buf = buf[used:]
            if response.status >= 200:
                responses.append(response)
        if closed or (len(responses) >= want and not expect_close):
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except OSError:  # ECONNRESET: closed, perhaps before we read everything
            closed = True
            continue
        if not chunk:
            closed = True
        buf += chunk
    return Exchange(responses, closed, buf)


def replay(address: tuple[str, int], data: bytes, mode: str, want: int, expect_close: bool,
           half_close: bool = False, seed: str = "") -> Exchange:
    with socket.create_connection(address, timeout=READ_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return converse(sock, split(data, mode, seed), want, expect_close, half_close)


# -- the peer corpus file format (../shared/conformance/README.md) --------------

_HEX = re.compile(rb"\\x([0-9A-Fa-f]{2})")


def decode_peer_case(text: bytes) -> bytes:
    """gunicorn's .http text -> wire bytes, in the README's order."""
    data = text.replace(b"\r\n", b"").replace(b"\n", b"")
    data = data.replace(b"\\r\\n", b"\r\n")
    data = data.replace(b"\\0", b"\x00").replace(b"\\n", b"\n").replace(b"\\t", b"\t")
    return _HEX.sub(lambda m: bytes([int(m.group(1), 16)]), data)
