"""Trusted proxies and TLS, end to end on real workers.

- X-Forwarded-For/-Proto and Forwarded change the environ only from peers in
  --forwarded-allow-ips (also FORWARDED_ALLOW_IPS); from anyone else they are
  plain headers;
- --proxy-protocol takes the client address from a PROXY v1/v2 header sent by
  a peer in --proxy-allow-ips, and closes on a malformed one;
- --certfile/--keyfile serve HTTPS (a certificate made at test time), with
  wsgi.url_scheme https, keep-alive, chunked bodies, large responses and file
  wrappers (no sendfile under TLS); a handshake that never completes is cut
  at the head timeout, and plain HTTP on the TLS port is closed without harm.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance.replay import converse, read_responses, replay
from tests.support import TESTS, Server, self_signed_certificate, serve

# Every test twice: sync workers, then --threads 4 (tests/conftest.py).
pytestmark = [pytest.mark.process, pytest.mark.usefixtures("worker_threads")]

FORWARDED = (b"GET /f HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.7, 203.0.113.5\r\n"
             b"X-Forwarded-Proto: https\r\n\r\n")


def echo_of(address: tuple[str, int], request: bytes) -> dict:
    exchange = replay(address, request, "whole", want=1, expect_close=False)
    assert exchange.statuses == [200], exchange.statuses
    return exchange.responses[0].echo()


def test_forwarded_headers_from_a_trusted_proxy() -> None:
    with serve("hardening_apps:echo") as server:  # default: 127.0.0.1 and ::1 are trusted
        echo = echo_of(server.address, FORWARDED)
        assert echo["scheme"] == "https"
        assert echo["remote_addr"] == "203.0.113.5"  # the rightmost untrusted hop
        assert echo["headers"]["HTTP_X_FORWARDED_FOR"] == "198.51.100.7, 203.0.113.5"
        # proxies disagreeing about the scheme: refused, never guessed
        conflict = replay(server.address, b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: "
                          b"https\r\nForwarded: proto=http\r\n\r\n", "whole", 1, True)
        assert conflict.statuses == [400] and conflict.closed


def test_forwarded_headers_from_anyone_else_change_nothing() -> None:
    with serve("hardening_apps:echo", env={"FORWARDED_ALLOW_IPS": "10.0.0.0/8"}) as server:
        echo = echo_of(server.address, FORWARDED + b"")
        assert echo["scheme"] == "http"
        assert echo["remote_addr"] == "127.0.0.1"
        assert echo["headers"]["HTTP_X_FORWARDED_PROTO"] == "https"  # passed through as-is


def proxy_v2(src: str, port: int) -> bytes:
    payload = (ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address("10.0.0.1").packed
               + struct.pack("!HH", port, 443))
    return b"\r\n\r\n\x00\r\nQUIT\n\x21\x11" + struct.pack("!H", len(payload)) + payload


def test_proxy_protocol() -> None:
    request = b"GET /p HTTP/1.1\r\nHost: a\r\n\r\n"
    with serve("hardening_apps:echo", "--proxy-protocol") as server:
        address = server.address
        echo = echo_of(address, b"PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\n" + request)
        assert (echo["remote_addr"], echo["remote_port"]) == ("192.0.2.1", "56324")
        echo = echo_of(address, b"PROXY TCP6 2001:db8::1 2001:db8::2 4711 443\r\n" + request)
        assert (echo["remote_addr"], echo["remote_port"]) == ("2001:db8::1", "4711")
        echo = echo_of(address, proxy_v2("192.0.2.9", 1234) + request)
        assert (echo["remote_addr"], echo["remote_port"]) == ("192.0.2.9", "1234")
        # the header comes once per connection; keep-alive requests keep its address
        with socket.create_connection(address, timeout=5) as sock:
            first = converse(sock, [b"PROXY TCP4 192.0.2.3 192.0.2.2 1 2\r\n", request], 1,
                             expect_close=False)
            sock.sendall(request)
            second = read_responses(sock, 1, expect_close=False)
        assert [r.echo()["remote_addr"] for r in first.responses + second.responses] == [
            "192.0.2.3", "192.0.2.3"]
        # malformed, or missing, from a peer that must send it: closed, no answer
        for bad in [b"PROXY TCP4 192.0.2.1 192.16...\r\n", b"PROXY TCP4 x y 1 2\r\n", b""]:
            exchange = replay(address, bad + request, "whole", 1, expect_close=True)
            assert exchange.statuses == [] and exchange.closed
        assert "Traceback" not in server.log


def test_proxy_header_from_an_untrusted_peer_is_plain_http() -> None:
    with serve("hardening_apps:echo", "--proxy-protocol", "--proxy-allow-ips",
               "10.0.0.0/8") as server:
        echo = echo_of(server.address, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert echo["remote_addr"] == "127.0.0.1"
        spoof = replay(server.address, b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\nGET / HTTP/1.1"
                       b"\r\nHost: a\r\n\r\n", "whole", 1, expect_close=True)
        assert spoof.statuses == [400]


# -- TLS ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pytest.importorskip("cryptography.x509")
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(certificate: tuple[Path, Path], worker_threads: int) -> Iterator[Server]:
    certfile, keyfile = certificate
    with serve("hardening_apps:slow_clients", "--workers", "2", "--certfile", str(certfile),
               "--keyfile", str(keyfile), "--header-timeout", "1", wait_workers=2) as server:
        yield server


def tls_connect(server: Server, certfile: Path) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(certfile))
    raw = socket.create_connection(server.address, timeout=10)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def test_https_requests(tls_server: Server, certificate: tuple[Path, Path]) -> None:
    certfile = certificate[0]
    pids = tls_server.worker_pids()
    with tls_connect(tls_server, certfile) as sock:
        body = b"x" * 100_000
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        first = converse(sock, [b"GET /a?b=1 HTTP/1.1\r\nHost: localhost\r\n\r\n"], 1, False)
        echo = first.responses[0].echo()
        assert (echo["scheme"], echo["path"], echo["server_name"]) == ("https", "/a", "localhost")
        # keep-alive, and a chunked body in many TLS records
        second = converse(sock, [b"POST /up HTTP/1.1\r\nHost: localhost\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n" + chunked], 1, False)
        assert second.responses[0].echo()["body"] == body.decode()
        # a large response: many non-blocking TLS writes
        big = converse(sock, [b"GET /big?64 HTTP/1.1\r\nHost: localhost\r\n\r\n"], 1, False)
        assert big.responses[0].body == b"x" * (64 * 65536)
        # a file wrapper is read and encrypted, not sendfile'd past TLS
        wrapped = converse(sock, [b"GET /file HTTP/1.1\r\nHost: localhost\r\n\r\n"], 1, False)
        assert wrapped.responses[0].body == (TESTS / "apps" / "hardening_apps.py").read_bytes()
    assert tls_server.worker_pids() == pids


def test_plain_http_to_the_tls_port_is_closed(tls_server: Server,
                                              certificate: tuple[Path, Path]) -> None:
    pids = tls_server.worker_pids()
    exchange = replay(tls_server.address, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "whole", 1,
                      expect_close=True)
    assert exchange.statuses == [] and exchange.closed
    with tls_connect(tls_server, certificate[0]) as sock:
        again = converse(sock, [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"], 1, False)
        assert again.statuses == [200]
    assert tls_server.worker_pids() == pids
    assert "Traceback" not in tls_server.log


def test_stalled_handshake_is_cut_at_the_head_timeout(tls_server: Server,
                                                       certificate: tuple[Path, Path]) -> None:
    with socket.create_connection(tls_server.address, timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then nothing
        started = time.monotonic()
        try:
            data = sock.recv(1024)
        except ConnectionResetError:
            data = b""
        elapsed = time.monotonic() - started
    assert data == b""
    assert 0.5 <= elapsed <= 3.0, elapsed
    # meanwhile and afterwards, HTTPS works
    with tls_connect(tls_server, certificate[0]) as sock:
        assert converse(sock, [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"], 1, False).statuses == [200]


def test_bad_certificate_is_one_line_and_an_exit(tmp_path: Path) -> None:
    server = Server("hardening_apps:echo", "--certfile", str(tmp_path / "missing.pem"))
    server.start(expect_ready=False)
    try:
        assert server.wait_exit(15) != 0
        assert "--certfile" in server.log and "Traceback" not in server.log
    finally:
        server.kill()

