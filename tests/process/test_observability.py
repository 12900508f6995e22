"""Observability against real servers: Prometheus metrics, the app's multiprocess
metrics, statsd, JSON logs and request ids (issue #14).

The exposition is parsed with prometheus_client's own parser, the way a
Prometheus server would read it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support import REPO, Server, raw_request, serve, status_of

pytestmark = pytest.mark.process

METRICS_RE = re.compile(r"Metrics at: (http://\S+)")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_url(server: Server) -> str:
    m = METRICS_RE.search(server.wait_for_log(r"Metrics at: http://"))
    assert m
    return m.group(1)


def scrape(url: str, timeout: float = 5.0) -> Samples:
    response = requests.get(url, timeout=timeout)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for (n, labels), value in samples.items()
            if n == name and label in dict(labels)}


def requests_by_code(samples: Samples) -> dict[str, float]:
    out: dict[str, float] = {}
    for (name, labels), value in samples.items():
        if name == "forkserve_http_requests_total":
            code = dict(labels)["code"]
            out[code] = out.get(code, 0) + value
    return out


def wait_until(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def wait_for_mark(marks: Path, prefix: str, count: int, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in marks.read_text().splitlines() if line.startswith(prefix)]
        if len(lines) >= count:
            return lines
        time.sleep(0.02)
    raise AssertionError(f"{count} x {prefix!r} never marked: {marks.read_text()!r}")


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    path = tmp_path / "marks.txt"
    path.touch()
    return path


def metrics_server(marks: Path, *args: str) -> Server:
    """2 workers of observe_apps:app with metrics on a free port (see metrics_url)."""
    return Server("observe_apps:app", "--workers", "2", "--metrics-bind", "127.0.0.1:0",
                  *args, env={"OBSERVE_MARKS": str(marks)}, wait_workers=2)


def slow_request(address: tuple[str, int], seconds: float) -> threading.Thread:
    """A GET /slow on its own connection, in a thread; returns the started thread."""
    def run() -> None:
        raw_request(address, f"GET /slow?{seconds} HTTP/1.1\r\nHost: t\r\n\r\n".encode(),
                    timeout=seconds + 10)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# -- Prometheus ------------------------------------------------------------


def test_request_counts_are_exact_by_code_over_two_workers(marks: Path) -> None:
    with metrics_server(marks) as server:
        url = metrics_url(server)
        # One worker is held in /slow while the other serves the session, so both count.
        slow = slow_request(server.address, 1.0)
        busy_pid = wait_for_mark(marks, "slow ", 1)[0].split()[1]
        with requests.Session() as session:
            pids = {session.get(f"{server.url}/pid", timeout=5).text for _ in range(5)}
            codes = [200] * 7 + [404] * 4 + [500] * 3 + [201] * 2
            for code in codes:
                assert session.get(f"{server.url}/status/{code}", timeout=5).status_code == code
            assert session.post(f"{server.url}/status/418", data=b"x",
                                timeout=5).status_code == 418
        slow.join(15)
        assert pids and busy_pid not in pids  # the session's worker is the other one
        want = {"200": 5 + 7 + 1, "404": 4, "500": 3, "201": 2, "418": 1}
        total = sum(want.values())

        def counted() -> bool:
            return sum(requests_by_code(scrape(url)).values()) >= total

        wait_until(counted, what="every request counted")
        samples = scrape(url)
        assert requests_by_code(samples) == want
        assert samples[("forkserve_http_requests_total",
                        frozenset({("code", "418"), ("method", "POST")}))] == 1
        assert samples[("forkserve_http_request_duration_seconds_count", frozenset())] == total
        # The slow request took about a second: it sits above the 0.5 s bucket.
        assert samples[("forkserve_http_request_duration_seconds_bucket",
                        frozenset({("le", "0.5")}))] == total - 1
        assert samples[("forkserve_http_request_duration_seconds_sum", frozenset())] >= 1.0
        assert by_label(samples, "forkserve_workers", "state") == {
            "booting": 0, "ready": 2, "draining": 0}
        # The parser that serves (the start-up line's), not the setting's "auto".
        serving = re.search(r"Using parser: (\S+) ", server.log)
        assert serving and serving[1] in ("h11", "httptools")
        assert samples[("forkserve_info", frozenset({("version", "0.1.0"),
                                                     ("parser", serving[1])}))] == 1
        # A request refused before the app ran is counted apart, by its status.
        assert status_of(raw_request(server.address, b"GET / HTTP/1.1\r\nBad\r\n\r\n")) == 400
        wait_until(lambda: by_label(scrape(url), "forkserve_rejected_requests_total",
                                    "code") == {"400": 1}, what="the 400 counted")
        assert sum(requests_by_code(scrape(url)).values()) == total


def test_killed_worker_counts_as_crash_and_no_counter_goes_down(marks: Path) -> None:
    with metrics_server(marks) as server:
        url = metrics_url(server)
        with requests.Session() as session:  # one connection: one worker served all six
            served_by = {session.get(f"{server.url}/pid", timeout=5).text for _ in range(6)}
        assert len(served_by) == 1
        wait_until(lambda: requests_by_code(scrape(url)).get("200") == 6, what="6 counted")
        before = scrape(url)
        victim = int(served_by.pop())  # its counts must survive it
        os.kill(victim, signal.SIGKILL)

        def replaced() -> bool:
            samples = scrape(url)
            return (by_label(samples, "forkserve_worker_restarts_total", "reason")["crash"] == 1
                    and by_label(samples, "forkserve_workers", "state")["ready"] == 2)

        wait_until(replaced, what="crash counted and the worker replaced")
        after = scrape(url)
        assert victim not in server.worker_pids()
        counters = [key for key in before if key[0].endswith(("_total", "_count", "_bucket",
                                                              "_sum"))]
        assert counters
        for key in counters:
            assert after.get(key, 0) >= before[key], key
        assert requests_by_code(after) == {"200": 6}
        restarts = by_label(after, "forkserve_worker_restarts_total", "reason")
        assert restarts == {"crash": 1, "timeout": 0, "max_requests": 0, "max_memory": 0,
                            "max_lifetime": 0, "reload": 0}


def restarts_of(url: str) -> dict[str, float]:
    return by_label(scrape(url), "forkserve_worker_restarts_total", "reason")


ZERO_RESTARTS = dict.fromkeys(
    ("crash", "timeout", "max_requests", "max_memory", "max_lifetime", "reload"), 0.0)


@pytest.mark.parametrize("args, action, want", [
    (("--workers", "1", "--max-requests", "3"), "requests", {"max_requests": 1}),
    (("--workers", "2"), "hup", {"reload": 2}),
    (("--workers", "1", "--timeout", "1"), "stuck", {"timeout": 1}),
])
def test_restart_reasons_come_from_the_master(marks: Path, args: tuple[str, ...], action: str,
                                              want: dict[str, int]) -> None:
    with Server("observe_apps:app", "--metrics-bind", "127.0.0.1:0", *args,
                env={"OBSERVE_MARKS": str(marks)}) as server:
        url = metrics_url(server)
        wait_until(lambda: by_label(scrape(url), "forkserve_workers", "state")["ready"]
                   == int(args[1]), what="workers ready")
        if action == "requests":
            for _ in range(4):  # new connections: the worker's count passes 3
                assert requests.get(server.url, timeout=5).status_code == 200
        elif action == "hup":
            server.send_signal(signal.SIGHUP)
            server.wait_for_log(r"Reload complete")
        else:
            try:
                requests.get(f"{server.url}/slow?5", timeout=4)
            except requests.RequestException:
                pass
        expected = {**ZERO_RESTARTS, **want}
        wait_until(lambda: restarts_of(url) == expected, what=f"restarts {expected}")
        time.sleep(0.6)  # a master loop turn later: nothing else counted
        assert restarts_of(url) == expected


def test_endpoint_answers_while_every_worker_is_stuck(marks: Path) -> None:
    with metrics_server(marks, "--timeout", "60") as server:
        url = metrics_url(server)
        # One at a time: a worker accepts several waiting connections at once.
        threads = [slow_request(server.address, 4.0)]
        wait_for_mark(marks, "slow ", 1)
        threads.append(slow_request(server.address, 4.0))
        stuck = wait_for_mark(marks, "slow ", 2)
        assert len({line.split()[1] for line in stuck}) == 2  # both workers are in the app
        waiting = [socket.create_connection(server.address, timeout=10) for _ in range(3)]
        try:
            for sock in waiting:
                sock.sendall(b"GET /status/200 HTTP/1.1\r\nHost: t\r\n\r\n")

            def queued() -> bool:
                return by_label(scrape(url), "forkserve_listen_queue", "listener").get(
                    server.url) == 3

            wait_until(queued, timeout=2.0, what="3 connections in the listen queue")
            started = time.monotonic()
            samples = scrape(url, timeout=1.0)
            elapsed = time.monotonic() - started
            assert elapsed < 1.0, elapsed
            assert samples[("forkserve_http_requests_in_progress", frozenset())] == 2
            assert by_label(samples, "forkserve_connections", "state")["active"] == 2
            assert by_label(samples, "forkserve_listen_queue", "listener") == {server.url: 3}
            assert by_label(samples, "forkserve_listen_queue_max", "listener") == {
                server.url: 2048}
            # The queued requests are served once the workers are free: nothing lost.
            for sock in waiting:
                sock.settimeout(15)
                assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
        finally:
            for sock in waiting:
                sock.close()
        for thread in threads:
            thread.join(15)


def test_connections_by_state(marks: Path) -> None:
    with Server("observe_apps:app", "--workers", "1", "--metrics-bind", "127.0.0.1:0",
                "--keep-alive", "30", env={"OBSERVE_MARKS": str(marks)},
                wait_workers=1) as server:
        url = metrics_url(server)
        socks = [socket.create_connection(server.address, timeout=5) for _ in range(4)]
        try:
            for sock in socks[:3]:  # answered, then parked between keep-alive requests
                sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            socks[3].sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")  # a head still arriving

            def counted() -> bool:
                states = by_label(scrape(url), "forkserve_connections", "state")
                return states == {"idle": 3, "reading": 1, "active": 0}

            wait_until(counted, what="3 idle and 1 reading connection")
        finally:
            for sock in socks:
                sock.close()
        wait_until(lambda: by_label(scrape(url), "forkserve_connections", "state")
                   == {"idle": 0, "reading": 0, "active": 0}, what="all gone")


def test_metrics_endpoint_refuses_other_paths_and_methods(marks: Path) -> None:
    with metrics_server(marks) as server:
        url = metrics_url(server)
        base = url.rsplit("/", 1)[0]
        assert requests.get(f"{base}/nope", timeout=5).status_code == 404
        assert requests.post(url, timeout=5).status_code == 405
        host, port = base[len("http://"):].split(":")
        assert status_of(raw_request((host, int(port)), b"GET /metrics HTTP/1.1\r\n\r\n")) == 400
        assert requests.get(url, timeout=5).status_code == 200  # still serving


def test_a_flood_of_idle_scrapers_does_not_hurt_the_master(marks: Path) -> None:
    with metrics_server(marks) as server:
        url = metrics_url(server)
        host, port = url[len("http://"):].split("/")[0].split(":")
        idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(60)]
        try:
            for sock in idle[:5]:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
            with requests.Session() as session:  # the app is served all the while
                for _ in range(5):
                    assert session.get(server.url, timeout=5).status_code == 200
        finally:
            for sock in idle:
                sock.close()
        wait_until(lambda: requests_by_code(scrape(url, timeout=2.0)).get("200") == 5,
                   what="scrapes answered again")
        assert server.proc is not None and server.proc.poll() is None


def test_missing_prometheus_client_is_one_clear_line(tmp_path: Path) -> None:
    shadow = tmp_path / "prometheus_client"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('not installed here')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    done = subprocess.run([sys.executable, "-m", "forkserve", "observe_apps:app",
                           "--bind", "127.0.0.1:0", "--metrics-bind", "127.0.0.1:0"],
                          env=env, capture_output=True, text=True, timeout=30,
                          cwd=REPO / "tests" / "apps")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "forkserve: error: --metrics-bind needs prometheus_client: "
        "pip install 'forkserve[metrics]'"]


# -- the app's own metrics ---------------------------------------------------


def test_app_multiprocess_metrics_are_exact_and_drop_dead_workers(tmp_path: Path) -> None:
    mpdir = tmp_path / "prom"
    mpdir.mkdir()
    # An earlier run left counts behind: they must not be counted.
    subprocess.run([sys.executable, "-c", "from prometheus_client import Counter; "
                    "c = Counter('app_hits', 'x'); c.inc(100)"],
                   env=dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(mpdir)), check=True,
                   timeout=30)
    assert list(mpdir.glob("*.db"))
    with serve("observe_multiproc:app", "--workers", "2", "--metrics-bind", "127.0.0.1:0",
               env={"PROMETHEUS_MULTIPROC_DIR": str(mpdir)}, wait_workers=2) as server:
        url = metrics_url(server)

        def alive() -> float:
            return scrape(url).get(("app_workers_alive", frozenset()), -1)

        wait_until(lambda: alive() == 2, what="both workers' livesum gauges")
        pids = set()
        for _ in range(20):  # new connections: the kernel spreads them over the workers
            pids.add(requests.get(f"{server.url}/", timeout=5).text)
        samples = scrape(url)
        assert samples[("app_hits_total", frozenset())] == 20
        victim = server.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        server.wait_for_log(r"Booted worker", count=3)
        wait_until(lambda: by_label(scrape(url), "forkserve_workers", "state")["ready"] == 2,
                   what="the replacement serving")
        # The dead worker's live gauge is gone: one per live worker, not 3.
        assert alive() == 2
        assert not list(mpdir.glob(f"gauge_livesum_{victim}.db"))
        # Its counts stay: counters never go down.
        assert scrape(url)[("app_hits_total", frozenset())] == 20


# -- statsd ------------------------------------------------------------------


@pytest.fixture
def statsd_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def receive_lines(sock: socket.socket, until: Callable[[list[str]], bool],
                  timeout: float = 10.0) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(lines):
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        lines += data.decode().splitlines()
    return lines


def test_statsd_gets_gunicorns_names_under_the_prefix(statsd_socket: socket.socket) -> None:
    port = statsd_socket.getsockname()[1]
    with serve("observe_apps:app", "--workers", "2", "--statsd-host", f"127.0.0.1:{port}",
               "--statsd-prefix", "shop.web", wait_workers=2) as server:
        with requests.Session() as session:
            for path, code in (("/", 200), ("/", 200), ("/status/404", 404), ("/error", 500)):
                assert session.get(server.url + path, timeout=5).status_code == code

        def done(lines: list[str]) -> bool:
            return (lines.count("shop.web.gunicorn.requests:1|c") >= 4
                    and "shop.web.gunicorn.log.exception:1|c" in lines
                    and "shop.web.gunicorn.workers:2|g" in lines)

        lines = receive_lines(statsd_socket, done)
    assert lines.count("shop.web.gunicorn.requests:1|c") == 4, lines
    assert lines.count("shop.web.gunicorn.request.status.200:1|c") == 2
    assert lines.count("shop.web.gunicorn.request.status.404:1|c") == 1
    assert lines.count("shop.web.gunicorn.request.status.500:1|c") == 1
    timers = [line for line in lines if line.startswith("shop.web.gunicorn.request.duration:")]
    assert len(timers) == 4 and all(re.fullmatch(r".*:\d+\.\d+\|ms", t) for t in timers)
    assert "shop.web.gunicorn.log.exception:1|c" in lines  # the app's traceback
    assert "shop.web.gunicorn.workers:2|g" in lines


def test_statsd_without_a_listener_never_breaks_requests() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nobody listens there: every datagram gets an ICMP refusal
    with serve("observe_apps:app", "--statsd-host", f"127.0.0.1:{port}") as server:
        with requests.Session() as session:
            for _ in range(20):
                assert session.get(server.url, timeout=5).status_code == 200
        assert "Traceback" not in server.log


# -- JSON logs -----------------------------------------------------------------


HOSTILE_AGENT = 'say "hi" \\ back\\slash\ttab caf\xe9 {"json": [1]}'
HOSTILE_REFERER = "https://x/?q=\"'\\u0000\xff"


def test_json_logs_are_one_object_per_line_with_hostile_headers_intact() -> None:
    with serve("observe_apps:app", "--workers", "1", "--log-format", "json",
               "--access-logfile", "-", "--timeout", "1") as server:
        request = (b"GET /hello?a=1&b=%22 HTTP/1.1\r\nHost: t\r\n"
                   b"User-Agent: " + HOSTILE_AGENT.encode("latin-1")
                   + b"\r\nReferer: " + HOSTILE_REFERER.encode("latin-1")
                   + b"\r\nX-Request-ID: trace-1\r\nConnection: close\r\n\r\n")
        assert status_of(raw_request(server.address, request)) == 200
        assert requests.get(f"{server.url}/error", timeout=5).status_code == 500
        # A worker stuck past --timeout: its stack dump must be one record
        # (the Python one, with source lines: the worker also answers a 500).
        assert requests.get(f"{server.url}/slow?10", timeout=8).status_code == 500
        server.wait_for_log(r'"stack"', timeout=15)
        server.wait_for_log(r"Booted worker", count=2, timeout=15)
        assert server.stop() == 0
        lines = server.log.splitlines()
    records = []
    for line in lines:
        record = json.loads(line)  # every line, master's and workers', parses
        assert isinstance(record, dict), line
        records.append(record)
    errors = [r for r in records if "level" in r]
    assert errors and all({"time", "level", "pid", "message"} <= set(r) for r in errors)
    access = [r for r in records if r.get("path") == "/hello"]
    assert len(access) == 1
    entry = access[0]
    assert entry["user_agent"] == HOSTILE_AGENT
    assert entry["referer"] == HOSTILE_REFERER
    assert entry["query"] == "a=1&b=%22"
    assert entry["request_id"] == "trace-1"
    assert entry["status"] == 200 and entry["bytes"] == 6 and entry["method"] == "GET"
    assert entry["protocol"] == "HTTP/1.1" and entry["remote_addr"] == "127.0.0.1"
    assert isinstance(entry["duration_ms"], float) and isinstance(entry["pid"], int)
    assert any("RuntimeError: boom" in r.get("exception", "") for r in errors)
    dumps = [r for r in errors if "stack" in r]
    assert len(dumps) == 1
    stack = dumps[0]["stack"]
    assert "Python stacks of the worker's threads" in stack and "Thread MainThread" in stack
    assert re.search(r'observe_apps\.py", line \d+, in _app\n\s+time\.sleep\(', stack), stack


# -- request ids -------------------------------------------------------------


def test_request_ids_kept_generated_replaced_and_logged() -> None:
    fmt = "%(s)s %(U)s %({x-request-id}i)s %({x-request-id}o)s"
    with serve("observe_apps:app", "--access-logfile", "-", "--access-logformat",
               "ACCESS " + fmt) as server:
        sent: list[tuple[str | None, str]] = [
            ("abc-123.DEF:xyz_", "kept"),
            ("x" * 128, "kept"),
            ("x" * 129, "replaced"),
            ('bad "quoted" id', "replaced"),
            ("", "replaced"),
            (None, "generated"),
        ]
        seen = []
        with requests.Session() as session:
            for given, _ in sent:
                headers = {} if given is None else {"X-Request-ID": given}
                response = session.get(f"{server.url}/env", headers=headers, timeout=5)
                rid = response.headers["X-Request-ID"]
                assert response.json()["HTTP_X_REQUEST_ID"] == rid  # the app saw the same id
                seen.append(rid)
            own = session.get(f"{server.url}/own-id", headers={"X-Request-ID": "zzz"},
                              timeout=5)
            assert own.headers["X-Request-ID"] == "set-by-the-app"  # one header, the app's
        for (given, fate), rid in zip(sent, seen, strict=True):
            if fate == "kept":
                assert rid == given
            else:
                assert re.fullmatch(r"[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}", rid), rid
        assert len(set(seen[2:])) == 4  # every generated id is new
        text = server.wait_for_log(r"ACCESS 200 /own-id")
    logged = re.findall(r"ACCESS 200 /env (\S+) (\S+)", text)
    assert logged == [(rid, rid) for rid in seen]


def test_request_id_header_name_and_switching_it_off() -> None:
    with serve("observe_apps:app", "--request-id-header", "X-Correlation-ID") as server:
        response = requests.get(f"{server.url}/env", headers={"X-Correlation-ID": "corr-7"},
                                timeout=5)
        assert response.headers["X-Correlation-ID"] == "corr-7"
        assert response.json() == {"HTTP_X_CORRELATION_ID": "corr-7"}
        assert "X-Request-ID" not in response.headers
    with serve("observe_apps:app", "--no-request-id") as server:
        response = requests.get(f"{server.url}/env", headers={"X-Request-ID": "a b"},
                                timeout=5)
        assert "X-Request-ID" not in response.headers
        assert response.json() == {"HTTP_X_REQUEST_ID": "a b"}  # untouched


def test_usr2_upgrade_keeps_the_metrics_port_answering(marks: Path) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    url = f"http://127.0.0.1:{port}/metrics"
    with Server("observe_apps:app", "--workers", "1", "--metrics-bind", f"127.0.0.1:{port}",
                env={"OBSERVE_MARKS": str(marks)}, wait_workers=1) as server:
        assert metrics_url(server) == url
        server.send_signal(signal.SIGUSR2)
        text = server.wait_for_log(r"Metrics at: http://", count=2)
        new_master = int(re.findall(r"Started a new master \(pid (\d+)\)", text)[0])
        server.wait_for_log(r"Booted worker", count=2)
        for _ in range(10):  # both masters hold the port: every scrape is answered
            scrape(url, timeout=2.0)
        server.send_signal(signal.SIGTERM)  # the old master goes (stop() would kill the group)
        assert server.wait_exit(15) == 0
        for _ in range(10):
            samples = scrape(url, timeout=2.0)
        assert by_label(samples, "forkserve_workers", "state")["ready"] == 1
        os.kill(new_master, signal.SIGTERM)
        wait_until(lambda: not Path(f"/proc/{new_master}").exists()
                   or "Z" in Path(f"/proc/{new_master}/stat").read_text().split()[2],
                   what="the new master gone")


def scrape_unix(path: Path) -> Samples:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(body.decode()) for s in f.samples}


def test_metrics_on_a_unix_socket(marks: Path, tmp_path: Path) -> None:
    path = tmp_path / "metrics.sock"
    with Server("observe_apps:app", "--workers", "1", "--metrics-bind", f"unix:{path}",
                env={"OBSERVE_MARKS": str(marks)}, wait_workers=1) as server:
        server.wait_for_log(rf"Metrics at: unix:{re.escape(str(path))}")
        assert requests.get(server.url, timeout=5).status_code == 200
        wait_until(lambda: requests_by_code(scrape_unix(path)) == {"200": 1},
                   what="the request counted, over the unix socket")
        assert server.stop() == 0
    assert not path.exists()  # removed on the way out
