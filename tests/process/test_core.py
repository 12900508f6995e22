"""The core server over real sockets: requests, raw HTTP, signals, bad APPs."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support import REPO, TESTS, Server, raw_request, serve, status_of

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def marks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("marks") / "marks.txt"
    path.touch()
    return path


@pytest.fixture(scope="module")
def server(marks: Path, http_parser: str) -> Iterator[Server]:
    with serve("core_apps:app", "--workers", "2", "--keep-alive", "5",
               env={"CORE_APPS_MARKS": str(marks)}, wait_workers=2, http=http_parser) as s:
        assert f"Using parser: {http_parser} " in s.log  # the parametrisation took
        yield s


def wait_for_mark(marks: Path, text: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in marks.read_text().splitlines():
            return
        time.sleep(0.02)
    raise AssertionError(f"{text!r} never marked; marks: {marks.read_text()!r}")


_LEFTOVER: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def read_response(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, bytes]:
    """Read one Content-Length-framed response from `sock`: (head, body).

    Bytes past that response (the next pipelined answer) are kept for the
    next call on the same socket.
    """
    sock.settimeout(timeout)
    buf = _LEFTOVER.pop(sock, b"")
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed before a full head: {buf!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    if len(rest) > length:
        _LEFTOVER[sock] = rest[length:]
    return head, rest[:length]


# -- plain requests ----------------------------------------------------------


def test_get_hello_with_date_and_server(server: Server) -> None:
    r = requests.get(server.url + "/hello", timeout=5)
    assert r.status_code == 200
    assert r.content == b"Hello, world!"
    assert r.headers["Content-Length"] == "13"
    assert r.headers["Server"].startswith("forkserve/")
    assert r.headers["Date"].endswith("GMT")


def test_environ_over_the_wire(server: Server) -> None:
    r = requests.get(
        server.url + "/echo/a%20b/caf%C3%A9?x=1&y=%20",
        headers={"X-Multi": "one", "X_Sneaky": "dropped", "User-Agent": "tests"},
        timeout=5,
    )
    env = r.json()["environ"]
    assert env["REQUEST_METHOD"] == "GET"
    # PEP 3333: percent-decoded, then each byte as one latin-1 character.
    assert env["PATH_INFO"] == "/echo/a b/caf\u00c3\u00a9"
    assert env["QUERY_STRING"] == "x=1&y=%20"
    assert env["RAW_URI"] == "/echo/a%20b/caf%C3%A9?x=1&y=%20"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"].isdigit()
    assert env["HTTP_X_MULTI"] == "one"
    assert env["HTTP_USER_AGENT"] == "tests"
    assert "HTTP_X_SNEAKY" not in env
    assert env["SCRIPT_NAME"] == ""
    assert env["wsgi.url_scheme"] == "http"
    assert env["SERVER_PORT"] == str(server.address[1])


def test_repeated_headers_are_joined(server: Server) -> None:
    raw = (b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Rep: a\r\nX-Rep: b\r\n"
           b"Connection: close\r\n\r\n")
    resp = raw_request(server.address, raw)
    body = json.loads(resp.partition(b"\r\n\r\n")[2])
    assert body["environ"]["HTTP_X_REP"] == "a,b"


def test_post_content_length_body(server: Server) -> None:
    payload = os.urandom(200_000).hex().encode()
    r = requests.post(server.url + "/echo", data=payload, timeout=5)
    assert r.status_code == 200
    assert r.json()["body"].encode("latin-1") == payload
    assert r.json()["environ"]["CONTENT_LENGTH"] == str(len(payload))


def test_chunked_upload(server: Server) -> None:
    def gen() -> Iterator[bytes]:
        for i in range(20):
            yield f"piece {i};".encode()

    r = requests.post(server.url + "/echo", data=gen(), timeout=5)
    assert r.status_code == 200
    assert r.json()["body"] == "".join(f"piece {i};" for i in range(20))
    assert "CONTENT_LENGTH" not in r.json()["environ"]


def test_readline_readlines_and_iteration(server: Server) -> None:
    data = b"one\ntwo\nthree"
    r = requests.post(server.url + "/readline", data=data, timeout=5)
    assert r.json()["lines"] == ["one\n", "two\n", "three"]
    r = requests.post(server.url + "/iterate", data=data, timeout=5)
    assert r.json()["lines"] == ["one\n", "two\n", "three"]


def test_expect_100_continue_sent_when_the_app_reads(server: Server) -> None:
    with socket.create_connection(server.address, timeout=5) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        interim = s.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(b"hello")
        head, body = read_response(s)
        if not head.startswith(b"HTTP/1.1 200"):  # the 100 and the 200 may share a read
            head, body = interim[25:].partition(b"\r\n\r\n")[0], b""
        assert head.startswith(b"HTTP/1.1 200")
        assert json.loads(body)["body"] == "hello"


def test_expect_100_continue_sent_at_once_and_the_app_waits_for_the_body(
        server: Server) -> None:
    # The head passed the limits: 100 Continue goes out while the connection
    # is parked, and the app runs only once the body has arrived (a client
    # that never sends it holds no worker).
    with socket.create_connection(server.address, timeout=5) as s:
        s.sendall(b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        interim = s.recv(4096)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):
            s.recv(4096)  # /hello answers without reading: it has not run yet
        s.settimeout(5)
        s.sendall(b"hello")
        head, body = read_response(s)
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert body == b"Hello, world!"
        assert b"connection: close" not in head.lower()  # the body was read: keep-alive


def test_expect_100_continue_with_the_body_already_sent(server: Server) -> None:
    """RFC 9110 §10.1.1: a client that did not wait gets no 100; its body is read as usual."""
    resp = raw_request(server.address, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                       b"Expect: 100-continue\r\nConnection: close\r\n\r\nhello")
    assert resp.startswith(b"HTTP/1.1 200 OK")
    assert json.loads(resp.partition(b"\r\n\r\n")[2])["body"] == "hello"
    # Truncated: the body is checked before the app runs, so this is a 400.
    resp = raw_request(server.address, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                       b"Expect: 100-continue\r\n\r\nhel")
    assert status_of(resp) == 400 and b"environ" not in resp


def test_head_has_headers_but_no_body(server: Server) -> None:
    resp = raw_request(server.address, b"HEAD /hello HTTP/1.1\r\nHost: x\r\n"
                       b"Connection: close\r\n\r\n")
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Content-Length: 13" in head
    assert body == b""


def test_204_has_no_body_or_length(server: Server) -> None:
    resp = raw_request(server.address, b"GET /no-content HTTP/1.1\r\nHost: x\r\n"
                       b"Connection: close\r\n\r\n")
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 204")
    assert b"content-length" not in head.lower()
    assert b"transfer-encoding" not in head.lower()
    assert body == b""


def test_keep_alive_reuses_the_connection(server: Server) -> None:
    with requests.Session() as session:
        ports = {session.get(server.url + "/echo", timeout=5).json()["environ"]["REMOTE_PORT"]
                 for _ in range(5)}
    assert len(ports) == 1


def test_http10_keep_alive_on_request_and_close_by_default(server: Server) -> None:
    with socket.create_connection(server.address, timeout=5) as s:
        s.sendall(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        head, body = read_response(s)
        assert b"Connection: keep-alive" in head and body == b"Hello, world!"
        s.sendall(b"GET /hello HTTP/1.0\r\n\r\n")
        head, body = read_response(s)
        assert b"Connection: close" in head
        assert s.recv(10) == b""


def test_http10_streamed_response_is_close_delimited(server: Server) -> None:
    resp = raw_request(server.address, b"GET /stream?1000 HTTP/1.0\r\n\r\n")
    head, _, body = resp.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"x" * 1000


def test_pipelined_requests_answered_in_order(server: Server) -> None:
    raw = b"".join(
        b"GET /echo?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(3)
    ) + b"GET /echo?n=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(server.address, timeout=5) as s:
        s.sendall(raw)
        for i in range(4):
            head, body = read_response(s)
            assert head.startswith(b"HTTP/1.1 200")
            assert json.loads(body)["environ"]["QUERY_STRING"] == f"n={i}"


def test_large_streamed_response_is_chunked(server: Server) -> None:
    r = requests.get(server.url + "/stream?3000000", timeout=10)
    assert r.headers["Transfer-Encoding"] == "chunked"
    assert len(r.content) == 3_000_000 and set(r.content) == {ord("x")}


def test_write_callable(server: Server) -> None:
    r = requests.get(server.url + "/write", timeout=5)
    assert r.text == "written then returned"


def test_file_wrapper_sends_the_file(server: Server) -> None:
    r = requests.get(server.url + "/file", timeout=5)
    assert r.status_code == 200
    assert r.content == (TESTS / "apps" / "core_apps.py").read_bytes()


def test_file_wrapper_uses_sendfile_with_a_content_length() -> None:
    # The validator wraps the iterable (hiding the file wrapper), so the raw app
    # shows the sendfile path: it alone sets Content-Length from the file size.
    with serve("core_apps:raw_app") as s:
        r = requests.get(s.url + "/file", timeout=5)
        assert r.content == (TESTS / "apps" / "core_apps.py").read_bytes()
        assert r.headers["Content-Length"] == str(len(r.content))
        assert "Transfer-Encoding" not in r.headers


def test_factory_spec() -> None:
    with serve("core_apps:create_app()") as s:
        assert requests.get(s.url + "/hello", timeout=5).text == "Hello, world!"


# -- errors ------------------------------------------------------------------


def test_app_error_is_a_500_without_traceback_and_the_worker_goes_on() -> None:
    with serve("core_apps:app", "--workers", "1") as s:
        pid_before = requests.get(s.url + "/pid", timeout=5).json()["pid"]
        r = requests.get(s.url + "/error", timeout=5)
        assert r.status_code == 500
        assert "Traceback" not in r.text and "on purpose" not in r.text
        assert requests.get(s.url + "/pid", timeout=5).json()["pid"] == pid_before
        log = s.wait_for_log("RuntimeError: the app failed on purpose")
        assert "Traceback (most recent call last)" in log


def test_error_mid_stream_closes_and_calls_close(server: Server, marks: Path) -> None:
    resp = raw_request(server.address, b"GET /error-mid?midstream HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 200")
    assert not resp.endswith(b"0\r\n\r\n")  # never terminated as if complete
    wait_for_mark(marks, "closed midstream")
    server.wait_for_log("boom in the middle of the body")


def test_close_called_when_the_client_goes_away(server: Server, marks: Path) -> None:
    with socket.create_connection(server.address, timeout=5) as s:
        s.sendall(b"GET /tracked?gone HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(1024)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    wait_for_mark(marks, "closed gone")


def test_close_called_on_success(server: Server, marks: Path) -> None:
    r = requests.get(server.url + "/tracked?ok", timeout=5)
    assert len(r.content) == 65536 * 64
    wait_for_mark(marks, "closed ok")


def test_wrong_content_length_closes_the_connection(server: Server) -> None:
    with socket.create_connection(server.address, timeout=5) as s:
        s.sendall(b"GET /wrong-length HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.endswith(b"too short")
    server.wait_for_log("less than its Content-Length")


def test_header_injection_from_the_app_is_a_500(server: Server) -> None:
    resp = raw_request(server.address, b"GET /bad-header HTTP/1.1\r\nHost: x\r\n"
                       b"Connection: close\r\n\r\n")
    assert status_of(resp) == 500
    assert b"injected" not in resp


def test_malformed_request_gets_400_and_never_reaches_the_app(server: Server) -> None:
    resp = raw_request(server.address, b"GET /echo HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n")
    assert status_of(resp) == 400
    assert b"environ" not in resp


# -- keep-alive fairness -------------------------------------------------------


def test_fifty_keep_alive_clients_on_two_workers_are_all_served(server: Server) -> None:
    """No client waits for another to disconnect: every one gets answers while all stay open."""
    clients = [socket.create_connection(server.address, timeout=5) for _ in range(50)]
    try:
        served = [0] * 50
        worst = 0.0
        for _round in range(3):
            for i, s in enumerate(clients):
                t0 = time.monotonic()
                s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
                head, body = read_response(s, timeout=5)
                worst = max(worst, time.monotonic() - t0)
                assert body == b"Hello, world!"
                served[i] += 1
        assert served == [3] * 50
        assert worst < 5.0  # bounded by the read timeout: no client starved
    finally:
        for s in clients:
            s.close()


def _open_and_ask_pid(address: tuple[str, int]) -> tuple[socket.socket, int]:
    """A new keep-alive connection, one request on it: the socket and the worker's pid."""
    sock = socket.create_connection(address, timeout=5)
    sock.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
    _head, body = read_response(sock, timeout=5)
    return sock, int(json.loads(body)["pid"])


