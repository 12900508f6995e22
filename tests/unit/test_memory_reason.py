"""The --max-worker-memory recycle line never reads as the limit itself."""

from __future__ import annotations

from forkserve.process import memory_reason


def test_a_worker_just_over_the_limit_reads_as_over_it() -> None:
    # 20 KiB over 100 MiB: ".1f" alone printed "100.0", the limit itself, and
    # test_max_worker_memory_is_checked_after_every_request failed on it once.
    assert memory_reason(100 + 20 / 1024, 100) == "uses 100.1 MiB (--max-worker-memory 100)"


def test_the_size_is_rounded_up_to_a_tenth() -> None:
    assert memory_reason(123.41, 100) == "uses 123.5 MiB (--max-worker-memory 100)"
    assert memory_reason(123.5, 100) == "uses 123.5 MiB (--max-worker-memory 100)"
