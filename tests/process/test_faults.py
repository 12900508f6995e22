"""An app that fails in the request path gets a logged 500; the worker carries on.

Real forkserve processes, real clients (issue #12): `sys.exit()` and
`KeyboardInterrupt` in a view, `start_response(..., exc_info)` after the head
went out, a generator that overruns its Content-Length, an app that returns
None, and the byte count of the 500 page in the access log.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import pytest
import requests

from tests.support import Server, serve, status_of

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with serve("fault_apps:faulty", "--workers", "1", "--access-logfile", "-",
               wait_workers=1) as server:
        yield server


def _get(server: Server, path: str) -> requests.Response:
    with requests.Session() as session:
        return session.get(server.url + path, timeout=10)


@pytest.mark.parametrize(("path", "exc_name"), [("/exit", "SystemExit"),
                                                ("/interrupt", "KeyboardInterrupt")])
def test_exit_or_interrupt_in_a_view_is_a_500_and_the_worker_carries_on(
        server: Server, path: str, exc_name: str) -> None:
    workers = server.worker_pids()
    with requests.Session() as session:
        first = session.get(server.url + path, timeout=10)
        assert first.status_code == 500
        assert exc_name not in first.text  # the traceback goes to the log, not the client
        # Same worker, same server: the next request is served.
        assert session.get(server.url + "/ok", timeout=10).text == "ok"
    log = server.wait_for_log(rf"Error handling request GET {path}\b")
    assert re.search(rf"Traceback[\s\S]*{exc_name}", log)
    assert server.worker_pids() == workers
    assert server.proc is not None and server.proc.poll() is None


def test_a_worker_that_served_never_exits_with_a_boot_failure_code() -> None:
    # sys.exit(4) outside the app's call (a post_request hook): the worker ends,
    # but 4 means "could not load the app" and would stop the master. After
    # boot it is reported as a crash and the worker is replaced.
    with serve("fault_apps:faulty", "--workers", "1", "--hooks", "fault_hooks",
               wait_workers=1) as server:
        (worker,) = server.worker_pids()
        with requests.Session() as session:
            session.get(server.url + "/exit-in-hook", timeout=10)
        log = server.wait_for_log(rf"Worker {worker} exited with CRASHED")
        assert "APP_LOAD_ERROR" not in log
        server.wait_for_log(r"Booted worker", count=2)
        assert _get(server, "/ok").text == "ok"
        assert server.proc is not None and server.proc.poll() is None


def test_start_response_with_exc_info_after_the_head_aborts_the_response(
        server: Server) -> None:
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"GET /exc-info HTTP/1.1\r\nHost: a\r\n\r\n")
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            piece = sock.recv(65536)
            if not piece:
                break  # the server closed: the response was aborted
            data += piece
        else:
            pytest.fail(f"the connection was not closed: {data!r}")
    head, _, body = data.partition(b"\r\n\r\n")
    assert status_of(data) == 200
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == b"3\r\nabc\r\n"  # no "def", and no terminating 0-chunk: incomplete
    log = server.wait_for_log(r"Error handling request GET /exc-info")
    assert "failed after the first chunk" in log


def test_a_first_chunk_longer_than_content_length_is_a_500(server: Server) -> None:
    response = _get(server, "/too-long")
    assert response.status_code == 500
    log = server.wait_for_log(r"Error handling request GET /too-long")
    assert "more than its Content-Length" in log


def test_an_app_returning_none_is_named_in_the_error(server: Server) -> None:
    response = _get(server, "/none")
    assert response.status_code == 500
    log = server.wait_for_log(r"Error handling request GET /none")
    assert "the app fault_apps:faulty returned None" in log


def test_the_500_page_is_logged_with_its_byte_count(server: Server) -> None:
    response = _get(server, "/boom")
    assert response.status_code == 500
    size = len(response.content)
    assert size > 0
    log = server.wait_for_log(r'"GET /boom HTTP/1.1" 500 ')
    line = re.search(r'"GET /boom HTTP/1.1" 500 (\S+)', log)
    assert line is not None and line.group(1) == str(size)
