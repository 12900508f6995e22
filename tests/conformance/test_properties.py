"""Property tests against a running worker: whatever the bytes, a 4xx or a clean close.

Hypothesis sends arbitrary bytes and mutations of valid requests to a real
forkserve (the client half-closes after sending, so every input gets its
verdict at once). Whatever arrives: no 500 and no traceback, an answer or a
close within a bounded time, the app runs exactly once per 2xx answer, and
the workers are the same processes at the end. Mutations that are malformed
by construction (a bare LF or a NUL in the head, a second Content-Length,
Content-Length with Transfer-Encoding, whitespace before a colon, obs-fold)
never reach the app at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.conformance.replay import Exchange, Target, replay
from tests.support import serve

pytestmark = pytest.mark.process

EXAMPLES = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BOUND = 5.0  # seconds an input may take to get its verdict (timeouts are 2 s here)

VALID = [
    b"GET /p?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n",
    b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\n"
    b"hello world",
    b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n"
    b"6\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"PUT /x HTTP/1.1\r\nHost: a:8080\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
]
INTERESTING = [b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b":", b",", b";", b"0", b"\x7f",
               b"\xff", b"\r\n\r\n", b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n"]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, http_parser: str) -> Iterator[Target]:
    hits = tmp_path_factory.mktemp("props") / "hits.log"
    hits.touch()
    # --no-request-id: the expected environ is the parser's alone, with no id added.
    with serve("hardening_apps:echo", "--workers", "2", "--header-timeout", "2",
               "--body-timeout", "2", "--limit-request-body", "1048576", "--no-request-id",
               env={"HARDENING_HITS": str(hits)}, wait_workers=2, http=http_parser) as server:
        pids = server.worker_pids()
        yield Target(server, hits)
        assert server.worker_pids() == pids, "a worker died"
        log = server.log
        assert "Traceback" not in log and "Error handling request" not in log


def send(target: Target, data: bytes) -> tuple[Exchange, int]:
    before = target.hit_count()
    started = time.monotonic()
    exchange = replay(target.server.address, data, "whole", want=99, expect_close=True,
                      half_close=True)
    assert time.monotonic() - started < BOUND
    assert exchange.closed, "the connection was neither answered and closed nor closed"
    return exchange, target.hit_count() - before


def check_sane(exchange: Exchange, hits: int) -> None:
    """No server error; an error answer is the last one; the app ran once per 2xx answer.

    501 and 505 are refusals, not failures: an unknown method or transfer
    coding (RFC 9110 §9.1, RFC 9112 §6.1), an HTTP version other than 1.x.
    A body, Expect: 100-continue or not, is received before the app runs, so
    a client that closes instead of sending it gets its 400 without a call.
    """
    assert not exchange.garbage, exchange.garbage[:200]
    statuses = exchange.statuses
    assert all(s < 500 or s in (501, 505) for s in statuses), statuses
    errors = [i for i, s in enumerate(statuses) if s >= 400]
    assert errors in ([], [len(statuses) - 1]), statuses
    assert hits == sum(1 for s in statuses if 200 <= s < 300), (statuses, hits)


@EXAMPLES
@given(st.binary(max_size=600))
def test_arbitrary_bytes(target: Target, data: bytes) -> None:
    assume(b"HEAD" not in data)  # a HEAD answer has no body to frame it by
    check_sane(*send(target, data))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        if kind == "insert":
            data[pos:pos] = draw(st.sampled_from(INTERESTING) | st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 3))]
        elif kind == "replace" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        else:
            end = data.find(b"\r\n", pos)
            if end >= 0:
                start = data.rfind(b"\n", 0, pos) + 1
                data[start:start] = data[start : end + 2]
    return bytes(data)


@EXAMPLES
@given(mutated())
def test_mutated_valid_requests(target: Target, data: bytes) -> None:
    assume(b"HEAD" not in data)
    check_sane(*send(target, data))


def _head_end(data: bytes) -> int:
    return data.index(b"\r\n\r\n")


@st.composite
def malformed(draw: st.DrawFn) -> bytes:
    """A valid request made invalid in its (first) head, by construction."""
    base = draw(st.sampled_from(VALID[:3] + VALID[4:]))
    end = _head_end(base)
    first_line = base.index(b"\r\n")
    kind = draw(st.sampled_from(["lf", "nul", "ctl", "cl", "te", "space", "fold", "cr"]))
    if kind in ("lf", "nul", "ctl", "cr"):
        # Anywhere, but often where it hurts most: at the end of a field value,
        # right after a colon, at the start of a line.
        seams = [i for i in range(end + 1) if base.startswith(b"\r\n", i)]
        seams += [i + 1 for i in range(end) if base[i] == 58]  # ":"
        seams += [i + 2 for i in seams if i + 2 <= end]
        values = [i for i in range(first_line, end) if base.rfind(b": ", 0, i) >
                  base.rfind(b"\r\n", 0, i)]  # inside a field value
        pos = draw(st.sampled_from(values) | st.sampled_from(seams) | st.integers(0, end))
        byte = {"lf": b"\n", "nul": b"\x00", "cr": b"\r",
                "ctl": bytes([draw(st.sampled_from([1, 7, 8, 11, 12, 27, 31, 127]))])}[kind]
        if kind == "cr":
            # a CR not followed by LF: not just before an existing LF
            assume(base[pos : pos + 1] != b"\n")
        return base[:pos] + byte + base[pos:]
    line_ends = [i for i in range(first_line, end + 1) if base.startswith(b"\r\n", i)]
    at = draw(st.sampled_from(line_ends)) + 2  # the start of some field line (or the end)
    if kind == "cl":
        insert = b"Content-Length: %d\r\nContent-Length: %d\r\n" % (
            draw(st.integers(0, 50)), draw(st.integers(51, 99)))
    elif kind == "te":
        insert = b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"
    elif kind == "fold":
        insert = b"X-Folded: a\r\n" + draw(st.sampled_from([b" ", b"\t"])) + b"b\r\n"
    else:
        name = draw(st.sampled_from([b"Accept", b"Content-Length", b"Host", b"X"]))
        insert = name + draw(st.sampled_from([b" ", b"\t"])) + b": 1\r\n"
    if at > end:
        at = end + 2  # after the last field line
    return base[:at] + insert + base[at:]


@EXAMPLES
@given(malformed())
def test_malformed_never_reaches_the_app(target: Target, data: bytes) -> None:
    exchange, hits = send(target, data)
    assert not exchange.garbage
    assert hits == 0, f"the app ran for {data!r}"
    assert len(exchange.statuses) <= 1
    assert all(400 <= s < 500 for s in exchange.statuses), exchange.statuses