def test_keep_alive_connections_opened_one_by_one_spread_over_the_workers() -> None:
    """The kernel wakes the first idle worker in its queue: without balancing, every
    client that connects while the server is quiet lands on that one worker (nginx's
    upstream keep-alive pool, long-lived API clients), and it alone serves them later."""
    with serve("core_apps:app", "--workers", "3", wait_workers=3) as srv:
        socks: list[socket.socket] = []
        try:
            by_pid: dict[int, list[socket.socket]] = {}
            for _ in range(12):
                sock, pid = _open_and_ask_pid(srv.address)
                socks.append(sock)
                by_pid.setdefault(pid, []).append(sock)
                time.sleep(0.03)  # quiet between clients: one worker is always first
            counts = sorted(len(group) for group in by_pid.values())
            assert len(counts) == 3 and counts[-1] - counts[0] <= 2, counts
            # Close one worker's connections: the next clients go there.
            emptied, gone = min(by_pid.items(), key=lambda item: len(item[1]))
            for sock in gone:
                sock.close()
            time.sleep(0.4)  # past a 0.25 s tick: the others see they are ahead and step aside
            landed = []
            for _ in range(len(gone)):
                sock, pid = _open_and_ask_pid(srv.address)
                socks.append(sock)
                landed.append(pid)
                time.sleep(0.03)
            assert landed.count(emptied) >= len(gone) - 1, (emptied, landed)
        finally:
            for sock in socks:
                sock.close()


