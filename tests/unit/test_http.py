"""The head pre-check and the body decoders (forkserve.http), as tables: bytes in, verdict out."""

from __future__ import annotations

import random
import time

import h11
import pytest

from forkserve.errors import HTTPError
from forkserve.http import (
    ChunkedDecoder,
    LengthDecoder,
    Limits,
    as_http11,
    check_first_byte,
    check_head,
    check_trailers,
    find_head_end,
    judge_request_line,
    request_line_of,
)

LIMITS = Limits()


def head(*lines: str | bytes) -> bytes:
    raw = [line.encode("latin-1") if isinstance(line, str) else line for line in lines]
    return b"\r\n".join(raw) + b"\r\n\r\n"


def status(data: bytes, limits: Limits = LIMITS) -> int:
    try:
        check_head(data, limits)
    except HTTPError as exc:
        return exc.status
    return 200


GOOD = [
    head("GET / HTTP/1.1", "Host: a"),
    head("GET / HTTP/1.2", "Host: a"),  # RFC 9110 §2.5: handled as HTTP/1.1
    head("GET / HTTP/1.0"),
    head("GET /p?q=1 HTTP/1.1", "Host: a:80", "X: \t v \t"),
    head("OPTIONS * HTTP/1.1", "Host: a"),
    head("GET http://a.example/x HTTP/1.1", "Host: other"),
    head("GET https://[::1]:8443/x HTTP/1.1", "Host: [::1]:8443"),
    head("POST / HTTP/1.1", "Host: a", "Content-Length: 0005"),
    head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked"),
    head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding:  Chunked "),
    head("GET / HTTP/1.1", "Host: 0.0.0.0=5000"),
    head("GET / HTTP/1.1", "Host:"),
    head("GET /caf%C3%A9 HTTP/1.1", "Host: a", "X: caf\xe9"),
    head("PROPFIND / HTTP/1.1", "Host: a"),
    head("M-SEARCH /x HTTP/1.1", "Host: a"),
    head("GET / HTTP/1.1", "Host: a", "X.Custom|Pipe: ok"),
    head("GET / HTTP/1.1", "Host: a", "Cookie: a=1", "Cookie: b=2"),
]

