"""build_environ and wsgi.input, table-driven: no sockets."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest

from forkserve.environ import (
    Body,
    ServerFacts,
    build_environ,
    decode_path,
    split_host,
    split_target,
)
from forkserve.wsgi import FileWrapper

BASE = ServerFacts("10.0.0.1", "8000").base_environ(sys.stderr, FileWrapper)


def environ(target: bytes = b"/", headers: list[tuple[bytes, bytes]] | None = None,
            version: bytes = b"1.1", method: bytes = b"GET",
            base: dict[str, Any] | None = None,
            peer: tuple[str, int] | None = ("192.0.2.7", 51000)) -> dict[str, Any]:
    return build_environ(base or BASE, method, target, version,
                         headers if headers is not None else [(b"host", b"example.com")],
                         peer, Body())


@pytest.mark.parametrize(
    ("target", "path_info", "query"),
    [
        (b"/", "/", ""),
        (b"/a/b?x=1&y=2", "/a/b", "x=1&y=2"),
        (b"/a%20b", "/a b", ""),
        (b"/caf%C3%A9", "/caf\u00c3\u00a9", ""),  # bytes as latin-1 (PEP 3333)
        (b"/%2Fencoded-slash", "//encoded-slash", ""),
        (b"/q?", "/q", ""),
        (b"/q?a=%20", "/q", "a=%20"),  # QUERY_STRING stays encoded
        (b"http://example.com/abs/path?z=9", "/abs/path", "z=9"),
        (b"http://example.com", "/", ""),
        (b"http://example.com?x", "/", "x"),
        (b"*", "*", ""),
    ],
)
def test_path_and_query(target: bytes, path_info: str, query: str) -> None:
    env = environ(target)
    assert env["PATH_INFO"] == path_info
    assert env["QUERY_STRING"] == query
    assert env["RAW_URI"] == target.decode("latin-1")


def test_required_keys_and_types() -> None:
    env = environ(b"/x?y", [(b"host", b"example.com:8080"), (b"content-type", b"text/plain"),
                            (b"content-length", b"3")], method=b"POST")
    assert env["REQUEST_METHOD"] == "POST"
    assert env["SCRIPT_NAME"] == ""
    assert env["SERVER_NAME"] == "example.com" and env["SERVER_PORT"] == "8080"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["CONTENT_TYPE"] == "text/plain" and env["CONTENT_LENGTH"] == "3"
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env
    assert env["REMOTE_ADDR"] == "192.0.2.7" and env["REMOTE_PORT"] == "51000"
    assert env["wsgi.version"] == (1, 0)
    assert env["wsgi.multithread"] is False and env["wsgi.multiprocess"] is True
    assert env["wsgi.run_once"] is False and env["wsgi.input_terminated"] is True
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.file_wrapper"] is FileWrapper
    for key, value in env.items():
        if key.isupper():
            assert type(value) is str, key


@pytest.mark.parametrize(
    ("headers", "key", "value"),
    [
        ([(b"x-a", b"1"), (b"x-a", b"2")], "HTTP_X_A", "1,2"),
        ([(b"cookie", b"a=1"), (b"cookie", b"b=2")], "HTTP_COOKIE", "a=1; b=2"),
        ([(b"user-agent", b"t/1")], "HTTP_USER_AGENT", "t/1"),
        ([(b"x-latin", b"caf\xe9")], "HTTP_X_LATIN", "caf\u00e9"),
    ],
)
def test_headers(headers: list[tuple[bytes, bytes]], key: str, value: str) -> None:
    assert environ(headers=[(b"host", b"h"), *headers])[key] == value


def test_underscore_headers_are_dropped() -> None:
    env = environ(headers=[(b"host", b"h"), (b"x_forwarded_for", b"1.2.3.4"),
                           (b"x-forwarded-for", b"5.6.7.8")])
    assert env["HTTP_X_FORWARDED_FOR"] == "5.6.7.8"


def test_server_name_falls_back_to_the_listener_without_host() -> None:
    env = environ(headers=[], version=b"1.0")
    assert env["SERVER_NAME"] == "10.0.0.1" and env["SERVER_PORT"] == "8000"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"


def test_unix_socket_peer() -> None:
    assert environ(peer=None)["REMOTE_ADDR"] == ""


@pytest.mark.parametrize(
    ("script", "target", "script_name", "path_info"),
    [
        ("/app", b"/app/x", "/app", "/x"),
        ("/app", b"/app", "/app", ""),
        ("/app", b"/application", "/app", "/application"),  # not a path-segment match
        ("/app", b"/other", "/app", "/other"),
    ],
)
def test_root_path(script: str, target: bytes, script_name: str, path_info: str) -> None:
    base = ServerFacts("h", "80", script_name=script).base_environ(sys.stderr, FileWrapper)
    env = environ(target, base=base)
    assert env["SCRIPT_NAME"] == script_name and env["PATH_INFO"] == path_info


@pytest.mark.parametrize(
    ("host", "expected"),
    [("a.com", ("a.com", "80")), ("a.com:81", ("a.com", "81")),
     ("[::1]:82", ("[::1]", "82")), ("[::1]", ("[::1]", "80"))],
)
def test_split_host(host: str, expected: tuple[str, str]) -> None:
    assert split_host(host, "80") == expected


def test_split_target_and_decode() -> None:
    assert split_target(b"/p?q#frag") == (b"/p", b"q")
    assert decode_path(b"/%41%42") == "/AB"


# -- wsgi.input ----------------------------------------------------------------


def pulling(pieces: list[bytes]) -> Body:
    it = iter(pieces)
    return Body([], lambda: next(it, b""))


@pytest.mark.parametrize("make", [lambda d: Body([d]), lambda d: pulling([d[:3], d[3:7], d[7:]])])
def test_body_reads(make: Any) -> None:
    data = b"line1\nline2\nrest"
    assert make(data).read() == data
    assert make(data).read(None) == data
    body = make(data)
    assert body.read(3) == b"lin" and body.read(3) == b"e1\n" and body.read(100) == b"line2\nrest"
    assert body.read(5) == b"" and body.read() == b""
    body = make(data)
    assert body.readline() == b"line1\n" and body.readline(3) == b"lin"
    assert body.readlines() == [b"e2\n", b"rest"]
    assert list(make(data)) == [b"line1\n", b"line2\n", b"rest"]


def test_continue_callback_runs_once_on_first_read() -> None:
    calls: list[int] = []
    pieces = iter([b"ab", b"cd"])
    body = Body([], lambda: next(pieces, b""), lambda: calls.append(1))
    assert body.waiting_for_continue
    assert body.read(1) == b"a"
    assert body.read() == b"bcd"
    assert calls == [1] and not body.waiting_for_continue and body.complete


def test_drain_skips_an_unrequested_continue_body() -> None:
    body = Body([], lambda: b"never", lambda: None)
    assert body.drain(100) is False  # the client waits for 100: nothing to drain


def test_drain_reads_the_rest() -> None:
    assert pulling([b"x" * 10, b"y" * 10]).drain(100) is True
    assert pulling([b"x" * 100, b"y" * 100, b"z"]).drain(50) is False


def test_a_received_body_is_seekable_and_a_streamed_one_is_not(tmp_path: Path) -> None:
    body = Body([b"hello ", b"world"])
    assert body.seekable() and body.read() == b"hello world"
    assert body.seek(0) == 0 and body.read(5) == b"hello" and body.tell() == 5
    assert body.seek(-5, 2) == 6 and body.read() == b"world"
    pieces = [b"abc", b""]
    streamed = Body([], lambda: pieces.pop(0))
    assert not streamed.seekable()
    assert streamed.read() == b"abc"
    with pytest.raises(io.UnsupportedOperation):
        streamed.seek(0)
    spool = (tmp_path / "spool").open("w+b")
    spool.write(b"line 1\nline 2\n")
    spool.seek(0)
    spooled = Body(file=spool)
    assert spooled.seekable() and spooled.readline() == b"line 1\n"
    assert list(spooled) == [b"line 2\n"]
    assert spooled.seek(0) == 0 and spooled.read(4) == b"line"
