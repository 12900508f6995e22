"""forkserve's raw-request corpus (requests.yaml) against a real worker.

Every case is replayed whole, line by line, byte by byte and in random
chunks, and once more with a second request pipelined after it: a well-framed
request keeps the connection and the second request is answered as its own;
a refused one is answered once, the connection closes, and nothing after it
(least of all a request hidden in its body) is ever served. A refused request
never reaches the app: the echo app logs every request it sees to a file.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conformance.replay import MODES, Exchange, Target, converse, read_responses, split
from tests.support import serve

pytestmark = pytest.mark.process

HERE = Path(__file__).resolve().parent
SERVER_ARGS = (
    "--workers", "2",
    # The corpus checks the environ the parser builds; a request id would add a header.
    "--no-request-id",
    "--limit-request-line", "256",
    "--limit-request-fields", "20",
    "--limit-request-field-size", "256",
    "--limit-request-head", "2048",
    "--limit-request-body", "64",
    "--header-timeout", "5",
    "--body-timeout", "5",
)
FOLLOW = b"GET /smuggled-check HTTP/1.1\r\nHost: a\r\n\r\n"
AFTER = b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n"
_REPEAT = re.compile(r"<<(.+?)\*(\d+)>>", re.DOTALL)


@dataclass(frozen=True)
class Case:
    name: str
    rule: str
    request: bytes
    status: int
    close: bool
    eof: bool = False
    echo: dict[str, Any] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


def load_cases() -> list[Case]:
    raw = yaml.safe_load((HERE / "requests.yaml").read_text(encoding="utf-8"))
    cases = []
    for item in raw:
        text = _REPEAT.sub(lambda m: m.group(1) * int(m.group(2)), item["request"])
        cases.append(Case(item["name"], item["rule"], text.encode("latin-1"), item["status"],
                          item["close"], item.get("eof", False), item.get("echo") or {}))
    return cases


CASES = load_cases()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, http_parser: str) -> Iterator[Target]:
    hits = tmp_path_factory.mktemp("corpus") / "hits.log"
    hits.touch()
    with serve("hardening_apps:echo", *SERVER_ARGS, env={"HARDENING_HITS": str(hits)},
               wait_workers=2, http=http_parser) as server:
        assert f"Using parser: {http_parser} " in server.log
        pids = server.worker_pids()
        yield Target(server, hits)
        # The same two workers served the whole corpus, without a traceback.
        assert server.worker_pids() == pids and len(pids) == 2
        assert "Traceback" not in server.log


def test_corpus_is_complete() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)), "duplicate case names"
    assert len(CASES) >= 80
    statuses = {c.status for c in CASES}
    assert {0, 200, 400, 413, 414, 431, 501, 505} <= statuses
    for case in CASES:
        assert case.rule and (case.close or case.accepted)


def check_echo(case: Case, echo: dict[str, Any]) -> None:
    for key, want in case.echo.items():
        assert echo[key] == want, f"{case.name}: {key}"


def check_first(case: Case, exchange: Exchange, target: Target, hits_before: int) -> None:
    assert not exchange.garbage, exchange.garbage[:200]
    if case.status == 0:
        assert exchange.responses == [] and exchange.closed
        assert target.hit_count() == hits_before
        return
    assert exchange.statuses[:1] == [case.status], (case.name, exchange.statuses)
    response = exchange.responses[0]
    if case.close:
        assert exchange.closed, f"{case.name}: connection left open"
        assert response.says_close
        assert len(exchange.responses) == 1  # nothing after a refused request
    if case.accepted:
        echo = response.echo()
        check_echo(case, echo)
        assert target.hit_count() == hits_before + 1
    else:
        assert target.hit_count() == hits_before, f"{case.name} reached the app"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case: Case, mode: str, target: Target) -> None:
    before = target.hit_count()
    with socket.create_connection(target.server.address, timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        exchange = converse(sock, split(case.request, mode, case.name),
                            want=1 if case.status else 0, expect_close=case.close,
                            half_close=case.eof)
        check_first(case, exchange, target, before)
        if not case.close:
            # The connection is still good for another request.
            assert not exchange.closed
            sock.sendall(AFTER)
            after = read_responses(sock, 1, expect_close=False)
            assert after.statuses == [200]
            assert after.responses[0].echo()["path"] == "/after"


@pytest.mark.parametrize("mode", ["whole", "random"])
@pytest.mark.parametrize("case", [c for c in CASES if not c.eof],
                         ids=[c.name for c in CASES if not c.eof])
def test_pipelined_request_after_case(case: Case, mode: str, target: Target) -> None:
    """Smuggling check: what follows a request is served only if the request was well-framed."""
    before = target.hit_count()
    with socket.create_connection(target.server.address, timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        want = 2 if case.accepted and not case.close else 1
        exchange = converse(sock, split(case.request + FOLLOW, mode, case.name),
                            want=want, expect_close=case.close)
    assert not exchange.garbage
    assert exchange.statuses[:1] == [case.status], (case.name, exchange.statuses)
    paths = [r.echo()["path"] for r in exchange.responses if r.status == 200]
    if want == 2:
        assert exchange.statuses == [case.status, 200]
        assert paths[-1] == "/smuggled-check"
        assert target.hit_count() == before + 2
    else:
        # Answered once, closed, and the second request never answered or run.
        assert len(exchange.responses) == 1 and exchange.closed
        assert "/smuggled-check" not in paths
        assert target.hit_count() == before + (1 if case.accepted else 0)
