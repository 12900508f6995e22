"""The master's Prometheus endpoint (--metrics-bind) and the app's multiprocess metrics.

Master only. Imported only when --metrics-bind is set or PROMETHEUS_MULTIPROC_DIR
names a directory: it imports prometheus_client, which a server without
metrics should not load.

The endpoint is served from the master's own select loop, one non-blocking
socket per scrape, so it answers while every worker is stuck in the app (the
moment it is needed most) and no thread runs beside the master's forks (a
thread holding a lock at fork time leaves that lock held in the child).
prometheus_client writes the exposition; h11 parses the scrape's request and
frames the answer.
"""

from __future__ import annotations

import glob
import os
import socket
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import h11

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
except ImportError:  # pragma: no cover - reported by require_prometheus_client
    prometheus_client_missing = True
else:
    prometheus_client_missing = False

from forkserve.errors import ConfigError
from forkserve.log import log
from forkserve.sockets import Listener, bind_one
from forkserve.stats import APP_METRICS_ENV, BUCKETS, Totals, key_labels

MULTIPROC_ENV = APP_METRICS_ENV
RESTART_REASONS = ("crash", "timeout", "max_requests", "max_memory", "max_lifetime", "reload")
WORKER_STATES = ("booting", "ready", "draining")
SCRAPE_TIMEOUT = 5.0  # seconds a scrape connection may take to send its request and read
MAX_REQUEST = 16384  # bytes of request head a scrape may send
BACKLOG = 64
# Scrapes served at once; more wait in the backlog. Keeps the master's fds few
# (it waits in select(), limited to fd numbers below 1024) under a flood.
MAX_SCRAPES = 16
# struct tcp_info (linux/tcp.h): eight u8 fields, then u32 rto, ato, snd_mss,
# rcv_mss, unacked, sacked. On a listening socket the kernel reports the
# current accept queue in tcpi_unacked and the backlog in tcpi_sacked.
_TCP_INFO = struct.Struct("=8B6I")


def require_prometheus_client() -> None:
    if prometheus_client_missing:
        raise ConfigError("--metrics-bind needs prometheus_client: "
                          "pip install 'forkserve[metrics]'")


@dataclass
class Snapshot:
    """What the master knows at one scrape."""

    totals: Totals
    workers: Mapping[str, int]  # state -> count
    restarts: Mapping[str, int]  # reason -> count
    listen_queues: list[tuple[str, int, int]]  # listener, waiting, backlog
    version: str
    parser: str


