"""Turn raw runs into medians, ratios, Markdown tables and a chart.

Pure functions over the JSON-shaped results the runner collects, so a saved
`latest.json` can be re-rendered without rerunning anything:

    python -m benchmarks.report benchmarks/results/latest.json [--chart]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/report.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.micro import format_micro

SUBJECT = "forkserve"
# A run whose errors (socket errors plus non-2xx answers) exceed this share
# of its requests measured a failure, not a speed.
MAX_ERROR_SHARE = 0.01

Json = dict[str, Any]


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(pct / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


# --- summaries ------------------------------------------------------------------


def summarize_load(runs: list[Json]) -> Json:
    good = [r for r in runs if not r.get("failed")]
    return {
        "runs": len(runs),
        "failed_runs": len(runs) - len(good),
        "failed": not good or len(good) < len(runs),
        "rps": _median(r.get("rps") for r in good),
        "p50_ms": _median(r.get("p50_ms") for r in good),
        "p99_ms": _median(r.get("p99_ms") for r in good),
        "max_ms": max((r["max_ms"] for r in good if r.get("max_ms") is not None), default=None),
        "errors": sum(r.get("errors", 0) for r in runs),
        "non_2xx": sum(r.get("non_2xx", 0) for r in runs),
        "reasons": sorted({r["reason"] for r in runs if r.get("reason")}),
    }


def summarize_fairness(runs: list[Json]) -> Json:
    measured = [r for r in runs if r.get("served") is not None]
    return {
        "runs": len(runs),
        "connections": max((r["connections"] for r in runs), default=0),
        # The worst run decides: one starved client in any run is a failure.
        "served_min": min((r["served"] for r in measured), default=None),
        "failed": not measured or any(r.get("failed") for r in runs),
        "rps": _median(r.get("rps") for r in measured),
        "p50_ms": _median(r.get("p50_ms") for r in measured),
        "p99_ms": _median(r.get("p99_ms") for r in measured),
        "max_ms": max((r["max_ms"] for r in measured), default=None),
        "errors": sum(r.get("errors", 0) for r in runs),
        "reasons": sorted({r["reason"] for r in runs if r.get("reason")}),
    }


def summarize_memory(samples: list[Json]) -> Json:
    def worker_mean(sample: Json, key: str) -> float | None:
        values = [c[key] for c in sample["children"] if c.get(key) is not None]
        return statistics.mean(values) if values else None

    return {
        "samples": len(samples),
        "master_rss_kib": _median(s.get("master_rss_kib") for s in samples),
        "worker_rss_kib": _median(worker_mean(s, "rss_kib") for s in samples),
        "worker_rss_max_kib": max(
            (c["rss_kib"] for s in samples for c in s["children"] if c.get("rss_kib")),
            default=None,
        ),
        "children": _median(len(s["children"]) for s in samples),
        "total_pss_kib": _median(s.get("total_pss_kib") for s in samples),
    }


def summarize(raw: Json) -> Json:
    """Medians per scenario and server, and forkserve/peer ratios."""
    scenarios: Json = {}
    for name, scenario in raw["scenarios"].items():
        kind = scenario["kind"]
        per_server = {
            server: (summarize_fairness(runs) if kind == "fairness" else summarize_load(runs))
            for server, runs in scenario["runs"].items()
        }
        scenarios[name] = {"kind": kind, "description": scenario["description"],
                           "servers": per_server, "ratios": _scenario_ratios(kind, per_server)}
    memory = {
        app: {server: summarize_memory(samples) for server, samples in by_server.items()}
        for app, by_server in raw["memory"].items()
    }
    startup = {
        app: {server: {"samples": len(values), "median_ms": _median(v * 1000 for v in values)}
              for server, values in by_server.items()}
        for app, by_server in raw["startup"].items()
    }
    return {
        "scenarios": scenarios,
        "memory": memory,
        "startup": startup,
        "memory_ratios": _memory_ratios(memory, startup),
    }


def _scenario_ratios(kind: str, per_server: Json) -> Json:
    ours = per_server.get(SUBJECT)
    if ours is None:
        return {}
    # Throughput: forkserve/peer > 1 means forkserve is faster. Fairness is
    # judged on p99 latency: forkserve/peer < 1 means forkserve is better.
    key = "p99_ms" if kind == "fairness" else "rps"
    return {
        peer: _ratio(ours.get(key), theirs.get(key))
        for peer, theirs in per_server.items()
        if peer != SUBJECT
    }


def _memory_ratios(memory: Json, startup: Json) -> Json:
    ratios: Json = {}
    for app, by_server in memory.items():
        ours = by_server.get(SUBJECT)
        if ours is None:
            continue
        for peer, theirs in by_server.items():
            if peer == SUBJECT:
                continue
            ours_start = startup.get(app, {}).get(SUBJECT, {}).get("median_ms")
            theirs_start = startup.get(app, {}).get(peer, {}).get("median_ms")
            ratios.setdefault(app, {})[peer] = {
                "master_rss": _ratio(ours["master_rss_kib"], theirs["master_rss_kib"]),
                "worker_rss": _ratio(ours["worker_rss_kib"], theirs["worker_rss_kib"]),
                "startup": _ratio(ours_start, theirs_start),
            }
    return ratios


# --- Markdown -------------------------------------------------------------------


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    # The first `text_columns` columns are words (left), the rest numbers (right).
    rule = ["---" if i < text_columns else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _servers_in(raw: Json) -> list[str]:
    return [name for name, info in raw["servers"].items() if info["status"] == "measured"]


def _load_cell(entry: Json | None) -> str:
    if entry is None:
        return "-"
    if entry["rps"] is None:
        return "FAILED"
    cell = f"{entry['rps']:,.0f}"
    if entry["failed"]:
        cell += " FAILED"
    elif entry["errors"] or entry["non_2xx"]:
        cell += " !"
    return cell


def format_throughput(raw: Json, summary: Json) -> str:
    servers = _servers_in(raw)
    rows = []
    for name, scenario in summary["scenarios"].items():
        if scenario["kind"] == "fairness":
            continue
        rows.append([name] + [_load_cell(scenario["servers"].get(s)) for s in servers])
    return _table(["requests/s (median)"] + servers, rows)


def format_latency(raw: Json, summary: Json) -> str:
    servers = _servers_in(raw)
    rows = []
    for name, scenario in summary["scenarios"].items():
        if scenario["kind"] == "fairness":
            continue
        cells = []
        for server in servers:
            entry = scenario["servers"].get(server)
            cells.append(
                "-" if entry is None or entry["p50_ms"] is None
                else f"{entry['p50_ms']:.2f} / {entry['p99_ms']:.2f}"
            )
        rows.append([name] + cells)
    return _table(["latency ms, p50 / p99"] + servers, rows)


def format_ratios(raw: Json, summary: Json) -> str:
    peers = [s for s in _servers_in(raw) if s != SUBJECT]
    rows = []
    for name, scenario in summary["scenarios"].items():
        ratios = scenario["ratios"]
        if not ratios:
            continue
        label = f"{name} (p99, lower is better)" if scenario["kind"] == "fairness" else name
        rows.append([label] + [_fmt(ratios.get(p), ".2f") + ("x" if ratios.get(p) else "")
                               for p in peers])
    if not rows:
        return "_No forkserve runs: no ratios._"
    return _table(["forkserve / peer"] + peers, rows)


def format_fairness(raw: Json, summary: Json) -> str:
    scenario = summary["scenarios"].get("fairness")
    if scenario is None:
        return "_Fairness scenario not run._"
    rows = []
    for server in _servers_in(raw):
        entry = scenario["servers"].get(server)
        if entry is None:
            continue
        served = "-" if entry["served_min"] is None else str(entry["served_min"])
        rows.append([
            server,
            f"{served}/{entry['connections']}",
            _fmt(entry["p50_ms"], ".2f"),
            _fmt(entry["p99_ms"], ".2f"),
            _fmt(entry["max_ms"], ".1f"),
            _fmt(entry["rps"], ",.0f"),
            "FAILED" if entry["failed"] else "ok",
        ])
    header = ["fairness", "served (worst run)", "p50 ms", "p99 ms", "max ms", "req/s", "verdict"]
    return _table(header, rows)


def format_memory(raw: Json, summary: Json) -> str:
    rows = []
    for app, by_server in summary["memory"].items():
        for server in _servers_in(raw):
            entry = by_server.get(server)
            if entry is None:
                continue
            start = summary["startup"].get(app, {}).get(server, {}).get("median_ms")
            rows.append([
                f"{app}: {server}",
                _fmt(_mib(entry["master_rss_kib"]), ".1f"),
                _fmt(_mib(entry["worker_rss_kib"]), ".1f"),
                _fmt(entry["children"], ".0f"),
                _fmt(_mib(entry["total_pss_kib"]), ".1f"),
                _fmt(start, ".0f"),
            ])
    header = ["app: server", "master RSS MiB", "worker RSS MiB (mean)", "children",
              "total PSS MiB", "start to first 200 ms"]
    return _table(header, rows)


def _mib(kib: float | None) -> float | None:
    return None if kib is None else kib / 1024


def format_servers(raw: Json) -> str:
    rows = []
    for name, info in raw["servers"].items():
        status = info["status"] if info["status"] == "measured" else f"skipped: {info['reason']}"
        rows.append([name, info.get("version", "-"), info["note"], status])
    return _table(["server", "version", "how it runs", "status"], rows, text_columns=4)


def format_meta(raw: Json) -> str:
    meta = raw["meta"]
    lines = [
        f"- machine: {meta['cpu']}, {meta['cores']} cores, {meta['memory_gib']:.0f} GiB, "
        f"Linux {meta['kernel']}, Python {meta['python']}",
        f"- load: {meta['load_tool']}; {meta['workers']} workers per server; "
        f"{meta['duration_s']} s per run; {meta['repeat']} interleaved repetition(s), "
        f"medians shown"
        + (f"; start-up (hello, Flask): median of {meta['startup_samples']} starts per server"
           if meta.get("startup_samples") else ""),
        f"- date: {meta['date']}; forkserve tree: {meta['git_commit']}",
    ]
    return "\n".join(lines)


FAST = "forkserve-httptools"  # the same server under --http httptools
FAST_FLOOR = "httptools-floor"  # benchmarks/httptools_floor.py

# The issues' targets (2 workers, same machine, medians of interleaved runs).
# Each: label, scenario, subject, peer, minimum subject/peer throughput ratio.
THROUGHPUT_TARGETS = [
    ("h11: hello keep-alive >= 3.0x gunicorn sync", "hello-keepalive", SUBJECT,
     "gunicorn-sync", 3.0),
    ("h11: hello keep-alive ahead of uWSGI", "hello-keepalive", SUBJECT, "uwsgi", 1.0),
    ("h11: hello Connection: close >= 2.0x gunicorn sync", "hello-close", SUBJECT,
     "gunicorn-sync", 2.0),
    ("h11: Flask keep-alive >= 1.8x gunicorn sync", "flask-keepalive", SUBJECT,
     "gunicorn-sync", 1.8),
    ("httptools: hello keep-alive >= 2.0x uWSGI", "hello-keepalive", FAST, "uwsgi", 2.0),
    ("httptools: hello keep-alive >= 0.8x granian", "hello-keepalive", FAST, "granian", 0.8),
    ("httptools: Flask keep-alive >= 1.0x granian", "flask-keepalive", FAST, "granian", 1.0),
    ("httptools: hello Connection: close >= 1.0x uWSGI", "hello-close", FAST, "uwsgi", 1.0),
]
FAIRNESS_P99_MS = 10.0
BASELINE_PEER = "gunicorn-sync"  # memory and start-up are judged against it
MEMORY_TARGET_APPS = ("hello", "flask")  # the issue names the apps, not every scenario


def evaluate_targets(raw: Json, summary: Json) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each target; met is None when not measurable."""
    rows: list[tuple[str, str, bool | None]] = []
    for label, scenario, subject, peer, minimum in THROUGHPUT_TARGETS:
        ratio = _target_ratio(summary, scenario, subject, peer)
        # Three decimals: 2.996x must not print as a met "3.00x".
        measured = "not measured" if ratio is None else f"{ratio:.3f}x"
        rows.append((label, measured, None if ratio is None else ratio >= minimum))
    rows.append(_fairness_target(summary, SUBJECT, "h11"))
    rows.append(_fairness_target(summary, FAST, "httptools"))
    rows += _memory_targets(summary)
    micro = raw.get("micro") or {}
    over = micro.get("forkserve_over_h11")
    rows.append((
        f"in-process path <= {micro.get('target_ratio', 1.3)}x a bare h11 round trip",
        "not measured" if over is None else f"{over:.3f}x",
        None if over is None else over <= micro.get("target_ratio", 1.3),
    ))
    fast_over = micro.get("forkserve_httptools_over_httptools")
    fast_target = micro.get("httptools_target_ratio", 2.5)
    rows.append((
        f"httptools: in-process path <= {fast_target}x a bare httptools round trip",
        "not measured" if fast_over is None else f"{fast_over:.3f}x",
        None if fast_over is None else fast_over <= fast_target,
    ))
    return rows


