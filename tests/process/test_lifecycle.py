"""Health, timeouts, recycling, preload, reload, pidfile and titles (issue 4)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.process.lifecycle_support import (
    LoadLoop,
    alive,
    booted_pids,
    process_title,
    wait_until,
)
from tests.support import REPO, TESTS, Server, serve, threaded

# Every test twice: sync workers, then --threads 4 (tests/conftest.py).
pytestmark = [pytest.mark.process, pytest.mark.usefixtures("worker_threads")]

APP = "lifecycle_apps:app"


def get(server: Server, path: str = "/pid") -> dict[str, object]:
    r = requests.get(server.url + path, timeout=10, headers={"Connection": "close"})
    assert r.status_code == 200
    body: dict[str, object] = r.json()
    return body


# -- timeouts -------------------------------------------------------------
def test_timeout_answers_500_and_logs_every_python_stack_with_source_then_replaces_the_worker(
) -> None:
    if threaded():
        pytest.skip("a threaded worker times out its own requests: test_threads.py")
    with serve(APP, "--workers", "1", "--timeout", "1", wait_workers=1) as s:
        (worker,) = s.worker_pids()
        # Nothing of the response went out yet: a 500, not an empty reply.
        r = requests.get(s.url + "/stuck?60", timeout=15)
        assert r.status_code == 500
        log = s.wait_for_log(rf"Worker {worker} (was killed by SIGKILL|exited with ABORTED)")
        m = re.search(rf"WORKER TIMEOUT \(pid:{worker}\) stuck serving GET /stuck\?60 from "
                      r"127\.0\.0\.1:\d+ for (\d+\.\d)s \(no heartbeat for", log)
        assert m, log
        assert float(m.group(1)) >= 1.0
        dump = log[m.end():]
        # A Python traceback of both threads, with their source lines, and no
        # "Fatal Python error" from faulthandler: the Python handler ran first.
        assert "Python stacks of the worker's threads (most recent call last)" in dump
        assert re.search(r"Thread MainThread \(0x[0-9a-f]{16}\):", dump)
        assert re.search(r"Thread helper-thread \(0x[0-9a-f]{16}\):", dump)
        assert re.search(r'lifecycle_apps\.py", line \d+, in stuck_in_the_app\n'
                         r"\s+time\.sleep\(seconds\)", dump)
        assert re.search(r'lifecycle_apps\.py", line \d+, in _background_thread', dump)
        assert "Fatal Python error" not in dump
        assert "exited with ABORTED" in dump  # it exited by itself, no SIGKILL needed
        wait_until(lambda: len(booted_pids(s.log)) == 2, what="a replacement")
        assert get(s)["pid"] != worker


def test_timeout_after_the_response_began_cuts_it_off() -> None:
    # A threaded worker times the request out itself, then leaves once its
    # --graceful-timeout is over, cutting off what is still running.
    with serve(APP, "--workers", "1", "--timeout", "1", "--graceful-timeout", "1",
               wait_workers=1) as s:
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            r = requests.get(s.url + "/stream-then-stuck", timeout=15, stream=True)
            assert r.status_code == 200  # the head went out before the app got stuck
            r.content  # noqa: B018 - reading the body is the point
        s.wait_for_log(r"exiting with 1 request\(s\) still running" if threaded()
                       else r"exited with ABORTED")


def test_timeout_of_a_worker_stuck_in_c_still_dumps_its_stack_then_kills_it() -> None:
    with serve(APP, "--workers", "1", "--timeout", "1", wait_workers=1) as s:
        (worker,) = s.worker_pids()
        with pytest.raises(requests.ConnectionError):
            requests.get(s.url + "/busy-in-c", timeout=15)
        log = s.wait_for_log(rf"Worker {worker} was killed by SIGKILL")
        dump = log[log.index(f"WORKER TIMEOUT (pid:{worker}) stuck serving GET /busy-in-c"):]
        # The Python handler could not run; faulthandler, on the SIGABRT that
        # followed, wrote from C although the interpreter never got control back.
        assert "Python stacks of the worker's threads" not in dump
        assert re.search(r'lifecycle_apps\.py", line \d+ in _app', dump)
        assert "exited with ABORTED" not in dump
        wait_until(lambda: len(booted_pids(s.log)) == 2, what="a replacement")


def test_json_logs_keep_the_dump_of_a_worker_stuck_in_c_as_one_record() -> None:
    # faulthandler writes from C into the worker's dump file; the worker never
    # runs Python again, so the master logs the dump after reaping it (#14).
    with serve(APP, "--workers", "1", "--timeout", "1", "--log-format", "json",
               wait_workers=1) as s:
        (worker,) = s.worker_pids()
        with pytest.raises(requests.ConnectionError):
            requests.get(s.url + "/busy-in-c", timeout=15)
        s.wait_for_log(rf"Worker {worker} was killed by SIGKILL")
        s.wait_for_log(r'"stack"')
        records = [json.loads(line) for line in s.log.splitlines()]  # each line one object
    dumps = [r for r in records if "stack" in r]
    assert len(dumps) == 1, dumps
    assert dumps[0]["message"] == f"Worker {worker}: the stacks of its threads (written by " \
        "faulthandler)"
    assert re.search(r'lifecycle_apps\.py", line \d+ in _app', dumps[0]["stack"])


def test_boot_timeout_stops_the_master_with_the_import_stack() -> None:
    s = Server("lifecycle_slow_boot:app", "--boot-timeout", "1", "--timeout", "30",
               env={"LIFECYCLE_BOOT_SECONDS": "60"})
    s.start(expect_ready=False)
    try:
        assert s.wait_exit(20) == 1
        log = s.log
    finally:
        s.kill()
    assert re.search(r"WORKER BOOT TIMEOUT \(pid:\d+\) still loading the app after 1\.\d+s", log)
    # As a Python traceback, with the source line (the Python handler ran).
    assert re.search(r'lifecycle_slow_boot\.py", line \d+, in import_takes_long\n'
                     r"\s+time\.sleep\(seconds\)", log)
    errors = [line for line in log.splitlines() if "[ERROR]" in line]
    assert errors == [errors[0]] and errors[0].endswith(
        "Worker failed to boot: it did not load the app within --boot-timeout 1s")


def test_a_slow_import_within_the_boot_timeout_is_not_a_request_timeout() -> None:
    with serve("lifecycle_slow_boot:app", "--timeout", "1", "--boot-timeout", "10",
               env={"LIFECYCLE_BOOT_SECONDS": "2"}, wait_workers=1) as s:
        assert get(s)["pid"]
        assert "TIMEOUT" not in s.log


def test_app_that_cannot_load_stops_the_master_with_status_3_and_one_line() -> None:
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{TESTS / 'apps'}")
    proc = subprocess.run(
        [sys.executable, "-m", "forkserve", "broken_import:app", "--bind", "127.0.0.1:0",
         "--workers", "3"], cwd=TESTS / "apps", env=env, capture_output=True, text=True,
        timeout=20, stdin=subprocess.DEVNULL)
    assert proc.returncode == 3
    errors = [line for line in proc.stderr.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "Worker failed to boot: importing app module" in errors[0]


def test_crashing_workers_are_respawned_with_exponential_back_off() -> None:
    with serve(APP, "--workers", "1", wait_workers=1) as s:
        for n in range(4):
            wait_until(lambda n=n: len(booted_pids(s.log)) == n + 1,  # type: ignore[misc]
                       what=f"worker {n + 1}")
            with pytest.raises(requests.ConnectionError):
                requests.get(s.url + "/crash", timeout=5)
            s.wait_for_log(r"exited with exit code 7; replacing it in", count=n + 1)
        delays = re.findall(r"exit code 7; replacing it in (\d+\.\d)s", s.log)
        assert delays == ["0.1", "0.2", "0.4", "0.8"]
        wait_until(lambda: len(booted_pids(s.log)) == 5, what="respawn after back-off")


def test_a_worker_exits_when_its_master_dies() -> None:
    s = Server(APP, "--workers", "2", wait_workers=2).start()
    try:
        workers = s.worker_pids()
        os.kill(s.pid, signal.SIGKILL)
        wait_until(lambda: not any(alive(w) for w in workers), timeout=5, what="orphans exit")
        assert s.log.count("is gone; worker") == 2
    finally:
        s.kill()


# -- recycling ------------------------------------------------------------
def test_max_requests_replaces_the_worker_at_once() -> None:
    with serve(APP, "--workers", "1", "--max-requests", "20", wait_workers=1) as s:
        (first,) = s.worker_pids()
        with LoadLoop(s.url + "/pid", threads=2) as load:
            wait_until(lambda: f"Worker {first} exited" in s.log, what="recycle")
            load.wait_for(20)
        assert load.failures == []
        log = s.log
        assert re.search(rf"Replacing worker {first}: served (\d+) requests "
                         r"\(--max-requests 20\)", log)
        assert load.pids.count(first) >= 20
        # The worker told the master as it left: the replacement started at once,
        # without waiting for the old worker to exit (issue 11).
        second = booted_pids(log)[1]
        assert log.index(f"Replacing worker {first}") < log.index(
            f"Booting worker with pid: {second}")


def test_max_requests_jitter_spreads_the_limits() -> None:
    with serve(APP, "--workers", "2", "--max-requests", "5", "--max-requests-jitter", "20",
               wait_workers=2) as s:
        with LoadLoop(s.url + "/pid", threads=2):
            s.wait_for_log(r"--max-requests \d+\)", count=4, timeout=20)
        limits = {int(x) for x in re.findall(r"--max-requests (\d+)\)", s.log)}
        assert all(5 <= x <= 25 for x in limits) and len(limits) > 1


def test_max_worker_memory_replaces_a_worker_over_the_limit() -> None:
    with serve(APP, "--workers", "1", "--max-worker-memory", "150", wait_workers=1) as s:
        (first,) = s.worker_pids()
        time.sleep(1.0)
        assert "Replacing" not in s.log  # a fresh worker is far below 150 MiB
        assert get(s, "/grow?200")["pid"] == first  # the request itself completes
        log = s.wait_for_log(rf"Worker {first} exited with OK")
        m = re.search(rf"Replacing worker {first}: uses ([\d.]+) MiB \(--max-worker-memory 150\)",
                      log)
        assert m and float(m.group(1)) > 150
        assert get(s)["pid"] != first


def test_max_worker_lifetime_recycles_one_worker_at_a_time_under_load() -> None:
    with serve(APP, "--workers", "2", "--max-worker-lifetime", "1", wait_workers=2) as s:
        with LoadLoop(s.url + "/pid", threads=2) as load:
            s.wait_for_log(r"Retiring worker \d+ \(gen 1\): ran for", count=3, timeout=20)
        assert load.failures == []
        # Spread out: each replacement is retired before the next one starts.
        events = re.findall(r"(Replacing|Retiring) worker (\d+)", s.log)
        for (kind1, pid1), (kind2, pid2) in zip(events[::2], events[1::2], strict=False):
            assert (kind1, kind2) == ("Replacing", "Retiring") and pid1 == pid2


# -- preload, reload --------------------------------------------------------
def test_preload_loads_the_app_in_the_master_and_hup_keeps_it() -> None:
    with serve(APP, "--workers", "2", "--preload", wait_workers=2) as s:
        assert get(s)["imported_in"] == s.pid
        s.send_signal(signal.SIGHUP)
        s.wait_for_log(r"the preloaded app is not reloaded")
        s.wait_for_log(r"Reload complete: generation 2")
        assert get(s)["imported_in"] == s.pid


def test_reload_and_preload_do_not_mix() -> None:
    s = Server(APP, "--reload", "--preload").start(expect_ready=False)
    try:
        assert s.wait_exit(15) == 2
        assert "--reload and --preload do not mix" in s.log
    finally:
        s.kill()


def test_reload_on_code_change_and_a_syntax_error_keeps_the_old_workers(
        tmp_path: Path) -> None:
    module = tmp_path / "dev_app.py"
    module.write_text("from lifecycle_apps import _reply\n"
                      "def app(environ, start_response):\n"
                      "    return _reply(start_response, {'version': 1})\n")
    (tmp_path / "templates").mkdir()
    template = tmp_path / "templates" / "page.html"
    template.write_text("<p>1</p>")
    with serve("dev_app:app", "--reload", "--reload-extra-file", "templates/*.html",
               cwd=tmp_path, wait_workers=1) as s:
        assert get(s)["version"] == 1
        module.write_text(module.read_text().replace("'version': 1", "'version': 2"))
        s.wait_for_log(r"Reloading \(dev_app\.py changed\)")
        wait_until(lambda: get(s)["version"] == 2, what="version 2 served")
        wait_until(lambda: len(s.worker_pids()) == 1, what="the old generation gone")
        workers = s.worker_pids()
        module.write_text("def app(:\n")
        s.wait_for_log(r"Reload failed, generation \d+ keeps serving: .*SyntaxError")
        assert get(s)["version"] == 2 and s.worker_pids() == workers
        template.write_text("<p>2</p>")
        s.wait_for_log(r"Reloading \(templates/page\.html changed\)")


# -- pidfile, titles ----------------------------------------------------------
def test_pidfile_is_written_and_removed_on_exit(tmp_path: Path) -> None:
    pidfile = tmp_path / "run" / "forkserve.pid"
    pidfile.parent.mkdir()
    s = Server(APP, "-p", str(pidfile)).start()
    try:
        assert pidfile.read_text() == f"{s.pid}\n"
        assert [p.name for p in pidfile.parent.iterdir()] == ["forkserve.pid"]  # no temp left
        assert s.stop() == 0
        assert not pidfile.exists()
    finally:
        s.kill()


def test_pidfile_of_a_running_server_is_refused(tmp_path: Path) -> None:
    pidfile = tmp_path / "forkserve.pid"
    with serve(APP, "-p", str(pidfile)) as first:
        second = Server(APP, "-p", str(pidfile)).start(expect_ready=False)
        try:
            assert second.wait_exit(15) == 2
            assert f"forkserve is already running as pid {first.pid}" in second.log
        finally:
            second.kill()
        assert pidfile.read_text() == f"{first.pid}\n"


def test_process_titles_show_role_app_generation_and_requests() -> None:
    with serve(APP, "--workers", "1", "--name", "shop", wait_workers=1) as s:
        assert process_title(s.pid) == "forkserve: master [shop] gen 1"
        (worker,) = s.worker_pids()
        for _ in range(3):
            get(s)
        want = "forkserve: worker [shop] gen 1 · 3 req" + (" · 0/4 busy" if threaded() else "")
        wait_until(lambda: process_title(worker) == want,
                   what=f"worker title, got {process_title(worker)!r}")
        s.send_signal(signal.SIGHUP)
        s.wait_for_log(r"Reload complete: generation 2")
        assert process_title(s.pid) == "forkserve: master [shop] gen 2"
        wait_until(lambda: worker not in s.worker_pids(), what="old worker gone")
        (new,) = s.worker_pids()
        assert process_title(new).startswith("forkserve: worker [shop] gen 2")


@pytest.mark.parametrize("use_inotify", [True, False], ids=["inotify", "polling"])
def test_reloader_sees_changes_added_and_removed_files(tmp_path: Path,
                                                       use_inotify: bool) -> None:
    from forkserve.reloader import POLL_INTERVAL, Reloader

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("a = 1\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "skip.py").write_text("")
    (tmp_path / "page.html").write_text("x")
    reloader = Reloader([str(tmp_path)], [str(tmp_path / "*.html")], use_inotify=use_inotify)
    try:
        assert set(reloader.snapshot) == {str(tmp_path / "pkg" / "a.py"),
                                          str(tmp_path / "page.html")}
        clock = 100.0

        def changed() -> list[str]:
            nonlocal clock
            clock += POLL_INTERVAL
            first = reloader.changed(clock)
            if use_inotify:  # the first look only starts the settle delay
                assert first == []
                clock += POLL_INTERVAL
                return reloader.changed(clock)
            return first

        assert changed() == []
        (tmp_path / "pkg" / "a.py").write_text("a = 22\n")
        (tmp_path / "pkg" / "b.py").write_text("")
        (tmp_path / ".venv" / "skip.py").write_text("ignored")
        assert changed() == [str(tmp_path / "pkg" / "a.py"), str(tmp_path / "pkg" / "b.py")]
        (tmp_path / "page.html").unlink()
        assert changed() == [str(tmp_path / "page.html")]
        assert changed() == []
    finally:
        reloader.close()
