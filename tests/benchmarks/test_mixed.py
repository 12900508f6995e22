"""The mixed-traffic scenario measures each class of client and reports what it measured.

No speed is asserted (speed belongs in benchmarks/): only that every class
ran, that the slow class really was slow, and that the table's numbers are
the ones computed from the latencies.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks import mixed, servers


def test_percentiles_are_nearest_rank() -> None:
    result = mixed.ClassResult(latencies_ms=[float(x) for x in range(100, 0, -1)])
    assert result.percentile(50) == 50.0
    assert result.percentile(99) == 99.0
    assert result.percentile(100) == 100.0
    assert str(mixed.ClassResult().percentile(50)) == "nan"


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_mixed_traffic_measures_every_class_against_a_real_server(tmp_path: Path,
                                                                  tls: bool) -> None:
    if tls and shutil.which("openssl") is None:
        pytest.skip("no openssl command to make the certificate")
    mix = mixed.Mix(fast=2, slow=1, close=1, slow_s=0.2)
    extra, context = mixed.tls_setup(tmp_path) if tls else ([], None)
    running = servers.start(servers.SERVERS["forkserve"], mixed.APP, 2, tmp_path,
                            extra_args=extra, tls=context)
    try:
        results = mixed.measure(running.port, mix, duration_s=1.0, tls=context)
    finally:
        assert servers.stop(running)
    for name in mixed.CLASSES:
        assert results[name].latencies_ms, name
        assert results[name].errors == 0, name
    assert results["slow"].percentile(50) >= 200.0  # the app slept 0.2 s
    table = mixed.format_table({"forkserve": results}, mix)
    row = next(line for line in table.splitlines() if line.startswith("| forkserve |"))
    for name in mixed.CLASSES:
        result = results[name]
        assert (f"{result.percentile(99):.1f} / {result.percentile(100):.0f} "
                f"({len(result.latencies_ms)})") in row
