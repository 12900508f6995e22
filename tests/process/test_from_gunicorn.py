"""`forkserve --from-gunicorn` as a user runs it, and its output fed back to forkserve."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, TESTS
from tests.unit.test_gunicorn_conf import REALISTIC

pytestmark = pytest.mark.process


def forkserve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS / "apps")])
    for var in ("PORT", "WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS"):
        env.pop(var, None)
    return subprocess.run([sys.executable, "-m", "forkserve", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_realistic_config_converts_and_passes_check_config(tmp_path: Path) -> None:
    (tmp_path / "gunicorn.conf.py").write_text(REALISTIC)
    done = forkserve("--from-gunicorn", cwd=tmp_path)  # ./gunicorn.conf.py, as gunicorn reads
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# forkserve.toml converted from gunicorn.conf.py")
    assert "the config file ran" in done.stderr  # what the file prints stays off the TOML
    (tmp_path / "forkserve.toml").write_text(done.stdout)
    checked = forkserve("--check-config", "identity_app:app", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "configuration OK" in checked.stdout
    shown = forkserve("--print-config", cwd=tmp_path)
    assert "max_requests_jitter = 50" in shown.stdout
    assert "forkserve.toml:" in shown.stdout  # the values came from the converted file


def test_explicit_path_and_empty_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "empty.py").write_text("")
    done = forkserve("--from-gunicorn", "conf/empty.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (tmp_path / "forkserve.toml").write_text(done.stdout)
    checked = forkserve("--check-config", "identity_app:app", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr


def test_broken_config_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "gunicorn.conf.py").write_text("import os\nworkers = os.cpu_count() / None\n")
    done = forkserve("--from-gunicorn", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        "forkserve: error: cannot read gunicorn.conf.py: line 2: TypeError: unsupported "
        "operand type(s) for /: 'int' and 'NoneType'\n"
    )


def test_missing_default_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = forkserve("--from-gunicorn", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "forkserve: error: no gunicorn config file at gunicorn.conf.py\n"
