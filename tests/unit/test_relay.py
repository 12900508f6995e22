"""The TLS relay on real sockets in one process: bytes both ways, the close rules, the bounds.

A TLS session over a socket pair stands for the client's connection, a unix
socket pair for the one to the peer worker; `Relays.wait` is called in a
thread as the watcher calls it.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from forkserve.relay import RELAY_READ, Relays
from tests.support import self_signed_certificate


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pytest.importorskip("cryptography.x509")
    return self_signed_certificate(tmp_path_factory.mktemp("relay"))


@dataclass
class Relayed:
    client: ssl.SSLSocket  # the HTTPS client's end
    peer: socket.socket  # the peer worker's end of the pair
    relays: Relays


@pytest.fixture
def relayed(certificate: tuple[Path, Path]) -> Iterator[Relayed]:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*certificate)
    client_ctx = ssl.create_default_context(cafile=str(certificate[0]))
    a, b = socket.socketpair()
    # suppress_ragged_eofs=False: a FIN without close_notify raises on the client.
    client = client_ctx.wrap_socket(a, server_hostname="localhost", do_handshake_on_connect=False,
                                    suppress_ragged_eofs=False)
    shake = threading.Thread(target=client.do_handshake)
    shake.start()
    server = server_ctx.wrap_socket(b, server_side=True)
    shake.join(5)
    server.setblocking(False)
    mine, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    relays = Relays(write_timeout=0.5)
    relays.add(server, mine)
    stop = threading.Event()

    def watcher() -> None:
        while not stop.is_set():
            relays.wait(0.01)

    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    client.settimeout(5)
    peer.settimeout(5)
    yield Relayed(client, peer, relays)
    stop.set()
    thread.join(5)
    client.close()
    peer.close()


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"EOF after {len(data)} bytes"
        data += chunk
    return data


def wait_until(condition: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_bytes_go_both_ways_decrypted(relayed: Relayed) -> None:
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 1000
    relayed.client.sendall(request)
    assert read_exactly(relayed.peer, len(request)) == request
    response = bytes(range(256)) * 4096  # 1 MiB: many TLS records
    sender = threading.Thread(target=relayed.peer.sendall, args=(response,))
    sender.start()
    assert read_exactly(relayed.client, len(response)) == response
    sender.join(5)


def test_the_peers_fin_reaches_the_client_as_close_notify(relayed: Relayed) -> None:
    relayed.peer.sendall(b"last answer")
    relayed.peer.shutdown(socket.SHUT_WR)
    assert read_exactly(relayed.client, 11) == b"last answer"
    # A clean TLS end: with ragged EOFs not suppressed, a bare FIN would raise.
    assert relayed.client.recv(100) == b""
    relayed.client.close()
    assert wait_until(lambda: relayed.relays.count == 0)


def test_the_clients_close_notify_reaches_the_peer_as_a_half_close(relayed: Relayed) -> None:
    relayed.client.sendall(b"GET /last HTTP/1.1\r\n\r\n")
    # unwrap() sends close_notify and waits for the server's: it comes only
    # once the peer has closed its end too.
    closing = threading.Thread(target=relayed.client.unwrap)
    closing.start()
    assert read_exactly(relayed.peer, 22) == b"GET /last HTTP/1.1\r\n\r\n"
    assert relayed.peer.recv(100) == b""  # the half-close
    assert closing.is_alive()  # the relay did not end the session on its own
    relayed.peer.close()
    closing.join(5)
    assert not closing.is_alive()
    assert wait_until(lambda: relayed.relays.count == 0)


def test_a_client_that_stops_reading_fills_buffers_not_memory(relayed: Relayed) -> None:
    relayed.peer.setblocking(False)
    sent = 0
    chunk = b"x" * 65536
    stalled_at = time.monotonic() + 5
    while time.monotonic() < stalled_at:
        try:
            sent += relayed.peer.send(chunk)
        except BlockingIOError:
            time.sleep(0.05)  # let the relay move what it can, then try again
            try:
                sent += relayed.peer.send(chunk)
            except BlockingIOError:
                break
    # What the peer could write is what the kernel's buffers and one relay
    # read hold, not an unbounded queue in the relay.
    pipe = next(iter(relayed.relays.pipes.values()))
    assert len(pipe.to_client) <= RELAY_READ
    assert sent < 16 * 1024 * 1024, sent
    # After --write-timeout without progress the relay gives up on it.
    assert wait_until(lambda: relayed.relays.count == 0)