def _target_ratio(summary: Json, scenario: str, subject: str, peer: str) -> float | None:
    """subject/peer requests per second in `scenario`, from the run's medians."""
    entry = summary["scenarios"].get(scenario, {})
    if subject == SUBJECT:
        ratio: float | None = entry.get("ratios", {}).get(peer)
        return ratio
    servers = entry.get("servers", {})
    return _ratio((servers.get(subject) or {}).get("rps"), (servers.get(peer) or {}).get("rps"))


def _fairness_target(summary: Json, subject: str, parser: str) -> tuple[str, str, bool | None]:
    label = f"{parser}: fairness: every client served, p99 < {FAIRNESS_P99_MS:.0f} ms"
    entry = summary["scenarios"].get("fairness", {}).get("servers", {}).get(subject)
    if entry is None or entry["p99_ms"] is None:
        return label, "not measured", None
    measured = f"{entry['served_min']}/{entry['connections']}, p99 {entry['p99_ms']:.2f} ms"
    return label, measured, not entry["failed"] and entry["p99_ms"] < FAIRNESS_P99_MS


def _memory_targets(summary: Json) -> list[tuple[str, str, bool | None]]:
    rows: list[tuple[str, str, bool | None]] = []
    for app, by_peer in summary["memory_ratios"].items():
        ratios = by_peer.get(BASELINE_PEER)
        if ratios is None or app not in MEMORY_TARGET_APPS:
            continue
        for key, what in [("master_rss", "master RSS"), ("worker_rss", "worker RSS"),
                          ("startup", "start-up to first 200")]:
            ratio = ratios.get(key)
            rows.append((
                f"{app}: {what} <= gunicorn sync",
                "not measured" if ratio is None else f"{ratio:.3f}x",
                None if ratio is None else ratio <= 1.0,
            ))
    return rows


