"""Every example in examples/, served by a real forkserve, shows what the guide says it shows.

Each check takes what the server really sent and asserts that the guide
(docs/guide/) prints the same text, so the guide cannot drift from the code.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support import REPO, Server, serve

pytestmark = pytest.mark.process

EXAMPLES = REPO / "examples"
GUIDE = REPO / "docs" / "guide"
# Only the worktree on the path: examples/flask_app.py must not meet tests/apps/flask_app.py.
ENV = {"PYTHONPATH": str(REPO)}


def guide(chapter: str) -> str:
    return (GUIDE / chapter).read_text(encoding="utf-8")


def assert_guide_shows(chapter: str, text: str) -> None:
    """The guide prints `text` exactly as the server produced it."""
    assert text in guide(chapter), f"{chapter} does not show:\n{text}"


def example(app: str, *args: str, cwd: Path = EXAMPLES) -> Iterator[Server]:
    with serve(app, *args, cwd=cwd, env=ENV) as server:
        yield server


def log_lines(server: Server, pattern: str) -> list[str]:
    """The messages of the error log lines that match, without the timestamp and pid."""
    return [m.group(1) for m in re.finditer(r"\] \[\w+\] (" + pattern + r".*)", server.log)]


@pytest.fixture(scope="module")
def hello() -> Iterator[Server]:
    yield from example("hello:app")


@pytest.fixture(scope="module")
def tour() -> Iterator[Server]:
    yield from example("wsgi_tour:app")


def test_ch1_hello_world_on_one_kept_alive_connection(hello: Server) -> None:
    request = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with socket.create_connection(hello.address, timeout=10) as s:
        replies = []
        for _ in range(2):  # the same connection serves both: keep-alive
            s.sendall(request)
            data = b""
            while not data.endswith(b"Hello, World!\n"):
                chunk = s.recv(65536)
                assert chunk, data
                data += chunk
            replies.append(data.decode())
    head, body = replies[1].split("\r\n\r\n", 1)
    assert body == "Hello, World!\n"
    lines = head.split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    for line in lines[:3]:  # status, Content-Type, Content-Length as the app set them
        assert_guide_shows("01-what-is-wsgi.md", f"< {line}")
    assert "< Server: forkserve/" in guide("01-what-is-wsgi.md")
    assert_guide_shows("01-what-is-wsgi.md", body)


def test_ch2_path_info_is_latin1_and_query_string_is_raw(tour: Server) -> None:
    r = requests.get(tour.url + "/path/caf%C3%A9?q=caf%C3%A9&page=2", timeout=10)
    assert r.status_code == 200
    assert "PATH_INFO    '/path/cafÃ©'" in r.text
    assert "as UTF-8     '/path/café'" in r.text
    assert_guide_shows("02-environ.md", r.text)


def test_ch2_bodies_with_length_chunked_and_100_continue(tour: Server) -> None:
    with requests.Session() as session:
        sized = session.post(tour.url + "/upload", data=b"x" * 3000, timeout=10)
        chunked = session.post(tour.url + "/upload", data=iter([b"a" * 1000, b"b" * 500]),
                               timeout=10)
    assert sized.text.endswith("received          3000 bytes\n")
    assert "CONTENT_LENGTH    '3000'" in sized.text
    assert "Transfer-Encoding 'chunked'" in chunked.text
    assert chunked.text.endswith("received          1500 bytes\n")
    assert_guide_shows("02-environ.md", sized.text)
    assert_guide_shows("02-environ.md", chunked.text)
    # Expect: 100-continue: the interim 100 comes first, then the answer.
    head = (b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n")
    with socket.create_connection(tour.address, timeout=10) as s:
        s.sendall(head)
        interim = s.recv(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"hello")
        data = b""
        while b"bytes\n" not in data:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"received          5 bytes\n")
    assert_guide_shows("02-environ.md", "< HTTP/1.1 100 Continue")


def test_ch2_streaming_body_is_chunked_and_closed(tour: Server) -> None:
    r = requests.get(tour.url + "/stream", timeout=10)
    assert r.headers["Transfer-Encoding"] == "chunked"
    assert r.text == "3...\n2...\n1...\nliftoff\n"
    assert_guide_shows("02-environ.md", r.text)
    tour.wait_for_log("countdown closed after 3 of 3 steps")
    assert_guide_shows("02-environ.md", "countdown closed after 3 of 3 steps")


def test_ch2_file_wrapper_write_and_exc_info(tour: Server) -> None:
    with requests.Session() as session:
        f = session.get(tour.url + "/file", timeout=10)
        w = session.get(tour.url + "/write", timeout=10)
        e = session.get(tour.url + "/fail", timeout=10)
    assert f.content == (EXAMPLES / "wsgi_tour.py").read_bytes()
    assert w.text == "sent by write()\nthen returned\n"
    assert_guide_shows("02-environ.md", w.text)
    assert (e.status_code, e.text) == (503, "sorry: the report could not be built\n")
    assert_guide_shows("02-environ.md", "HTTP/1.1 503 Service Unavailable")


def test_ch2_a_crash_is_a_500_and_a_logged_traceback(tour: Server) -> None:
    r = requests.get(tour.url + "/crash", timeout=10)
    assert r.status_code == 500
    assert "Traceback" not in r.text and "a bug" not in r.text
    tour.wait_for_log(r"KeyError: 'a bug'")
    assert "Traceback (most recent call last)" in tour.log
    assert_guide_shows("02-environ.md", "KeyError: 'a bug'")


def test_ch2_demo_shows_the_live_environ() -> None:
    with serve("forkserve.demo:app", env=ENV) as server:
        page = requests.get(server.url + "/?q=1", timeout=10).text
    for key in ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "wsgi.input",
                "wsgi.url_scheme", "wsgi.multiprocess", "RAW_URI"):
        assert f"<td>{key}</td>" in page
        assert f"`{key}`" in guide("02-environ.md")


def test_ch3_middleware_order_of_calls() -> None:
    with next_server("middleware:app") as server, requests.Session() as session:
        given = session.get(server.url + "/", headers={"X-Request-ID": "abc-123"}, timeout=10)
        made = session.get(server.url + "/", headers={"X-Request-ID": "has a space"}, timeout=10)
        server.wait_for_log("timing: leave", count=2)
        order = log_lines(server, r"(?:timing|request-id|app):")
    assert given.headers["X-Request-ID"] == "abc-123"
    assert given.text == "Hello, request abc-123\n"
    assert_guide_shows("03-middleware.md", given.text)
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])
    first = [re.sub(r"after [\d.]+ ms", "after 0.4 ms", line) for line in order[:5]]
    assert first == ["timing: enter", "request-id: enter abc-123", "app: called",
                     "request-id: leave", "timing: leave after 0.4 ms"]
    assert_guide_shows("03-middleware.md", "\n".join(first))


def test_ch3_ch4_flask_app_through_the_middleware() -> None:
    pytest.importorskip("flask")
    with next_server("flask_app:app") as server, requests.Session() as session:
        r = session.get(server.url + "/", timeout=10)
        hello = session.get(server.url + "/hello/caf%C3%A9", timeout=10)
        server.wait_for_log("timing: leave")
        order = log_lines(server, r"(?:timing|request-id|view):")
    data = r.json()
    assert data == {"request_id": r.headers["X-Request-ID"], "server": "forkserve/0.1.0"}
    assert hello.text == "Hello, café!\n"
    assert_guide_shows("04-frameworks.md", hello.text)
    assert [line.split(" ")[0] for line in order[:5]] == [
        "timing:", "request-id:", "view:", "request-id:", "timing:"]
    assert_guide_shows("03-middleware.md", '"server":"forkserve/0.1.0"')


def test_ch4_django_project() -> None:
    pytest.importorskip("django")
    with next_server("mysite.wsgi:application", cwd=EXAMPLES / "djangoproject") as server:
        r = requests.get(server.url + "/where/", timeout=10)
    assert r.json() == {"path": "/where/", "script_name": "", "server": "forkserve/0.1.0",
                        "multiprocess": True}
    assert_guide_shows("04-frameworks.md", r.text)
    with next_server("--chdir", "djangoproject", "mysite.wsgi:application",
                     "--root-path", "/app") as server:
        mounted = requests.get(server.url + "/app/where/", timeout=10)
    assert json.loads(mounted.text)["script_name"] == "/app"
    assert_guide_shows("04-frameworks.md", mounted.text)


def next_server(app: str, *args: str, cwd: Path = EXAMPLES) -> Server:
    """A server for one test (the context manager starts and stops it)."""
    return Server(app, *args, cwd=cwd, env=ENV)
