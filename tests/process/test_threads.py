"""The threaded worker (--threads N, -k gthread) with real processes and real clients.

Concurrency is read from what the app saw (how many requests were in it at
once, on which threads), never from a stopwatch; where a duration is checked
it is only against the serial time, with a wide margin (the box is shared).
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support import TESTS, Server, serve

pytestmark = pytest.mark.process


def parse(body: str) -> tuple[str, int, str, int]:
    """`PATH PID THREAD PEAK` from thread_apps.app."""
    path, pid, thread, peak = body.split()
    return path, int(pid), thread, int(peak)


def get_many(url: str, paths: list[str], timeout: float = 20.0) -> list[requests.Response]:
    """GET each path at once, each from its own keep-alive session (as clients do)."""

    def one(path: str) -> requests.Response:
        with requests.Session() as session:
            return session.get(url + path, timeout=timeout)

    with concurrent.futures.ThreadPoolExecutor(len(paths)) as pool:
        return list(pool.map(one, paths))


def recv_responses(sock: socket.socket, count: int, timeout: float = 20.0) -> list[bytes]:
    """Read `count` Content-Length responses from one connection, in arrival order."""
    sock.settimeout(timeout)
    data = b""
    bodies: list[bytes] = []
    while len(bodies) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            m = re.search(rb"content-length: (\d+)", data[:head_end], re.I)
            assert m, data[:head_end]
            end = head_end + 4 + int(m.group(1))
            if len(data) >= end:
                bodies.append(data[head_end + 4 : end])
                data = data[end:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(bodies)} responses"
        data += chunk
    return bodies


def test_two_workers_eight_threads_serve_sixteen_at_once() -> None:
    with serve("thread_apps:app", "--workers", "2", "--threads", "8",
               wait_workers=2) as server:
        assert "Using worker: gthread (8 threads)" in server.log
        started = time.monotonic()
        responses = get_many(server.url, ["/sleep?0.5"] * 16)
        elapsed = time.monotonic() - started
        assert all(r.status_code == 200 for r in responses)
        seen = [parse(r.text) for r in responses]
        # What each process saw: the most requests in its app at once.
        peaks: dict[int, int] = {}
        for _path, pid, _thread, peak in seen:
            peaks[pid] = max(peaks.get(pid, 0), peak)
        assert sum(peaks.values()) >= 12, peaks  # 16 when the split is 8/8
        assert len({(pid, thread) for _p, pid, thread, _k in seen}) >= 12
        assert all(thread.startswith("forkserve-thread-") for _p, _pid, thread, _k in seen)
        # One request at a time per worker would take 8 x 0.5 s at the least.
        assert elapsed < 16 * 0.5 / 2, elapsed


def test_pipelined_requests_answered_in_order_while_others_run() -> None:
    # Threads to spare: a connection that could go to a second thread would.
    with serve("thread_apps:app", "--workers", "1", "--threads", "8") as server:
        others: list[requests.Response] = []
        runner = threading.Thread(
            target=lambda: others.extend(get_many(server.url, ["/sleep?0.6"] * 3)))
        runner.start()
        time.sleep(0.2)  # the three are in the app now
        with socket.create_connection(server.address, timeout=20) as sock:
            # Slow, fast, slow, fast on one connection: a second thread taking the
            # fast one early would answer it first. The last three arrive while
            # the first is in the app (the connection is readable while busy).
            requests_ = [f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                         for p in ("/sleep?0.3", "/a", "/sleep?0.1", "/b")]
            # A first request, answered: the connection is now parked (idle) in
            # the loop's epoll set, as a keep-alive client's usually is.
            sock.sendall(b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
            assert recv_responses(sock, 1)[0].startswith(b"/warm ")
            sock.sendall(requests_[0])
            time.sleep(0.15)
            sock.sendall(b"".join(requests_[1:]))
            bodies = recv_responses(sock, 4)
        runner.join(30)
        assert [b.split()[0] for b in bodies] == [b"/sleep", b"/a", b"/sleep", b"/b"]
        # The pipelined slow request shared the app with the three others.
        assert parse(bodies[0].decode())[3] >= 2
        assert len(others) == 3 and all(r.status_code == 200 for r in others)
        assert max(parse(r.text)[3] for r in others) >= 3


def test_stuck_request_others_served_then_worker_replaced_with_stacks() -> None:
    with serve("thread_apps:app", "--workers", "1", "--threads", "4", "--timeout", "2",
               "--graceful-timeout", "1", wait_workers=1) as server:
        old = server.worker_pids()
        assert len(old) == 1
        answers: list[int] = []
        stuck = threading.Thread(
            target=lambda: _swallow(lambda: answers.append(
                requests.get(server.url + "/stuck", timeout=30).status_code)),
            daemon=True)
        stuck.start()
        time.sleep(0.3)
        # The same worker answers others while one of its threads is stuck.
        for _ in range(3):
            r = requests.get(server.url + "/fast", timeout=5)
            path, pid, _thread, peak = parse(r.text)
            assert (pid, peak) == (old[0], 2)
        text = server.wait_for_log(rf"Booted worker with pid: (?!{old[0]})", timeout=20)
        assert re.search(rf"WORKER TIMEOUT \(pid:{old[0]}\) GET /stuck from 127\.0\.0\.1:\d+ "
                         r"has run for [\d.]+s on thread \d", text)
        # Its stack (in the app's sleep) and every other thread's, with what it runs.
        assert re.search(r"Thread forkserve-thread-\d running GET /stuck .*\n(.*\n)*.*"
                         r"thread_apps\.py.*\n.*time\.sleep\(60\)", text)
        assert text.count("Thread forkserve-thread-") == 4
        assert "Thread MainThread" in text
        # Start before stop: the replacement booted before the old one exited.
        server.wait_for_log(rf"Worker {old[0]} (exited|was killed)", timeout=20)
        text = server.log
        assert text.index(f"Booted worker with pid: {server.worker_pids()[0]}") < text.index(
            f"Worker {old[0]} ")
        r = requests.get(server.url + "/after", timeout=5)
        assert parse(r.text)[1] != old[0]
        # Nothing of its response had gone out: the stuck client got a 500 when
        # the worker left, not an empty reply (as a sync worker's does).
        stuck.join(timeout=20)
        assert answers == [500]


def _swallow(fn: object) -> None:
    try:
        fn()  # type: ignore[operator]
    except requests.RequestException:
        pass


def test_graceful_stop_finishes_eight_in_flight_requests() -> None:
    server = Server("thread_apps:app", "--workers", "1", "--threads", "8").start()
    with server:
        idle = socket.create_connection(server.address, timeout=10)
        idle.sendall(b"GET /idle HTTP/1.1\r\nHost: x\r\n\r\n")
        assert recv_responses(idle, 1)[0].startswith(b"/idle")
        results: list[requests.Response] = []
        runner = threading.Thread(
            target=lambda: results.extend(get_many(server.url, ["/sleep?1"] * 8)))
        runner.start()
        time.sleep(0.4)  # all eight are in the app
        server.send_signal(signal.SIGTERM)
        runner.join(30)
        assert len(results) == 8
        assert all(r.status_code == 200 for r in results)
        assert max(parse(r.text)[3] for r in results) == 8
        # The idle keep-alive connection was closed with a FIN, not left open.
        idle.settimeout(10)
        assert idle.recv(100) == b""
        idle.close()
        assert server.wait_exit(15) == 0


def test_k_gthread_serves_with_the_default_threads() -> None:
    with serve("thread_apps:app", "-k", "gthread") as server:
        assert "Using worker: gthread (4 threads)" in server.log
        responses = get_many(server.url, ["/sleep?0.4"] * 4)
        assert max(parse(r.text)[3] for r in responses) == 4


@pytest.mark.parametrize("worker_class", ["gevent", "eventlet", "tornado",
                                          "uvicorn.workers.UvicornWorker"])
def test_other_worker_classes_are_refused_in_one_line(worker_class: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(TESTS.parent))
    proc = subprocess.run([sys.executable, "-m", "forkserve", "thread_apps:app", "-k",
                           worker_class], capture_output=True, text=True, timeout=30,
                          cwd=TESTS / "apps", env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "forkserve has sync and gthread workers" in lines[0]
    assert repr(worker_class) in lines[0] and "docs/workers.md" in lines[0]
    assert Path(TESTS.parent / "docs" / "workers.md").exists()


@pytest.mark.parametrize("threads, expected", [("1", "False"), ("2", "True")])
def test_wsgi_multithread_says_whether_the_app_runs_on_threads(threads: str,
                                                               expected: str) -> None:
    with serve("thread_apps:app", "--threads", threads) as server:
        assert requests.get(server.url + "/multithread", timeout=10).text == expected + "\n"


def test_max_requests_counts_across_threads() -> None:
    with serve("thread_apps:app", "--workers", "1", "--threads", "4",
               "--max-requests", "8", wait_workers=1) as server:
        old = server.worker_pids()
        get_many(server.url, ["/sleep?0.2"] * 4)
        get_many(server.url, ["/sleep?0.2"] * 4)
        server.wait_for_log(rf"Replacing worker {old[0]}: served 8 requests", timeout=10)


def test_threads_from_the_environment() -> None:
    with serve("thread_apps:app", env={"FORKSERVE_THREADS": "3"}) as server:
        assert "Using worker: gthread (3 threads)" in server.log
        responses = get_many(server.url, ["/sleep?0.4"] * 3)
        assert max(parse(r.text)[3] for r in responses) == 3


# -- frameworks: sessions and SQLite from several threads at once -----------

def visits(url: str, clients: int = 6, each: int = 8) -> list[list[dict[str, object]]]:
    """Each client, in its own session, visits `each` times; all clients at once."""

    def one(index: int) -> list[dict[str, object]]:
        with requests.Session() as session:
            out = []
            for _ in range(each):
                r = session.get(f"{url}/visit/c{index}", timeout=30)
                assert r.status_code == 200, r.text
                out.append(r.json())
            return out

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(clients)))


def check_visits(url: str, results: list[list[dict[str, object]]], each: int = 8) -> None:
    threads = set()
    for index, seen in enumerate(results):
        # Each session saw only its own visits, counted 1..each, and its rows.
        assert [v["number"] for v in seen] == list(range(1, each + 1))
        assert [v["rows"] for v in seen] == list(range(1, each + 1))
        assert {v["client"] for v in seen} == {f"c{index}"}
        threads |= {v["thread"] for v in seen}
    assert len(threads) >= 2 and all(str(t).startswith("forkserve-thread-") for t in threads)
    total = requests.get(url + "/total", timeout=10).json()
    assert total == {"visits": len(results) * each}


@pytest.fixture
def db_path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "app.sqlite3"


def test_flask_sessions_and_sqlite_under_threads(db_path: Path) -> None:
    pytest.importorskip("flask")
    with serve("flask_threads:app", "--workers", "2", "--threads", "4",
               env={"FLASKTHREADS_DB": str(db_path)}, wait_workers=2) as server:
        check_visits(server.url, visits(server.url))
        assert "Traceback" not in server.log


def test_django_orm_and_sessions_under_threads(db_path: Path) -> None:
    pytest.importorskip("django")
    env = {"DJANGOTHREADS_DB": str(db_path)}
    subprocess.run([sys.executable, "-m", "djangothreads.setup_db"], check=True, timeout=60,
                   cwd=TESTS / "apps", env={**os.environ, **env,
                                            "PYTHONPATH": str(TESTS / "apps")})
    with serve("djangothreads.wsgi:application", "--workers", "2", "--threads", "4",
               env=env, wait_workers=2) as server:
        check_visits(server.url, visits(server.url))
        assert "Traceback" not in server.log


def test_no_client_starves_when_every_thread_is_busy() -> None:
    """More keep-alive clients than threads: each one is served, none waits in the backlog.

    A worker whose threads are all busy steps out of the accept queue while a
    peer serves; both doing it at once would leave new connections unaccepted.
    """
    with serve("thread_apps:app", "--workers", "2", "--threads", "4",
               wait_workers=2) as server:
        counts: list[int] = []
        lock = threading.Lock()

        def client() -> None:
            done = 0
            end = time.monotonic() + 3.0
            with requests.Session() as session:
                while time.monotonic() < end:
                    assert session.get(server.url + "/sleep?0.05", timeout=20).status_code == 200
                    done += 1
            with lock:
                counts.append(done)

        clients = [threading.Thread(target=client) for _ in range(30)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(40)
        # A fair share is about 8 threads x 3 s / 50 ms / 30 clients = 16 each.
        assert len(counts) == 30 and min(counts) >= 3, sorted(counts)


HOOKS = '''
import os, threading

def _record(line):
    fd = os.open(os.environ["THREAD_HOOKS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)

def pre_request(worker, req):
    _record(f"pre {threading.current_thread().name} {req.path}")

def post_request(worker, req, environ, resp):
    _record(f"post {threading.current_thread().name} {req.path} {resp.status}")
'''


def test_request_hooks_run_on_the_requests_thread_and_log_lines_stay_whole(
        tmp_path: Path) -> None:
    (tmp_path / "thread_hooks.py").write_text(HOOKS)
    record = tmp_path / "hooks.log"
    access = tmp_path / "access.log"
    with serve("thread_apps:app", "--workers", "1", "--threads", "8", "--hooks",
               "thread_hooks", "--access-logfile", str(access),
               env={"THREAD_HOOKS_LOG": str(record),
                    "PYTHONPATH": os.pathsep.join([str(tmp_path), str(TESTS.parent),
                                                   str(TESTS / "apps")])}) as server:
        responses = get_many(server.url, [f"/sleep/{i}?0.3" for i in range(8)])
        ran_on = {parse(r.text)[2] for r in responses}
        assert len(ran_on) == 8  # all eight at once, each on its own thread
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
                len(record.read_text().splitlines()) < 16
                or len(access.read_text().splitlines()) < 8):
            time.sleep(0.05)
    lines = [line.split() for line in record.read_text().splitlines()]
    pre = {(thread, path) for kind, thread, path, *_ in lines if kind == "pre"}
    post = {(thread, path) for kind, thread, path, *_ in lines if kind == "post"}
    # Each request's hooks ran on the thread that ran it, and both saw that request
    # (eight distinct paths: a req shared between threads would pair them wrongly).
    assert len(pre) == 8 and pre == post
    assert {thread for thread, _ in pre} == ran_on
    log_lines = access.read_text().splitlines()
    assert len(log_lines) == 8
    assert all(re.fullmatch(r'127\.0\.0\.1 - - \[[^\]]+\] "GET /sleep/\d\?0\.3 HTTP/1\.1" 200 '
                            r'\d+ "-" "python-requests/[\d.]+"', line) for line in log_lines)


def test_a_burst_of_connections_is_shared_by_the_workers() -> None:
    """24 connections at once on 2 workers x 4 threads: both workers run requests.

    A worker takes connections only while it has a free thread for them; the
    rest stay in the backlog for the other worker (taken all by one, half the
    threads would idle while its queue grew).
    """
    with serve("thread_apps:app", "--workers", "2", "--threads", "4",
               wait_workers=2) as server:
        socks = [socket.create_connection(server.address, timeout=20) for _ in range(24)]
        try:
            for sock in socks:
                sock.sendall(b"GET /sleep?0.3 HTTP/1.1\r\nHost: x\r\n\r\n")
            seen = [parse(recv_responses(sock, 1)[0].decode()) for sock in socks]
        finally:
            for sock in socks:
                sock.close()
        peaks: dict[int, int] = {}
        for _path, pid, _thread, peak in seen:
            peaks[pid] = max(peaks.get(pid, 0), peak)
        assert len(peaks) == 2 and sum(peaks.values()) >= 6, peaks


def test_metrics_count_each_request_in_flight_on_the_threads() -> None:
    from tests.process.test_observability import by_label, metrics_url, scrape, wait_until

    with serve("thread_apps:app", "--workers", "1", "--threads", "4", "--metrics-bind",
               "127.0.0.1:0", wait_workers=1) as server:
        url = metrics_url(server)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(requests.get, server.url + "/sleep?3", timeout=20)
                       for _ in range(3)]

            def three_in_progress() -> bool:
                return scrape(url)[("forkserve_http_requests_in_progress", frozenset())] == 3

            # One worker, three of its threads in the app (not saturated: its
            # slot head says nothing; the per-thread records say three).
            wait_until(three_in_progress, timeout=2.5, what="3 requests in progress")
            assert by_label(scrape(url), "forkserve_connections", "state")["active"] == 3
            assert all(f.result().status_code == 200 for f in futures)
        samples = scrape(url)
        assert samples[("forkserve_http_requests_in_progress", frozenset())] == 0
        assert samples[("forkserve_http_requests_total",
                        frozenset({("method", "GET"), ("code", "200")}))] == 3
