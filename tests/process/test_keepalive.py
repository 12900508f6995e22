"""Keep-alive under change: no request lost when workers drain or recycle (issue 11).

Every test here uses clients that keep their connections open (raw sockets
that reuse one connection, `requests.Session`, urllib3 pools), which is what the older
tests, opening one connection per request, could not see.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from forkserve.rescue import PidfdGetfd
from tests.process.keepalive_support import (
    CLOSE_RE,
    FastLoops,
    KeepAliveClients,
    read_response,
)
from tests.process.lifecycle_support import alive, booted_pids, wait_until
from tests.support import Server, self_signed_certificate, serve

pytestmark = pytest.mark.process

APP = "lifecycle_apps:app"
GET = b"GET /pid HTTP/1.1\r\nHost: test\r\n\r\n"


def parked_connection(address: tuple[str, int]) -> socket.socket:
    """A connection that has had one answer and now waits, kept alive, in its worker."""
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(GET)
    head, _, rest = read_response(sock)
    assert head.startswith(b"HTTP/1.1 200 ") and not CLOSE_RE.search(head + b"\r\n")
    assert rest == b""
    return sock


def read_to_eof(sock: socket.socket) -> bytes:
    """Everything until the server's FIN; a reset raises ConnectionResetError."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_term_answers_a_request_sent_on_a_parked_connection_while_the_worker_was_busy() -> None:
    # The reproduction: one worker, busy in a 2 s request; TERM to the
    # master; 0.2 s later a GET on a keep-alive connection parked in that
    # worker. The GET sits in the kernel's receive buffer until the worker
    # drains: it must be answered (with Connection: close), not reset.
    s = Server(APP, "--workers", "1", "--graceful-timeout", "10", wait_workers=1).start()
    try:
        parked = parked_connection(s.address)
        slow: dict[str, int] = {}
        t = threading.Thread(target=lambda: slow.setdefault(
            "status", requests.get(s.url + "/slow?2", timeout=10).status_code))
        t.start()
        time.sleep(0.4)  # the only worker is inside the app
        s.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        parked.sendall(GET)
        data = read_to_eof(parked)
        parked.close()
        assert data.startswith(b"HTTP/1.1 200 ")
        assert CLOSE_RE.search(data)
        t.join(10)
        assert slow["status"] == 200
        assert s.wait_exit(15) == 0
    finally:
        s.kill()


def test_a_parked_idle_connection_is_closed_with_a_fin_on_term() -> None:
    # Nothing to answer: the worker says goodbye with a FIN, never a reset, and
    # a request sent in the short last chance before it is still answered.
    s = Server(APP, "--workers", "1", wait_workers=1).start()
    try:
        idle = parked_connection(s.address)
        last_chance = parked_connection(s.address)
        s.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        last_chance.sendall(GET)
        data = read_to_eof(last_chance)
        assert data.startswith(b"HTTP/1.1 200 ") and CLOSE_RE.search(data)
        assert read_to_eof(idle) == b""  # a clean end of stream
        assert s.wait_exit(15) == 0
    finally:
        s.kill()


def run_clients_through(server: Server, event: object, sessions: int = 3, sockets: int = 3,
                        before: int = 40, after: int = 40) -> KeepAliveClients:
    """Keep-alive clients loop before, during and after `event()`; returns their counts."""
    with KeepAliveClients(server.url, server.address, sessions=sessions,
                          sockets=sockets) as clients:
        clients.wait_for(before)
        event()  # type: ignore[operator]
        clients.wait_for(after, timeout=15)
    return clients


def test_hup_loses_no_request_of_keepalive_clients() -> None:
    with serve(APP, "--workers", "2", wait_workers=2) as s:
        old = set(s.worker_pids())

        def hup_twice() -> None:
            for generation in (2, 3):
                s.send_signal(signal.SIGHUP)
                s.wait_for_log(f"Reload complete: generation {generation}")
                wait_until(lambda: not (set(s.worker_pids()) & old), what="old workers gone")
                old.update(s.worker_pids())

        clients = run_clients_through(s, hup_twice)
        assert clients.failures == [], clients.failures[:5]
        assert clients.refused == 0
        assert clients.closes_seen > 0  # the old workers said Connection: close


def test_ttou_loses_no_request_of_keepalive_clients() -> None:
    with serve(APP, "--workers", "3", wait_workers=3) as s:

        def ttou() -> None:
            s.send_signal(signal.SIGTTOU)
            wait_until(lambda: len(s.worker_pids()) == 2, what="one worker fewer")

        clients = run_clients_through(s, ttou)
        assert clients.failures == [], clients.failures[:5]
        assert clients.refused == 0


