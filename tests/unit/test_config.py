"""Settings layering and errors: defaults < config file < environment < command line.

Table-driven over `cli.resolve`, which reads the real files from a temporary
directory, so each case goes through the same code as `forkserve` itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from forkserve.cli import cli, resolve
from forkserve.config import SETTINGS, Config, file_layer, find_config_file, load
from forkserve.docs import DEFAULT_PATH, render_settings_md
from forkserve.errors import ConfigError

Files = dict[str, str]


def run(tmp_path: Path, files: Files, env: dict[str, str] | None = None,
        cli_args: dict[str, Any] | None = None) -> tuple[Config, dict[str, str]]:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    cfg, origin, _label = resolve(cli_args or {}, env or {}, str(tmp_path))
    return cfg, origin


PRECEDENCE = [
    # (files, env, cli, setting, expected value, expected provenance)
    ({}, {}, {}, "workers", 1, "default"),
    ({"forkserve.toml": "workers = 2\n"}, {}, {}, "workers", 2, "forkserve.toml:1"),
    ({"forkserve.toml": "# c\n\nworkers = 2\n"}, {"FORKSERVE_WORKERS": "3"}, {},
     "workers", 3, "env FORKSERVE_WORKERS"),
    ({"forkserve.toml": "workers = 2\n"}, {"FORKSERVE_WORKERS": "3"}, {"workers": "4"},
     "workers", 4, "command line --workers"),
    # PORT and WEB_CONCURRENCY (and the other conventions) are defaults only.
    ({}, {"WEB_CONCURRENCY": "5"}, {}, "workers", 5, "env WEB_CONCURRENCY"),
    ({"forkserve.toml": "workers = 2\n"}, {"WEB_CONCURRENCY": "5"}, {},
     "workers", 2, "forkserve.toml:1 (over env WEB_CONCURRENCY, a default only)"),
    ({}, {"WEB_CONCURRENCY": "5", "FORKSERVE_WORKERS": "6"}, {},
     "workers", 6, "env FORKSERVE_WORKERS (over env WEB_CONCURRENCY, a default only)"),
    ({}, {"WEB_CONCURRENCY": "5"}, {"workers": "3"},
     "workers", 3, "command line --workers (over env WEB_CONCURRENCY, a default only)"),
    ({"forkserve.toml": 'bind = ["127.0.0.1:8001"]\n'}, {"PORT": "9000"}, {},
     "bind", ["127.0.0.1:8001"], "forkserve.toml:1 (over env PORT, a default only)"),
    ({}, {"PORT": "9000", "FORKSERVE_BIND": "127.0.0.1:1"}, {},
     "bind", ["127.0.0.1:1"], "env FORKSERVE_BIND (over env PORT, a default only)"),
    ({}, {"FORKSERVE_WORKERS": "6", "FORKSERVE_CMD_ARGS": "--workers 7 -t 9"}, {},
     "workers", 7, "env FORKSERVE_CMD_ARGS --workers"),
    ({}, {"FORKSERVE_CMD_ARGS": "--workers 7"}, {"workers": "8"},
     "workers", 8, "command line --workers"),
    ({}, {"PORT": "9000"}, {}, "bind", ["0.0.0.0:9000"], "env PORT"),
    ({"forkserve.toml": 'bind = ["unix:/tmp/a.sock", "[::1]:81"]\n'}, {"PORT": "9000"},
     {"bind": ("127.0.0.1:1",)}, "bind", ["127.0.0.1:1"],
     "command line --bind (over env PORT, a default only)"),
    ({"forkserve.toml": 'bind = ["unix:/tmp/a.sock", "[::1]:81"]\n'}, {}, {},
     "bind", ["unix:/tmp/a.sock", "[::1]:81"], "forkserve.toml:1"),
    ({}, {"FORKSERVE_BIND": "127.0.0.1:1,127.0.0.1:2"}, {},
     "bind", ["127.0.0.1:1", "127.0.0.1:2"], "env FORKSERVE_BIND"),
    ({}, {"SCRIPT_NAME": "/app/"}, {}, "root_path", "/app", "env SCRIPT_NAME"),
    ({"forkserve.toml": "graceful-timeout = 12\n"}, {}, {},
     "graceful_timeout", 12.0, "forkserve.toml:1"),
    ({"forkserve.toml": "reuse_port = true\n"}, {}, {}, "reuse_port", True, "forkserve.toml:1"),
    ({"forkserve.toml": "reuse_port = true\n"}, {"FORKSERVE_REUSE_PORT": "no"}, {},
     "reuse_port", False, "env FORKSERVE_REUSE_PORT"),
    ({}, {"FORKSERVE_CMD_ARGS": "--no-daemon"}, {"daemon": True},
     "daemon", True, "command line --daemon"),
    ({"forkserve.toml": 'umask = "007"\n'}, {}, {}, "umask", 0o007, "forkserve.toml:1"),
    ({}, {"FORKSERVE_UMASK": "0o027"}, {}, "umask", 0o027, "env FORKSERVE_UMASK"),
    ({"forkserve.toml": 'health_path = "/healthz"\n'}, {}, {},
     "health_path", "/healthz", "forkserve.toml:1"),
    ({"forkserve.toml": 'app = "myapp:app"\n'}, {}, {}, "app", "myapp:app", "forkserve.toml:1"),
    ({"forkserve.toml": 'app = "myapp:app"\n'}, {}, {"app": "other:app"},
     "app", "other:app", "command line APP"),
    # pyproject.toml's [tool.forkserve] when there is no forkserve.toml ...
    ({"pyproject.toml": '[project]\nname = "x"\n\n[tool.forkserve]\nworkers = 3\n'}, {}, {},
     "workers", 3, "pyproject.toml:5"),
    # ... and not when there is one: forkserve.toml wins whole, no merging.
    ({"pyproject.toml": "[tool.forkserve]\nworkers = 3\ntimeout = 1\n",
      "forkserve.toml": "workers = 2\n"}, {}, {}, "timeout", 30.0, "default"),
    # A pyproject.toml without the table is not a config file.
    ({"pyproject.toml": "[tool.other]\nworkers = 'x'\n"}, {}, {}, "workers", 1, "default"),
    # --config names the file; forkserve.toml in the directory is then ignored.
    ({"forkserve.toml": "workers = 2\n", "prod.toml": "\nworkers = 9\n"}, {},
     {"config": "prod.toml"}, "workers", 9, "prod.toml:2"),
    ({"prod.toml": "workers = 9\n"}, {"FORKSERVE_CMD_ARGS": "-c prod.toml"}, {},
     "workers", 9, "prod.toml:1"),
]


@pytest.mark.parametrize(("files", "env", "cli_args", "name", "value", "source"), PRECEDENCE)
def test_precedence_and_provenance(tmp_path: Path, files: Files, env: dict[str, str],
                                   cli_args: dict[str, Any], name: str, value: Any,
                                   source: str) -> None:
    cfg, origin = run(tmp_path, files, env, cli_args)
    assert getattr(cfg, name) == value
    assert origin[name] == source


ERRORS = [
    # (files, env, cli, the whole error message)
    ({"forkserve.toml": "timeout = 3\nwrokers = 2\n"}, {}, {},
     "unknown setting 'wrokers' in forkserve.toml:2 (did you mean 'workers'?)"),
    ({"pyproject.toml": "[tool.forkserve]\nbnid = 'x'\n"}, {}, {},
     "unknown setting 'bnid' in pyproject.toml:2 (did you mean 'bind'?)"),
    ({}, {"FORKSERVE_WROKERS": "2"}, {},
     "unknown environment variable FORKSERVE_WROKERS (did you mean 'FORKSERVE_WORKERS'?)"),
    ({"forkserve.toml": 'workers = "many"\n'}, {}, {},
     "workers (forkserve.toml:1): expected an integer, got 'many'"),
    ({"forkserve.toml": "\nworkers = true\n"}, {}, {},
     "workers (forkserve.toml:2): expected an integer, got 'true'"),
    ({"forkserve.toml": "workers = 0\n"}, {}, {},
     "workers (forkserve.toml:1): expected an integer >= 1, got 0"),
    ({"forkserve.toml": "[workers]\nx = 1\n"}, {}, {},
     "workers (forkserve.toml): expected a value, got a table"),
    ({"forkserve.toml": 'bind = ["127.0.0.1:80", "127.0.0.1:99999"]\n'}, {}, {},
     "bind (forkserve.toml:1): port must be 0-65535, got 99999"),
    ({"forkserve.toml": 'umask = "999"\n'}, {}, {},
     "umask (forkserve.toml:1): expected an octal mask such as 022 or 0o077, got '999'"),
    ({"forkserve.toml": 'health_path = "healthz"\n'}, {}, {},
     "health_path (forkserve.toml:1): expected a URL path such as /healthz, got 'healthz'"),
    ({"forkserve.toml": 'user = "no-such-user-here"\n'}, {}, {},
     "user (forkserve.toml:1): expected an existing user name or uid, got 'no-such-user-here'"),
    ({}, {"FORKSERVE_GROUP": "no-such-group-here"}, {},
     "group (env FORKSERVE_GROUP): expected an existing group name or gid, "
     "got 'no-such-group-here'"),
    ({}, {"FORKSERVE_TIMEOUT": "soon"}, {},
     "timeout (env FORKSERVE_TIMEOUT): expected a number, got 'soon'"),
    ({}, {"WEB_CONCURRENCY": "0"}, {},
     "workers (env WEB_CONCURRENCY): expected an integer >= 1, got 0"),
    ({}, {"PORT": "http"}, {},
     "bind (env PORT): expected HOST:PORT, [IPv6]:PORT or unix:PATH, got '0.0.0.0:http'"),
    ({}, {"FORKSERVE_REUSE_PORT": "maybe"}, {},
     "reuse_port (env FORKSERVE_REUSE_PORT): expected true or false, got 'maybe'"),
    ({}, {}, {"log_level": "loud"},
     "log_level (command line --log-level): expected one of debug, info, warning, error, "
     "critical, got 'loud'"),
    ({}, {"FORKSERVE_CMD_ARGS": "--workers x"}, {},
     "workers (env FORKSERVE_CMD_ARGS --workers): expected an integer, got 'x'"),
    ({}, {"FORKSERVE_CMD_ARGS": "--wrokers 2"}, {},
     "env FORKSERVE_CMD_ARGS: No such option '--wrokers'. (Did you mean one of: "),
    ({}, {"FORKSERVE_CMD_ARGS": "--workers '2"}, {},
     "env FORKSERVE_CMD_ARGS: No closing quotation"),
    ({"forkserve.toml": "workers = \n"}, {}, {},
     "config file forkserve.toml is not valid TOML: Invalid value (at line 1, column 11)"),
    ({}, {}, {"config": "missing.toml"},
     "cannot read config file missing.toml: No such file or directory"),
]


@pytest.mark.parametrize(("files", "env", "cli_args", "message"), ERRORS)
def test_error_messages(tmp_path: Path, files: Files, env: dict[str, str],
                        cli_args: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        run(tmp_path, files, env, cli_args)
    if message.endswith(": "):  # click's own suggestion list follows; its order is click's
        assert str(info.value).startswith(message)
        assert "'--workers'" in str(info.value)
    else:
        assert str(info.value) == message


def test_non_utf8_config_file(tmp_path: Path) -> None:
    (tmp_path / "forkserve.toml").write_bytes(b"name = '\xff'\n")
    with pytest.raises(ConfigError, match=r"^config file forkserve.toml is not UTF-8"):
        run(tmp_path, {})


def test_workers_auto_is_the_usable_cpus() -> None:
    cfg, _ = load({"workers": "auto"}, {})
    assert cfg.workers == len(os.sched_getaffinity(0))
    cfg, origin = load({}, {"WEB_CONCURRENCY": "auto"})
    assert cfg.workers == len(os.sched_getaffinity(0))
    assert origin["workers"] == "env WEB_CONCURRENCY"


def test_forwarded_allow_ips_convention() -> None:
    if "forwarded_allow_ips" not in SETTINGS:
        pytest.skip("the forwarded_allow_ips setting (issue 3) is not declared")
    _, origin = load({}, {"FORWARDED_ALLOW_IPS": "10.0.0.1"})
    assert origin["forwarded_allow_ips"] == "env FORWARDED_ALLOW_IPS"
    _, origin = load({}, {"FORWARDED_ALLOW_IPS": "10.0.0.1",
                          "FORKSERVE_FORWARDED_ALLOW_IPS": "10.0.0.2"})
    assert origin["forwarded_allow_ips"] == (
        "env FORKSERVE_FORWARDED_ALLOW_IPS (over env FORWARDED_ALLOW_IPS, a default only)")


def test_every_setting_has_an_env_var_and_a_flag() -> None:
    for name, (_field, meta) in SETTINGS.items():
        cfg, origin = load({}, {f"FORKSERVE_{name.upper()}": _sample(name)})
        assert origin[name] == f"env FORKSERVE_{name.upper()}", name
        if name != "app":
            assert any(f.startswith("--") for f in meta.flags), name
            assert meta.help and meta.section, name


def _sample(name: str) -> str:
    """A valid value of each setting, spelled as an environment variable."""
    default = load({}, {})[0]
    value = getattr(default, name)
    special = {"umask": "022", "unix_socket_mode": "660", "user": "root", "group": "root",
               "health_path": "/h", "root_path": "/r", "app": "m:app",
               "stream_body_paths": "/upload/", "statsd_host": "localhost:8125",
               "metrics_bind": "127.0.0.1:9100"}
    if name in special:
        return special[name]
    if isinstance(value, bool):
        return "true"
    if isinstance(value, list):
        return ",".join(value) if value else "x"
    return "1" if value is None else str(value) if value != "" else "x"


def test_print_config_shows_sources_and_is_a_valid_config_file(tmp_path: Path,
                                                              monkeypatch: Any) -> None:
    (tmp_path / "forkserve.toml").write_text('timeout = 7\nbind = ["unix:/tmp/x.sock"]\n')
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        cli, ["--print-config", "-w", "3", "m:app"],
        env={"FORKSERVE_KEEPALIVE": "9", "FORKSERVE_UMASK": "027", "PORT": ""},
    )
    assert result.exit_code == 0, result.output
    lines = {line.split("=")[0].strip(): line for line in result.output.splitlines()}
    assert lines["workers"].endswith("# command line --workers")
    assert lines["timeout"].startswith("timeout = 7.0")
    assert lines["timeout"].endswith("# forkserve.toml:1")
    assert lines["keepalive"].endswith("# env FORKSERVE_KEEPALIVE")
    assert lines["graceful_timeout"].endswith("# default")
    assert "config file: forkserve.toml" in result.output
    # The output reads back as a config file giving the same settings.
    assert tomllib.loads(result.output)["umask"] == "0o027"
    (tmp_path / "printed.toml").write_text(result.output)
    where = find_config_file("printed.toml", str(tmp_path))
    assert where is not None
    again, _ = load({}, {}, file_layer(where, str(tmp_path)))
    first, _, _ = resolve({"workers": "3", "app": "m:app"},
                          {"FORKSERVE_KEEPALIVE": "9", "FORKSERVE_UMASK": "027"}, str(tmp_path))
    assert again == first


def _forkserve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORKSERVE_")}
    env["PYTHONPATH"] = str(cwd)
    return subprocess.run([sys.executable, "-m", "forkserve", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=30)


def test_check_config_loads_app_and_does_not_serve(tmp_path: Path) -> None:
    (tmp_path / "okapp.py").write_text(
        "def app(environ, start_response):\n    return [b'']\n")
    (tmp_path / "badapp.py").write_text("raise RuntimeError('no database')\n")
    # A port that is in use would fail a real start: --check-config binds nothing.
    (tmp_path / "forkserve.toml").write_text('bind = ["127.0.0.1:1"]\nworkers = 2\n')
    ok = _forkserve("--check-config", "okapp:app", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "forkserve: configuration OK; app 'okapp:app' loaded\n"
    bad = _forkserve("--check-config", "badapp:app", cwd=tmp_path)
    assert bad.returncode == 3
    # One line saying what failed, then the user's own frame (file, line, source):
    # no forkserve or importlib internals.
    first, *frames = bad.stderr.splitlines()
    assert "RuntimeError: no database" in first
    assert any("badapp.py\", line 1" in line for line in frames), bad.stderr
    assert "forkserve" not in "".join(frames) and "importlib" not in "".join(frames)
    (tmp_path / "forkserve.toml").write_text("workers = -1\n")
    wrong = _forkserve("--check-config", "okapp:app", cwd=tmp_path)
    assert wrong.returncode == 2
    assert wrong.stderr == ("forkserve: error: workers (forkserve.toml:1): expected an "
                            "integer >= 1, got -1\n")


def test_settings_doc_is_current() -> None:
    assert DEFAULT_PATH.read_text(encoding="utf-8") == render_settings_md(), (
        "docs/settings.md is out of date: run `python -m forkserve.docs` and commit it"
    )


# Every way TOML can spell a tool.forkserve table (the pre-check must let each
# through to the parser), and pyproject files without one (it may skip those).
TOOL_FORKSERVE_FORMS = [
    "[tool.forkserve]\nworkers = 2\n",
    "[project]\nname = 'x'\n\n  [ tool . forkserve ]\nworkers = 2\n",
    '[tool."forkserve"]\nworkers = 2\n',
    "[\"tool\".'forkserve']\nworkers = 2\n",
    "[tool.forkserve.extra]\nx = 1\n",
    "[tool]\nforkserve = { workers = 2 }\n",
    "[tool]\nforkserve.workers = 2\n",
    "tool.forkserve.workers = 2\n",
    "tool = { forkserve = { workers = 2 } }\n",
    '"tool".forkserve = { workers = 2 }\n',
]
NO_TOOL_FORKSERVE = [
    "",
    "[project]\nname = 'x'\n",
    '[project]\nname = "forkserve"\n[project.scripts]\nforkserve = "forkserve.cli:main"\n'
    "[tool.setuptools.packages.find]\ninclude = ['forkserve*']\n[tool.ruff]\nline-length = 1\n",
    "[tool.pytest.ini_options]\naddopts = '-p forkserve'\n",
    "[tool.forkserver]\nworkers = 2\n",
]


@pytest.mark.parametrize("text", TOOL_FORKSERVE_FORMS + NO_TOOL_FORKSERVE)
def test_pyproject_pre_check_never_skips_a_forkserve_table(tmp_path: Path, text: str) -> None:
    from forkserve.config import might_have_tool_forkserve

    data = tomllib.loads(text)
    has_table = isinstance(data.get("tool"), dict) and "forkserve" in data["tool"]
    assert has_table == (text in TOOL_FORKSERVE_FORMS)  # the table itself is right
    if has_table:
        assert might_have_tool_forkserve(text.encode())
    (tmp_path / "pyproject.toml").write_text(text)
    found = find_config_file(None, str(tmp_path))
    assert (found is not None) == has_table


@pytest.mark.parametrize("text", NO_TOOL_FORKSERVE)
def test_pyproject_without_the_table_is_not_parsed(text: str) -> None:
    from forkserve.config import might_have_tool_forkserve

    assert not might_have_tool_forkserve(text.encode())


def test_unrelated_invalid_pyproject_is_not_our_error(tmp_path: Path) -> None:
    # A broken pyproject.toml that has no [tool.forkserve] belongs to other tools.
    (tmp_path / "pyproject.toml").write_text("[project\nname = \n")
    assert find_config_file(None, str(tmp_path)) is None
    (tmp_path / "pyproject.toml").write_text("[tool.forkserve]\nworkers = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        find_config_file(None, str(tmp_path))


def test_threads_and_worker_class_from_every_source(tmp_path: Path) -> None:
    from forkserve.config import GTHREAD_DEFAULT_THREADS, threads_per_worker

    cfg, origin = load({}, {"FORKSERVE_THREADS": "8"})
    assert (cfg.threads, cfg.worker_class) == (8, "sync")
    assert origin["threads"] == "env FORKSERVE_THREADS"
    (tmp_path / "forkserve.toml").write_text('threads = 3\nworker-class = "gthread"\n')
    where = find_config_file(None, str(tmp_path))
    assert where is not None
    cfg, _ = load({}, {}, file_layer(where, str(tmp_path)))
    assert (cfg.threads, cfg.worker_class) == (3, "gthread")
    cfg, _ = load({"worker_class": "GTHREAD"}, {})
    assert threads_per_worker(cfg.worker_class, cfg.threads) == GTHREAD_DEFAULT_THREADS >= 2
    assert threads_per_worker("gthread", 6) == 6
    assert threads_per_worker("sync", 1) == 1
    assert threads_per_worker("sync", 4) == 4  # --threads alone makes a worker threaded
    with pytest.raises(ConfigError, match="at least|>= 1"):
        load({"threads": "0"}, {})


@pytest.mark.parametrize("name", ["gevent", "eventlet", "tornado", "uvicorn.workers.UvicornWorker"])
def test_other_worker_classes_are_refused(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({"worker_class": name}, {})
    message = str(info.value)
    assert "forkserve has sync and gthread workers" in message and "docs/workers.md" in message
    assert "\n" not in message