def listen_queue(sock: socket.socket) -> tuple[int, int] | None:
    """(connections waiting to be accepted, backlog) of a TCP listener; None elsewhere."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or not hasattr(socket, "TCP_INFO"):
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size)
    except OSError:
        return None
    fields = _TCP_INFO.unpack(raw[: _TCP_INFO.size])
    return fields[12], fields[13]


def listen_queues(listeners: list[Listener]) -> list[tuple[str, int, int]]:
    out = []
    for listener in listeners:
        try:
            queue = listen_queue(listener.sock)
            name = listener.url
        except OSError:  # closed while stopping
            continue
        if queue is not None:
            out.append((name, queue[0], queue[1]))
    return out


class ForkserveCollector:
    """Turns the master's snapshot into metric families (the names are an interface).

    A prometheus_client collector: the registry needs only `collect()`.
    """

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        t = s.totals
        requests = CounterMetricFamily(
            "forkserve_http_requests", "Requests answered, by status code and method.",
            labels=["code", "method"])
        for key, count in sorted(t.requests.items()):
            method, code = key_labels(key)
            requests.add_metric([code, method], count)
        yield requests
        bounds = [f"{b:g}" for b in BUCKETS] + ["+Inf"]
        yield HistogramMetricFamily(
            "forkserve_http_request_duration_seconds",
            "Time from a complete request head to the last byte of the response.",
            buckets=list(zip(bounds, t.cumulative_buckets(), strict=True)),
            sum_value=t.duration_ns / 1e9)
        yield GaugeMetricFamily("forkserve_http_requests_in_progress",
                                "Requests the workers are running now.", value=t.in_progress)
        rejected = CounterMetricFamily(
            "forkserve_rejected_requests", "Requests refused before the app ran, by status.",
            labels=["code"])
        for status, count in sorted(t.rejected.items()):
            rejected.add_metric([str(status)], count)
        yield rejected
        connections = GaugeMetricFamily(
            "forkserve_connections", "Client connections the workers hold, by state "
            "(idle and reading as of each worker's last loop tick).", labels=["state"])
        connections.add_metric(["idle"], t.idle)
        connections.add_metric(["reading"], t.reading)
        connections.add_metric(["active"], t.in_progress)
        yield connections
        workers = GaugeMetricFamily("forkserve_workers", "Worker processes, by state.",
                                    labels=["state"])
        for state in WORKER_STATES:
            workers.add_metric([state], s.workers.get(state, 0))
        yield workers
        restarts = CounterMetricFamily("forkserve_worker_restarts",
                                       "Workers replaced, by reason.", labels=["reason"])
        for reason in RESTART_REASONS:
            restarts.add_metric([reason], s.restarts.get(reason, 0))
        yield restarts
        queue = GaugeMetricFamily(
            "forkserve_listen_queue",
            "Connections waiting in the kernel's accept queue of each TCP listener.",
            labels=["listener"])
        queue_max = GaugeMetricFamily("forkserve_listen_queue_max",
                                      "The accept queue's length (backlog) of each TCP listener.",
                                      labels=["listener"])
        for name, waiting, backlog in s.listen_queues:
            queue.add_metric([name], waiting)
            queue_max.add_metric([name], backlog)
        yield queue
        yield queue_max
        info = GaugeMetricFamily("forkserve_info", "forkserve's version and HTTP parser.",
                                 labels=["version", "parser"])
        info.add_metric([s.version, s.parser], 1)
        yield info


class _Scrape:
    """One connection to the metrics endpoint: read a request, write one answer, close."""

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.deadline = now + SCRAPE_TIMEOUT
        self.parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
        self.out = b""  # the answer, once there is one
        self.answered = False


class MetricsServer:
    """The listening socket and the scrapes in flight; driven by the master's loop."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        listener.sock.setblocking(False)
        # Not passed to a USR2 master's exec: a listening copy nobody accepts on
        # would take its share of the port's connections (SO_REUSEPORT) and hang them.
        listener.sock.set_inheritable(False)
        self.registry = CollectorRegistry(auto_describe=False)
        self.scrapes: dict[int, _Scrape] = {}

    @classmethod
    def bind(cls, address: str) -> MetricsServer:
        """Before fork and before dropping privileges (a port below 1024 needs root).

        SO_REUSEPORT: a new master started by USR2 binds the same address while
        the old one still serves it; both answer scrapes during the handover.
        """
        require_prometheus_client()
        return cls(bind_one(address, BACKLOG, reuse_port=not address.startswith("unix:")))

    @property
    def url(self) -> str:
        return self.listener.url + ("" if self.listener.is_unix else "/metrics")

    def register(self, snapshot: Callable[[], Snapshot], app_metrics_dir: str | None) -> None:
        self.registry.register(ForkserveCollector(snapshot))
        if app_metrics_dir:
            from prometheus_client.multiprocess import MultiProcessCollector

            MultiProcessCollector(self.registry, path=app_metrics_dir)  # type: ignore[no-untyped-call]

    def read_fds(self) -> list[int]:
        fds = [fd for fd, s in self.scrapes.items() if not s.answered]
        if len(self.scrapes) < MAX_SCRAPES:
            fds.append(self.listener.sock.fileno())
        return fds

    def write_fds(self) -> list[int]:
        return [fd for fd, s in self.scrapes.items() if s.answered]

    def handle(self, readable: set[int], writable: set[int], now: float) -> None:
        """Accept, read, answer and write what is ready; drop scrapes past their deadline."""
        if self.listener.sock.fileno() in readable:
            self._accept(now)
        for fd, scrape in list(self.scrapes.items()):
            try:
                if fd in readable and not scrape.answered:
                    self._read(scrape)
                if scrape.answered and (fd in writable or scrape.out):
                    self._write(scrape)
            except OSError:
                self._close(fd)
                continue
            if fd in self.scrapes and now > scrape.deadline:
                self._close(fd)

    def _accept(self, now: float) -> None:
        while len(self.scrapes) < MAX_SCRAPES:
            try:
                sock, _addr = self.listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("metrics endpoint: accept failed: %s", exc)
                return
            sock.setblocking(False)
            self.scrapes[sock.fileno()] = _Scrape(sock, now)

    def _read(self, scrape: _Scrape) -> None:
        try:
            data = scrape.sock.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        scrape.parser.receive_data(data)
        try:
            event = scrape.parser.next_event()
        except h11.RemoteProtocolError as exc:
            self._answer(scrape, exc.error_status_hint, b"bad request\n", "text/plain")
            return
        if event is h11.NEED_DATA:
            if not data:
                self._close(scrape.sock.fileno())
            return
        if not isinstance(event, h11.Request):
            self._close(scrape.sock.fileno())
            return
        target = event.target.split(b"?", 1)[0]
        if event.method not in (b"GET", b"HEAD"):
            self._answer(scrape, 405, b"only GET\n", "text/plain", [("Allow", "GET, HEAD")])
        elif target not in (b"/metrics", b"/"):
            self._answer(scrape, 404, b"the metrics are at /metrics\n", "text/plain")
        else:
            try:
                body = generate_latest(self.registry)
            except Exception:
                log.exception("metrics endpoint: collecting the metrics failed")
                self._answer(scrape, 500, b"collecting the metrics failed\n", "text/plain")
                return
            self._answer(scrape, 200, b"" if event.method == b"HEAD" else body,
                         CONTENT_TYPE_LATEST, length=len(body))

    def _answer(self, scrape: _Scrape, status: int, body: bytes, content_type: str,
                extra: list[tuple[str, str]] | None = None, length: int | None = None) -> None:
        headers = [("Content-Type", content_type),
                   ("Content-Length", str(len(body) if length is None else length)),
                   ("Connection", "close"), *(extra or [])]
        conn = scrape.parser
        try:
            out = conn.send(h11.Response(status_code=status, headers=headers))
            if body:
                out += conn.send(h11.Data(data=body))
            out += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:  # h11 refused: the request was too broken to answer
            self._close(scrape.sock.fileno())
            return
        scrape.out = out or b""
        scrape.answered = True

    def _write(self, scrape: _Scrape) -> None:
        try:
            sent = scrape.sock.send(scrape.out)
        except (BlockingIOError, InterruptedError):
            return
        scrape.out = scrape.out[sent:]
        if not scrape.out:
            self._close(scrape.sock.fileno())

    def _close(self, fd: int) -> None:
        scrape = self.scrapes.pop(fd, None)
        if scrape is not None:
            try:
                scrape.sock.close()
            except OSError:
                pass

    def close_in_worker(self) -> None:
        """After fork, in a worker: drop the inherited copies; the master keeps serving."""
        for scrape in self.scrapes.values():
            scrape.sock.close()
        self.scrapes.clear()
        self.listener.sock.close()

    def close(self, unlink: bool = True) -> None:
        for fd in list(self.scrapes):
            self._close(fd)
        self.listener.close(unlink=unlink)


