"""Out of descriptors: the worker pauses accepting, logs rarely, tells a client why, recovers.

A real forkserve under a low RLIMIT_NOFILE (soft and hard, set in the
server's own process before it starts: workers raise soft to hard at boot),
flooded with more keep-alive connections than it has descriptors (issue #12).
"""

from __future__ import annotations

import re
import socket
import sys
import time

import pytest
import requests

from tests.support import Server, status_of

pytestmark = pytest.mark.process

NOFILE = 64
FLOOD = 200
FLOOD_SECONDS = 3.0

# The server's command: lower both limits, then run forkserve as `python -m` would.
LIMITED = [sys.executable, "-c",
           "import resource, runpy, sys; "
           f"resource.setrlimit(resource.RLIMIT_NOFILE, ({NOFILE}, {NOFILE})); "
           "sys.argv[0] = 'forkserve'; runpy.run_module('forkserve', run_name='__main__')"]


def test_descriptor_exhaustion_is_paced_and_recovers() -> None:
    with Server("fault_apps:faulty", "--workers", "2", "--keep-alive", "60",
                command=LIMITED, wait_workers=2) as server:
        flood: list[socket.socket] = []
        try:
            for _ in range(FLOOD):
                sock = socket.create_connection(server.address, timeout=10)
                sock.sendall(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
                flood.append(sock)
            time.sleep(FLOOD_SECONDS)
            answers = []
            for sock in flood:
                sock.setblocking(False)
                try:
                    answers.append(sock.recv(65536))
                except BlockingIOError:
                    answers.append(b"")
                except OSError:
                    answers.append(b"reset")
            statuses = [status_of(a) for a in answers]
            assert statuses.count(200) < FLOOD  # the limit did bite
            # The reserve descriptor let at least one waiting client learn why.
            assert 503 in statuses, statuses
            log = server.log
            reports = re.findall(r"accept failed: .*Too many open files", log)
            # At most one report a second per worker (plus slack for the box),
            # where a busy loop wrote hundreds of thousands.
            assert 1 <= len(reports) <= 2 * (FLOOD_SECONDS + 3), len(reports)
            assert re.search(r"\(\d+ times since the last report; \d+ connections open\)", log)
        finally:
            for sock in flood:
                sock.close()
        # The clients are gone: the workers get their descriptors back and serve again.
        deadline = time.monotonic() + 20
        while True:
            try:
                with requests.Session() as session:
                    assert session.get(server.url + "/ok", timeout=5).text == "ok"
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert server.proc is not None and server.proc.poll() is None
