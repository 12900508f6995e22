"""The handoff message: what goes with a moved connection, and what is refused (issue 11)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from forkserve.connection import Connection, Settings, State
from forkserve.handoff import MAX_CARRIED, HandoffChannel, Moved, decode, encode
from forkserve.http import Limits


@pytest.fixture
def channel() -> Iterator[HandoffChannel]:
    ch = HandoffChannel()
    yield ch
    ch.close()


@pytest.mark.parametrize("moved", [
    Moved(0, ("127.0.0.1", 5000), True),
    Moved(3, ("::1", 1), False, b"GET / HTTP/1.1\r\nHost: x\r\n", 1234.5),
    Moved(1, None, False, b"\r\n\x00\xff" * 10, 0.25, (7, 4242)),
    Moved(0, ("10.0.0.1", 65535), False, b"x" * MAX_CARRIED, 9.0, (0, 1)),
])
def test_encode_then_decode_gives_back_every_field(moved: Moved) -> None:
    assert decode(encode(moved)) == moved


@pytest.mark.parametrize("message", [
    b"",
    b"no newline at all",
    b"0 1 0 0 0.0 80\n",  # a field short
    b"x 1 0 0 0.0 80 127.0.0.1\n",
    b"-1 1 0 0 0.0 80 127.0.0.1\n",  # no such listener
    b"0 1 0 0 soon 80 127.0.0.1\n",
    b"0 1 0 0 0.0 80 127.0.0.1\n" + b"x" * (MAX_CARRIED + 1),  # more than may be carried
    b"9" * 600 + b"\n",
], ids=["empty", "no-newline", "field-short", "bad-index", "no-listener", "bad-deadline",
        "too-long", "long-line"])
def test_a_message_that_is_not_ours_is_refused(message: bytes) -> None:
    assert decode(message) is None


def closed_by_receiver(peer_end: socket.socket) -> bool:
    """True when no copy of the other end is open any more: the peer end reads EOF."""
    peer_end.settimeout(2)
    return peer_end.recv(1) == b""


def test_the_bytes_read_travel_with_the_socket(channel: HandoffChannel) -> None:
    client, server = socket.socketpair()
    moved = Moved(2, ("192.0.2.7", 40000), False, b"GET /x HTTP/1.1\r\nHo", 77.0, (1, 99))
    assert channel.send(server.fileno(), moved)
    server.close()  # the message holds its own reference
    got = channel.receive()
    assert got is not None
    sock, received = got
    assert received == moved
    client.sendall(b"st: y\r\n\r\n")
    assert sock.recv(100) == b"st: y\r\n\r\n"
    sock.close()
    client.close()


def test_more_bytes_than_may_be_carried_stay_where_they_are(channel: HandoffChannel) -> None:
    a, b = socket.socketpair()
    assert not channel.send(a.fileno(), Moved(0, None, False, b"x" * (MAX_CARRIED + 1)))
    assert channel.receive() is None
    a.close()
    b.close()


@pytest.mark.parametrize("message", [b"garbage", b"0 1 0 0 0.0 80 h\n" + b"x" * 200_000],
                         ids=["garbage", "cut-short"])
def test_a_malformed_message_is_refused_and_its_descriptor_closed(
        channel: HandoffChannel, message: bytes) -> None:
    a, b = socket.socketpair()
    channel.send_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    socket.send_fds(channel.send_end, [message], [a.fileno()])
    a.close()
    assert channel.receive() is None
    assert closed_by_receiver(b)
    b.close()


def test_a_message_with_two_descriptors_is_refused_and_both_closed(
        channel: HandoffChannel) -> None:
    a1, b1 = socket.socketpair()
    a2, b2 = socket.socketpair()
    socket.send_fds(channel.send_end, [encode(Moved(0, None, True))], [a1.fileno(), a2.fileno()])
    a1.close()
    a2.close()
    assert channel.receive() is None
    assert closed_by_receiver(b1) and closed_by_receiver(b2)
    b1.close()
    b2.close()


def test_a_message_without_a_descriptor_is_refused(channel: HandoffChannel) -> None:
    channel.send_end.send(encode(Moved(0, None, True)))
    assert channel.receive() is None
    assert channel.receive() is None  # and the queue is empty again


# -- what a connection carries when it moves (Connection.carried) ----------------
def carried_after(*sends: bytes) -> tuple[State, bytes | None]:
    """A server-side Connection fed `sends` (one read each): its state, and what it would carry."""
    client, server = socket.socketpair()
    server.setblocking(False)
    conn = Connection(server, ("192.0.2.1", 1234), {}, Settings(Limits(), 5.0, 10.0, 10.0,
                                                                  10.0, 1 << 20), 0.0)
    try:
        for data in sends:
            client.sendall(data)
            conn.on_readable(0.0)
        return conn.state, conn.carried()
    finally:
        client.close()
        conn.close()


@pytest.mark.parametrize(("sends", "state", "carried"), [
    ((), State.HEAD, b""),  # nothing read yet
    ((b"GET / HTTP/1.1\r\nHo",), State.HEAD, b"GET / HTTP/1.1\r\nHo"),
    ((b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",), State.READY,
     b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),  # as received, after the empty line it skips
    ((b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HT",), State.READY,
     b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HT"),  # and what came after it
    ((b"GET / HTTP/1.2\r\nHost: x\r\n\r\n",), State.READY,
     b"GET / HTTP/1.2\r\nHost: x\r\n\r\n"),  # before the HTTP/1.1 rewrite
    ((b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab",), State.BODY, None),
    ((b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab",), State.READY, None),
    ((b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",),
     State.READY, None),  # an empty chunked body is still a body
    ((b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",), State.READY,
     b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
], ids=["unread", "half-a-head", "complete", "pipelined", "http-1.2", "body-arriving",
        "body-read", "chunked-empty", "length-0"])
def test_a_connection_carries_exactly_what_rebuilds_it(sends: tuple[bytes, ...], state: State,
                                                       carried: bytes | None) -> None:
    assert carried_after(*sends) == (state, carried)
