"""An app's invalid status line or header is a logged 500, never a split response.

h11 (and forkserve's own writer) would put the reason phrase and header
values on the wire verbatim, so a CR or LF from the app could start a second,
forged response. forkserve validates what the app passes to start_response
and answers 500 instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hardening_apps import BAD_RESPONSES

from tests.conformance.replay import replay
from tests.support import Server, serve

# Every test twice: sync workers, then --threads 4 (tests/conftest.py).
pytestmark = [pytest.mark.process, pytest.mark.usefixtures("worker_threads")]


@pytest.fixture(scope="module")
def server(http_parser: str, worker_threads: int) -> Iterator[Server]:
    with serve("hardening_apps:bad_responses", "--workers", "1", http=http_parser) as server:
        yield server


@pytest.mark.parametrize("path", sorted(p for p in BAD_RESPONSES if p != "/ok"))
def test_invalid_status_or_header_is_a_500(server: Server, path: str) -> None:
    request = b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path.encode()
    exchange = replay(server.address, request + b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n",
                      "whole", want=1, expect_close=True)
    assert exchange.statuses == [500]
    assert exchange.closed and exchange.responses[0].says_close
    assert not exchange.garbage
    raw = exchange.responses[0]
    assert "x-injected" not in raw.headers and b"X-Injected" not in raw.body
    log = server.wait_for_log(rf"Error handling request GET {path}\b")
    assert "ResponseError" in log or "TypeError" in log


def test_valid_response_still_served(server: Server) -> None:
    exchange = replay(server.address, b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n", "whole",
                      want=1, expect_close=False)
    assert exchange.statuses == [200]
    assert exchange.responses[0].body == b"ok"