BAD = [
    # framing (RFC 9112 §6)
    (head("POST / HTTP/1.1", "Host: a", "Content-Length: 3", "Transfer-Encoding: chunked"), 400),
    (head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked", "Content-Length: 3"), 400),
    (head("POST / HTTP/1.0", "Transfer-Encoding: chunked"), 400),
    (head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: gzip, chunked"), 501),
    # RFC 9110 §9.1: an unrecognised method (one llhttp does not know either).
    (head("-BLARGH / HTTP/1.1", "Host: a"), 501),
    (head("GET http://a#f HTTP/1.1", "Host: a"), 400),
    (head("get / HTTP/1.1", "Host: a"), 501),
    (head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: identity, chunked"), 501),
    (head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked, gzip"), 400),
    (head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked, chunked"), 400),
    (head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked"),
     400),
    (head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: gzip", "Transfer-Encoding: chunked"),
     501),
    (head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: identity"), 400),
    (head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding:"), 400),
    (head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: \x0bchunked"), 400),
    *[
        (head("POST / HTTP/1.1", "Host: a", b"Content-Length: " + value), 400)
        for value in [b"+3", b"-1", b"1_0", b"0x3", b"", b"3 1", b"3,3", b"5, 5", b"1e3",
                      "\u0663".encode(), b"\xd9\xa3", b"9" * 19, b"1" * 20, b"\t", b"-0"]
    ],
    (head("POST / HTTP/1.1", "Host: a", "Content-Length: 3", "Content-Length: 3"), 400),
    # line endings, folding, names, control bytes (RFC 9112 §2.2, §5)
    (b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\rHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\nY: b\r\n\r\n", 400),
    (head("GET / HTTP/1.1", "Host: a", "X: one", " two"), 400),
    (head("GET / HTTP/1.1", "Host: a", "X: one", "\ttwo"), 400),
    (head("GET / HTTP/1.1", " Host: a"), 400),
    (head("GET / HTTP/1.1", "Host: a", "X : b"), 400),
    (head("GET / HTTP/1.1", "Host: a", "X\t: b"), 400),
    (head("GET / HTTP/1.1", "Host: a", ": b"), 400),
    (head("GET / HTTP/1.1", "Host: a", "no colon"), 400),
    (head("GET / HTTP/1.1", "Host: a", "X\x00Y: b"), 400),
    (head("GET / HTTP/1.1", "Host: a", "X\xdf: b"), 400),
    (head("GET / HTTP/1.1", "Host: a", "X: a\x00b"), 400),
    (head("GET / HTTP/1.1", "Host: a", "X: a\x07b"), 400),
    (head("GET / HTTP/1.1", "Host: a", "X: a\x7fb"), 400),
    (head("GET / HTTP/1.1", "Host: a", "X: a\x1bb"), 400),
    (head("GET / HTTP/1.1", "Host: a", "X: a\x0cb"), 400),
    # request line (RFC 9112 §3)
    (head("GET / HTTP/3.0", "Host: a"), 505),
    (head("GET / HTTP/2.0", "Host: a"), 505),
    (head("GET / HTTP/0.9"), 505),
    (head("GET / HTTP/1.10", "Host: a"), 400),
    (head("GET / HTTP/111", "Host: a"), 400),
    (head("GET / http/1.1", "Host: a"), 400),
    (head("GET / FTP/1.1", "Host: a"), 400),
    (head("GET /"), 400),
    (head("GET  / HTTP/1.1", "Host: a"), 400),
    (head("GET / HTTP/1.1 ", "Host: a"), 400),
    (head("GET /\t HTTP/1.1", "Host: a"), 400),
    (head("GET /a\x00b HTTP/1.1", "Host: a"), 400),
    (head("GET /caf\xe9 HTTP/1.1", "Host: a"), 400),
    (head("G(T / HTTP/1.1", "Host: a"), 400),
    (head("GET\xdf / HTTP/1.1", "Host: a"), 400),
    (head("GET * HTTP/1.1", "Host: a"), 400),
    (head("GET a.example:443 HTTP/1.1", "Host: a"), 400),
    (head("GET foo/bar HTTP/1.1", "Host: a"), 400),
    (head("GET http://user:pw@a.example/ HTTP/1.1", "Host: a"), 400),
    (head("GET http:///x HTTP/1.1", "Host: a"), 400),
    (head("CONNECT a.example:443 HTTP/1.1", "Host: a.example:443"), 501),
    # Host (RFC 9112 §3.2)
    (head("GET / HTTP/1.1"), 400),
    (head("GET / HTTP/1.1", "Host: a", "Host: b"), 400),
    (head("GET / HTTP/1.1", "Host: a", "Host: a"), 400),
    (head("GET / HTTP/1.1", "Host: a b"), 400),
    (head("GET / HTTP/1.1", "Host: a/b"), 400),
    (head("GET / HTTP/1.1", "Host: a@b"), 400),
    (head("GET / HTTP/1.0", "Host: a:b:c"), 400),
    # a singleton the app sees only once
    (head("POST / HTTP/1.1", "Host: a", "Content-Type: a/b", "Content-Type: c/d"), 400),
]


@pytest.mark.parametrize("data", GOOD)
def test_good_heads_pass(data: bytes) -> None:
    assert status(data) == 200
    # and h11 agrees they are requests (the pre-check is stricter, never looser)
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    assert isinstance(conn.next_event(), h11.Request)


@pytest.mark.parametrize(("data", "expected"), BAD)
def test_bad_heads_get_their_status(data: bytes, expected: int) -> None:
    assert status(data) == expected


def test_facts() -> None:
    facts = check_head(head("POST /x HTTP/1.1", "Host: a", "Content-Length: 12",
                            "Expect: 100-continue"), LIMITS)
    assert (facts.method, facts.http11, facts.chunked, facts.content_length) == (
        b"POST", True, False, 12)
    assert facts.expect_continue
    facts = check_head(head("POST /x HTTP/1.0", "Expect: 100-continue"), LIMITS)
    assert not facts.expect_continue  # 100-continue is an HTTP/1.1 mechanism


@pytest.mark.parametrize(("version", "connection", "keep"), [
    ("HTTP/1.1", [], True),
    ("HTTP/1.1", ["Connection: close"], False),
    ("HTTP/1.1", ["Connection: Upgrade, CLOSE"], False),
    ("HTTP/1.1", ["Connection: keep-alive", "Connection: close"], False),
    ("HTTP/1.1", ["Connection: \tkeep-alive "], True),
    ("HTTP/1.0", [], False),
    ("HTTP/1.0", ["Connection: Keep-Alive"], True),
    ("HTTP/1.0", ["Connection: keep-alive, close"], False),
    ("HTTP/1.0", ["Connection: closed"], False),  # not a keep-alive token either
])
def test_keep_alive_wish(version: str, connection: list[str], keep: bool) -> None:
    # RFC 9112 §9.3: 1.1 persists unless closed; 1.0 only when asked.
    assert check_head(head(f"GET / {version}", "Host: a", *connection), LIMITS).keep_alive is keep


def test_limits_on_raw_bytes_even_in_one_read() -> None:
    small = Limits(request_line=20, fields=2, field_size=30, head=200)
    assert status(head("GET /" + "a" * 30 + " HTTP/1.1", "Host: a"), small) == 414
    assert status(head("GET / HTTP/1.1", "Host: a", "X: 1", "Y: 2"), small) == 431
    assert status(head("GET / HTTP/1.1", "Host: a", "X: " + "b" * 40), small) == 431
    assert status(head("GET / HTTP/1.1", "Host: a", "X: " + "b" * 25), small) == 200
    # a field line counts with its CRLF (gunicorn's accounting): 28 + 2 fits in 30
    assert status(head("GET / HTTP/1.1", "Host: a", "X: " + "b" * 26), small) == 431
    wide = Limits(request_line=20, fields=50, field_size=30, head=200)
    many = head("GET / HTTP/1.1", "Host: a", *[f"X{i}: {'v' * 20}" for i in range(10)])
    assert status(many, wide) == 431  # the total head limit


def test_find_head_end_incremental() -> None:
    data = head("GET / HTTP/1.1", "Host: a") + b"rest"
    buf = bytearray()
    scan = 0
    for i, byte in enumerate(data):
        buf.append(byte)
        end = find_head_end(buf, scan, LIMITS)
        if end >= 0:
            assert end == len(data) - 4 and i == end - 1
            break
        scan = len(buf)
    else:
        pytest.fail("head end not found")


@pytest.mark.parametrize("split", range(1, 40))
def test_find_head_end_bare_lf_found_at_any_read_boundary(split: int) -> None:
    # Two reads split anywhere: a CR ending the first read still pairs with the
    # LF that starts the second, and a bare LF is caught wherever it falls.
    good = head("GET / HTTP/1.1", "Host: a", "X-Long: abcdefghij")
    bad = good.replace(b"Host: a\r\n", b"Host: a\n")
    for data, is_bad in ((good, False), (bad, True)):
        first, second = data[:split], data[split:]
        try:
            assert find_head_end(first, 0, LIMITS) == -1 or first.endswith(b"\r\n\r\n")
            end = find_head_end(first + second, len(first), LIMITS)
        except HTTPError as exc:
            assert is_bad and exc.status == 400
            continue
        assert not is_bad and end == len(data)


@pytest.mark.parametrize(
    ("partial", "expected"),
    [
        (b"GET / HTTP/1.1\nHost", 400),  # bare LF: refused before the head completes
        (b"GET /" + b"a" * 5000, 414),  # request line past the limit, no CRLF yet
        (b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 70000, 431),  # head past the limit
    ],
)
def test_find_head_end_refuses_early(partial: bytes, expected: int) -> None:
    with pytest.raises(HTTPError) as info:
        find_head_end(partial, 0, LIMITS)
    assert info.value.status == expected


def test_crafted_heads_are_rejected_in_linear_time() -> None:
    # A long run of spaces or tabs before a bad byte is what makes backtracking
    # header regexes take seconds; the pre-check scans each byte a bounded
    # number of times. The bound is two orders of magnitude above the real cost.
    crafted = [
        # h11 0.16 takes ~0.14 s on this with 8 000 spaces and grows quadratically
        head("GET / HTTP/1.1", "Host: a", "X:" + " " * 60000 + "x\x00"),
        head("GET / HTTP/1.1", "Host: a", "X: a" + " " * 60000 + "\x00b"),
        head("GET / HTTP/1.1", "Host: a", "X: a" + " \t" * 30000 + "\x01"),
        head("GET / HTTP/1.1", "Host: a", "X" * 60000 + " : b"),
        head("GET / HTTP/1.1", "Host: a", *["X: " + " " * 50] * 1000, "Y: a" + " " * 99 + "\x7f"),
    ]
    limits = Limits(field_size=10**6, fields=10**6, head=10**6)
    started = time.perf_counter()
    for data in crafted:
        assert status(data, limits) in (400, 431)
    assert time.perf_counter() - started < 0.5


# -- bodies ------------------------------------------------------------------


def decode_all(decoder: LengthDecoder | ChunkedDecoder, data: bytes, split: str) -> bytes:
    """Feed `data` whole, byte by byte, or in random pieces; return the decoded body."""
    rng = random.Random(len(data))
    out = []
    if split == "whole":
        pieces = [data]
    elif split == "bytes":
        pieces = [data[i : i + 1] for i in range(len(data))]
    else:
        pieces, pos = [], 0
        while pos < len(data):
            step = rng.randint(1, 7)
            pieces.append(data[pos : pos + step])
            pos += step
    for piece in pieces:
        out.extend(decoder.decode(piece))
    return b"".join(out)


SPLITS = ["whole", "bytes", "random"]


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize(
    ("raw", "body"),
    [
        (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
        (b"0005\r\nhello\r\n000\r\n\r\n", b"hello"),
        (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
        (b"a\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
        (b"5;foo=bar\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b'5;foo="bar baz";x\r\nhello\r\n0;last\r\n\r\n', b"hello"),
        (b'5 ; foo = "a\\"b"\r\nhello\r\n0\r\n\r\n', b"hello"),
        (b"5\r\nhello\r\n0\r\nVary: *\r\nX-Checksum: 1\r\n\r\n", b"hello"),
        (b"0\r\n\r\n", b""),
        (b"10\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n", b"x" * 16),
    ],
)
def test_chunked_good(raw: bytes, body: bytes, split: str) -> None:
    decoder = ChunkedDecoder(LIMITS)
    assert decode_all(decoder, raw + b"GET /next", split) == body
    assert decoder.done
    assert decoder.rest == b"GET /next"  # a pipelined request is kept, never decoded


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"6_0\r\nhello\r\n0\r\n\r\n", 400),
        (b"0x5\r\nhello\r\n0\r\n\r\n", 400),
        (b"-5\r\nhello\r\n0\r\n\r\n", 400),
        (b"+5\r\nhello\r\n0\r\n\r\n", 400),
        (b" 5\r\nhello\r\n0\r\n\r\n", 400),
        (b"5 \r\nhello\r\n0\r\n\r\n", 400),
        (b"5\t\r\nhello\r\n0\r\n\r\n", 400),
        (b"\r\nhello\r\n0\r\n\r\n", 400),
        (b";x\r\nhello\r\n0\r\n\r\n", 400),
        (b"00000000000000005\r\nhello\r\n0\r\n\r\n", 400),  # 17 hex digits
        (b"FFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n", 400),
        (b"5\nhello\r\n0\r\n\r\n", 400),
        (b"5;ext=val\rue\r\nhello\r\n0\r\n\r\n", 400),
        (b"5;ext\x00\r\nhello\r\n0\r\n\r\n", 400),
        (b"5;e\x01xt\r\nhello\r\n0\r\n\r\n", 400),
        (b"5;\r\nhello\r\n0\r\n\r\n", 400),
        (b'5;a="unterminated\r\nhello\r\n0\r\n\r\n', 400),
        (b"5;a=b c\r\nhello\r\n0\r\n\r\n", 400),
        (b"5\r\nhelloXX0\r\n\r\n", 400),
        (b"5\r\nhello\n0\r\n\r\n", 400),
        (b"5\r\nhello\r0\r\n\r\n", 400),
        (b"5\r\nhello\r\n0\r\nX: a\nY: b\r\n\r\n", 400),
        (b"5\r\nhello\r\n0\r\nX: a\r\n b\r\n\r\n", 400),
        (b"5\r\nhello\r\n0\r\nX: a\x01b\r\n\r\n", 400),
        (b"5\r\nhello\r\n0\r\nX : a\r\n\r\n", 400),
        (b"5\r\nhello\r\n0\r\n\n", 400),
        (b"5\r\nhello\r\n0\r\n\rX", 400),
        (b"5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n", 400),
        (b"5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"5\r\nhello\r\n0\r\nHost: evil\r\n\r\n", 400),
        (b"5\r\nhello\r\n0\r\nAuthorization: x\r\n\r\n", 400),
        (b"5\r\nhello\r\n0\r\nCONTENT-type: x\r\n\r\n", 400),
        (b"1" + b";a=b" * 2000 + b"\r\nx\r\n0\r\n\r\n", 400),  # size line too long
    ],
)
def test_chunked_bad(raw: bytes, expected: int, split: str) -> None:
    decoder = ChunkedDecoder(LIMITS)
    with pytest.raises(HTTPError) as info:
        decode_all(decoder, raw, split)
    assert info.value.status == expected


def test_chunked_incomplete_is_not_done() -> None:
    decoder = ChunkedDecoder(LIMITS)
    assert decoder.decode(b"5\r\nhel") == [b"hel"]
    assert decoder.decode(b"lo\r\n0\r\n") == [b"lo"]
    assert not decoder.done  # the final CRLF is missing
    assert decoder.decode(b"\r\n") == [] and decoder.done


def test_chunked_body_limit() -> None:
    limits = Limits(body=10)
    decoder = ChunkedDecoder(limits)
    decoder.decode(b"5\r\nhello\r\n5\r\nworld\r\n")
    with pytest.raises(HTTPError) as info:
        decoder.decode(b"1\r\n!\r\n0\r\n\r\n")
    assert info.value.status == 413
    # refused on the size line, before any of the oversized chunk is read
    with pytest.raises(HTTPError) as info:
        ChunkedDecoder(limits).decode(b"FFFFFFFF\r\n")
    assert info.value.status == 413


def test_trailer_section_size_is_bounded() -> None:
    decoder = ChunkedDecoder(Limits(head=100))
    decoder.decode(b"0\r\nX: " + b"a" * 50)
    with pytest.raises(HTTPError) as info:
        decoder.decode(b"a" * 60)
    assert info.value.status == 431


def test_check_trailers_allows_ordinary_fields() -> None:
    check_trailers(b"\r\n", LIMITS)
    check_trailers(b"X-Checksum: abc\r\nServer-Timing: x;dur=1\r\n\r\n", LIMITS)


@pytest.mark.parametrize("split", SPLITS)
def test_length_decoder(split: str) -> None:
    decoder = LengthDecoder(5)
    assert decode_all(decoder, b"helloGET /next", split) == b"hello"
    assert decoder.done and decoder.rest == b"GET /next"
    empty = LengthDecoder(0)
    assert empty.done and empty.decode(b"GET /") == [] and empty.rest == b"GET /"


# -- the request line of a head still arriving --------------------------------
PARTIAL_OK = [b"G", b"GET", b"GET /", b"GET / HTTP/1.", b"GET / HTTP/1.1\r", b"\r"]
PARTIAL_DONE = [b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHo", b"GET / HTTP/1.2\r\n"]
PARTIAL_BAD = [
    (b"\x16\x03\x01", 400),
    (b"\x00" * 64, 400),
    (b" GET / HTTP/1.1", 400),
    (b"\rX", 400),
    (b"GET /\r\n", 400),
    (b"SSH-2.0-OpenSSH_9.6\r\n", 400),
    (b"GET / HTTP/1.1\rHost", 400),
    (b"GET /\x7f", 400),
    (b"GET / HTTP/2.0\r\n", 505),
    (b"GET / HTTP/1.10\r\n", 400),
    (b"CONNECT a:443 HTTP/1.1\r\n", 501),
]


@pytest.mark.parametrize("data", PARTIAL_OK)
def test_a_request_line_that_may_still_become_valid_waits(data: bytes) -> None:
    check_first_byte(data)
    assert judge_request_line(data, 0, LIMITS) is False


@pytest.mark.parametrize("data", PARTIAL_DONE)
def test_a_complete_valid_request_line_is_judged_once(data: bytes) -> None:
    assert judge_request_line(data, 0, LIMITS) is True


@pytest.mark.parametrize(("data", "expected"), PARTIAL_BAD)
def test_a_request_line_that_cannot_be_valid_is_refused_now(data: bytes, expected: int) -> None:
    with pytest.raises(HTTPError) as info:
        judge_request_line(data, 0, LIMITS)
    assert info.value.status == expected
    # The same verdict whatever the reads were: byte by byte, with `start` moving on.
    with pytest.raises(HTTPError) as info:
        for end in range(1, len(data) + 1):
            judge_request_line(data[:end], end - 1, LIMITS)
    assert info.value.status == expected


def test_tls_gets_a_body_that_says_what_is_wrong() -> None:
    with pytest.raises(HTTPError) as info:
        check_first_byte(b"\x16\x03\x01\x02\x00")
    assert info.value.body is not None and b"plain HTTP" in info.value.body


@pytest.mark.parametrize(("raw", "expected"), [
    (b"GET /a?b HTTP/1.1\r\nHost: a\r\n", (b"GET", b"/a?b", b"HTTP/1.1")),
    (b"GET /a HTTP/1.1", None),  # not ended
    (b"\x00" * 64 + b"\r\n", None),
    (b"GET /\x1b[31m HTTP/1.1\r\n", None),  # nothing that could colour or forge a log line
    (b"GET /\r\n", None),
])
def test_request_line_of_a_refused_head(raw: bytes, expected: object) -> None:
    assert request_line_of(raw, LIMITS) == expected


@pytest.mark.parametrize("version", [b"HTTP/1.2", b"HTTP/1.9"])
def test_later_http1_minor_is_rewritten_to_1_1_before_any_parser(version: bytes) -> None:
    # llhttp refuses HTTP/1.2 and h11 passes it through: rewritten, both see 1.1.
    raw = head(b"GET /a?HTTP/1.2 " + version, "Host: a", "X-V: HTTP/1.2")
    assert check_head(raw, LIMITS).http11
    assert as_http11(raw) == head("GET /a?HTTP/1.2 HTTP/1.1", "Host: a", "X-V: HTTP/1.2")


def test_http11_head_is_not_copied() -> None:
    raw = head("GET / HTTP/1.1", "Host: a")
    assert as_http11(raw) is raw