def test_max_requests_loses_no_request_of_keepalive_clients() -> None:
    with serve(APP, "--workers", "2", "--max-requests", "50", wait_workers=2) as s:
        clients = run_clients_through(s, lambda: s.wait_for_log("Worker \\d+ exited", count=4,
                                                               timeout=20))
        assert clients.failures == [], clients.failures[:5]
        assert clients.refused == 0


def test_max_worker_lifetime_loses_no_request_of_keepalive_clients() -> None:
    with serve(APP, "--workers", "2", "--max-worker-lifetime", "1", wait_workers=2) as s:
        clients = run_clients_through(s, lambda: s.wait_for_log("Worker \\d+ exited", count=3,
                                                               timeout=20))
        assert clients.failures == [], clients.failures[:5]
        assert clients.refused == 0


def test_max_worker_memory_loses_no_request_of_keepalive_clients() -> None:
    with serve(APP, "--workers", "2", "--max-worker-memory", "120", wait_workers=2) as s:

        def grow() -> None:
            requests.get(s.url + "/grow?150", timeout=10, headers={"Connection": "close"})
            s.wait_for_log("Worker \\d+ exited", timeout=20)

        clients = run_clients_through(s, grow)
        assert clients.failures == [], clients.failures[:5]
        assert clients.refused == 0


def test_usr2_then_term_to_the_old_master_loses_no_request_of_keepalive_clients(
        tmp_path: Path) -> None:
    pidfile = tmp_path / "fs.pid"
    with serve(APP, "--workers", "2", "--pid", str(pidfile), wait_workers=2) as s:
        old_master = s.pid
        new_master = 0

        def upgrade() -> None:
            nonlocal new_master
            s.send_signal(signal.SIGUSR2)
            wait_until(lambda: len(booted_pids(s.log)) >= 4, what="new master's workers")
            new_master = int(pidfile.read_text())
            os.kill(old_master, signal.SIGTERM)  # no WINCH first: TERM drains the workers
            assert s.wait_exit(15) == 0

        try:
            clients = run_clients_through(s, upgrade)
            assert clients.failures == [], clients.failures[:5]
            assert clients.refused == 0
        finally:
            if new_master and alive(new_master):
                os.kill(new_master, signal.SIGTERM)
                wait_until(lambda: not alive(new_master), what="new master exits")


def test_reload_on_code_change_loses_no_request_of_keepalive_clients(tmp_path: Path) -> None:
    (tmp_path / "reload_app.py").write_text(
        "import os\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Length', '2')])\n"
        "    return [b'v1']\n")
    with serve("reload_app:app", "--workers", "2", "--reload", cwd=tmp_path,
               wait_workers=2) as s:

        def edit() -> None:
            text = (tmp_path / "reload_app.py").read_text().replace("v1", "v2")
            (tmp_path / "reload_app.py").write_text(text)
            s.wait_for_log("Reload complete: generation 2", timeout=15)
            s.wait_for_log("Worker \\d+ exited", count=2, timeout=15)

        clients = run_clients_through(s, edit)
        assert clients.failures == [], clients.failures[:5]
        assert clients.refused == 0


@pytest.mark.parametrize("event", ["hup", "max_requests"])
def test_urllib3_pools_without_retries_lose_no_request(event: str) -> None:
    # urllib3 pools with retries disabled: a request destroyed by a reset or a
    # close is an error here, not silently sent again. Through two HUPs, and
    # through --max-requests recycling every worker at least twice.
    args = ("--max-requests", "60") if event == "max_requests" else ()
    with serve(APP, "--workers", "2", *args, wait_workers=2) as s:

        def hup_twice() -> None:
            for generation in (2, 3):
                s.send_signal(signal.SIGHUP)
                s.wait_for_log(f"Reload complete: generation {generation}")
            s.wait_for_log("Worker \\d+ exited", count=4, timeout=20)

        def recycle() -> None:
            s.wait_for_log("Worker \\d+ exited", count=4, timeout=20)

        with KeepAliveClients(s.url, s.address, sessions=0, sockets=0, pools=4) as clients:
            clients.wait_for(40)
            (hup_twice if event == "hup" else recycle)()
            clients.wait_for(40, timeout=15)
        assert clients.failures == [], clients.failures[:5]
        assert clients.refused == 0
        assert clients.ok >= 80


