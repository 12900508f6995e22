"""Listeners: several binds, IPv6, unix sockets (mode, stale file, cleanup), fd://, reuse-port."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.helpers import end, free_port, get_json, wait_for
from tests.support import REPO, TESTS, Server, serve

pytestmark = pytest.mark.process


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_several_binds_ipv4_ipv6_unix_at_once(tmp_path: Path) -> None:
    sock_path = str(tmp_path / "app.sock")
    binds = ["127.0.0.1:0", f"unix:{sock_path}"]
    if _ipv6_loopback():
        binds.append("[::1]:0")
    with serve("deploy_apps:app", bind=binds) as s:
        assert len(s.urls) == len(binds)
        tcp = [u for u in s.urls if u.startswith("http://127.")][0]
        host, port = tcp[7:].rsplit(":", 1)
        assert get_json((host, int(port)))["path"] == "/"
        assert get_json(sock_path)["remote_addr"] in ("", None, "127.0.0.1")
        v6 = [u for u in s.urls if u.startswith("http://[")]
        if v6:
            port6 = int(v6[0].rsplit(":", 1)[1])
            assert get_json(("::1", port6))["remote_addr"] == "::1"


@pytest.mark.parametrize(("args", "inherited_umask", "mode"), [
    (["--umask", "007"], "022", 0o660),  # an explicit --umask narrows --unix-socket-mode
    (["--umask", "077"], "022", 0o600),
    (["--umask", "0"], "022", 0o666),
    ([], "077", 0o666),  # the umask forkserve merely inherits does not apply
    (["--unix-socket-mode", "600"], "000", 0o600),
    (["--unix-socket-mode", "0o660", "--umask", "027"], "000", 0o640),
])
def test_unix_socket_mode(tmp_path: Path, args: list[str], inherited_umask: str,
                          mode: int) -> None:
    sock_path = tmp_path / "app.sock"
    shell = ["sh", "-c", f'umask {inherited_umask} && exec "$0" -m forkserve "$@"',
             sys.executable]
    with serve("deploy_apps:app", *args, bind=[f"unix:{sock_path}"], command=shell):
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == mode


def test_stale_socket_replaced_and_removed_on_exit(tmp_path: Path) -> None:
    sock_path = tmp_path / "app.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(sock_path))  # a server that died without cleaning up
    dead.close()
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    server = Server("deploy_apps:app", bind=[f"unix:{sock_path}"])
    with server:
        assert get_json(str(sock_path))["path"] == "/"
        assert server.stop() == 0
    assert not sock_path.exists()


def test_unix_socket_in_use_or_not_a_socket_is_refused(tmp_path: Path) -> None:
    sock_path = tmp_path / "app.sock"
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(sock_path))
    live.listen(1)
    try:
        server = Server("deploy_apps:app", bind=[f"unix:{sock_path}"])
        server.start(expect_ready=False)
        assert server.wait_exit() == 4
        assert f"cannot bind unix:{sock_path}: another server is listening there" in server.log
        assert sock_path.exists()  # the other server's socket was left alone
    finally:
        live.close()
        server.kill()
    sock_path.unlink()
    sock_path.write_text("precious")
    server = Server("deploy_apps:app", bind=[f"unix:{sock_path}"])
    server.start(expect_ready=False)
    try:
        assert server.wait_exit() == 4
        assert "a file that is not a socket is in the way" in server.log
        assert sock_path.read_text() == "precious"
    finally:
        server.kill()


def test_fd_bind_serves_on_an_inherited_socket(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{TESTS / 'apps'}")
    log = open(tmp_path / "log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "forkserve", "deploy_apps:app", "--bind",
         f"fd://{listener.fileno()}"],
        pass_fds=[listener.fileno()], cwd=TESTS / "apps", env=env, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    listener.close()  # forkserve holds its own copy now
    try:
        wait_for(lambda: b"Booted worker" in (tmp_path / "log").read_bytes(), what="boot")
        assert get_json(("127.0.0.1", port))["path"] == "/"
    finally:
        assert end(proc) == 0
        log.close()


def test_reuse_port_lets_two_servers_share_a_port() -> None:
    port = free_port()
    bind = [f"127.0.0.1:{port}"]
    with serve("deploy_apps:app", "--reuse-port", bind=bind) as first:
        with serve("deploy_apps:app", "--reuse-port", bind=bind) as second:
            masters = {get_json(("127.0.0.1", port))["ppid"] for _ in range(40)}
            assert masters <= {first.pid, second.pid}
        refused = Server("deploy_apps:app", bind=bind)
        refused.start(expect_ready=False)
        try:
            assert refused.wait_exit() == 4
            assert f"cannot bind 127.0.0.1:{port}: address already in use" in refused.log
        finally:
            refused.kill()
