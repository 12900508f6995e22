"""--user/--group (privileges dropped after binding) and --daemon."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.integration.helpers import get, get_json, proc_stat, wait_for
from tests.support import REPO, TESTS, serve

pytestmark = pytest.mark.process

needs_root = pytest.mark.skipif(os.getuid() != 0, reason="switching users needs root")


@needs_root
def test_user_and_group_drop_privileges_after_binding(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    # A directory the unprivileged master can write, so it can remove the socket
    # on exit (systemd's RuntimeDirectory= gives it one).
    run_dir = Path(tempfile.mkdtemp(dir="/tmp"))
    os.chmod(run_dir, 0o777)
    sock_path = run_dir / "app.sock"
    with serve("identity_app:app", "--user", "nobody", "--group", str(nobody.pw_gid),
               bind=["127.0.0.1:0", f"unix:{sock_path}"], wait_workers=1) as s:
        status, body, _ = get(s.address)
        assert status == 200, body
        assert tuple(int(n) for n in body.split()) == (nobody.pw_uid, nobody.pw_gid)
        # The master dropped them too (before forking), not only the workers.
        status = Path(f"/proc/{s.pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(nobody.pw_uid)] * 4
        st = os.stat(sock_path)
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)
        assert s.stop() == 0
    assert not sock_path.exists()
    run_dir.rmdir()


def test_daemon_detaches_and_keeps_serving(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{TESTS / 'apps'}")
    log = tmp_path / "error.log"
    launcher = subprocess.run(
        [sys.executable, "-m", "forkserve", "deploy_apps:app", "--daemon", "-b", "127.0.0.1:0",
         "--error-logfile", str(log)],
        cwd=TESTS / "apps", env=env, capture_output=True, timeout=20,
    )
    assert launcher.returncode == 0, launcher.stderr  # the shell gets its prompt back
    text = wait_for(lambda: "Booted worker" in log.read_text() and log.read_text(),
                    what="daemon boot")
    url = next(line.split("Listening at: ")[1].split()[0] for line in text.splitlines()
               if "Listening at:" in line)
    host, port = url[7:].rsplit(":", 1)
    master = get_json((host, int(port)))["ppid"]
    try:
        st = proc_stat(master)
        assert st is not None and st[1] != os.getpid()  # not our child: it detached
        assert os.getsid(master) != os.getsid(0)  # and left our session (no terminal)
    finally:
        os.kill(master, signal.SIGTERM)
        # Whoever adopted it reaps it; gone or a zombie both mean it exited.
        wait_for(lambda: (proc_stat(master) or ("Z", 0))[0] == "Z", what="daemon exit")
