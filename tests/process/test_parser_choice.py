"""`--http auto|h11|httptools`: which parser serves, what the log says, and a missing extra."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.support import REPO, TEST_HTTP_ENV, TESTS, Server

pytestmark = pytest.mark.process

@pytest.fixture(autouse=True)
def default_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests choose the parser themselves: no suite-wide TEST_FORKSERVE_HTTP."""
    monkeypatch.delenv(TEST_HTTP_ENV, raising=False)


# A directory whose `httptools` package fails to import, put first on PYTHONPATH.
HIDE_HTTPTOOLS = str(TESTS / "apps" / "no_httptools")


def run_forkserve(*args: str, hide_httptools: bool = False) -> subprocess.CompletedProcess[str]:
    path = [str(REPO), str(TESTS / "apps")]
    if hide_httptools:
        path.insert(0, HIDE_HTTPTOOLS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    return subprocess.run([sys.executable, "-m", "forkserve", *args], cwd=TESTS / "apps",
                          env=env, capture_output=True, text=True, timeout=20,
                          stdin=subprocess.DEVNULL)


@contextmanager
def serving(*args: str, hide_httptools: bool = False) -> Iterator[Server]:
    server = Server("core_apps:app", *args)
    if hide_httptools:
        server.env["PYTHONPATH"] = HIDE_HTTPTOOLS + os.pathsep + server.env["PYTHONPATH"]
    with server:
        yield server


def test_httptools_without_the_extra_is_one_line_and_exit_2() -> None:
    proc = run_forkserve("core_apps:app", "--bind", "127.0.0.1:0", "--http", "httptools",
                         hide_httptools=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "forkserve: error: --http httptools: httptools is not installed "
        "(pip install 'forkserve[fast]')"
    ]
    assert "Listening at" not in proc.stdout + proc.stderr


def test_check_config_finds_the_missing_extra_too() -> None:
    proc = run_forkserve("core_apps:app", "--check-config", "--http", "httptools",
                         hide_httptools=True)
    assert proc.returncode == 2 and "forkserve[fast]" in proc.stderr


def test_an_unknown_parser_is_refused() -> None:
    proc = run_forkserve("core_apps:app", "--http", "llhttp")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("forkserve: error: http (command line --http): expected "
                                   "one of auto, h11, httptools, got 'llhttp'")


def test_auto_without_httptools_serves_with_h11() -> None:
    with serving(hide_httptools=True) as server:
        assert requests.get(server.url + "/hello", timeout=5).status_code == 200
        log = server.log
    assert "Using parser: h11 " in log


@pytest.mark.parametrize(("args", "env", "expected"), [
    ((), {}, "httptools"),
    (("--http", "h11"), {}, "h11"),
    ((), {"FORKSERVE_HTTP": "h11"}, "h11"),
    (("--http", "httptools"), {"FORKSERVE_HTTP": "h11"}, "httptools"),
])
def test_the_log_names_the_parser_and_its_version(args: tuple[str, ...], env: dict[str, str],
                                                  expected: str) -> None:
    httptools = pytest.importorskip("httptools")
    import h11

    version = httptools.__version__ if expected == "httptools" else h11.__version__
    server = Server("core_apps:app", *args, env=env)
    with server:
        assert requests.get(server.url + "/hello", timeout=5).status_code == 200
        log = server.log
    assert f"Using parser: {expected} {version}\n" in log


def test_a_reload_can_change_the_parser(tmp_path: Path) -> None:
    """HUP re-reads the config file: the new generation serves with the new parser."""
    httptools = pytest.importorskip("httptools")
    (tmp_path / "forkserve.toml").write_text('http = "h11"\n')
    server = Server("core_apps:app", cwd=tmp_path)
    with server:
        assert "Using parser: h11 " in server.log
        (tmp_path / "forkserve.toml").write_text('http = "httptools"\n')
        server.send_signal(signal.SIGHUP)
        server.wait_for_log(f"Using parser: httptools {httptools.__version__}\n")
        server.wait_for_log("generation 2 is serving")
        assert requests.get(server.url + "/hello", timeout=5).status_code == 200
