"""The in-process request path (`process_request_bytes`): the real connection code, no worker.

The micro-benchmark times this path, so it must be the server's real
behaviour: each case runs in memory and over a socket pair, and both must
give the same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from forkserve.inprocess import InProcessClient, process_request_bytes

App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
GET = b"GET /p?q=1 HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: t\r\n\r\n"


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = f"{environ['PATH_INFO']}?{environ['QUERY_STRING']} {environ['SERVER_NAME']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def file_app(path: str) -> App:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        wrapper: Iterable[bytes] = environ["wsgi.file_wrapper"](open(path, "rb"), 4096)
        return wrapper

    return app


def broken(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    raise RuntimeError("the app broke")


def responses(raw: bytes) -> list[tuple[str, dict[str, str], bytes]]:
    """Split a byte stream of Content-Length responses into (status, headers, body)."""
    out = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        length = int(headers.get("Content-Length", len(raw)))
        out.append((lines[0], headers, raw[:length]))
        raw = raw[length:]
    return out


def both(app: App, *raws: bytes) -> list[bytes]:
    """Each raw request through a memory connection and a socket pair; the same bytes."""
    results = []
    for socketpair in (False, True):
        client = InProcessClient(app, socketpair=socketpair)
        try:
            results.append(b"".join(client.request(raw) for raw in raws))
        finally:
            client.close()
    memory, pair = (re.sub(rb"Date: [^\r]*", b"Date: -", r) for r in results)
    assert memory == pair
    return results


def test_hello_keeps_the_connection_and_frames_the_body() -> None:
    out, _ = both(hello, GET, GET)
    (status, headers, body), second = responses(out)
    assert status == "HTTP/1.1 200 OK"
    assert body == b"/p?q=1 example.com"
    assert headers["Content-Length"] == str(len(body)) and "Connection" not in headers
    assert headers["Server"].startswith("forkserve/") and headers["Date"].endswith(" GMT")
    assert second[2] == body


def test_pipelined_requests_in_one_write_are_answered_in_order() -> None:
    raw = GET + GET.replace(b"/p?q=1", b"/two")
    out, _ = both(hello, raw)
    assert [r[2] for r in responses(out)] == [b"/p?q=1 example.com", b"/two? example.com"]


@pytest.mark.parametrize("connection, expected", [
    (b"", "close"), (b"Connection: keep-alive\r\n", "keep-alive"),
    (b"Connection: Keep-Alive, close\r\n", "close"),
])
def test_http10_persists_only_when_asked(connection: bytes, expected: str) -> None:
    raw = b"GET / HTTP/1.0\r\nHost: a\r\n" + connection + b"\r\n"
    out, _ = both(hello, raw)
    assert responses(out)[0][1]["Connection"] == expected


def test_http11_close_is_honoured() -> None:
    client = InProcessClient(hello)
    out = client.request(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert responses(out)[0][1]["Connection"] == "close"
    assert not client.open


def test_body_is_read_through_wsgi_input() -> None:
    body = b"k=" + b"v" * 5000
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    out, _ = both(echo, raw, raw)
    assert [r[2] for r in responses(out)] == [body, body]


def test_malformed_request_gets_400_and_never_reaches_the_app() -> None:
    called: list[bool] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        called.append(True)
        return hello(environ, start_response)

    out, _ = both(app, b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: "
                       b"chunked\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ") and not called


def test_broken_app_gets_a_500_without_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    out, _ = both(broken, GET)
    assert out.startswith(b"HTTP/1.1 500 ") and b"the app broke" not in out
    assert "the app broke" in caplog.text


def test_file_wrapper_in_memory_is_copied_and_sent_whole(tmp_path: Path) -> None:
    # Over the socket pair the file goes out with sendfile; in memory there is
    # no descriptor to send to, so it is read (pread) and written: the same bytes.
    data = bytes(range(256)) * 80
    (tmp_path / "f.bin").write_bytes(data)
    out, _ = both(file_app(str(tmp_path / "f.bin")), GET, GET)
    first, second = responses(out)
    assert first[0] == "HTTP/1.1 200 OK" and first[1]["Content-Length"] == str(len(data))
    assert first[2] == second[2] == data


def test_process_request_bytes_reuses_one_connection_per_app() -> None:
    first = process_request_bytes(hello, GET)
    second = process_request_bytes(hello, GET)
    assert responses(first)[0][2] == responses(second)[0][2] == b"/p?q=1 example.com"
    closed = process_request_bytes(hello, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert b"Connection: close" in closed
    assert process_request_bytes(hello, GET).startswith(b"HTTP/1.1 200 OK")  # a new connection
