"""The rate limit of log-failure reports: at once, then at most once per interval, with
the count of lines lost since the last report."""

from __future__ import annotations

import os
from pathlib import Path

from forkserve.log import LineSink, LossCounter


def test_losses_are_reported_at_once_then_once_per_interval_with_a_count() -> None:
    said: list[str] = []
    losses = LossCounter("access log x", said.append, interval=10.0)
    error = OSError(28, "No space left on device")
    losses.failed(error, now=100.0)
    for t in range(1, 50):
        losses.failed(error, now=100.0 + t * 0.1)  # 49 more within 10 s: counted, not said
    assert said == ["access log x: write failed (OSError: [Errno 28] No space left on "
                    "device); 1 line(s) lost (reported at most every 10s)"]
    losses.failed(error, now=110.5)
    assert len(said) == 2 and "; 50 line(s) lost" in said[1]
    losses.failed(error, now=111.0)
    losses.succeeded(now=115.0)  # works again, but a report is not due yet
    assert len(said) == 2
    losses.succeeded(now=121.0)
    assert said[2] == "access log x: writing again; 1 more line(s) were lost"
    losses.succeeded(now=140.0)
    assert len(said) == 3  # nothing lost since: nothing to say


def test_a_report_that_fails_too_is_dropped() -> None:
    def broken(_message: str) -> None:
        raise OSError(32, "Broken pipe")

    losses = LossCounter("error log -", broken)
    losses.failed(OSError(32, "Broken pipe"), now=1.0)  # must not raise
    assert losses.lost == 0


def test_line_sink_writes_whole_lines_and_closes_only_what_it_opened(tmp_path: Path) -> None:
    path = str(tmp_path / "a.log")
    sink = LineSink.open(path, 1)
    sink.write("één\n")
    sink.close()
    with open(path, encoding="utf-8") as f:
        assert f.read() == "één\n"
    stdout = LineSink.open("-", 1)
    stdout.close()
    os.fstat(1)  # still open