def test_a_worker_busy_in_the_app_does_not_hold_up_new_connections() -> None:
    """The worker ahead steps aside for the one behind, but never waits for a worker
    that is stuck in a request: new clients are answered by the free one at once.
    (Without that rule the free worker, one connection ahead of the stuck one, would
    stay out of the accept queue until the slow request ends.)"""
    with serve("core_apps:app", "--workers", "2", wait_workers=2) as srv:
        socks: list[socket.socket] = []
        try:
            slow = socket.create_connection(srv.address, timeout=10)
            socks.append(slow)
            slow.sendall(b"GET /slow?3 HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.3)
            pids, waits = set(), []
            for _ in range(8):
                began = time.monotonic()
                sock, pid = _open_and_ask_pid(srv.address)
                waits.append(time.monotonic() - began)
                socks.append(sock)
                pids.add(pid)
            assert len(pids) == 1  # the free worker took them all
            assert max(waits) < 0.5, waits  # none waited for the busy one
            _head, body = read_response(slow, timeout=10)
            assert int(json.loads(body)["pid"]) not in pids
        finally:
            for sock in socks:
                sock.close()


def test_the_master_loads_ssl_before_forking_so_the_workers_share_it() -> None:
    """Flask, Django and requests import ssl; loaded once in the master, its pages
    are shared by every worker instead of each worker loading its own."""
    import _ssl

    with serve("core_apps:app", "--workers", "1", wait_workers=1) as srv:
        # Without --preload the master never imports the app: ssl is its own doing.
        maps = Path(f"/proc/{srv.pid}/maps").read_text()
        assert Path(_ssl.__file__).name in maps


@pytest.mark.parametrize("flag", [None, "--no-gc-freeze"])
def test_boot_time_objects_are_frozen_out_of_the_collector(flag: str | None) -> None:
    """A full collection walks every tracked object: tens of ms per worker once the
    app is imported. Frozen (the master before fork, the worker once booted), those
    objects are skipped, while garbage made by requests is still collected."""
    args = ["--workers", "1"] + ([flag] if flag else [])
    with serve("core_apps:app", *args, wait_workers=1) as srv:
        seen = requests.get(srv.url + "/gc", timeout=5).json()
        seen_again = requests.get(srv.url + "/gc", timeout=5).json()
    if flag is None:
        assert seen["frozen_at_import"] > 0  # the master froze what the worker inherited
        assert seen["frozen"] > seen["frozen_at_import"]  # and the worker its app
    else:
        assert seen["frozen_at_import"] == 0 and seen["frozen"] == 0
    assert seen_again["collected"] >= 1  # the request's cycle: collection still works


def test_idle_keep_alive_connection_closes_at_the_timeout() -> None:
    with serve("core_apps:app", "--keep-alive", "1") as s:
        with socket.create_connection(s.address, timeout=5) as c:
            c.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            read_response(c)
            t0 = time.monotonic()
            assert c.recv(10) == b""
            assert 0.5 < time.monotonic() - t0 < 3.0


# -- process behaviour -----------------------------------------------------------


def test_killed_worker_is_replaced() -> None:
    with serve("core_apps:app", "--workers", "2", wait_workers=2) as s:
        before = s.worker_pids()
        assert len(before) == 2
        os.kill(before[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            now = s.worker_pids()
            if len(now) == 2 and before[0] not in now:
                break
            time.sleep(0.05)
        assert before[0] not in s.worker_pids() and len(s.worker_pids()) == 2
        assert "was killed by SIGKILL" in s.log
        assert requests.get(s.url + "/hello", timeout=5).status_code == 200


def test_term_finishes_the_in_flight_request_then_exits_0() -> None:
    s = Server("core_apps:app", "--workers", "1", "--graceful-timeout", "10").start()
    try:
        result: dict[str, object] = {}

        def slow() -> None:
            try:
                result["r"] = requests.get(s.url + "/slow?1.5", timeout=10)
            except Exception as exc:  # noqa: BLE001 - recorded for the assertion
                result["r"] = exc

        t = threading.Thread(target=slow)
        t.start()
        s.wait_for_log(r"Booted worker")
        time.sleep(0.4)  # the request is inside the app now
        s.send_signal(signal.SIGTERM)
        t.join(10)
        r = result["r"]
        assert isinstance(r, requests.Response), r
        assert r.status_code == 200 and r.json()["slept"] == "1.5"
        assert s.wait_exit(15) == 0
    finally:
        s.kill()


def test_quit_stops_fast() -> None:
    s = Server("core_apps:app").start()
    try:
        t0 = time.monotonic()
        assert s.stop(signal.SIGQUIT) == 0
        assert time.monotonic() - t0 < 5
    finally:
        s.kill()


def run_forkserve(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{TESTS / 'apps'}")
    return subprocess.run(
        [sys.executable, "-m", "forkserve", *args], cwd=TESTS / "apps", env=env,
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        ("no_such_module:app", "no such module"),
        ("core_apps:missing", "has no attribute 'missing'"),
        ("broken_import:app", "RuntimeError: this module refuses to import"),
        ("core_apps:not_callable", "is not callable"),
        ("not a spec", "is not MODULE:ATTRIBUTE"),
    ],
)
def test_bad_app_exits_non_zero_with_one_line(app: str, expected: str) -> None:
    proc = run_forkserve(app, "--bind", "127.0.0.1:0", "--workers", "2")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if "ERROR" in line or "error:" in line]
    assert len(errors) == 1, out
    assert expected in errors[0]
    assert out.count("Booting worker") <= 2  # no crash loop


def test_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_forkserve("core_apps:app", "--bind", f"127.0.0.1:{port}")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"forkserve: error: cannot bind 127.0.0.1:{port}: address already in use"
    ]


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--workers", "lots", "expected an integer, got 'lots'"),
        ("--timeout", "-3", "expected a number >= 0"),
        ("--bind", "[::1:80", "expected HOST:PORT"),
        ("--log-level", "loud", "expected one of"),
    ],
)
def test_invalid_flag_value_is_one_line(flag: str, value: str, expected: str) -> None:
    proc = run_forkserve("core_apps:app", flag, value)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("forkserve: error: ") and flag in lines[0], lines
    assert expected in lines[0]


