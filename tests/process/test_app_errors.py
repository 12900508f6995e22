"""What a new user sees when APP is wrong or the app fails to import (issue 12).

Each test runs the real `forkserve` command in a throw-away project directory,
as a user would from their checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

pytestmark = pytest.mark.process

FILES = {
    "pkg/__init__.py": 'import sys\nprint("PKG INIT RAN", file=sys.stderr)\n',
    "pkg/helpers.py": "import os\n\nSECRET = os.environ['FORKSERVE_TEST_SECRET']\n",
    "pkg/web.py": "from pkg import helpers  # needs the secret\n\n"
                  "def application(environ, start_response):\n"
                  "    start_response('200 OK', [])\n    return [helpers.SECRET.encode()]\n",
    "pkg/plain.py": "def application(environ, start_response):\n"
                    "    start_response('200 OK', [])\n    return [b'ok']\n",
    "pkg/flaskish.py": "def wsgi(environ, start_response):\n    return []\n\napp = wsgi\n",
    "pkg/factory.py": "def _read_settings():\n    raise ValueError('DATABASE_URL is not set')\n\n"
                      "def create_app():\n    _read_settings()\n",
}


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    for name, text in FILES.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def run(project: Path, app: str) -> tuple[int, list[str]]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FORKSERVE_") and k not in ("PORT", "WEB_CONCURRENCY")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "forkserve", app, "--bind", "127.0.0.1:0"],
        cwd=project, env=env, capture_output=True, text=True, timeout=30,
        stdin=subprocess.DEVNULL,
    )
    return proc.returncode, (proc.stdout + proc.stderr).splitlines()


def test_an_import_error_shows_the_users_frames_and_nothing_of_forkserve(
        project: Path) -> None:
    status, lines = run(project, "pkg.web:application")
    assert status == 3
    text = "\n".join(lines)
    start = next(i for i, line in enumerate(lines) if "Worker failed to boot" in line)
    assert lines[start].endswith(
        "Worker failed to boot: importing app module 'pkg.web' failed: "
        "KeyError: 'FORKSERVE_TEST_SECRET'"), text
    # The user's frames, in order (Python's ^^^ markers may come between them).
    wanted = [
        f'  File "{project}/pkg/web.py", line 1, in <module>',
        "    from pkg import helpers  # needs the secret",
        f'  File "{project}/pkg/helpers.py", line 3, in <module>',
        "    SECRET = os.environ['FORKSERVE_TEST_SECRET']",
    ]
    report = [line for line in lines[start + 1:] if line.strip("^~ ")]
    assert report[:4] == wanted, text
    assert "forkserve/" not in text and "importlib" not in text and "Traceback" not in text
    assert len(lines) < 25, text  # no wall of text


def test_a_failing_factory_shows_the_users_frames(project: Path) -> None:
    status, lines = run(project, "pkg.factory:create_app()")
    assert status == 3
    text = "\n".join(lines)
    assert "calling app factory 'pkg.factory:create_app()' failed: " \
           "ValueError: DATABASE_URL is not set" in text
    assert f'  File "{project}/pkg/factory.py", line 5, in create_app' in lines, text
    assert f'  File "{project}/pkg/factory.py", line 2, in _read_settings' in lines, text
    assert "forkserve/" not in text and "Traceback" not in text


@pytest.mark.parametrize(("app", "hint"), [
    ("pkg.plain:app", "(did you mean 'pkg.plain:application'?)"),
    ("pkg.flaskish", "(did you mean 'pkg.flaskish:app'?)"),  # no :attr means application
    ("pkg.plain:aplication", "(did you mean 'pkg.plain:application'?)"),
])
def test_a_missing_attribute_suggests_the_one_that_exists(
        project: Path, app: str, hint: str) -> None:
    status, lines = run(project, app)
    assert status == 3
    errors = [line for line in lines if "ERROR" in line]
    assert len(errors) == 1 and errors[0].endswith(hint), lines


@pytest.mark.parametrize(("app", "hint"), [
    ("pkg.wbe:application", "(did you mean 'pkg.web:application'?)"),
    ("pgk.web:application", "(did you mean 'pkg.web:application'?)"),
    ("pkg/plain.py:application", "(did you mean 'pkg.plain:application'?)"),
])
def test_a_mistyped_module_is_one_line_before_binding_and_imports_nothing(
        project: Path, app: str, hint: str) -> None:
    status, lines = run(project, app)
    assert status == 3
    assert len(lines) == 1, lines  # no "Listening at", no worker, no package __init__
    assert lines[0].startswith("forkserve: error: ") and lines[0].endswith(hint), lines