FLOOR = "h11-floor"  # benchmarks/h11_floor.py: what h11 alone allows on this machine


def floor_ratios(summary: Json) -> dict[str, str]:
    """For each throughput target, the same ratio for the h11 floor, by target label.

    The issue derived its targets from a minimal h11 server; this says whether
    that premise holds on the machine of this run.
    """
    ratios: dict[str, str] = {}
    for label, scenario, subject, peer, _minimum in THROUGHPUT_TARGETS:
        servers = summary["scenarios"].get(scenario, {}).get("servers", {})
        floor = FLOOR if subject == SUBJECT else FAST_FLOOR
        ratio = _ratio((servers.get(floor) or {}).get("rps"), (servers.get(peer) or {}).get("rps"))
        if ratio is not None:
            ratios[label] = f"{ratio:.3f}x"
    return ratios


def format_targets(raw: Json, summary: Json) -> str:
    floor = floor_ratios(summary)
    rows = [
        [label, measured, floor.get(label, "-"),
         "-" if met is None else ("met" if met else "NOT MET")]
        for label, measured, met in evaluate_targets(raw, summary)
    ]
    header = ["target (issues 6 and 13)", "forkserve measured",
              "the parser's floor (h11 / httptools), same ratio", "status"]
    return _table(header, rows, text_columns=1)


