"""No upload holds a worker: bodies are received parked before the app runs.

Real forkserve processes, raw sockets and `requests` (issue #12). Two
workers face three uploads that announce `Expect: 100-continue` and never
send their body, and three large uploads that stall half-way; a plain GET
must still be answered at once, and a large upload that does arrive reaches
the app whole, seekable, through the spool file.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support import Server, fd_targets, serve, status_of

pytestmark = pytest.mark.process

BUFFER = 65536  # --body-buffer-size: a large upload is anything past it
GET_WITHIN = 10.0  # generous on a loaded box; a held worker would take --timeout (30 s)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, http_parser: str) -> Iterator[Server]:
    spool_dir = tmp_path_factory.mktemp("spool")
    with serve("fault_apps:faulty", "--workers", "2", "--body-buffer-size", str(BUFFER),
               "--timeout", "30", "--body-timeout", "60", "--stream-body-path", "/stream/",
               env={"TMPDIR": str(spool_dir)}, wait_workers=2, http=http_parser) as server:
        assert f"Using parser: {http_parser} " in server.log  # the parametrisation took
        server.spool_dir = spool_dir  # type: ignore[attr-defined]
        yield server


def read_head(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    return data


def read_answer(sock: socket.socket, timeout: float = 10) -> bytes:
    """Read until the upload app's answer ends ("... seekable" / "... stream") or EOF."""
    answer = read_head(sock, timeout)
    while answer and not answer.endswith((b"seekable", b"stream")):
        piece = sock.recv(65536)
        if not piece:
            break
        answer += piece
    return answer


def test_stalled_uploads_hold_no_worker(server: Server) -> None:
    stalled: list[socket.socket] = []
    try:
        for _ in range(3):
            sock = socket.create_connection(server.address, timeout=10)
            stalled.append(sock)
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n"
                         b"Expect: 100-continue\r\n\r\n")
            # Asked for at once, while the connection is parked: no app involved.
            assert read_head(sock, 10).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        for _ in range(3):
            sock = socket.create_connection(server.address, timeout=10)
            stalled.append(sock)
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\n"
                         + b"x" * (4 * BUFFER))  # past the memory buffer, then nothing
        time.sleep(0.5)
        started = time.monotonic()
        with requests.Session() as session:
            for _ in range(4):  # each worker, whichever the kernel picks
                response = session.get(server.url + "/ok", timeout=GET_WITHIN)
                assert response.text == "ok"
                session.close()  # a new connection each time
        assert time.monotonic() - started < GET_WITHIN
        # The stalled ones are still waited for (no 408 before --body-timeout).
        for sock in stalled:
            sock.settimeout(0.05)
            with pytest.raises(TimeoutError):
                sock.recv(1)
    finally:
        for sock in stalled:
            sock.close()


def test_a_large_upload_reaches_the_app_whole_and_seekable(server: Server) -> None:
    body = os.urandom(5 * BUFFER + 123)
    seen_spool = []
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n"
                     b"Expect: 100-continue\r\n\r\n" % len(body))
        assert read_head(sock, 10).startswith(b"HTTP/1.1 100 Continue")
        half = len(body) // 2
        sock.sendall(body[:half])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not seen_spool:
            seen_spool = list(_open_spools(server))
            time.sleep(0.02)
        sock.sendall(body[half:])
        answer = read_answer(sock)
    assert status_of(answer) == 200
    assert answer.endswith(b"%d seekable" % len(body))
    assert seen_spool, "the body past --body-buffer-size was not spooled to a file"


def _open_spools(server: Server) -> Iterator[str]:
    """Files under the server's TMPDIR that a worker holds open (anonymous temp files)."""
    spool_dir = str(server.spool_dir)  # type: ignore[attr-defined]
    for pid in server.worker_pids():
        for target in fd_targets(pid):
            if target.startswith(spool_dir):
                yield target


def test_a_stream_path_gets_its_body_as_it_arrives(server: Server) -> None:
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"POST /stream/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
        time.sleep(0.3)  # the app is running by now, reading as the body comes
        sock.sendall(b"hello")
        answer = read_answer(sock)
    assert answer.endswith(b"5 stream")


def test_a_stream_path_sends_100_continue_only_when_the_app_reads(server: Server) -> None:
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"POST /stream/ignore HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        answer = read_head(sock, 10)
        while not answer.endswith(b"ignored"):
            piece = sock.recv(65536)
            assert piece
            answer += piece
    assert status_of(answer) == 200  # no 100 first: the app never asked for the body
    assert b"connection: close" in answer.lower()  # the body will not come


def test_body_timeout_counts_inactivity(tmp_path: Path) -> None:
    with serve("fault_apps:faulty", "--workers", "1", "--body-timeout", "1.5",
               wait_workers=1) as server:
        with socket.create_connection(server.address, timeout=15) as sock:
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\n\r\n")
            for byte in b"abcdefg":  # 7 bytes, 0.5 s apart: 3.5 s > --body-timeout in all
                sock.sendall(bytes([byte]))
                time.sleep(0.5)
            sock.sendall(b"h")
            answer = read_answer(sock)
        assert answer.endswith(b"8 seekable")
        with socket.create_connection(server.address, timeout=15) as sock:
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\n\r\nab")
            assert status_of(read_head(sock, 10)) == 408  # silent for longer than 1.5 s
