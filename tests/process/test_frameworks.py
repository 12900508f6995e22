"""Real Flask and Django apps served by forkserve, exercised over HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from tests.support import Server, serve

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def flask_server(http_parser: str) -> Iterator[Server]:
    pytest.importorskip("flask")
    with serve("flask_app:app", "--workers", "2", http=http_parser) as s:
        yield s


@pytest.fixture(scope="module")
def django_server(http_parser: str) -> Iterator[Server]:
    pytest.importorskip("django")
    with serve("djangoproj.wsgi:application", "--workers", "2", "--root-path", "/site",
               http=http_parser) as s:
        yield s


def test_flask_routing_and_query_strings(flask_server: Server) -> None:
    r = requests.get(flask_server.url + "/hello/w%C3%B6rld?q=a+b&tag=x&tag=y", timeout=5)
    assert r.status_code == 200
    assert r.json() == {"hello": "w\u00f6rld", "q": "a b", "tags": ["x", "y"]}
    assert requests.get(flask_server.url + "/", timeout=5).text == "flask index"
    assert requests.get(flask_server.url + "/nope", timeout=5).status_code == 404


def test_flask_form_post_and_json(flask_server: Server) -> None:
    r = requests.post(flask_server.url + "/form", data={"name": "Ada", "lang": "en"}, timeout=5)
    assert r.json()["form"] == {"name": "Ada", "lang": "en"}
    r = requests.post(flask_server.url + "/form", files={"upload": ("a.txt", b"abc")},
                      data={"k": "v"}, timeout=5)
    assert r.json() == {"form": {"k": "v"}, "files": ["upload"]}
    r = requests.post(flask_server.url + "/json", json={"numbers": [1, 2, 3]}, timeout=5)
    assert r.json() == {"received": {"numbers": [1, 2, 3]}, "doubled": [2, 4, 6]}


def test_flask_cookies_round_trip(flask_server: Server) -> None:
    with requests.Session() as session:
        r = session.get(flask_server.url + "/cookie/set", timeout=5)
        assert {c.name for c in r.cookies} == {"flavour", "size"}
        got = session.get(flask_server.url + "/cookie/get", timeout=5).json()
        assert got == {"cookies": {"flavour": "oatmeal", "size": "large"}}


def test_flask_streamed_response(flask_server: Server) -> None:
    r = requests.get(flask_server.url + "/stream", timeout=5, stream=True)
    assert r.headers["Transfer-Encoding"] == "chunked"
    assert r.text == "".join(f"line {i}\n" for i in range(100))


def test_django_routing_query_and_script_name(django_server: Server) -> None:
    r = requests.get(django_server.url + "/site/hello/ada?q=1&tag=a&tag=b", timeout=5)
    assert r.status_code == 200
    assert r.json() == {"hello": "ada", "q": "1", "tags": ["a", "b"]}
    meta = requests.get(django_server.url + "/site/meta", timeout=5).json()
    assert meta["script_name"] == "/site"
    assert meta["path"] == "/site/meta" and meta["path_info"] == "/meta"
    assert meta["remote_addr"] == "127.0.0.1"
    assert meta["host"] == f"127.0.0.1:{django_server.address[1]}"


def test_django_form_json_and_cookies(django_server: Server) -> None:
    r = requests.post(django_server.url + "/site/form", data={"a": "1", "b": "two"}, timeout=5)
    assert r.json() == {"form": {"a": "1", "b": "two"}, "method": "POST"}
    r = requests.post(django_server.url + "/site/json", json={"x": [1, {"y": None}]}, timeout=5)
    assert r.json() == {"received": {"x": [1, {"y": None}]}}
    r = requests.get(django_server.url + "/site/cookies", cookies={"c1": "v1", "c2": "v2"},
                     timeout=5)
    assert r.json() == {"cookies": {"c1": "v1", "c2": "v2"}}
    assert r.cookies["seen"] == "yes"


def test_django_streamed_response(django_server: Server) -> None:
    r = requests.get(django_server.url + "/site/stream", timeout=5)
    assert r.headers["Transfer-Encoding"] == "chunked"
    assert r.text == "".join(f"chunk {i}\n" for i in range(50))
