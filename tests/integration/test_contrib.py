"""contrib/: each file parsed, checked against forkserve's own settings, and run where possible."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from forkserve.cli import cli, resolve
from forkserve.config import Config
from tests.integration.helpers import end, get, get_json, wait_for
from tests.support import REPO, TESTS, serve

CONTRIB = REPO / "contrib"


def settings_of(args: list[str], env: dict[str, str] | None = None) -> Config:
    """What forkserve would run with, given these arguments (and no config file)."""
    ctx = cli.make_context("forkserve", list(args))
    given = {k: v for k, v in ctx.params.items() if v is not None and v != ()}
    return resolve(given, env or {}, str(CONTRIB))[0]


# -- systemd -----------------------------------------------------------------

def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file: section -> key -> values (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_service_unit() -> None:
    service = unit(CONTRIB / "systemd" / "forkserve.service")["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["all"]  # the USR2 master's MAINPID=
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["KillMode"] == ["mixed"]
    assert service["KillSignal"] == ["SIGTERM"]
    for option in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "ProtectHome"):
        assert option in service
    argv = shlex.split(service["ExecStart"][0])
    assert argv[0].endswith("/forkserve")
    cfg = settings_of(argv[1:])
    assert not cfg.daemon
    assert float(service["TimeoutStopSec"][0]) > cfg.graceful_timeout


def test_systemd_socket_unit_matches_nginx() -> None:
    sock = unit(CONTRIB / "systemd" / "forkserve.socket")
    assert "Socket" in sock and sock["Install"]["WantedBy"] == ["sockets.target"]
    path = sock["Socket"]["ListenStream"][0]
    assert path.startswith("/run/")
    assert f"server unix:{path} " in (CONTRIB / "nginx" / "forkserve.conf").read_text()
    service = unit(CONTRIB / "systemd" / "forkserve.service")["Unit"]
    assert "forkserve.socket" in service["Requires"][0]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None or shutil.which("forkserve") is None,
                    reason="systemd-analyze or the forkserve script is not installed")
def test_systemd_units_verify(tmp_path: Path) -> None:
    for name in ("forkserve.service", "forkserve.socket"):
        text = (CONTRIB / "systemd" / name).read_text()
        # The one thing that differs here: where forkserve is installed.
        text = text.replace("/srv/myapp/venv/bin/forkserve", str(shutil.which("forkserve")))
        (tmp_path / name).write_text(text)
    check = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "forkserve.service")],
                           capture_output=True, text=True, timeout=60)
    problems = [line for line in (check.stdout + check.stderr).splitlines()
                if "forkserve" in line]
    assert problems == [], problems


@pytest.mark.process
@pytest.mark.integration
@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate (Debian: systemd) is not installed")
def test_systemd_units_run_as_systemd_would(tmp_path: Path) -> None:
    """The service's ExecStart on the socket unit's kind of socket, with NOTIFY_SOCKET."""
    service = unit(CONTRIB / "systemd" / "forkserve.service")["Service"]
    argv = shlex.split(service["ExecStart"][0])
    args = ["deploy_apps:app" if a == "myapp.wsgi:application" else a for a in argv[1:]]
    sock_path = tmp_path / "forkserve.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(20)
    log_path = tmp_path / "log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["systemd-socket-activate", "-l", str(sock_path), "--fdname=web",
             "-E", f"PYTHONPATH={REPO}{os.pathsep}{TESTS / 'apps'}",
             "-E", f"NOTIFY_SOCKET={tmp_path / 'notify'}",
             sys.executable, "-m", "forkserve", *args],
            cwd=TESTS / "apps", stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(sock_path.exists, what="the activated socket")
        status, body, _ = get(str(sock_path), "/healthz", timeout=20)
        assert (status, body) == (200, b"ok\n")
        messages = []
        while not any(m.startswith("READY=1") for m in messages):
            messages.append(notify.recv(4096).decode())
        assert get_json(str(sock_path))["ppid"] == proc.pid
        assert end(proc) == 0
    finally:
        if proc.poll() is None:
            end(proc, signal.SIGKILL)
        notify.close()


# -- Docker ------------------------------------------------------------------

def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        instruction, _, rest = line.partition(" ")
        out.append((instruction.upper(), rest.strip()))
    return out


def test_dockerfile_has_what_production_needs() -> None:
    steps = dockerfile(CONTRIB / "docker" / "Dockerfile")
    first: dict[str, str] = {}
    last: dict[str, str] = {}
    for instruction, rest in steps:
        first.setdefault(instruction, rest)
        last[instruction] = rest
    assert re.fullmatch(r"python:3\.\d+-slim", first["FROM"])
    names = [i for i, _ in steps]
    user = last["USER"]
    assert user not in ("root", "0")
    assert names.index("USER") < names.index("ENTRYPOINT")  # the server never runs as root
    assert last["STOPSIGNAL"] == "SIGTERM"
    entrypoint = json.loads(last["ENTRYPOINT"])  # exec form: forkserve is PID 1
    command = json.loads(last["CMD"])
    assert entrypoint[0] == "forkserve"
    env: dict[str, str] = {}
    for instruction, rest in steps:
        if instruction == "ENV":
            env.update(dict(shlex.split(part)[0].split("=", 1) for part in shlex.split(rest)
                            if "=" in part))
    cfg = settings_of([*entrypoint[1:], *command], {"PORT": env["PORT"]})
    assert cfg.bind == [f"0.0.0.0:{env['PORT']}"]  # reachable from outside the container
    assert last["EXPOSE"] == env["PORT"]
    assert cfg.access_logfile == "-" and cfg.error_logfile == "-"  # stdout/stderr
    assert not cfg.daemon
    assert cfg.health_path is not None and cfg.health_path in last["HEALTHCHECK"]
    assert env["PYTHONUNBUFFERED"] == "1"


def test_dockerfile_builds_from_the_checkout_as_it_stands(tmp_path: Path) -> None:
    """What `docker build -f contrib/docker/Dockerfile .` in a checkout does, without
    docker: every COPY source exists, and the install step's wheel (built from the
    copied files alone, as in the image) installs a working `forkserve`."""
    steps = dockerfile(CONTRIB / "docker" / "Dockerfile")
    copies = [shlex.split(rest) for instruction, rest in steps if instruction == "COPY"]
    assert copies
    staged = tmp_path / "image"
    for *sources, dest in copies:
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the checkout"
        if dest.startswith("/tmp/forkserve"):
            for source in sources:
                target = staged / dest.removeprefix("/tmp/forkserve").lstrip("/")
                if (REPO / source).is_dir():
                    shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns(
                        "__pycache__"))
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy(REPO / source, target)
    installs = [rest for instruction, rest in steps if instruction == "RUN"
                and rest.startswith("pip install /tmp/forkserve")]
    assert installs, "the image installs forkserve from the copied checkout"
    # pip builds the wheel from exactly those files: offline with the setuptools
    # installed here when it is new enough, else in pip's isolated build env.
    offline = ["--no-build-isolation"] if _setuptools_at_least(68) else []
    wheel = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "w"),
         *offline, str(staged)],
        capture_output=True, text=True, timeout=240)
    assert wheel.returncode == 0, wheel.stderr
    (built,) = (tmp_path / "w").glob("forkserve-*.whl")
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--target", str(target), str(built)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    # The CMD's app and the entry point work from the installed wheel alone.
    run = subprocess.run(
        [sys.executable, "-c", "import forkserve, forkserve.demo, forkserve.cli; "
         "print(forkserve.__file__)"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.startswith(str(target)), run.stderr
    entry_points = next(target.glob("forkserve-*.dist-info")) / "entry_points.txt"
    assert "forkserve = forkserve.cli:main" in entry_points.read_text()
    cmd = json.loads(dict(steps)["CMD"])
    assert cmd == ["forkserve.demo:app"]


def _setuptools_at_least(major: int) -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= major


def test_dockerignore_keeps_secrets_and_junk_out() -> None:
    ignored = {line.strip() for line in (CONTRIB / "docker" / ".dockerignore").read_text()
               .splitlines() if line.strip() and not line.startswith("#")}
    assert {".git", ".env", ".venv", "venv", "**/__pycache__"} <= ignored


# -- Kubernetes ----------------------------------------------------------------

def manifests() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted((CONTRIB / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def test_kubernetes_manifests_parse_and_agree_with_the_settings() -> None:
    docs = manifests()
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= set(docs)
    deployment = docs["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    cfg = settings_of(container["args"], {"PORT": env["PORT"]["value"],
                                          "FORWARDED_ALLOW_IPS":
                                              env["FORWARDED_ALLOW_IPS"]["value"]})
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert cfg.bind == [f"0.0.0.0:{ports['http']}"]
    # Every probe asks the worker's own health endpoint on the served port.
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get_ = container[probe]["httpGet"]
        assert get_["path"] == cfg.health_path, probe
        assert ports[get_["port"]] == ports["http"], probe
    # Time to drain: preStop's sleep, then --graceful-timeout, within the grace period.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + cfg.graceful_timeout
    # WEB_CONCURRENCY follows the CPU limit.
    ref = env["WEB_CONCURRENCY"]["valueFrom"]["resourceFieldRef"]
    assert ref["resource"] == "limits.cpu" and ref["containerName"] == container["name"]
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["cpu"]
    service = docs["Service"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["minReplicas"] >= 2


# -- logrotate ---------------------------------------------------------------

@pytest.mark.process
def test_logrotate_postrotate_reopens_logs_with_usr1(tmp_path: Path) -> None:
    text = (CONTRIB / "logrotate" / "forkserve").read_text()
    script = text.split("postrotate", 1)[1].split("endscript", 1)[0]
    assert "kill -USR1" in script and "copytruncate" not in text.replace("# copytruncate", "")
    pidfile, access = tmp_path / "forkserve.pid", tmp_path / "access.log"
    script = script.replace("/run/forkserve.pid", str(pidfile))
    with serve("deploy_apps:app", "--pid", str(pidfile), "--access-logfile", str(access),
               wait_workers=1) as s:
        get_json(s.address, "/before")
        wait_for(lambda: "/before" in access.read_text(), what="first log line")
        access.rename(tmp_path / "access.log.1")  # what logrotate does first
        subprocess.run(["sh", "-c", script], check=True, timeout=10)
        s.wait_for_log("Handling signal: SIGUSR1")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the workers reopen on their next loop turn
            get_json(s.address, "/after")
            if access.exists() and "/after" in access.read_text():
                break
            time.sleep(0.1)
        assert "/after" in access.read_text()
        # Requests served between the rename and a worker's reopen belong in
        # the old file (as with any logrotate without copytruncate); once the
        # workers have reopened, every line goes to the new file only.
        for _ in range(4):
            get_json(s.address, "/later")
        wait_for(lambda: access.read_text().count("/later") == 4, what="lines in the new log")
        assert "/later" not in (tmp_path / "access.log.1").read_text()
