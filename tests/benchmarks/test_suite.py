"""The benchmark suite keeps working: its in-process row, its reports and its byte-compiling.

No speed is asserted here (speed is measured in benchmarks/, never in tests):
these check that the numbers it prints are computed from what it measured.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import pytest

from benchmarks import micro, report, run, servers

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def test_micro_rows_measure_the_real_request_path() -> None:
    result = micro.run_micro(quick=True)
    assert result["forkserve_status"] == "ok"
    for key in ("h11_round_trip_us", "app_call_us", "forkserve_request_path_us",
                "forkserve_socketpair_us"):
        assert result[key] > 0 and math.isfinite(result[key]), key
    assert 0 < result["forkserve_over_h11"] and math.isfinite(result["forkserve_over_h11"])
    table = micro.format_micro(result)
    assert f"{result['forkserve_request_path_us']:.2f}" in table and "socketpair" in table


def test_micro_rows_under_httptools() -> None:
    pytest.importorskip("httptools")
    result = micro.run_micro(quick=True)
    assert result["forkserve_httptools_status"] == "ok"
    for key in ("httptools_round_trip_us", "forkserve_httptools_us",
                "forkserve_httptools_over_httptools"):
        assert result[key] > 0 and math.isfinite(result[key]), key
    table = micro.format_micro(result)
    assert f"{result['forkserve_httptools_us']:.2f}" in table
    assert "httptools round trip" in table


def test_micro_httptools_row_is_the_httptools_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The httptools row passes the httptools adapter into the request path."""
    pytest.importorskip("httptools")
    import forkserve.inprocess

    seen: list[object] = []
    real = forkserve.inprocess.process_request_bytes

    def spy(app: object, raw: bytes, socketpair: bool = False, **kwargs: object) -> bytes:
        seen.append(kwargs.get("parse_head"))
        return real(app, raw, socketpair, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(forkserve.inprocess, "process_request_bytes", spy)
    path, status = micro.forkserve_path(http="httptools")
    assert status == "ok" and path is not None
    path()
    assert seen and all(getattr(p, "__name__", "") == "parse_httptools" for p in seen)


def test_micro_rows_take_turns_and_ratios_are_taken_within_each_turn(
        monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    # Each turn the machine is twice as slow as the one before; row b always
    # costs three times row a. Timed apart, the drift would be the result.
    turn_speed = {"a": 1.0, "b": 1.0}
    cost = {"a": 1.0, "b": 3.0}

    def fake_batch(func: object, batch: int) -> float:
        name = func.__name__  # type: ignore[attr-defined]
        order.append(name)
        elapsed = cost[name] * turn_speed[name] * batch * 1e-6
        turn_speed[name] *= 2
        return elapsed

    def a() -> None: ...
    def b() -> None: ...

    monkeypatch.setattr(micro, "batch_size", lambda func, target_s: 10)
    monkeypatch.setattr(micro, "_time_batch", fake_batch)
    us, ratios = micro.time_interleaved({"a": a, "b": b}, repeats=3, target_s=0.1)
    assert order == ["a", "b"] * 3
    assert ratios == pytest.approx({"a": 1.0, "b": 3.0})
    assert us == pytest.approx({"a": 2.0, "b": 6.0})  # medians of 1, 2, 4 and 3, 6, 12


def test_micro_refuses_a_path_that_answers_wrongly(monkeypatch: pytest.MonkeyPatch) -> None:
    import forkserve.inprocess

    monkeypatch.setattr(forkserve.inprocess, "process_request_bytes",
                        lambda app, raw, socketpair=False: b"HTTP/1.1 500 Oops\r\n\r\n")
    path, status = micro.forkserve_path()
    assert path is None and "unexpected response" in status


@pytest.mark.parametrize("name", ["reference.json", "latest.json"])
def test_saved_runs_render_and_their_ratios_match_their_medians(name: str) -> None:
    path = RESULTS / name
    if not path.exists():
        pytest.skip(f"no {name} in benchmarks/results")
    raw = json.loads(path.read_text())
    summary = report.summarize(raw)
    text = report.format_report(raw, summary)
    assert "## Targets" in text and "## Throughput" in text
    scenario = summary["scenarios"].get("hello-keepalive")
    if scenario is None or not {"forkserve", "gunicorn-sync"} <= set(scenario["servers"]):
        pytest.skip(f"{name} has no hello-keepalive run of both forkserve and gunicorn-sync")
    runs = raw["scenarios"]["hello-keepalive"]["runs"]
    ours = scenario["servers"]["forkserve"]["rps"]
    theirs = scenario["servers"]["gunicorn-sync"]["rps"]
    measured = [r["rps"] for r in runs["forkserve"] if not r.get("failed")]
    assert ours == pytest.approx(statistics.median(measured))
    ratio = scenario["ratios"]["gunicorn-sync"]
    assert ratio == pytest.approx(ours / theirs)
    assert f"{ratio:.2f}x" in text


def test_compile_bytecode_writes_pyc_for_the_tree(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("forkserve", "benchmarks"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "mod.py").write_text("X = 1\n")
    monkeypatch.setattr(run.servers, "REPO_ROOT", tmp_path)
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    raw: dict[str, list[str]] = {"notes": []}
    run.compile_bytecode(raw)
    assert list((tmp_path / "forkserve" / "__pycache__").glob("mod.*.pyc"))
    assert list((tmp_path / "benchmarks" / "__pycache__").glob("mod.*.pyc"))
    assert raw["notes"] == []
    shutil.rmtree(tmp_path / "forkserve" / "__pycache__")
    (tmp_path / "forkserve" / "bad.py").write_text("def (:\n")
    run.compile_bytecode(raw)
    assert raw["notes"] and "byte-compiling" in raw["notes"][0]


@pytest.mark.parametrize("reference", [report.FLOOR, report.FAST_FLOOR, "bjoern",
                                       report.FAST])
@pytest.mark.parametrize("app, method, size", [
    ("benchmarks.apps:hello", "GET", 13),
    ("benchmarks.apps:echo", "POST", 64 * 1024),
    ("benchmarks.apps:stream", "GET", 1024 * 1024),
])
def test_the_floors_and_new_rows_serve_every_scenario(
        tmp_path: Path, app: str, method: str, size: int, reference: str) -> None:
    """The references the targets come from (and the rows new in issue 13) must
    answer what the scenarios send, or their rows would measure errors."""
    import requests

    spec = servers.SERVERS[reference]
    why = spec.missing()
    if why:
        pytest.skip(f"{reference}: {why}")
    running = servers.start(spec, app, 2, tmp_path)
    try:
        with requests.Session() as session:
            url = f"http://{servers.HOST}:{running.port}/any?x=1"
            body = b"y" * size if method == "POST" else None
            for _ in range(3):
                answer = session.request(method, url, data=body)
                assert answer.status_code == 200
                assert len(answer.content) == size
        if method == "POST":
            assert answer.content == b"y" * size
    finally:
        assert servers.stop(running)
    assert not servers._children(running.pid)


@pytest.mark.parametrize("reference", [report.FLOOR, report.FAST_FLOOR, "bjoern"])
def test_the_floors_announce_a_close(tmp_path: Path, reference: str) -> None:
    """The hello-close scenario: a close the client asked for is said in the response
    (wrk counts an unannounced close as a read error, and the row would measure errors)."""
    import socket

    spec = servers.SERVERS[reference]
    why = spec.missing()
    if why:
        pytest.skip(f"{reference}: {why}")
    running = servers.start(spec, "benchmarks.apps:hello", 2, tmp_path)
    try:
        with socket.create_connection((servers.HOST, running.port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 200") and b"\r\nconnection: close" in head, answer
        assert answer.endswith(b"Hello, world!")
    finally:
        assert servers.stop(running)


def test_floor_ratios_sit_beside_the_targets() -> None:
    def scenario(rps: dict[str, float]) -> dict[str, object]:
        return {"servers": {name: {"rps": value} for name, value in rps.items()}}

    summary = {"scenarios": {
        "hello-keepalive": scenario({"h11-floor": 9000.0, "gunicorn-sync": 4000.0,
                                     "uwsgi": 12000.0}),
        "flask-keepalive": scenario({"gunicorn-sync": 2000.0}),  # no floor row: no ratio
    }}
    ratios = report.floor_ratios(summary)
    assert ratios["h11: hello keep-alive >= 3.0x gunicorn sync"] == "2.250x"
    assert ratios["h11: hello keep-alive ahead of uWSGI"] == "0.750x"
    assert "h11: Flask keep-alive >= 1.8x gunicorn sync" not in ratios
    assert "httptools: hello keep-alive >= 2.0x uWSGI" not in ratios  # no httptools floor


def test_httptools_targets_use_the_httptools_rows() -> None:
    def scenario(rps: dict[str, float]) -> dict[str, object]:
        return {"servers": {name: {"rps": value} for name, value in rps.items()},
                "ratios": {}}

    summary = {"scenarios": {
        "hello-keepalive": scenario({"forkserve-httptools": 30000.0, "uwsgi": 12000.0,
                                     "granian": 40000.0, "httptools-floor": 45000.0}),
    }, "memory_ratios": {}}
    rows = {label: (measured, met) for label, measured, met in
            report.evaluate_targets({}, summary)}
    assert rows["httptools: hello keep-alive >= 2.0x uWSGI"] == ("2.500x", True)
    assert rows["httptools: hello keep-alive >= 0.8x granian"] == ("0.750x", False)
    assert rows["httptools: Flask keep-alive >= 1.0x granian"] == ("not measured", None)
    assert report.floor_ratios(summary)["httptools: hello keep-alive >= 2.0x uWSGI"] == "3.750x"