def format_report(raw: Json, summary: Json) -> str:
    """Everything as Markdown, in reading order."""
    parts = [
        "## Machine and method", format_meta(raw),
        "## Servers", format_servers(raw),
        "## Throughput", format_throughput(raw, summary),
        "## forkserve / peer", format_ratios(raw, summary),
        "## Targets", format_targets(raw, summary),
        "## Latency", format_latency(raw, summary),
        "## Fairness (50 keep-alive clients, built-in client)", format_fairness(raw, summary),
        "## Memory and start-up", format_memory(raw, summary),
    ]
    if raw.get("micro"):
        parts += ["## In-process request path", format_micro(raw["micro"])]
    if raw.get("notes"):
        parts += ["## Notes", "\n".join(f"- {note}" for note in raw["notes"])]
    return "\n\n".join(parts) + "\n"


# --- chart ----------------------------------------------------------------------


def render_chart(raw: Json, summary: Json, path: Path) -> str | None:
    """Write a PNG of every scenario; returns why not if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on a server or in CI
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no chart"
    servers = _servers_in(raw)
    panels = _chart_panels(summary, servers)
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, (title, unit, values) in zip(axes.flat, panels, strict=False):
        _bar_panel(ax, servers, values)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit, fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    meta = raw["meta"]
    fig.suptitle(
        f"forkserve vs peers, {meta['workers']} workers, {meta['cores']} cores, "
        f"medians of {meta['repeat']} interleaved run(s); load: {meta['load_tool']}",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def _bar_panel(ax: Any, servers: list[str], values: dict[str, float]) -> None:
    # Every panel has every server at the same place, so the eye can follow
    # one server across panels; a server without a number shows "n/a".
    heights = [values.get(s, 0.0) for s in servers]
    colors = ["#d62728" if s == SUBJECT else "#7f7f7f" for s in servers]
    bars = ax.bar(range(len(servers)), heights, color=colors)
    labels = ["n/a" if s not in values else _short_number(values[s]) for s in servers]
    ax.bar_label(bars, labels=labels, fontsize=7)
    ax.set_xticks(range(len(servers)), servers, rotation=30, ha="right", fontsize=8)
    ax.margins(y=0.12)


def _short_number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _chart_panels(summary: Json, servers: list[str]) -> list[tuple[str, str, dict[str, float]]]:
    panels = []
    for name, scenario in summary["scenarios"].items():
        by_server = scenario["servers"]
        if scenario["kind"] == "fairness":
            values = {s: by_server[s]["p99_ms"] for s in servers if s in by_server}
            panels.append((f"{name}: p99 latency (lower is better)", "ms", values))
        else:
            values = {s: by_server[s]["rps"] for s in servers if s in by_server}
            panels.append((f"{name} (higher is better)", "requests/s", values))
    for app, by_server in summary["memory"].items():
        values = {s: _mib(by_server[s]["worker_rss_kib"]) for s in servers if s in by_server}
        panels.append((f"{app}: worker RSS (lower is better)", "MiB", values))
        break  # one memory panel (the first app, hello world) keeps the grid readable
    for app, by_server in summary["startup"].items():
        values = {s: by_server[s]["median_ms"] for s in servers if s in by_server}
        panels.append((f"{app}: start to first 200 (lower is better)", "ms", values))
        break
    return [(t, u, {k: v for k, v in vals.items() if v is not None}) for t, u, vals in panels]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Re-render a saved benchmark result.")
    parser.add_argument("json_path", type=Path)
    parser.add_argument("--chart", action="store_true", help="also write the PNG beside it")
    parser.add_argument("--markdown", action="store_true", help="also write the .md beside it")
    args = parser.parse_args(argv)
    raw = json.loads(args.json_path.read_text())
    summary = summarize(raw)
    text = format_report(raw, summary)
    print(text)
    if args.markdown:
        args.json_path.with_suffix(".md").write_text("# Benchmark run\n\n" + text)
    if args.chart:
        problem = render_chart(raw, summary, args.json_path.with_suffix(".png"))
        if problem:
            print(problem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
