"""gunicorn's request corpus (../shared/conformance/gunicorn-requests) against forkserve.

Every `reject` case must be refused (never a 2xx, never reaching the app,
connection closed); every `accept` case must be served, except the ones
listed in STRICTER, where forkserve refuses on purpose and says which RFC rule
lets it. Cases gunicorn only gets right with a non-default setting run
against a forkserve started with the matching setting (SETTINGS); the one
gunicorn setting forkserve has no equivalent for is in NO_EQUIVALENT.

Each case is replayed whole, line by line, byte by byte and in random chunks;
the client half-closes after sending, so an incomplete request gets its
verdict at once instead of at a timeout.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance.replay import MODES, decode_peer_case, replay
from tests.support import REPO, Server

pytestmark = pytest.mark.process

# Beside the checkout (/work/main -> /work/shared), or beside the folder of
# worktrees (/work/wt/NAME -> /work/shared).
PEER = next((p for p in (REPO.parent / "shared" / "conformance" / "gunicorn-requests",
                         REPO.parent.parent / "shared" / "conformance" / "gunicorn-requests")
             if (p / "manifest.json").is_file()),
            REPO.parent / "shared" / "conformance" / "gunicorn-requests")
MISSING = not (PEER / "manifest.json").is_file()
MISSING_REASON = f"peer corpus not present at {PEER} (it is optional; forkserve's own corpus " \
                 "is tests/conformance/requests.yaml)"

NO_HOST = "RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without Host"
STRICTER = {
    "valid/004.http": NO_HOST,
    "valid/005.http": NO_HOST, "valid/006.http": NO_HOST, "valid/007.http": NO_HOST,
    "valid/009.http": NO_HOST, "valid/010.http": NO_HOST, "valid/011.http": NO_HOST,
    "valid/012.http": NO_HOST, "valid/013.http": NO_HOST, "valid/014.http": NO_HOST,
    "valid/018.http": NO_HOST, "valid/021.http": NO_HOST, "valid/023.http": NO_HOST,
    "valid/025.http": NO_HOST, "valid/025_line.http": NO_HOST, "valid/029.http": NO_HOST,
    "valid/030.http": NO_HOST, "valid/031.http": NO_HOST, "valid/031compat.http": NO_HOST,
    "valid/031compat2.http": NO_HOST, "valid/100.http": NO_HOST, "valid/pp_02.http": NO_HOST,
    "valid/022.http": NO_HOST + " (the second, pipelined request; the first is served)",
    "valid/099.http": "RFC 9112 §8: the file's Content-Length (17914) is larger than its body "
    "(8599 bytes), so the message is incomplete when the client closes (gunicorn's own "
    "expectation for this case says 8599)",
    "valid/028.http": "RFC 9112 §5.1: whitespace between a field name and the colon MUST be "
    "rejected with 400 (gunicorn needs strip_header_spaces to accept it)",
    "valid/027.http": "RFC 3986 §2 / RFC 9112 §3.2: a request target is ASCII; raw UTF-8 must "
    "be percent-encoded (h11 refuses it too)",
    "valid/compat_obs_fold.http": "RFC 9112 §5.2: a server may reject obs-fold with 400; "
    "forkserve always does (gunicorn needs permit_obsolete_folding to accept it)",
    "valid/compat_obs_fold_huge.http": "RFC 9112 §5.2: obs-fold is rejected, as above",
    "valid/rfc9112_smuggle_gzip_chunked_01.http": "RFC 9112 §6.1: a server that does not "
    "implement a transfer coding answers 501; forkserve decodes only chunked",
    "valid/rfc9112_smuggle_te_identity_chunked_01.http": "RFC 9112 §6.1 / RFC 9110 §18.4: "
    "'identity' is no longer a transfer coding; answered 501 like any unknown coding",
    "valid/rfc9112_target_absolute_userinfo_01.http": "RFC 9110 §4.2.4: userinfo in an http "
    "URI is deprecated and a recipient SHOULD treat it as an error",
    "valid/rfc9112_target_authority_connect_01.http": "RFC 9110 §9.3.6: CONNECT asks for a "
    "tunnel, which a WSGI app cannot provide; answered 501",
    "valid/rfc9112_target_authority_ipv6_01.http": "RFC 9110 §9.3.6: CONNECT, as above",
    "valid/pp_03.http": "PROXY protocol spec §1: with --proxy-protocol a receiver must not "
    "guess whether the header is there, so a trusted peer that omits it is refused",
}
# gunicorn settings without a forkserve equivalent: why forkserve differs.
NO_EQUIVALENT = {
    "invalid/040.http": "gunicorn rejects it only with header_map='refuse'; forkserve always "
    "drops header names containing '_' (gunicorn's default), so the request is safe and "
    "served, like valid/040.http",
}
# Cases gunicorn only gives its verdict with a setting: the forkserve flags that match.
SETTINGS = {
    "invalid/011.http": ("--limit-request-fields", "2"),
    "invalid/012.http": ("--limit-request-field-size", "98"),
    "valid/024.http": ("--limit-request-line", "8200", "--limit-request-field-size", "8210"),
    "valid/026.http": ("--limit-request-line", "8200", "--limit-request-field-size", "8210"),
    "proxy": ("--proxy-protocol",),
}


def load() -> list[tuple[str, bytes, bool, tuple[str, ...]]]:
    if MISSING:
        return []
    manifest = json.loads((PEER / "manifest.json").read_text(encoding="utf-8"))
    cases = []
    for name, meta in sorted(manifest.items()):
        data = decode_peer_case((PEER / name).read_bytes())
        accept = meta["expect"] == "accept"
        if meta.get("proxy_protocol") or (name == "valid/pp_03.http"):
            flags = SETTINGS["proxy"]
        else:
            flags = SETTINGS.get(name, ())
        cases.append((name, data, accept, flags))
    return cases


CASES = load()


class Servers:
    """One forkserve per distinct set of flags, started on first use."""

    def __init__(self, hits: Path, http: str) -> None:
        self.hits = hits
        self.http = http
        self.running: dict[tuple[str, ...], Server] = {}

    def get(self, flags: tuple[str, ...]) -> Server:
        if flags not in self.running:
            server = Server("hardening_apps:echo", "--workers", "2" if not flags else "1",
                            *flags, env={"HARDENING_HITS": str(self.hits)}, http=self.http)
            server.start()
            self.running[flags] = server
        return self.running[flags]

    def close(self) -> str:
        logs = ""
        for server in self.running.values():
            logs += server.log
            server.__exit__(None, None, None)
        return logs


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, http_parser: str) -> Iterator[Servers]:
    hits = tmp_path_factory.mktemp("peer") / "hits.log"
    hits.touch()
    group = Servers(hits, http_parser)
    try:
        yield group
    finally:
        logs = group.close()
    assert "Traceback" not in logs


def hit_count(servers: Servers) -> int:
    return len(servers.hits.read_bytes().splitlines())


@pytest.mark.skipif(MISSING, reason=MISSING_REASON)
def test_lists_name_real_cases() -> None:
    names = {name for name, *_ in CASES}
    for listed in [*STRICTER, *NO_EQUIVALENT, *(k for k in SETTINGS if k != "proxy")]:
        assert listed in names, f"{listed} is not in the peer corpus"
    for name in STRICTER:
        assert name.startswith("valid/")
    for name in NO_EQUIVALENT:
        assert name.startswith("invalid/")


@pytest.mark.skipif(MISSING, reason=MISSING_REASON)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("name", "data", "accept", "flags"), CASES,
                         ids=[c[0] for c in CASES])
def test_peer_case(name: str, data: bytes, accept: bool, flags: tuple[str, ...], mode: str,
                   servers: Servers) -> None:
    server = servers.get(flags)
    before = hit_count(servers)
    # want=99: read until the server closes (the client half-closes after sending).
    exchange = replay(server.address, data, mode, want=99, expect_close=True,
                      half_close=True, seed=name)
    assert not exchange.garbage, exchange.garbage[:200]
    assert exchange.closed
    statuses = exchange.statuses
    served = accept and name not in STRICTER or name in NO_EQUIVALENT
    if served:
        assert statuses and all(200 <= s < 300 for s in statuses), statuses
        assert hit_count(servers) == before + len(statuses)
    else:
        # Refused: one 4xx/5xx answer, or none for input that never became a
        # request (a head cut off by EOF, a malformed PROXY header), and nothing
        # after it. Requests pipelined before the refused one may have been
        # served (valid/022); an invalid case is refused outright. The app ran
        # exactly once per 2xx answer.
        served_count = sum(1 for s in statuses if 200 <= s < 300)
        errors = [i for i, s in enumerate(statuses) if s >= 400]
        assert all(200 <= s < 300 or 400 <= s < 600 for s in statuses), statuses
        assert errors == [] or errors == [len(statuses) - 1], statuses
        if name.startswith("invalid/"):
            assert served_count == 0, statuses
        assert hit_count(servers) == before + served_count
