"""RefusalLog: one access-log line per refused request; reasons at info, rate-limited."""

from __future__ import annotations

import logging

import pytest

from forkserve.log import AccessLog, RefusalLog, log


def test_reasons_are_rate_limited_and_the_rest_counted(
        tmp_path: object, caplog: pytest.LogCaptureFixture) -> None:
    path = f"{tmp_path}/access.log"
    access = AccessLog(path, '"%(r)s" %(s)s %(b)s')
    now = [100.0]
    refusals = RefusalLog(access, clock=lambda: now[0])
    log.propagate = True  # let caplog see the "forkserve" logger
    try:
        with caplog.at_level(logging.INFO, logger="forkserve"):
            for _ in range(RefusalLog.PER_SECOND + 5):
                refusals.record(400, "Bad Request", "bare CR", ("10.0.0.1", 5), None, 16)
            now[0] += 1.0
            refusals.record(400, "Bad Request", "bare CR", ("10.0.0.1", 5),
                            (b"GET", b"/x", b"HTTP/1.1"), 16)
    finally:
        log.propagate = False
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) == RefusalLog.PER_SECOND + 1
    assert info[-1].endswith("(GET /x HTTP/1.1) (5 more refusals not logged at info since "
                             "the last)")
    assert info[0] == "refused 400 from 10.0.0.1:5: bare CR (-)"
    assert access.enabled  # lines go out with one write(2) each: nothing to flush
    lines = open(path).read().splitlines()
    assert len(lines) == RefusalLog.PER_SECOND + 6  # every refusal, logged or not at info
    assert lines[0] == '"-" 400 16' and lines[-1] == '"GET /x HTTP/1.1" 400 16'


def test_enabled_follows_whether_lines_have_somewhere_to_go(tmp_path: object) -> None:
    # `enabled` is a plain attribute (read twice per request): it must be
    # set wherever the sink is, including the fall-back to stderr at boot.
    assert not AccessLog(None, "%(s)s").enabled and not AccessLog("", "%(s)s").enabled
    assert AccessLog(f"{tmp_path}/access.log", "%(s)s").enabled
    unopenable = AccessLog(f"{tmp_path}/no/such/dir/access.log", "%(s)s")
    assert unopenable.enabled and unopenable.sink is not None
    unopenable.reopen()  # still unopenable: stderr stays in use
    assert unopenable.enabled
