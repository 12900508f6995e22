"""Pure parts of observability: the shared counters, the exposition's names, the
Grafana dashboard, request ids, JSON access records and the settings."""

from __future__ import annotations

import json
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from forkserve.config import load
from forkserve.errors import ConfigError
from forkserve.inprocess import process_request_bytes
from forkserve.log import access_record
from forkserve.metrics import ForkserveCollector, Snapshot
from forkserve.requestid import IdSource, environ_key, with_request_id
from forkserve.stats import BUCKETS, REQUEST_PAIR_COUNT, StatsTable, Totals, key_labels

REPO = Path(__file__).resolve().parents[2]
# The interface of issue #14: dashboards are built on these names.
EXPORTED = {
    "forkserve_http_requests_total",
    "forkserve_http_request_duration_seconds",
    "forkserve_http_requests_in_progress",
    "forkserve_rejected_requests_total",
    "forkserve_connections",
    "forkserve_workers",
    "forkserve_worker_restarts_total",
    "forkserve_listen_queue",
    "forkserve_listen_queue_max",
    "forkserve_info",
}


def read(table: StatsTable, *slots: int) -> Totals:
    totals = Totals()
    for slot in slots:
        table.read(slot, totals)
    return totals


def test_workers_count_into_their_own_slots_and_the_sum_is_exact() -> None:
    table = StatsTable(4)
    one, two = table.writer(1), table.writer(2)
    for _ in range(3):
        one.request_finished("GET", "200 OK", 0.0005)
    two.request_finished("GET", "200 Fine", 0.001)  # on the bound: counted in le=0.001
    two.request_finished("BREW", "418 I'm a teapot", 0.2)
    two.request_finished("GET", "", 0.003)  # the client left before a status went out
    two.rejected(400)
    two.rejected(400)
    two.connections(idle=5, reading=2)
    totals = read(table, 0, 1, 2, 3)
    by_labels = {key_labels(k): v for k, v in totals.requests.items()}
    assert by_labels == {("GET", "200"): 4, ("other", "418"): 1, ("GET", "0"): 1}
    assert totals.rejected == {400: 2}
    assert totals.idle == 5 and totals.reading == 2
    assert totals.cumulative_buckets()[0] == 4  # le=0.001
    assert totals.cumulative_buckets()[BUCKETS.index(0.25)] == 6
    assert totals.cumulative_buckets()[-1] == 6
    assert abs(totals.duration_ns / 1e9 - (3 * 0.0005 + 0.001 + 0.2 + 0.003)) < 1e-6


def test_folding_keeps_counters_and_drops_gauges_of_an_exited_worker() -> None:
    table = StatsTable(2)
    writer = table.writer(0)
    writer.request_finished("POST", "201 Created", 0.01)
    writer.connections(idle=3, reading=1)
    exited = Totals()
    gone = Totals()
    table.read(0, gone)
    exited.add(gone)
    table.reset(0)
    assert read(table, 0) == Totals()
    assert exited.requests and exited.idle == 0 and exited.reading == 0
    table.writer(0).request_finished("POST", "201 Created", 0.01)  # the replacement
    live = read(table, 0)
    live.add(exited)
    assert {key_labels(k): v for k, v in live.requests.items()} == {("POST", "201"): 2}


def test_more_distinct_pairs_than_the_slot_holds_still_count() -> None:
    table = StatsTable(1)
    writer = table.writer(0)
    for code in range(200, 200 + REQUEST_PAIR_COUNT + 10):
        writer.request_finished("GET", f"{code} X", 0.001)
    totals = read(table, 0)
    assert sum(totals.requests.values()) == REQUEST_PAIR_COUNT + 10
    assert totals.requests.get(-1) == 11  # method="other", code="other"
    assert key_labels(-1) == ("other", "other")


def exposition(snapshot: Snapshot) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ForkserveCollector(lambda: snapshot))
    return generate_latest(registry).decode()


def empty_snapshot() -> Snapshot:
    return Snapshot(Totals(), {}, {}, [("http://127.0.0.1:8000", 0, 2048)], "0.1.0", "h11")


def test_the_exposition_has_the_issues_names_and_types() -> None:
    families = {f.name: f.type for f in text_string_to_metric_families(
        exposition(empty_snapshot()))}
    # The parser strips _total from counter family names.
    assert families == {
        "forkserve_http_requests": "counter",
        "forkserve_http_request_duration_seconds": "histogram",
        "forkserve_http_requests_in_progress": "gauge",
        "forkserve_rejected_requests": "counter",
        "forkserve_connections": "gauge",
        "forkserve_workers": "gauge",
        "forkserve_worker_restarts": "counter",
        "forkserve_listen_queue": "gauge",
        "forkserve_listen_queue_max": "gauge",
        "forkserve_info": "gauge",
    }


def exported_sample_names() -> set[str]:
    snapshot = empty_snapshot()
    snapshot.totals.requests[1200] = 1
    snapshot.totals.rejected[400] = 1
    return {s.name for f in text_string_to_metric_families(exposition(snapshot))
            for s in f.samples}