def test_version_and_python_m_are_the_same_command() -> None:
    proc = run_forkserve("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("forkserve ")
    script = Path(sys.executable).parent / "forkserve"
    if script.exists():
        other = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                               timeout=20)
        assert other.stdout == proc.stdout


def test_fifty_concurrent_keep_alive_clients(server: Server) -> None:
    """50 threads, each on its own keep-alive connection, all at once: none starves."""
    rounds = 20
    served = [0] * 50
    worst = [0.0] * 50
    errors: list[BaseException] = []
    start = threading.Barrier(50)

    def client(i: int) -> None:
        try:
            with socket.create_connection(server.address, timeout=10) as s:
                start.wait(10)
                for _ in range(rounds):
                    t0 = time.monotonic()
                    s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
                    _head, body = read_response(s, timeout=10)
                    worst[i] = max(worst[i], time.monotonic() - t0)
                    if body == b"Hello, world!":
                        served[i] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    assert served == [rounds] * 50
    assert max(worst) < 10.0


def test_access_log_in_gunicorn_format(tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    fmt = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(D)s %(p)s'
    with serve("core_apps:app", "--access-logfile", str(access), "--access-logformat",
               fmt) as s:
        requests.get(s.url + "/hello?x=1", headers={"Referer": "http://r/",
                                                    "User-Agent": "ua/1"},
                     auth=("alice", "pw"), timeout=5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not access.read_text().strip():
            time.sleep(0.05)
    line = access.read_text().strip().splitlines()[-1]
    m = re.fullmatch(
        r'127\.0\.0\.1 - alice \[[^\]]+\] "GET /hello\?x=1 HTTP/1\.1" 200 13 '
        r'"http://r/" "ua/1" (\d+) <(\d+)>', line)
    assert m, line
    assert int(m.group(2)) in range(1, 1 << 22)


def test_error_logfile_chdir_and_pythonpath(tmp_path: Path) -> None:
    """The app module is found only through --pythonpath, and it imports a module found
    only through --chdir; the log goes to --error-logfile, not stderr."""
    errors = tmp_path / "error.log"
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "pp_app.py").write_text("from core_apps import app\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "forkserve", "pp_app:app", "--bind", "127.0.0.1:0",
         "--chdir", str(TESTS / "apps"), "--pythonpath", str(extra),
         "--error-logfile", str(errors)],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and "Booted worker" not in (
            errors.read_text() if errors.exists() else ""
        ):
            time.sleep(0.05)
        text = errors.read_text()
        url = re.search(r"Listening at: (\S+)", text)
        assert url, text
        assert requests.get(url.group(1) + "/hello", timeout=5).text == "Hello, world!"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
        assert proc.returncode == 0 and stderr == b""
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


def test_script_name_from_the_environment() -> None:
    with serve("core_apps:app", env={"SCRIPT_NAME": "/mount"}) as s:
        env = requests.get(s.url + "/mount/echo", timeout=5).json()["environ"]
        assert env["SCRIPT_NAME"] == "/mount" and env["PATH_INFO"] == "/echo"


def test_term_serves_a_connection_accepted_before_its_request_arrived(tmp_path: Path) -> None:
    """Unix sockets have no TCP_DEFER_ACCEPT: a connection can be accepted before its
    request; a graceful stop must still answer it rather than close it unanswered."""
    path = tmp_path / "fs.sock"
    s = Server("core_apps:app", bind=[f"unix:{path}"]).start()
    try:
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(path))
            time.sleep(0.3)  # the worker has accepted it by now
            s.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            c.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            head, body = read_response(c)
            assert head.startswith(b"HTTP/1.1 200") and body == b"Hello, world!"
            assert b"Connection: close" in head
        assert s.wait_exit(15) == 0
    finally:
        s.kill()
