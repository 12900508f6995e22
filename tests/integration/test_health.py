"""--health-path: answered by the worker itself, 200 while serving, 503 once draining."""

from __future__ import annotations

import signal
import socket
import time

import pytest

from tests.integration.helpers import get, get_json
from tests.support import serve

pytestmark = pytest.mark.process


def test_health_path_is_answered_without_the_app() -> None:
    with serve("deploy_apps:app", "--health-path", "/healthz", "--access-logfile", "-") as s:
        status, body, headers = get(s.address, "/healthz")
        assert (status, body) == (200, b"ok\n")  # the app would have answered JSON
        assert headers["cache-control"] == "no-store"
        assert get(s.address, "/healthz?from=kubelet")[:2] == (200, b"ok\n")
        status, body, _ = get(s.address, "/healthz", method="HEAD")
        assert (status, body) == (200, b"")
        # Only the exact path: neighbours and prefixes still reach the app.
        assert get_json(s.address, "/healthz/deep")["path"] == "/healthz/deep"
        assert get_json(s.address, "/healthzz")["path"] == "/healthzz"


def test_without_health_path_the_app_gets_everything() -> None:
    with serve("deploy_apps:app") as s:
        assert get_json(s.address, "/healthz")["path"] == "/healthz"


def test_health_is_503_once_the_worker_drains() -> None:
    with serve("deploy_apps:app", "--health-path", "/healthz", "--graceful-timeout", "10",
               wait_workers=1) as s:
        with socket.create_connection(s.address, timeout=10) as c:
            # Two pipelined requests: TERM arrives while the first is in the app,
            # so the second is answered by a draining worker.
            c.sendall(b"GET /slow?1 HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.3)
            s.send_signal(signal.SIGTERM)
            data = b""
            while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"draining\n"):
                chunk = c.recv(65536)
                if not chunk:
                    break
                data += chunk
        first, second = data.split(b"HTTP/1.1 ")[1:3]
        assert first.startswith(b"200 ")
        assert second.startswith(b"503 ")
        assert b"connection: close" in second.lower()
        assert second.endswith(b"draining\n")
        assert s.wait_exit() == 0