def test_the_grafana_dashboard_uses_only_exported_metrics() -> None:
    exported = exported_sample_names()
    assert {n.removesuffix("_bucket") for n in exported} >= EXPORTED
    dashboard = json.loads((REPO / "contrib" / "grafana" / "forkserve-dashboard.json")
                           .read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = {name for e in exprs for name in re.findall(r"\b(forkserve_\w+)", e)}
    assert used and used <= exported, used - exported
    # Every panel shows something, and the four questions of the issue are there.
    assert all(p["targets"] for p in dashboard["panels"])
    assert {"forkserve_listen_queue", "forkserve_worker_restarts_total",
            "forkserve_http_request_duration_seconds_bucket",
            "forkserve_http_requests_in_progress"} <= used


def test_generated_request_ids_are_uuid4_hex_and_unique() -> None:
    source = IdSource()
    ids = [source.new() for _ in range(1000)]  # several batches
    assert len(set(ids)) == 1000
    for rid in ids:
        assert len(rid) == 32 and uuid.UUID(hex=rid).version == 4
        assert uuid.UUID(hex=rid).variant == uuid.RFC_4122
    assert environ_key("X-Correlation-ID") == "HTTP_X_CORRELATION_ID"


def _id_headers(response: bytes) -> list[bytes]:
    head = response.split(b"\r\n\r\n", 1)[0]
    return [line for line in head.split(b"\r\n") if line.lower().startswith(b"x-request-id:")]


def test_the_writer_adds_the_request_id_unless_the_app_sent_its_own() -> None:
    # The id header is added by the response writer (no start_response
    # wrapper per request): once, with the environ's id, and never beside
    # the app's own, also when the app replaces its head with exc_info.
    def app(environ: dict[str, object], start_response: Any) -> list[bytes]:
        seen.append(environ["HTTP_X_REQUEST_ID"])
        own = [("X-Request-Id", "upstream-7")] if environ["PATH_INFO"] == "/own" else []
        start_response("200 OK", [("Content-Type", "text/plain")] + own)
        if environ["PATH_INFO"] == "/replace":
            try:
                raise ValueError("late")
            except ValueError:
                start_response("500 Internal Server Error", [], sys.exc_info())
        return [b"x"]

    seen: list[object] = []
    wrapped = with_request_id(app, "X-Request-ID", IdSource())
    head = b" HTTP/1.1\r\nHost: a\r\n"
    out = process_request_bytes(wrapped, b"GET /" + head + b"\r\n")
    assert _id_headers(out) == [b"X-Request-ID: " + str(seen[-1]).encode()]
    out = process_request_bytes(wrapped, b"GET /kept" + head + b"X-Request-ID: abc-1\r\n\r\n")
    assert _id_headers(out) == [b"X-Request-ID: abc-1"] and seen[-1] == "abc-1"
    out = process_request_bytes(wrapped, b"GET /own" + head + b"\r\n")
    assert _id_headers(out) == [b"X-Request-Id: upstream-7"]
    out = process_request_bytes(wrapped, b"GET /replace" + head + b"\r\n")
    assert out.startswith(b"HTTP/1.1 500 ")
    assert _id_headers(out) == [b"X-Request-ID: " + str(seen[-1]).encode()]


def test_the_request_id_reaches_a_start_response_not_forkserves() -> None:
    # Called by something other than forkserve's connection (a test harness,
    # an embedding server), the layer still puts the id in the response.
    got: list[list[tuple[str, str]]] = []

    def app(environ: dict[str, object], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"x"]

    wrapped = with_request_id(app, "X-Request-ID", IdSource())
    wrapped({}, lambda status, headers, exc_info=None: got.append(headers))
    assert [n for n, _ in got[0]] == ["Content-Type", "X-Request-ID"]


def test_json_access_records_hold_hostile_values_as_sent() -> None:
    agent = 'a "quoted" \\ back\tslash caf\xe9 \xff'
    environ = {"REMOTE_ADDR": "10.0.0.1", "REQUEST_METHOD": "GET", "RAW_URI": '/p"?q=\\',
               "PATH_INFO": '/p"', "QUERY_STRING": "q=\\", "SERVER_PROTOCOL": "HTTP/1.0",
               "HTTP_USER_AGENT": agent, "HTTP_X_REQUEST_ID": "rid"}
    record = access_record(environ, "404 Not Found", 12, 1000.0, 1000.0125,
                           "HTTP_X_REQUEST_ID")
    back = json.loads(json.dumps(record))
    assert back["user_agent"] == agent
    assert back["path"] == '/p"' and back["query"] == "q=\\"
    assert back["status"] == 404 and back["bytes"] == 12 and back["duration_ms"] == 12.5
    assert back["referer"] is None and back["request_id"] == "rid"
    assert access_record(environ, "-", 0, 0.0, 0.0, None)["request_id"] is None


@pytest.mark.parametrize("name, value", [
    ("log_format", "xml"),
    ("statsd_host", "localhost"),
    ("statsd_host", "localhost:99999"),
    ("metrics_bind", "fd://3"),
    ("request_id_header", "X Request"),
])
def test_bad_observability_settings_are_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load({name: value}, {})


def test_observability_settings_parse() -> None:
    cfg, _ = load({"log_format": "JSON", "statsd_host": "localhost:8125",
                   "metrics_bind": "unix:/run/m.sock", "request_id": False}, {})
    assert cfg.log_format == "json" and cfg.statsd_host == "localhost:8125"
    assert cfg.metrics_bind == "unix:/run/m.sock" and cfg.request_id is False
