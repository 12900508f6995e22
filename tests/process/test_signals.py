"""Signals to the master and to workers, with real processes (issue 4)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import requests

from tests.process.lifecycle_support import LoadLoop, alive, booted_pids, wait_until
from tests.support import LISTEN_RE, Server, serve

pytestmark = pytest.mark.process

APP = "lifecycle_apps:app"


def get_pid(server: Server) -> int:
    return int(requests.get(server.url + "/pid", timeout=5,
                            headers={"Connection": "close"}).json()["pid"])


def test_hup_under_load_replaces_every_worker_with_zero_failed_requests() -> None:
    with serve(APP, "--workers", "2", wait_workers=2) as s:
        old = set(s.worker_pids())
        with LoadLoop(s.url + "/pid", threads=3) as load:
            load.wait_for(50)
            s.send_signal(signal.SIGHUP)
            s.wait_for_log(r"Reload complete: generation 2 is serving with 2 workers")
            wait_until(lambda: not (set(s.worker_pids()) & old), what="old workers gone")
            load.wait_for(50)
        assert load.failures == [], load.failures[:5]
        new = set(s.worker_pids())
        assert len(new) == 2 and not new & old
        assert set(load.pids[-20:]) <= new  # the new generation is the one serving
        # The old workers were retired only after every new one had booted.
        log = s.log
        assert log.index("Retiring worker") > max(
            log.index(f"Booted worker with pid: {pid}") for pid in new)


def test_hup_rereads_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "forkserve.toml").write_text("workers = 1\n")
    with serve(APP, cwd=tmp_path, wait_workers=1) as s:
        assert len(s.worker_pids()) == 1
        (tmp_path / "forkserve.toml").write_text("workers = 3\n")
        s.send_signal(signal.SIGHUP)
        s.wait_for_log(r"Reload complete: generation 2 is serving with 3 workers")
        wait_until(lambda: len(s.worker_pids()) == 3, what="3 workers")
        # A config that does not load: one line, the workers keep serving.
        (tmp_path / "forkserve.toml").write_text("wrokers = 2\n")
        s.send_signal(signal.SIGHUP)
        s.wait_for_log(r"Reload failed, the current workers keep serving: .*wrokers")
        assert len(s.worker_pids()) == 3 and get_pid(s)


def test_hup_with_an_app_that_no_longer_loads_keeps_the_old_workers(tmp_path: Path) -> None:
    module = tmp_path / "hup_app.py"
    module.write_text("from lifecycle_apps import app\n")
    with serve("hup_app:app", "--workers", "2", cwd=tmp_path, wait_workers=2) as s:
        old = set(s.worker_pids())
        module.write_text("def broken(:\n")
        with LoadLoop(s.url + "/pid") as load:
            s.send_signal(signal.SIGHUP)
            s.wait_for_log(r"Reload failed, generation 1 keeps serving: a worker of "
                           r"generation 2 could not boot: .*SyntaxError")
            load.wait_for(20)
        assert load.failures == []
        assert s.proc is not None and s.proc.poll() is None  # the master did not exit
        assert set(s.worker_pids()) == old
        assert set(load.pids) <= old
        # Fixed: the next HUP goes through.
        module.write_text("from lifecycle_apps import app\n")
        s.send_signal(signal.SIGHUP)
        s.wait_for_log(r"Reload complete: generation 3 is serving")


def test_ttin_adds_and_ttou_removes_a_worker_never_below_one() -> None:
    with serve(APP, "--workers", "1", wait_workers=1) as s:
        (first,) = s.worker_pids()
        s.send_signal(signal.SIGTTIN)
        wait_until(lambda: len(s.worker_pids()) == 2, what="2 workers")
        (second,) = set(s.worker_pids()) - {first}
        s.send_signal(signal.SIGTTOU)
        wait_until(lambda: len(s.worker_pids()) == 1, what="1 worker")
        assert s.worker_pids() == [second]  # as gunicorn: the oldest (idle) worker goes
        s.wait_for_log(rf"Worker {first} exited with OK")  # gracefully
        s.send_signal(signal.SIGTTOU)
        s.wait_for_log(r"Handling signal: SIGTTOU", count=2)
        time.sleep(1.0)
        assert len(s.worker_pids()) == 1


def test_winch_stops_the_workers_and_the_master_stays() -> None:
    with serve(APP, "--workers", "2", wait_workers=2) as s:
        s.send_signal(signal.SIGWINCH)
        wait_until(lambda: s.worker_pids() == [], what="no workers")
        assert s.proc is not None and s.proc.poll() is None
        s.send_signal(signal.SIGHUP)  # back to the configured pool
        wait_until(lambda: len(s.worker_pids()) == 2, what="2 workers again")
        assert get_pid(s) in s.worker_pids()


def test_usr1_reopens_the_log_files_in_master_and_workers(tmp_path: Path) -> None:
    error_log, access_log = tmp_path / "error.log", tmp_path / "access.log"
    server = Server(APP, "--workers", "1", "--error-logfile", str(error_log),
                    "--access-logfile", str(access_log))
    with server.start(expect_ready=False) as s:
        wait_until(lambda: error_log.exists() and "Booted worker" in error_log.read_text(),
                   what="boot")
        s.urls = LISTEN_RE.findall(error_log.read_text())
        requests.get(s.url + "/one", timeout=5)
        wait_until(lambda: "/one" in access_log.read_text(), what="access line")
        error_log.rename(tmp_path / "error.log.1")
        access_log.rename(tmp_path / "access.log.1")
        s.send_signal(signal.SIGUSR1)
        s.send_signal(signal.SIGTTIN)  # makes the master write to its error log
        wait_until(lambda: error_log.exists() and "SIGTTIN" in error_log.read_text(),
                   what="master writes the new error log")
        wait_until(lambda: access_log.exists(), what="worker reopened the access log")
        requests.get(s.url + "/two", timeout=5, headers={"Connection": "close"})
        requests.get(s.url + "/two", timeout=5, headers={"Connection": "close"})
        wait_until(lambda: "/two" in access_log.read_text(), what="access line in new file")
        assert "/two" not in (tmp_path / "access.log.1").read_text()


def test_int_and_quit_stop_fast_even_with_a_request_in_flight() -> None:
    for sig in (signal.SIGINT, signal.SIGQUIT):
        s = Server(APP, "--workers", "1", "--graceful-timeout", "30").start()
        try:
            with LoadLoop(s.url + "/slow?20", threads=1):
                time.sleep(0.5)
                t0 = time.monotonic()
                assert s.stop(sig, timeout=10) == 0
                assert time.monotonic() - t0 < 5  # not the 30s graceful timeout
        finally:
            s.kill()


def test_usr2_upgrades_the_master_under_load_with_zero_failed_requests(tmp_path: Path) -> None:
    pidfile = tmp_path / "fs.pid"
    with serve(APP, "--workers", "2", "--pid", str(pidfile), wait_workers=2) as s:
        old_master = s.pid
        old_workers = set(s.worker_pids())
        assert int(pidfile.read_text()) == old_master
        with LoadLoop(s.url + "/pid", threads=3) as load:
            load.wait_for(30)
            s.send_signal(signal.SIGUSR2)
            s.wait_for_log(r"Started a new master \(pid \d+\)")
            wait_until(lambda: len(booted_pids(s.log)) >= 4, what="new master's workers")
            new_master = int(pidfile.read_text())
            assert new_master != old_master
            assert int(Path(str(pidfile) + ".oldbin").read_text()) == old_master
            # Both masters serve now; WINCH drains the old workers, then TERM ends the
            # old master (docs/signals.md "Upgrading the binary").
            os.kill(old_master, signal.SIGWINCH)
            wait_until(lambda: not any(alive(p) for p in old_workers), what="old workers gone")
            load.wait_for(30)
            os.kill(old_master, signal.SIGTERM)
            assert s.wait_exit(15) == 0
            s.wait_for_log(r"The old master \(pid \d+\) is gone: this master is in charge")
            load.wait_for(30)
        assert load.failures == [], load.failures[:5]
        assert not Path(str(pidfile) + ".oldbin").exists()
        assert int(pidfile.read_text()) == new_master and alive(new_master)
        assert not set(load.pids[-20:]) & old_workers
        os.kill(new_master, signal.SIGTERM)
        wait_until(lambda: not alive(new_master), what="new master exits")
        assert not pidfile.exists()


def test_usr2_then_the_new_master_dies_the_old_one_takes_the_pidfile_back(
        tmp_path: Path) -> None:
    pidfile = tmp_path / "fs.pid"
    with serve(APP, "--workers", "1", "--pid", str(pidfile), wait_workers=1) as s:
        s.send_signal(signal.SIGUSR2)
        s.wait_for_log(r"Started a new master")
        wait_until(lambda: len(booted_pids(s.log)) >= 2, what="new master's worker")
        new_master = int(pidfile.read_text())
        os.kill(new_master, signal.SIGQUIT)
        s.wait_for_log(r"The new master \(pid \d+\) exited")
        wait_until(lambda: pidfile.exists() and int(pidfile.read_text()) == s.pid,
                   what="pidfile back")
        assert get_pid(s)


def test_signals_to_a_worker_term_quit_and_abrt() -> None:
    with serve(APP, "--workers", "1", wait_workers=1) as s:
        for sig, expected in ((signal.SIGTERM, "exited with OK"),
                              (signal.SIGQUIT, "exited with OK"),
                              (signal.SIGABRT, "exited with ABORTED")):
            (worker,) = s.worker_pids()
            os.kill(worker, sig)
            s.wait_for_log(rf"Worker {worker} {expected}")
            wait_until(lambda w=worker: s.worker_pids() not in ([], [w]),  # type: ignore[misc]
                       what="replacement")
            wait_until(lambda: len(booted_pids(s.log)) >= 2, what="replacement booted")
            assert get_pid(s) != worker
        assert "Current thread" in s.log  # ABRT dumped the worker's stack


def test_term_answers_the_requests_already_waiting_in_the_backlog() -> None:
    import socket
    import threading

    s = Server(APP, "--workers", "1", "--graceful-timeout", "10", wait_workers=1).start()
    try:
        slow: dict[str, int] = {}
        t = threading.Thread(target=lambda: slow.setdefault(
            "status", requests.get(s.url + "/slow?1.5", timeout=10).status_code))
        t.start()
        time.sleep(0.4)  # the only worker is now inside the app
        waiting = [socket.create_connection(s.address, timeout=10) for _ in range(20)]
        for c in waiting:
            c.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)  # completed by the kernel, queued in the listen backlog
        s.send_signal(signal.SIGTERM)
        for c in waiting:
            data = b""
            while chunk := c.recv(65536):
                data += chunk
            c.close()
            assert data.startswith(b"HTTP/1.1 200 ") and b"connection: close" in data.lower()
        t.join(10)
        assert slow["status"] == 200
        assert s.wait_exit(15) == 0
    finally:
        s.kill()


@pytest.mark.parametrize("workers", [["--workers", "2"], ["--workers", "2", "--threads", "4"]],
                         ids=["sync", "threads"])
def test_term_right_after_start_stops_every_worker(workers: list[str]) -> None:
    """TERM while a worker is still being forked: it is not lost on the way.

    A worker that got its TERM before it installed its own handlers used to
    pass it to the master's wakeup pipe and serve on until SIGKILL
    (--graceful-timeout later): about one start in ten on this machine.
    """
    for _ in range(12):
        s = Server(APP, *workers, "--graceful-timeout", "20").start()
        try:
            started = time.monotonic()
            assert s.stop(timeout=15) == 0
            assert time.monotonic() - started < 10, s.log
        finally:
            s.kill()
