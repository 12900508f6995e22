"""Server hooks (--hooks MODULE): called where gunicorn calls them, in order (issue 4)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import requests

from tests.process.lifecycle_support import booted_pids, wait_until
from tests.support import Server, serve

pytestmark = pytest.mark.process

APP = "lifecycle_apps:app"


def hooks_env(record: Path, fail: str = "") -> dict[str, str]:
    return {"LIFECYCLE_HOOKS_FILE": str(record), "LIFECYCLE_HOOKS_FAIL": fail}


def calls(record: Path) -> list[tuple[str, int, str]]:
    out = []
    for line in record.read_text().splitlines():
        hook, pid, *rest = line.split(" ", 2)
        out.append((hook, int(pid), rest[0] if rest else ""))
    return out


def test_hooks_are_called_in_order_in_the_right_process(tmp_path: Path) -> None:
    record = tmp_path / "calls"
    with serve(APP, "--workers", "1", "--hooks", "lifecycle_hooks",
               env=hooks_env(record), wait_workers=1) as s:
        master = s.pid
        (w1,) = s.worker_pids()
        assert requests.get(s.url + "/hello", timeout=5).status_code == 200
        # post_request runs after the response went out: let it land first.
        wait_until(lambda: "post_request" in record.read_text(), what="post_request")
        s.send_signal(signal.SIGHUP)
        s.wait_for_log(r"Reload complete: generation 2")
        wait_until(lambda: w1 not in s.worker_pids(), what="old worker gone")
        # Gone from /proc is not yet reaped: a TTIN dispatched in the same
        # master wake-up as the reap would call nworkers_changed first.
        wait_until(lambda: f"child_exit {master} worker={w1}" in record.read_text(),
                   what="old worker reaped")
        (w2,) = s.worker_pids()
        s.send_signal(signal.SIGTTIN)
        wait_until(lambda: len(booted_pids(s.log)) == 3, what="TTIN worker")
        w3 = booted_pids(s.log)[2]
        assert s.stop() == 0
    got = calls(record)
    # The two workers stop concurrently: compare that part as a set.
    head, tail = got[:18], got[18:]
    assert head == [
        ("on_starting", master, ""),
        ("nworkers_changed", master, "None->1"),
        ("when_ready", master, ""),
        ("pre_fork", master, "gen=1"),
        ("post_fork", w1, f"worker={w1}"),
        ("post_worker_init", w1, f"worker={w1}"),
        ("pre_request", w1, "GET /hello"),
        ("post_request", w1, "GET /hello 200"),
        ("on_reload", master, ""),
        ("pre_fork", master, "gen=2"),
        ("post_fork", w2, f"worker={w2}"),
        ("post_worker_init", w2, f"worker={w2}"),
        ("worker_exit", w1, f"worker={w1}"),
        ("child_exit", master, f"worker={w1}"),
        ("nworkers_changed", master, "1->2"),
        ("pre_fork", master, "gen=2"),
        ("post_fork", w3, f"worker={w3}"),
        ("post_worker_init", w3, f"worker={w3}"),
    ]
    assert tail[-1] == ("on_exit", master, "")
    assert sorted(tail[:-1]) == sorted([
        ("worker_exit", w2, f"worker={w2}"), ("worker_exit", w3, f"worker={w3}"),
        ("child_exit", master, f"worker={w2}"), ("child_exit", master, f"worker={w3}"),
    ])


def test_worker_int_on_quit_and_worker_abort_on_timeout(tmp_path: Path) -> None:
    record = tmp_path / "calls"
    with serve(APP, "--workers", "1", "--timeout", "1", "--hooks", "lifecycle_hooks",
               env=hooks_env(record), wait_workers=1) as s:
        (w1,) = s.worker_pids()
        assert requests.get(s.url + "/stuck?30", timeout=15).status_code == 500
        wait_until(lambda: len(booted_pids(s.log)) == 2, what="replacement")
        (w2,) = booted_pids(s.log)[1:]
        assert s.stop(signal.SIGQUIT) == 0
    got = calls(record)
    assert ("worker_abort", w1, f"worker={w1}") in got
    assert ("worker_int", w2, f"worker={w2}") in got


def test_pre_request_failure_is_that_requests_500_and_post_request_failure_is_logged(
        tmp_path: Path) -> None:
    record = tmp_path / "calls"
    with serve(APP, "--hooks", "lifecycle_hooks", env=hooks_env(record, "pre_request"),
               wait_workers=1) as s:
        (worker,) = s.worker_pids()
        assert requests.get(s.url + "/x", timeout=5).status_code == 500
        assert requests.get(s.url + "/x", timeout=5).status_code == 500
        assert s.worker_pids() == [worker]  # the worker survives
        log = s.wait_for_log(r"Exception in the pre_request hook")
        assert "RuntimeError: pre_request fails on purpose" in log
    with serve(APP, "--hooks", "lifecycle_hooks", env=hooks_env(record, "post_request"),
               wait_workers=1) as s:
        r = requests.get(s.url + "/x", timeout=5)
        assert r.status_code == 200 and r.json()["pid"]
        log = s.wait_for_log(r"Exception in the post_request hook")
        assert "RuntimeError: post_request fails on purpose" in log


@pytest.mark.parametrize(
    ("hook", "line"),
    [
        ("on_starting", "Stopping: the on_starting hook failed: RuntimeError: on_starting fails"),
        ("when_ready", "Stopping: the when_ready hook failed"),
        ("pre_fork", "Stopping: the pre_fork hook failed"),
        ("post_fork", "Worker failed to boot: the post_fork hook failed: RuntimeError"),
        ("post_worker_init", "Worker failed to boot: the post_worker_init hook failed"),
    ],
)
def test_fatal_hook_failures_stop_the_server_with_status_1(tmp_path: Path, hook: str,
                                                           line: str) -> None:
    s = Server(APP, "--workers", "2", "--hooks", "lifecycle_hooks",
               env=hooks_env(tmp_path / "calls", hook)).start(expect_ready=False)
    try:
        assert s.wait_exit(15) == 1
        log = s.log
    finally:
        s.kill()
    assert line in log
    assert f"Exception in the {hook} hook" in log and "Traceback" in log
    assert log.count("Booting worker") <= 2  # no crash loop


def test_a_hooks_module_that_does_not_import_is_one_line(tmp_path: Path) -> None:
    s = Server(APP, "--hooks", "no_such_hooks_module").start(expect_ready=False)
    try:
        assert s.wait_exit(15) == 1
        assert "cannot import the --hooks module 'no_such_hooks_module'" in s.log
    finally:
        s.kill()


def test_pre_exec_runs_in_the_child_before_usr2_re_exec(tmp_path: Path) -> None:
    record = tmp_path / "calls"
    with serve(APP, "--hooks", "lifecycle_hooks", env=hooks_env(record),
               wait_workers=1) as s:
        s.send_signal(signal.SIGUSR2)
        s.wait_for_log(r"Started a new master \(pid (\d+)\)")
        wait_until(lambda: len(booted_pids(s.log)) == 2, what="new master's worker")
        new_master = int(s.log.split("Started a new master (pid ")[1].split(")")[0])
        got = calls(record)
        assert ("pre_exec", new_master, "") in got
        assert ("on_starting", new_master, "") in got  # the new master runs its hooks too
        os.kill(new_master, signal.SIGTERM)
        s.wait_for_log(r"The new master \(pid \d+\) exited")


def test_a_failing_pre_exec_abandons_the_upgrade(tmp_path: Path) -> None:
    record = tmp_path / "calls"
    with serve(APP, "--hooks", "lifecycle_hooks", env=hooks_env(record, "pre_exec"),
               wait_workers=1) as s:
        s.send_signal(signal.SIGUSR2)
        s.wait_for_log(r"The new master \(pid \d+\) exited \(status 1\); this master stays")
        assert "Exception in the pre_exec hook" in s.log
        assert requests.get(s.url + "/pid", timeout=5).status_code == 200
