"""Requests the server refuses itself: judged at once, answered 400, and logged.

Real forkserve processes, raw sockets (issue #12). The header timeout is set
far above the time each answer is allowed, so an answer that came only at
the timeout (a 408) fails the test.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from tests.support import Server, serve, status_of

pytestmark = pytest.mark.process

HEADER_TIMEOUT = "120"
ANSWER_WITHIN = 15.0  # generous for a loaded box, far below HEADER_TIMEOUT


@pytest.fixture(scope="module")
def server(http_parser: str) -> Iterator[Server]:
    with serve("fault_apps:faulty", "--workers", "1", "--header-timeout", HEADER_TIMEOUT,
               "--access-logfile", "-", wait_workers=1, http=http_parser) as server:
        assert f"Using parser: {http_parser} " in server.log  # the parametrisation took
        yield server


def client_hello() -> bytes:
    """The first flight of a real TLS client (Python's ssl), as it would hit the port."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[0] == 0x16
    return hello


def ask(server: Server, data: bytes) -> tuple[bytes, float]:
    """Send `data` without closing our side; return the answer and how long it took."""
    started = time.monotonic()
    with socket.create_connection(server.address, timeout=ANSWER_WITHIN) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while True:
                piece = sock.recv(65536)
                if not piece:
                    break
                answer += piece
        except TimeoutError:
            pytest.fail(f"no answer (or no close) within {ANSWER_WITHIN}s: {answer!r}")
        except ConnectionResetError:
            pass
    return answer, time.monotonic() - started


@pytest.mark.parametrize("data", [
    pytest.param(b"GET /\r\n", id="http09"),
    pytest.param(b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n", id="ssh-banner"),
    pytest.param(b"GET /\r HTTP/1.1\r\n", id="bare-cr-in-line"),
    pytest.param(b"GET / HTTP/1.1\rHost: a", id="bare-cr-no-lf"),
    pytest.param(b"\x00" * 64, id="nul-bytes"),
    pytest.param(b"GET / HTTP/1.1\x00\r\n", id="nul-in-line"),
])
def test_an_invalid_first_line_is_refused_at_once(server: Server, data: bytes) -> None:
    answer, _ = ask(server, data)
    assert status_of(answer) == 400, answer


def test_tls_on_the_plain_port_is_told_so(server: Server) -> None:
    answer, _ = ask(server, client_hello())
    assert status_of(answer) == 400
    assert b"This port speaks plain HTTP" in answer
    server.wait_for_log(r"refused 400 from 127\.0\.0\.1:\d+: TLS handshake on the plain HTTP port")


def test_a_valid_head_in_pieces_is_still_served(server: Server) -> None:
    with socket.create_connection(server.address, timeout=ANSWER_WITHIN) as sock:
        for piece in (b"G", b"ET /o", b"k HTTP/1.1\r", b"\nHost: a\r\n", b"\r\n"):
            sock.sendall(piece)
            time.sleep(0.05)
        answer = sock.recv(65536)
    assert status_of(answer) == 200 and answer.endswith(b"ok")


@pytest.mark.parametrize("version", [b"1.2", b"1.9"])
def test_a_later_http1_minor_is_served_as_http11(server: Server, version: bytes) -> None:
    with socket.create_connection(server.address, timeout=ANSWER_WITHIN) as sock:
        sock.sendall(b"GET /protocol HTTP/%s\r\nHost: a\r\n\r\n" % version)
        answer = sock.recv(65536)
        assert status_of(answer) == 200
        assert answer.endswith(b"\r\n\r\nHTTP/1.1")  # SERVER_PROTOCOL as the app sees it
        # A persistent HTTP/1.1 connection: a second request on it is served.
        sock.sendall(b"GET /ok HTTP/%s\r\nHost: a\r\n\r\n" % version)
        assert sock.recv(65536).endswith(b"ok")


@pytest.mark.parametrize("version", [b"2.0", b"3.0"])
def test_http2_and_up_stay_505(server: Server, version: bytes) -> None:
    answer, _ = ask(server, b"GET /ok HTTP/%s\r\nHost: a\r\n\r\n" % version)
    assert status_of(answer) == 505


def test_refused_requests_are_in_the_access_log_and_the_error_log(server: Server) -> None:
    smuggle = (b"POST /smuggle HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    answer, _ = ask(server, smuggle)
    assert status_of(answer) == 400
    size = len(answer.partition(b"\r\n\r\n")[2])
    log = server.wait_for_log(r'"POST /smuggle HTTP/1\.1" 400 ')
    assert re.search(rf'"POST /smuggle HTTP/1\.1" 400 {size} ', log)
    assert re.search(r"\[INFO\] refused 400 from 127\.0\.0\.1:\d+: both Content-Length and "
                     r"Transfer-Encoding \(POST /smuggle HTTP/1\.1\)", log)
    # No request line was read: the access log says "-".
    answer, _ = ask(server, b"\x00" * 64)
    assert status_of(answer) == 400
    log = server.wait_for_log(r'\] "-" 400 \d+ ')
    assert re.search(r"\[INFO\] refused 400 from 127\.0\.0\.1:\d+: request does not begin "
                     r"with a method \(-\)", log)