class AppMetricsDir:
    """PROMETHEUS_MULTIPROC_DIR: the app's prometheus_client files, one set per process.

    The setup prometheus_client's docs ask gunicorn users to write in a config
    file, done here: the directory is emptied at start, so an earlier run's
    files are not counted, and a worker's live gauges are dropped when it exits.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AppMetricsDir | None:
        path = env.get(MULTIPROC_ENV, "")
        if not path or prometheus_client_missing:
            return None
        return cls(path)

    def clear(self) -> None:
        """At the start of a fresh master (not a USR2 one: the old workers still write here)."""
        removed = 0
        for name in glob.glob(os.path.join(self.path, "*.db")):
            try:
                os.unlink(name)
                removed += 1
            except OSError as exc:
                log.warning("%s: cannot remove %s: %s", MULTIPROC_ENV, name, exc.strerror)
        if removed:
            log.info("%s: removed %d file(s) of an earlier run", MULTIPROC_ENV, removed)

    def process_dead(self, pid: int) -> None:
        from prometheus_client import multiprocess

        try:
            multiprocess.mark_process_dead(pid, self.path)  # type: ignore[no-untyped-call]
        except OSError as exc:
            log.warning("%s: cannot drop the files of worker %d: %s", MULTIPROC_ENV, pid, exc)
