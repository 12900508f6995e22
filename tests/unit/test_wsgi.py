"""start_response semantics and response header policy (PEP 3333), table-driven."""

from __future__ import annotations

import sys

import pytest

from forkserve.response import ResponseWriter
from forkserve.wsgi import FileWrapper, ResponseError, StartResponse, check_status, clean_headers


def test_start_response_records_and_returns_write() -> None:
    written: list[bytes] = []
    sr = StartResponse(written.append)
    write = sr("201 Created", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    assert sr.code == 201 and sr.status == "201 Created" and sr.content_length == 2
    write(b"hi")
    assert written == [b"hi"]


def test_second_call_without_exc_info_is_an_error() -> None:
    sr = StartResponse(lambda b: None)
    sr("200 OK", [])
    with pytest.raises(AssertionError):
        sr("500 Oops", [])


def test_exc_info_before_headers_sent_replaces_the_response() -> None:
    sr = StartResponse(lambda b: None)
    sr("200 OK", [("X-A", "1")])
    try:
        raise ValueError("late failure")
    except ValueError:
        sr("500 Internal Server Error", [("X-B", "2")], sys.exc_info())  # type: ignore[arg-type]
    assert sr.code == 500 and sr.headers == [("X-B", "2")]


class Channel:
    """What a ResponseWriter writes to, in memory."""

    keep_alive = True
    draining = False
    tls = False

    def __init__(self) -> None:
        self.out = b""

    def send_all(self, data: bytes | memoryview) -> None:
        self.out += bytes(data)

    def sendfile(self, fd: int, offset: int, count: int) -> int:
        raise AssertionError("not used")


def test_exc_info_after_the_writer_sent_the_head_reraises() -> None:
    # The real writer marks the head as sent where start_response sees it
    # (PEP 3333), not a flag set by hand.
    channel = Channel()
    writer = ResponseWriter(channel, False, b"1.1")
    sr = StartResponse(writer.write_legacy)
    writer.start = sr
    sr("200 OK", [])
    assert not sr.headers_sent
    writer.write_legacy(b"abc")
    assert sr.headers_sent and channel.out.endswith(b"3\r\nabc\r\n")
    try:
        raise KeyError("original")
    except KeyError:
        with pytest.raises(KeyError, match="original"):
            sr("500 Internal Server Error", [], sys.exc_info())  # type: ignore[arg-type]


def test_a_first_chunk_over_content_length_leaves_room_for_a_500() -> None:
    channel = Channel()
    writer = ResponseWriter(channel, False, b"1.1")
    writer.start = sr = StartResponse(writer.write_legacy)
    sr("200 OK", [("Content-Length", "3")])
    with pytest.raises(ResponseError):
        writer.write_legacy(b"abcdef")
    assert channel.out == b"" and not sr.headers_sent
    writer.fail(500, "too long")
    assert channel.out.startswith(b"HTTP/1.1 500 ")
    assert writer.sent == len(channel.out.partition(b"\r\n\r\n")[2])


def test_write_before_start_response_and_non_bytes() -> None:
    sr = StartResponse(lambda b: None)
    with pytest.raises(AssertionError):
        sr.write(b"x")
    sr("200 OK", [])
    with pytest.raises(TypeError):
        sr.write("text")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "status",
    ["200", "200OK", "20 OK", "2000 OK", "abc OK", "200 OK\r\nX: y", "200 O\nK", "200 \x00",
     "200 \x7f", "100 Continue", "099 Low", b"200 OK", "200 \u20ac"],
)
def test_invalid_status(status: object) -> None:
    with pytest.raises(ResponseError):
        check_status(status)


@pytest.mark.parametrize("status", ["200 OK", "404 Not Found", "599 ", "200 caf\u00e9",
                                    "200 tab\there"])
def test_valid_status(status: str) -> None:
    assert check_status(status) == int(status[:3])


@pytest.mark.parametrize(
    "headers",
    [
        [("X-A", "1\r\nSet-Cookie: x=1")],
        [("X-A", "1\n")],
        [("X-A", "nul\x00")],
        [("Bad Name", "v")],
        [("", "v")],
        [("X-A:", "v")],
        [(b"X-A", "v")],
        [("X-A", 1)],
        [("X-A", "v", "extra")],
        (("X-A", "v"),),
        [("Content-Length", "12x")],
        [("Content-Length", "1"), ("Content-Length", "1")],
        [("X-A", "\u20ac")],
    ],
)
def test_invalid_headers(headers: object) -> None:
    with pytest.raises(ResponseError):
        clean_headers(headers)


def test_hop_by_hop_headers_are_dropped_and_close_is_honoured() -> None:
    out, close, length, has_date, has_server = clean_headers(
        [("Connection", "close"), ("Keep-Alive", "timeout=5"), ("Transfer-Encoding", "chunked"),
         ("Upgrade", "h2c"), ("X-Kept", "yes"), ("Content-Length", "5")]
    )
    assert out == [("X-Kept", "yes"), ("Content-Length", "5")]
    assert close is True and length == 5
    assert not has_date and not has_server


@pytest.mark.parametrize("name", ["Date", "date", "DATE"])
def test_app_date_and_server_are_noticed_in_any_case(name: str) -> None:
    assert clean_headers([(name, "x")]).has_date
    assert clean_headers([(name.replace("ate", "erver").replace("ATE", "ERVER")
                           .replace("D", "S").replace("d", "s"), "x")]).has_server


def test_cached_names_and_statuses_are_still_checked_each_time() -> None:
    # The caches remember only what passed; a bad value after a good one fails.
    clean_headers([("X-Cache-Me", "ok")])
    with pytest.raises(ResponseError):
        clean_headers([("X-Cache-Me", "bad\r\nInjected: 1")])
    assert check_status("299 Fine") == 299
    with pytest.raises(ResponseError):
        check_status("299 Fine\r\nX: y")


def test_file_wrapper_iterates_and_closes(tmp_path: object) -> None:
    import io

    closed: list[bool] = []

    class F(io.BytesIO):
        def close(self) -> None:
            closed.append(True)
            super().close()

    wrapper = FileWrapper(F(b"abcdefgh"), 3)
    assert list(wrapper) == [b"abc", b"def", b"gh"]
    assert wrapper.fileno() is None  # BytesIO has no descriptor: no sendfile
    wrapper.close()
    assert closed == [True]