def test_term_answers_every_request_that_reached_the_server() -> None:
    # After TERM the port closes: new connections are refused (a handshake
    # still unfinished after the stop's wait for it may be reset:
    # docs/signals.md), and that is expected; but every request sent on a
    # connection a worker took gets its answer.
    s = Server(APP, "--workers", "2", wait_workers=2).start()
    try:
        with KeepAliveClients(s.url, s.address, sessions=0, sockets=6) as clients:
            clients.wait_for(40)
            clients.port_closing = True
            s.send_signal(signal.SIGTERM)
            assert s.wait_exit(15) == 0
        assert clients.failures == [], clients.failures[:5]
        assert clients.closes_seen >= 6
    finally:
        s.kill()



# -- recycling is precise ---------------------------------------------------
def test_max_requests_stops_taking_requests_at_the_limit() -> None:
    # Two keep-alive clients loop as fast as they can. At its 20th request the
    # worker takes no new one: it answers what has already arrived (at most
    # one more per open connection, with Connection: close) and leaves, and
    # the master starts its replacement at once (the worker wakes it).
    with serve(APP, "--workers", "1", "--max-requests", "20", wait_workers=1) as s:
        (first,) = s.worker_pids()
        pids: list[int] = []

        def loop() -> None:
            with requests.Session() as session:
                while len(pids) < 80:
                    pids.append(session.get(s.url + "/pid", timeout=10).json()["pid"])

        threads = [threading.Thread(target=loop) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        served = pids.count(first)
        assert 20 <= served <= 22, served
        assert len(set(pids)) >= 2
        assert re.search(rf"Replacing worker {first}: served 20 requests", s.log)


def test_max_worker_memory_is_checked_after_every_request() -> None:
    # Each /grow?10 keeps 10 MiB more. The worker leaves after the request
    # that took it over the limit: it never gets a second one to grow with.
    with serve(APP, "--workers", "1", "--max-worker-memory", "100", wait_workers=1) as s:
        (first,) = s.worker_pids()
        with requests.Session() as session:
            for _ in range(30):
                pid = session.get(s.url + "/grow?10", timeout=10).json()["pid"]
                if pid != first:
                    break
        log = s.wait_for_log(rf"Worker {first} exited with OK")
        m = re.search(rf"Replacing worker {first}: uses ([\d.]+) MiB \(--max-worker-memory 100\)",
                      log)
        assert m, log
        assert 100 < float(m.group(1)) <= 112  # one request's growth past the limit, at most


# -- balance and accepting ----------------------------------------------------
def test_connection_close_traffic_never_makes_a_worker_step_aside() -> None:
    # Ten idle keep-alive connections spread over two workers, then clients
    # that open a connection per request. Those are gone after their answer:
    # they must not count as load, or every worker looks ahead of the others
    # at once and leaves the accept queue (issue 11: 7,539 requests/s fell to
    # 344). Balancing the kept-alive connections themselves is fine.
    with serve("core_apps:app", "--workers", "2", "--log-level", "debug",
               wait_workers=2) as s:
        # Exactly five kept-alive connections in each worker, so that no worker
        # is ahead by what it keeps: any step aside would be the close traffic's.
        per_worker: dict[int, list[socket.socket]] = {}
        extra: list[socket.socket] = []
        for _ in range(100):
            if sorted(len(v) for v in per_worker.values()) == [5, 5]:
                break
            sock = socket.create_connection(s.address, timeout=10)
            sock.sendall(GET)
            _head, body, _ = read_response(sock)
            worker_socks = per_worker.setdefault(json.loads(body)["pid"], [])
            (worker_socks if len(worker_socks) < 5 else extra).append(sock)
            if extra:
                extra.pop().close()
                time.sleep(0.05)  # the worker sees the close and counts one fewer
        assert sorted(len(v) for v in per_worker.values()) == [5, 5], per_worker
        idle = [sock for socks in per_worker.values() for sock in socks]
        time.sleep(0.3)
        before = s.log.count("steps out of the accept queue")
        done = []

        def close_loop() -> None:
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                r = requests.get(s.url + "/hello", timeout=10, headers={"Connection": "close"})
                done.append(r.status_code)

        threads = [threading.Thread(target=close_loop) for _ in range(4)]
        for t in threads:
            t.start()
        # Connection-close clients whose heads arrive in two parts: parked in
        # their workers for a moment, so that counting them would show.
        partial = []
        for _ in range(8):
            sock = socket.create_connection(s.address, timeout=10)
            sock.sendall(b"GET /hello HTTP/1.1\r\nHost: test\r\n")
            partial.append(sock)
            time.sleep(0.02)
        time.sleep(0.3)
        for sock in partial:
            sock.sendall(b"Connection: close\r\n\r\n")
            assert read_to_eof(sock).startswith(b"HTTP/1.1 200 ")
            sock.close()
        for t in threads:
            t.join(15)
        assert done and set(done) == {200}
        assert s.log.count("steps out of the accept queue") == before
        for sock in idle:
            sock.close()


def test_a_worker_left_ahead_comes_back_into_the_accept_queue() -> None:
    # Keep-alive clients connect one at a time until one worker is ahead by
    # two and steps aside; then they stop coming. It must not stay out for
    # good: connection-close traffic would have one worker fewer.
    with serve("core_apps:app", "--workers", "2", "--log-level", "debug",
               wait_workers=2) as s:
        per_worker: dict[int, list[socket.socket]] = {}
        for _ in range(40):
            sock = socket.create_connection(s.address, timeout=10)
            sock.sendall(GET)
            _head, body, _ = read_response(sock)
            per_worker.setdefault(json.loads(body)["pid"], []).append(sock)
            time.sleep(0.05)  # the debug line is written
            if "steps out of the accept queue" in s.log:
                break
            if len(per_worker) == 2:  # widen the gap: close one of the other worker's
                fewer = min(per_worker.values(), key=len)
                if fewer:
                    fewer.pop().close()
        time.sleep(0.8)
        log = s.log
        assert "steps out of the accept queue" in log
        assert log.rindex("back in the accept queue") > log.rindex("steps out of the accept queue")
        for socks in per_worker.values():
            for sock in socks:
                sock.close()


def timed_get(url: str, barrier: threading.Barrier, took: list[float]) -> None:
    """GET `url` on a new connection once every thread is ready; append how long it took."""
    barrier.wait()
    t0 = time.monotonic()
    r = requests.get(url, timeout=10, headers={"Connection": "close"})
    if r.status_code == 200:
        took.append(time.monotonic() - t0)


def test_simultaneous_slow_requests_on_idle_workers_run_in_parallel() -> None:
    # Four 1 s requests at once on four idle workers: each goes to its own
    # worker, none waits behind another (issue 11: 1, 1, 2 and 3 s when a
    # worker accepted up to four connections per wake-up).
    with serve("core_apps:app", "--workers", "4", wait_workers=4) as s:
        time.sleep(0.5)  # every worker is waiting in epoll
        for _ in range(3):
            took: list[float] = []
            barrier = threading.Barrier(4)
            threads = [threading.Thread(target=timed_get, args=(s.url + "/slow?1", barrier, took))
                       for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(15)
            assert len(took) == 4 and max(took) < 1.8, took


# -- no client waits behind another's slow request ----------------------------
def test_a_slow_request_delays_no_keepalive_client_parked_beside_it() -> None:
    # Two workers, ten keep-alive clients looping on a fast URL; one 3 s
    # request lands in one of the workers. The clients parked in that worker
    # must be served by the other one meanwhile (issue 11: they waited the
    # full 3.0 s; the aim is 100 ms, the bound here is generous).
    with serve("core_apps:app", "--workers", "2", wait_workers=2) as s:
        with FastLoops(s.url + "/hello", clients=10) as fast:
            time.sleep(0.5)
            since = time.monotonic()
            for _ in range(2):
                r = requests.get(s.url + "/slow?3", timeout=10)
                assert r.status_code == 200
        # Measured once every loop has finished its last request: one stuck
        # behind the slow request is counted too.
        worst = fast.worst_since(since)
        assert worst < 1.0, worst
        assert fast.failures == [], fast.failures[:5]


def test_a_client_that_stops_reading_holds_only_its_own_connection() -> None:
    # A client asks for 64 MiB and reads nothing: its worker is stuck writing
    # until --write-timeout. The other keep-alive clients must not wait for it.
    with serve("core_apps:app", "--workers", "2", "--write-timeout", "4",
               wait_workers=2) as s:
        with FastLoops(s.url + "/hello", clients=10) as fast:
            time.sleep(0.5)
            since = time.monotonic()
            stalled = socket.create_connection(s.address, timeout=10)
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.sendall(b"GET /stream?67108864 HTTP/1.1\r\nHost: test\r\n\r\n")
            time.sleep(3.0)
        worst = fast.worst_since(since)  # the loops have all finished: none is left out
        stalled.close()
        assert worst < 1.0, worst
        assert fast.failures == [], fast.failures[:5]


def test_a_worker_busy_in_the_app_does_not_absorb_new_connections() -> None:
    # EPOLLEXCLUSIVE wakes one worker per arrival, and the kernel passes over a
    # worker whose epoll has no thread waiting (busy in the app): new
    # connections go straight to the idle one (docs/design.md, "Accepting").
    with serve("core_apps:app", "--workers", "2", wait_workers=2) as s:
        slow: dict[str, int] = {}
        t = threading.Thread(target=lambda: slow.update(
            requests.get(s.url + "/slow?3", timeout=10, headers={"Connection": "close"}).json()))
        t.start()
        time.sleep(0.3)
        for _ in range(6):
            t0 = time.monotonic()
            r = requests.get(s.url + "/pid", timeout=10, headers={"Connection": "close"})
            assert r.status_code == 200 and time.monotonic() - t0 < 1.0
        t.join(10)
        assert slow["pid"] != r.json()["pid"]


def test_under_saturation_no_keepalive_client_waits_far_beyond_its_turn() -> None:
    # Every worker busy: two workers, thirty keep-alive clients looping on a
    # 50 ms request. Served in arrival order, each waits for the twenty-nine
    # others on two workers, about 0.75 s (measured with the fix: 0.77-0.80 s
    # worst). A connection handed from one busy worker to another and parked
    # there unread went round the handoff queue again and again while fresher
    # requests ran: 2.0-3.1 s worst before the fix. The bound is generous.
    with serve("core_apps:app", "--workers", "2", wait_workers=2) as s:
        with FastLoops(s.url + "/slow?0.05", clients=30) as loops:
            time.sleep(0.5)
            since = time.monotonic()
            time.sleep(3.0)
        worst = loops.worst_since(since)
        assert worst < 1.6, worst
        assert loops.failures == [], loops.failures[:5]


def pidfd_getfd_refused() -> str:
    """Why this machine cannot copy a child's descriptor with pidfd_getfd ("" = it can)."""
    child = subprocess.Popen(["sleep", "30"], stdin=subprocess.PIPE)
    try:
        pidfd = os.pidfd_open(child.pid)
        try:
            os.close(PidfdGetfd()(pidfd, 0))
        finally:
            os.close(pidfd)
    except OSError as exc:
        return f"pidfd_getfd is refused here ({exc}): frozen workers are killed, not rescued"
    finally:
        child.kill()
        child.wait()
    return ""


@pytest.mark.parametrize(("threads", "moment"), [("1", "idle"), ("4", "idle"),
                                                  ("1", "in_request"), ("4", "in_request")])
def test_a_stopped_workers_waiting_clients_are_answered_on_their_own_connections(
        threads: str, moment: str) -> None:
    # A SIGSTOPped worker serves nothing, and its parked keep-alive
    # connections used to wait for --timeout (30 s) to kill it; then, 3 s
    # after the stop, the master killed it and their clients saw a reset: a
    # request already sent on one was lost (issue 11). Now the master takes
    # the connections the worker parked with nothing read out of it before
    # the kill (pidfd_getfd) and the other worker answers each waiting
    # request on the same connection. Stopped in a request, that request's
    # connection is lost with the worker (documented): its client gets EOF
    # or a reset, never an answer from the stopped pid; so does one whose
    # request head the worker had begun to read (those bytes are in its
    # memory: moved, the rest of the head would reach another worker alone
    # and get a 400).
    refused = pidfd_getfd_refused()
    if refused:
        pytest.skip(refused)
    # (--keep-alive 30: the other worker's own clients, asked last, must not
    # meet their idle timeout on a slow, loaded machine.)
    with serve(APP, "--workers", "2", "--threads", threads, "--timeout", "30",
               "--keep-alive", "30", wait_workers=2) as s:
        by_pid: dict[int, list[socket.socket]] = {}
        socks = []
        stopped = 0
        try:
            for _ in range(30):
                sock = socket.create_connection(s.address, timeout=10)
                socks.append(sock)
                sock.sendall(GET)
                _head, body, _ = read_response(sock)
                by_pid.setdefault(json.loads(body)["pid"], []).append(sock)
            stopped = max(by_pid, key=lambda pid: len(by_pid[pid]))
            parked = list(by_pid[stopped])
            half_read = parked.pop()
            half_read.sendall(b"GET /pid HTTP/1.1\r\nHo")
            time.sleep(0.3)  # read by the worker, before any request keeps it in the app
            in_app = None
            if moment == "in_request":
                in_app = parked.pop()
                in_app.sendall(b"GET /slow?20 HTTP/1.1\r\nHost: test\r\n\r\n")
            assert len(parked) >= 12, {pid: len(held) for pid, held in by_pid.items()}
            time.sleep(0.5)  # idle: its loop has beaten since; in_request: the app runs
            os.kill(stopped, signal.SIGSTOP)
            t0 = time.monotonic()
            for sock in parked:  # sent to a stopped worker: waiting in the kernel
                sock.sendall(GET)
            half_read.sendall(b"st: test\r\n\r\n")
            resets = []
            for sock in parked:
                sock.settimeout(max(0.1, t0 + 10.0 - time.monotonic()))
                try:
                    _head, body, rest = read_response(sock)
                except (ConnectionError, TimeoutError) as exc:
                    resets.append(repr(exc))
                    continue
                assert json.loads(body)["pid"] != stopped and rest == b""
            assert resets == [], resets
            assert time.monotonic() - t0 < 10.0  # 3 s after the stop, well under --timeout 30
            # Still kept alive where it landed: a second request on the same connection.
            for sock in parked:
                sock.sendall(GET)
                head, body, _ = read_response(sock)
                assert head.startswith(b"HTTP/1.1 200 ") and json.loads(body)["pid"] != stopped
            for lost in [half_read] if in_app is None else [half_read, in_app]:
                lost.settimeout(10)
                try:
                    assert read_to_eof(lost) == b""  # lost with the worker: no answer
                except ConnectionResetError:
                    pass
            # The others kept their connection, and a replacement took its place.
            for pid, kept in by_pid.items():
                for sock in kept if pid != stopped else []:
                    sock.settimeout(10)
                    sock.sendall(GET)
                    assert json.loads(read_response(sock)[1])["pid"] == pid
            wait_until(lambda: len(s.worker_pids()) == 2 and stopped not in s.worker_pids(),
                       what="a replacement for the stopped worker")
            assert f"WORKER FROZEN (pid:{stopped}) stopped (SIGSTOP)" in s.log
            assert re.search(rf"Rescued {len(parked)} parked connection\(s\) of worker "
                             rf"{stopped}", s.log), s.log[-2000:]
        finally:
            if stopped and alive(stopped):
                os.kill(stopped, signal.SIGKILL)  # leaves no stopped process behind
            for sock in socks:
                sock.close()


def test_a_stopped_workers_tls_connections_are_not_moved(tmp_path: Path) -> None:
    # The TLS session lives in the worker's memory: a descriptor moved to
    # another worker would carry encrypted bytes nobody can read. A stopped
    # TLS worker's clients see their connection end (documented) and the
    # master does not try to rescue anything.
    certfile, keyfile = self_signed_certificate(tmp_path)
    context = ssl.create_default_context(cafile=str(certfile))
    with serve(APP, "--workers", "2", "--certfile", str(certfile), "--keyfile", str(keyfile),
               "--timeout", "30", "--keep-alive", "30", wait_workers=2) as s:
        by_pid: dict[int, list[ssl.SSLSocket]] = {}
        stopped = 0
        try:
            for _ in range(6):
                raw = socket.create_connection(s.address, timeout=10)
                sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
                sock.sendall(GET)
                by_pid.setdefault(json.loads(read_response(sock)[1])["pid"], []).append(sock)
            stopped = max(by_pid, key=lambda pid: len(by_pid[pid]))
            time.sleep(0.5)
            os.kill(stopped, signal.SIGSTOP)
            for sock in by_pid[stopped]:
                sock.sendall(GET)
            for sock in by_pid[stopped]:
                with pytest.raises((ConnectionError, ssl.SSLError)):
                    read_response(sock)  # EOF or reset 3 s after the stop: never an answer
            s.wait_for_log(rf"WORKER FROZEN \(pid:{stopped}\).*reconnect to a live worker")
            assert "Rescued" not in s.log and "Cannot rescue" not in s.log
        finally:
            if stopped and alive(stopped):
                os.kill(stopped, signal.SIGKILL)
            for socks in by_pid.values():
                for sock in socks:
                    sock.close()
