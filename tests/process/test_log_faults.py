"""A log that cannot be written never touches a request or a process (issue 12).

A full disk is /dev/full; a reader that went away is a pipe whose read end
was closed; a logrotate mistake is the log directory removed before USR1.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tests.process.lifecycle_support import wait_until
from tests.support import Server, serve

pytestmark = pytest.mark.process

APP = "lifecycle_apps:app"
REQUESTS = 200


def get_pids(session: requests.Session, url: str, count: int) -> set[int]:
    """`count` requests on one keep-alive session; every one must succeed."""
    pids = set()
    for _ in range(count):
        response = session.get(url + "/pid", timeout=10)
        assert response.status_code == 200
        pids.add(response.json()["pid"])
    return pids


def assert_serves_from_one_worker(server: Server) -> None:
    before = server.worker_pids()
    with requests.Session() as session:
        pids = get_pids(session, server.url, REQUESTS)
    assert len(pids) == 1 and pids <= set(before), (pids, before)
    assert server.worker_pids() == before  # no worker died and was replaced
    assert server.proc is not None and server.proc.poll() is None


def test_access_log_on_a_full_disk_loses_lines_not_requests() -> None:
    with serve(APP, "--access-logfile", "/dev/full", wait_workers=1) as s:
        began = time.monotonic()
        assert_serves_from_one_worker(s)
        elapsed = time.monotonic() - began
        log = s.log
    reports = re.findall(r"access log /dev/full: write failed \(OSError: \[Errno 28\][^)]*\); "
                         r"(\d+) line\(s\) lost", log)
    # The first loss is reported at once; the next only 10 s later, with its count.
    assert reports and reports[0] == "1", log
    assert len(reports) <= 1 + int(elapsed // 10), log
    assert "Traceback" not in log


def test_access_log_to_a_pipe_whose_reader_exited_loses_lines_not_requests() -> None:
    read_end, write_end = os.pipe()
    server = Server(APP, "--access-logfile", "-", stdout=write_end, wait_workers=1)
    try:
        server.start()
    finally:
        os.close(write_end)
    os.close(read_end)  # the reader exits: every write now gets EPIPE
    with server as s:
        assert_serves_from_one_worker(s)
        log = s.log
    assert len(re.findall(r"access log -: write failed \(BrokenPipeError", log)) == 1, log
    assert "Traceback" not in log


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_without_log(server: Server, port: int) -> None:
    """Start a server whose "Listening at" line goes to a file the test cannot read."""
    server.start(expect_ready=False)
    server.urls = [f"http://127.0.0.1:{port}"]

    def answers() -> bool:
        try:
            return requests.get(server.url + "/pid", timeout=5).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_until(answers, what="the server answering")
    except BaseException:
        server.kill()
        raise


def test_error_log_on_a_full_disk_is_reported_on_stderr_not_fatal() -> None:
    # With debug logging every request writes error-log lines; all of them fail.
    port = free_port()
    server = Server(APP, "--error-logfile", "/dev/full", "--log-level", "debug",
                    bind=[f"127.0.0.1:{port}"])
    began = time.monotonic()
    start_without_log(server, port)
    with server as s:
        assert_serves_from_one_worker(s)
        elapsed = time.monotonic() - began
        log = s.log
    reports = re.findall(r"\[(\d+)\] \[ERROR\] error log /dev/full: write failed "
                         r"\(OSError: \[Errno 28\]", log)
    assert reports, log
    for pid in set(reports):  # at most one report per process in 10 s
        assert reports.count(pid) <= 1 + int(elapsed // 10), log
    assert "--- Logging error ---" not in log and "Traceback" not in log


def test_error_log_to_a_pipe_whose_reader_exited_is_reported_on_stderr_not_fatal() -> None:
    read_end, write_end = os.pipe()
    port = free_port()
    # /dev/stdout reopens the pipe the server's stdout is; its stderr is the test's log.
    server = Server("core_apps:app", "--error-logfile", "/dev/stdout",
                    bind=[f"127.0.0.1:{port}"], stdout=write_end)
    try:
        start_without_log(server, port)
    finally:
        os.close(write_end)
    os.close(read_end)
    with server as s:
        with requests.Session() as session:
            for _ in range(20):  # each logs its traceback: every write gets EPIPE
                assert session.get(s.url + "/error", timeout=10).status_code == 500
        assert_serves_from_one_worker(s)
        log = s.log
    assert re.search(r"\[ERROR\] error log /dev/stdout: write failed \(BrokenPipeError", log), log
    assert "--- Logging error ---" not in log and "Traceback" not in log


def test_usr1_after_the_access_log_directory_was_removed_keeps_serving() -> None:
    logdir = Path(tempfile.mkdtemp(prefix="forkserve-logs-"))
    try:
        access = logdir / "access.log"
        with serve(APP, "--access-logfile", str(access), wait_workers=1) as s:
            with requests.Session() as session:
                get_pids(session, s.url, 5)
                wait_until(lambda: access.exists() and access.stat().st_size > 0,
                           what="access lines")
                shutil.rmtree(logdir)
                worker = s.worker_pids()
                s.send_signal(signal.SIGUSR1)
                s.wait_for_log(r"Handling signal: SIGUSR1")
                time.sleep(0.5)  # for the worker to handle its USR1 too
                assert get_pids(session, s.url, 20) == set(worker)  # the same connection
            assert s.worker_pids() == worker
            s.wait_for_log(r"Cannot open the access log .*No such file or directory.*"
                           r"writing it to the old file")
            # A worker booted now cannot open the access log at all: it writes
            # to stderr, once reported, and serves.
            os.kill(worker[0], signal.SIGKILL)
            s.wait_for_log(r"Cannot open the access log .* writing it to stderr")
            with requests.Session() as session:
                new = get_pids(session, s.url, 20)
            assert len(new) == 1 and new != set(worker)
            assert s.proc is not None and s.proc.poll() is None
            assert re.search(r'"GET /pid HTTP/1.1" 200', s.log)  # its access lines
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


def test_usr1_after_the_error_log_directory_was_removed_keeps_the_master() -> None:
    logdir = Path(tempfile.mkdtemp(prefix="forkserve-logs-"))
    port = free_port()
    try:
        error_log = logdir / "error.log"
        server = Server(APP, "--workers", "2", "--error-logfile", str(error_log),
                        bind=[f"127.0.0.1:{port}"])
        start_without_log(server, port)
        with server as s:
            wait_until(lambda: len(s.worker_pids()) == 2, what="two workers")
            workers = s.worker_pids()
            shutil.rmtree(logdir)
            s.send_signal(signal.SIGUSR1)
            # The master and the workers keep the old (now unlinked) file;
            # the master's report is in it, readable through /proc.
            master_fds = Path(f"/proc/{s.pid}/fd")

            def reported() -> bool:
                assert s.proc is not None and s.proc.poll() is None, s.log
                return any("Cannot reopen the error log" in _read(fd)
                           for fd in master_fds.iterdir()
                           if os.readlink(fd).endswith("error.log (deleted)"))

            wait_until(reported, what="the report in the old error log")
            with requests.Session() as session:
                get_pids(session, s.url, 20)
            get_pids(requests.Session(), s.url, 20)
            assert s.proc is not None and s.proc.poll() is None
            assert s.worker_pids() == workers
            assert "Traceback" not in s.log
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def test_a_log_directory_that_does_not_exist_is_one_line_at_start() -> None:
    for flag in ("--access-logfile", "--error-logfile"):
        server = Server(APP, flag, "/nonexistent-dir/forkserve.log")
        server.start(expect_ready=False)
        with server:
            assert server.wait_exit() == 2
            lines = server.log.strip().splitlines()
        assert len(lines) == 1 and flag in lines[0] and "/nonexistent-dir" in lines[0], lines
