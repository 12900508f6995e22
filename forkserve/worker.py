"""A sync worker: one process, one thread, one request in the app at a time.

`Worker` is created in the master before fork (it holds only plain values);
`Worker.run()` runs in the child after fork and never returns: it ends the
process with a `WorkerExit` code.

The loop is one epoll over the listening sockets, the signal wakeup pipe, the
handoff socket pair and every parked client connection. Accepting, reading
request heads, idling on keep-alive and timing out cost no app time; a
connection runs the app only once its request is complete (DESIGN.md §2
"Keep-alive without pinning a worker"). A second thread, the handoff
watcher, moves parked connections with a request waiting to an idle worker
while a request runs long (forkserve.handoff); it touches them only under
the loop's lock, which the loop releases only around the app call. With TLS
it relays them instead (forkserve.relay), and the relays are its alone.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import errno
import faulthandler
import gc
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

import setproctitle

from forkserve import loader
from forkserve.config import Config, threads_per_worker
from forkserve.connection import Connection, Refusal, RequestHooks, State, settings_from
from forkserve.environ import ServerFacts
from forkserve.errors import AppLoadError, ForkserveError, WorkerExit
from forkserve.handoff import (
    HANDOFF_AFTER_S,
    MAX_CARRIED,
    WATCH_INTERVAL_S,
    HandoffChannel,
    Moved,
)
from forkserve.health import with_health_path
from forkserve.heartbeat import MOVABLE_FDS, NOT_MOVABLE, SlotWriter, movable_code
from forkserve.hooks import HookRequest, HookResponse, Hooks
from forkserve.log import AccessLog, ErrorStream, JsonFormatter, RefusalLog, log, setup_error_log
from forkserve.parser import RequestHead
from forkserve.process import memory_reason, raise_fd_limit
from forkserve.requestid import IdSource, environ_key, with_request_id
from forkserve.response import REASONS, ResponseWriter, error_response
from forkserve.signals import SignalQueue
from forkserve.sockets import Listener
from forkserve.stats import NO_RESPONSE, StatsTable, StatsWriter
from forkserve.statsd import Statsd
from forkserve.wsgi import FileWrapper

if TYPE_CHECKING:
    from forkserve.relay import Relays

WORKER_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGHUP,
)
# The master's --timeout (and --boot-timeout) signal, sent first: a Python
# handler dumps every thread's stack with source lines, answers 500 if the
# request in the app has sent nothing yet, and exits. If it never runs (the
# worker is stuck in C), SIGABRT follows and faulthandler dumps from C.
TIMEOUT_SIGNAL = signal.SIGUSR2
TICK = 0.25  # seconds between deadline sweeps and heartbeats while idle
TITLE_INTERVAL = 1.0  # seconds between process title updates (setproctitle is a syscall)
# Connections taken per wake-up at most. Only the first with a complete
# request is read at once; the rest are parked unread (WorkerLoop.accept),
# so 500 clients connecting together are all accepted in a few passes
# instead of one per pass.
ACCEPT_BATCH = 64
EPOLLEXCLUSIVE = getattr(select, "EPOLLEXCLUSIVE", 0)
# Balance: a worker that keeps connections alive and holds more than this
# many above its least loaded serving peer steps out of the accept queue, so
# new connections go to the others; it looks again every BALANCE_RECHECK_S
# (WorkerLoop.balance).
BALANCE_SLACK = 1
BALANCE_RECHECK_S = 0.01
BALANCE_MAX_ASIDE_S = 0.2
# Draining: how long an idle keep-alive connection may still bring one more
# request (answered with Connection: close) before it gets its FIN. A client
# looping on its connection sends within milliseconds, so it is told to
# reconnect in a response instead of meeting a close it has to race
# (docs/signals.md "What happens to connections on a stop").
DRAIN_LAST_CHANCE_S = 0.5
HANDOFF_TAKE = 16  # connections taken from busy peers per wake-up at most
# Out of descriptors in accept (EMFILE/ENFILE): the listener stays readable,
# so retrying at once is a busy loop (measured: two workers wrote 93,000
# lines in 3 s under a 64-descriptor limit). The worker leaves the accept
# queue for a pause that doubles up to the maximum while the failures go on,
# and reports at most once a second.
ACCEPT_PAUSE_FIRST = 0.05
ACCEPT_PAUSE_MAX = 1.0


class WorkerState(enum.Enum):
    """A worker's life as the master sees it (DESIGN.md §4.6)."""

    BOOTING = "booting"  # forked, loading the app: --boot-timeout applies
    READY = "ready"  # its heartbeat slot carries its pid: serving; --timeout applies
    DRAINING = "draining"  # sent TERM: finishes what it has, then exits; SIGKILL at kill_at
    KILLED = "killed"  # sent ABRT/QUIT/KILL: waiting to be reaped


def worker_title(name: str, generation: int, requests: int | None = None) -> str:
    title = f"forkserve: worker [{name}] gen {generation}"
    return title if requests is None else f"{title} · {requests} req"


@dataclass
class Worker:
    """One worker process, as the master knows it (plain data, built before fork)."""

    cfg: Config
    listeners: list[Listener]
    slot: int
    heartbeat: Any  # Heartbeats; the worker writes its own slot
    generation: int = 1
    app: Callable[..., Any] | None = None  # preloaded in the master, or loaded after fork
    hooks: Hooks = field(default_factory=Hooks)
    pid: int = 0
    started_at: float = field(default_factory=time.monotonic)
    state: WorkerState = WorkerState.BOOTING
    # Why the master replaces it ("" = it keeps its place): it serves on until its
    # replacement is READY, so capacity never dips.
    retire_reason: str = ""
    boot_failure: str = ""  # set by the master when it gave up waiting for the boot
    kill_at: float = 0.0  # master: SIGKILL at this monotonic time (0 = no deadline)
    dump_at: float = 0.0  # master: SIGABRT (faulthandler's dump) at this time (0 = none)
    max_requests: int = 0  # --max-requests plus this worker's jitter (0 = no limit)
    retire_at: float = 0.0  # --max-worker-lifetime plus jitter, monotonic (0 = never)
    boot_error_fd: int = -1  # where a worker that cannot boot says why (one line)
    # Where a worker that leaves by itself (--max-requests, --max-worker-memory)
    # tells the master, which starts its replacement at once (Arbiter.collect_notices).
    notice_fd: int = -1
    # Moves parked connections with a request waiting away from a worker busy
    # in a slow request (forkserve.handoff); None = off.
    handoff: HandoffChannel | None = None
    stats: StatsTable | None = None  # --metrics-bind: the worker counts into its slot
    statsd: Statsd | None = None  # --statsd-host: the master's socket, inherited
    # --log-format json: an unlinked file the master opens before fork, where
    # faulthandler writes a dump; the master logs what is left in it at reap.
    dump_fd: int = -1
    # Set by the master: why it replaces this worker, as forkserve_worker_restarts_total
    # labels it (timeout, max_requests, max_memory, max_lifetime, reload).
    restart_reason: str = ""
    log = log  # gunicorn's hooks call worker.log.info(...)

    @property
    def alive(self) -> bool:
        return self.state in (WorkerState.BOOTING, WorkerState.READY)

    # -- after fork, in the child ----------------------------------------
    def run(self, server: Any = None) -> None:
        """Post-fork entry point. Never returns. `server` is what worker_exit gets."""
        self.pid = os.getpid()
        code: int = WorkerExit.OK
        loop: WorkerLoop | None = None
        try:
            threads = threads_per_worker(self.cfg.worker_class, self.cfg.threads)
            if threads > 1:
                # Imported only where it serves: a sync worker loads no thread pool.
                from forkserve.threads import ThreadedLoop

                loop = ThreadedLoop(self, threads)
            else:
                loop = WorkerLoop(self)
            code = loop.serve()
        except AppLoadError as exc:
            self.report_boot_error(str(exc))
            code = WorkerExit.APP_LOAD_ERROR
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else WorkerExit.OK
            if loop is not None and loop.booted and code != WorkerExit.OK:
                # The boot codes tell the master to give up on the pool: only a
                # worker that never served may use them. A sys.exit() after boot
                # (a hook, a thread's excepthook) is a crash, respawned as one.
                log.critical("worker exited with status %s after booting:\n%s",
                             exc.code, traceback.format_exc())
                code = WorkerExit.CRASHED
        except BaseException as exc:
            if loop is not None and loop.booted:
                log.critical("worker crashed:\n%s", traceback.format_exc())
                code = WorkerExit.CRASHED
            else:
                known = isinstance(exc, ForkserveError)  # already says what failed
                self.report_boot_error(str(exc) if known else f"{type(exc).__name__}: {exc}")
                code = WorkerExit.BOOT_ERROR
        finally:
            try:
                log.info("Worker exiting (pid: %d)", self.pid)
                self.hooks.call("worker_exit", server, self)
            except Exception:
                pass
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except Exception:
                pass
        os._exit(int(code))

    def report_leaving(self, why: str, reason: str) -> None:
        """Tell the master, in one atomic pipe write, that this worker is leaving and why.

        `why` is the restart reason's label (max_requests, max_memory) that
        forkserve_worker_restarts_total counts; `reason` the same for people.
        """
        if self.notice_fd < 0:
            return
        line = f"{os.getpid()} {why} {reason}".encode("utf-8", "replace")[:400] + b"\n"
        try:
            os.write(self.notice_fd, line)
        except OSError:
            pass  # the master finds out at its next check (heartbeat count, RSS)

    def report_boot_error(self, message: str) -> None:
        """Tell the master, in one atomic pipe write, why this worker cannot serve."""
        if self.boot_error_fd < 0:
            log.error("%s", message)
            return
        # One line per worker on the pipe: a message's own line breaks (the
        # traceback of an app that failed to import) travel as RS characters.
        text = f"{os.getpid()} {message}".replace("\n", BOOT_ERROR_LINE_BREAK)
        line = text.encode("utf-8", "replace")[:4000] + b"\n"
        try:
            os.write(self.boot_error_fd, line)
        except OSError:
            log.error("%s", message)


BOOT_ERROR_LINE_BREAK = "\x1e"  # ASCII record separator: never in a message


class _Hooks(RequestHooks):
    """Around each request: heartbeat, statistics, then the user's post_request hook."""

    def __init__(self, worker: Worker, slot: SlotWriter, stats: StatsWriter | None) -> None:
        self.worker = worker
        self.slot = slot
        self.stats = stats
        self.statsd = worker.statsd
        self.hooks = worker.hooks
        self.want_post = "post_request" in worker.hooks
        self.req: HookRequest | None = None
        # When the request in progress started (monotonic; 0 = none): the
        # handoff watcher thread reads it.
        self.busy_since = 0.0
        self.started_at = 0.0

    def started(self, request: RequestHead, environ: dict[str, Any], peer: bytes,
                now: float) -> None:
        self.busy_since = now
        text = b"%s %s from %s" % (request.method, request.target[:160], peer)
        self.slot.request_started(now, text)
        self.req = None
        self.started_at = now

    def finished(self, environ: dict[str, Any], writer: ResponseWriter, now: float) -> None:
        self.count(environ, writer, now - self.started_at)
        try:
            if self.want_post:
                req = self.req or HookRequest.from_environ(environ)
                resp = HookResponse(writer.status_line(), list(writer.sent_headers), writer.sent)
                self.hooks.call("post_request", self.worker, req, environ, resp)
        finally:
            # Idle (and beating) only after post_request: a slow hook is part
            # of the request for the master (--timeout), not a frozen worker.
            self.slot.request_finished(time.monotonic())

    def count(self, environ: dict[str, Any], writer: ResponseWriter, seconds: float) -> None:
        """--metrics-bind and --statsd-host: one answered request and its duration."""
        if self.stats is not None:
            self.stats.request_finished(environ["REQUEST_METHOD"], writer.status, seconds)
        if self.statsd is not None:
            status = writer.status[:3]
            self.statsd.request(int(status) if status.isdigit() else NO_RESPONSE, seconds)

    def wrap(self, app: Callable[..., Any]) -> Callable[..., Any]:
        """Run pre_request inside the app call, so its exception is that request's 500."""
        if "pre_request" not in self.hooks:
            return app
        hooks, worker = self.hooks, self.worker

        def app_with_pre_request(environ: dict[str, Any],
                                 start_response: Callable[..., Any]) -> Iterable[bytes]:
            self.req = HookRequest.from_environ(environ)
            fn = hooks.functions["pre_request"]
            try:
                fn(worker, self.req)
            except Exception:
                log.exception("Exception in the pre_request hook")
                raise
            result: Iterable[bytes] = app(environ, start_response)
            return result

        return app_with_pre_request


class WorkerLoop:
    """The serving loop of one worker process (post-fork only).

    This is the sync worker; forkserve.threads.ThreadedLoop extends it for
    --threads above 1 and swaps in the thread-safe collaborators below.
    """

    # Past a complete request, accept() takes the rest of a burst and parks them
    # unread: the handoff watcher moves them to an idle peer if that request is
    # slow. A threaded worker has no watcher, and leaves them in the backlog.
    parks_unread = True
    hooks_class: type[_Hooks] = _Hooks
    access_log_class: type[AccessLog] = AccessLog
    error_stream_class: type[ErrorStream] = ErrorStream
    refusal_log_class: type[RefusalLog] = RefusalLog
    multithread = False  # wsgi.multithread: the app is called from one thread only
    stats_writer_class: type[StatsWriter] = StatsWriter

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        cfg = worker.cfg
        self.cfg = cfg
        self.master_pid = os.getppid()
        self.signals = SignalQueue(WORKER_SIGNALS)
        # The master forked with its signals blocked (Arbiter.spawn): what came
        # since is delivered now, to the queue above.
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        self.slot = worker.heartbeat.writer(worker.slot)
        self.stats = (self.stats_writer_class(worker.stats.words, worker.slot)
                      if worker.stats is not None else None)
        self.hooks = self.hooks_class(worker, self.slot, self.stats)
        self.name = cfg.proc_name or cfg.app
        self.title_requests = -1
        self.title_at = 0.0
        self.booted = False
        self.next_tick = 0.0  # the loop's next heartbeat and sweep (monotonic)
        self.alive = True
        self.draining = False
        self.drain_deadline = 0.0
        self.conns: dict[int, Connection] = {}
        self.current: Connection | None = None  # the one running the app, for _abort
        self.ready: collections.deque[Connection] = collections.deque()
        self.settings = settings_from(cfg)
        self.request_id_key = environ_key(cfg.request_id_header) if cfg.request_id else None
        self.access_log = self.access_log_class(cfg.access_logfile, cfg.access_logformat,
                                                cfg.log_format == "json", self.request_id_key)
        self.refusals = self.refusal_log_class(self.access_log)
        self.settings.on_refused = self.report_refusal
        self.errors = self.error_stream_class()
        self.listen_socks: dict[int, tuple[socket.socket, dict[str, Any]]] = {}
        self.bases: list[dict[str, Any]] = []  # each listener's base environ, by index
        self.handoff = worker.handoff
        # With TLS a busy worker relays its parked connections to an idle peer
        # instead of handing them over (forkserve.relay): the watcher thread runs it.
        self.relays: Relays | None = None
        if self.settings.tls is not None and self.handoff is not None:
            from forkserve.relay import Relays  # imports ssl: only where TLS is on

            self.relays = Relays(cfg.write_timeout)
        # What a relayed connection is served with: its TLS ends in the relaying worker.
        self.plain_settings = (dataclasses.replace(self.settings, tls=None)
                               if self.settings.tls is not None else self.settings)
        # Connections relayed by another worker: fd -> (its slot, its pid). When
        # that worker leaves, they are ended as a draining worker ends its own.
        self.relayed: dict[int, tuple[int, int]] = {}
        # Held by the serving loop except while a request runs: the handoff
        # watcher takes it to touch the parked connections, so the two
        # threads never do at once.
        self.lock = threading.Lock()
        self.running_fd = -1  # the connection in the app, which the watcher never moves
        # Which parked connections the master may take out of this worker if it
        # freezes (heartbeat.MOVABLE_FDS, forkserve.rescue): the record of a
        # connection is cleared before the loop reads, closes or hands it off,
        # and set once it is parked with nothing read (`_place`, `accept`).
        # Two one-byte stores per keep-alive request. With TLS (the session
        # cannot leave this worker's OpenSSL; the master rescues nothing) or
        # without a handoff channel the stores go to a private table nobody
        # reads. Only this loop's thread writes it (and the watcher, under the
        # loop's lock).
        self.movable: memoryview = (
            worker.heartbeat.movable_table(worker.slot)
            if self.handoff is not None and not cfg.certfile
            else memoryview(bytearray(MOVABLE_FDS)))
        # Each listener's base environ (by identity) -> the records of a kept
        # and of a fresh connection from it; filled in boot().
        self.move_codes: dict[int, tuple[int, int]] = {}
        self.epoll = select.epoll()
        # Connections in the epoll set. A connection is added only once it has
        # to wait for its client: one answered and closed on its first read
        # (Connection: close, health checks) never costs a register/unregister.
        self.polled: set[int] = set()
        # Linux copies TCP_NODELAY from the listener to each accepted socket;
        # checked on the first connection, else set on every one.
        self.nodelay_inherited: bool | None = None
        self.last_eviction_log = 0.0
        self.peers = worker.heartbeat.peers(worker.slot)
        self.aside = False  # out of the accept queue: the listeners are not in the epoll set
        self.aside_since = 0.0
        self.newly_kept = False  # a connection was kept alive since balance() last looked
        self.saturated_since = 0.0  # threaded: every thread busy since (0.0 = not; sync: never)
        self.fd_shortage = AcceptBackoff()  # out of the accept queue while short of descriptors
        self.listening = False  # the listeners are in the epoll set
        # A descriptor kept in reserve: when accept fails for want of one, it
        # is closed so that one waiting client can be told why (503), then
        # taken again (the "reserve descriptor" trick of nginx and libuv users).
        self.spare_fd = -1
        self.recheck_at = 0.0  # while aside: when to look at the others' loads again
        # Connections that stay open across requests: kept open after a
        # response, or whose first request asks for keep-alive. Only these
        # make an imbalance last; one closed after its answer is gone at once.
        self.kept: set[int] = set()
        # Recycling, checked by the worker itself after every request so the
        # overshoot is what was already in flight, not what half a second of
        # the master's checks lets through (issue 11: --max-requests 50 served
        # a median of 2,300 requests; --max-worker-memory 100 reached 565 MiB).
        self.max_requests = worker.max_requests
        self.max_rss_pages = 0
        self.statm_fd = -1
        if cfg.max_worker_memory:
            self.max_rss_pages = cfg.max_worker_memory * 1024 * 1024 // os.sysconf("SC_PAGE_SIZE")
            try:
                self.statm_fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass  # no /proc: the master's check (arbiter.rss_mib) still applies

    def boot(self) -> Callable[..., Any]:
        setproctitle.setproctitle(worker_title(self.name, self.worker.generation))
        self.install_abort_handler()
        raise_fd_limit()
        app = self.worker.app
        if app is None:
            app = loader.load_app(self.cfg.app)
        app = self.hooks.wrap(app)
        app = with_health_path(app, self.cfg.health_path, lambda: self.draining)
        if self.cfg.request_id:  # outermost: hooks, app, response and access log share it
            app = with_request_id(app, self.cfg.request_id_header, IdSource())
        for listener in self.worker.listeners:
            sock = listener.sock
            sock.setblocking(False)
            if not listener.is_unix:
                # Responses go out in one write each: never hold them back (Nagle).
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            base = self._facts(listener).base_environ(self.errors, FileWrapper,
                                                      self.multithread)
            self.listen_socks[sock.fileno()] = (sock, base)
            self.move_codes[id(base)] = (movable_code(len(self.bases), fresh=False),
                                         movable_code(len(self.bases), fresh=True))
            self.bases.append(base)
        self._listen(True)
        self.spare_fd = _open_spare()
        self.epoll.register(self.signals.read_fd, select.EPOLLIN)
        if self.handoff is not None:
            self.epoll.register(self.handoff.fileno(), select.EPOLLIN | EPOLLEXCLUSIVE)
        self.worker.hooks.call("post_worker_init", self.worker)
        if self.cfg.gc_freeze:
            # Everything alive now lives as long as the worker: a full collection
            # that walks it all takes 20-35 ms even for hello world (measured:
            # one per worker in a 4 s wrk run, and it was the p99), under 1 ms
            # once frozen. O(1): the generations' lists are spliced, not walked.
            gc.freeze()
        return app

    def install_abort_handler(self) -> None:
        """TIMEOUT_SIGNAL, then SIGABRT: dump every thread's stack, answer if possible, exit.

        The master's timeout sends TIMEOUT_SIGNAL first. Its handler is Python:
        it runs in the main thread as soon as the interpreter gets control back
        (a `time.sleep`, a socket wait and any Python code do), so it can print
        the stacks as a Python traceback with source lines and still answer the
        client. Code stuck in C never gives control back: for that the master
        sends SIGABRT a moment later, and faulthandler writes the stacks from C,
        straight to the error log's fd, then re-raises to our Python handler
        (which runs if the C call ever returns). An operator's SIGABRT takes
        that second path. (`enable()` also dumps on SIGSEGV, SIGBUS, SIGFPE and
        SIGILL: a crashing C extension leaves a trace too.)
        """
        signal.signal(TIMEOUT_SIGNAL, self._on_timeout)
        signal.signal(signal.SIGABRT, self._on_abort)  # first: faulthandler chains to it
        faulthandler.enable(file=self._dump_fd(), all_threads=True)

    def _dump_fd(self) -> int:
        """Where faulthandler writes: the error log, or with JSON logs a file read back.

        With --log-format json a dump of many lines would break the one-object-
        per-line log, so it goes to the unlinked file the master opened for this
        worker (`Worker.dump_fd`). `_on_abort` logs it as one record with the
        stack in a field and empties the file; when no Python code runs after
        the dump (stuck in C until SIGKILL, a SIGSEGV), the master finds it
        there when it reaps the worker and logs the record itself.
        """
        if self.cfg.log_format != "json":
            return _error_log_fd()
        if self.worker.dump_fd < 0:  # a worker not forked by an Arbiter
            self.worker.dump_fd = open_dump_file()
        return self.worker.dump_fd

    def _on_timeout(self, signum: int, frame: FrameType | None) -> None:
        # Written with os.write, not the logger: the main thread may have been
        # interrupted inside a logging call, holding the handler's lock.
        stacks = python_stacks(frame)
        if self.cfg.log_format == "json":
            _write_stack_record(stacks.rstrip())  # one record, as the SIGABRT dump
        else:
            _write_error_log(stacks)
        self._abort()

    def _on_abort(self, signum: int, frame: FrameType | None) -> None:
        # Runs after faulthandler's dump, which names threads by id only: add names.
        names = ", ".join(f"0x{t.ident:016x} = {t.name}" for t in threading.enumerate()
                          if t.ident is not None)
        if self.cfg.log_format == "json" and self.worker.dump_fd >= 0:
            fd = self.worker.dump_fd
            _write_stack_record(f"{read_dump(fd).rstrip()}\nThread names: {names}")
            try:
                os.ftruncate(fd, 0)  # logged: the master must not log it again
            except OSError:
                pass
        else:
            _write_error_log(f"Thread names: {names}\n")
        self._abort()

    def _abort(self) -> None:
        """End the worker from a signal handler: answer the request in flight, then exit."""
        conn = self.current
        if conn is not None:
            conn.answer_timeout()  # 500 if nothing of its response went out, else a close
        self.worker.hooks.call("worker_abort", self.worker)
        try:
            sys.stderr.flush()
        finally:
            os._exit(WorkerExit.ABORTED)

    def report_refusal(self, refusal: Refusal) -> None:
        """A request refused before the app: counted (--metrics-bind), then logged.

        The one `on_refused` callback of the worker's connections: the access
        log and a rate-limited reason (RefusalLog), and the rejected-requests
        counter of the worker's statistics slot.
        """
        if self.stats is not None:
            self.stats.rejected(refusal.status)
        self.refusals.record(refusal.status, REASONS.get(refusal.status, "Error"),
                             refusal.detail, refusal.peer, refusal.request_line, refusal.sent)

    def _facts(self, listener: Listener) -> ServerFacts:
        if listener.is_unix:
            return ServerFacts("localhost", "", "https" if self.cfg.certfile else "http",
                               self.cfg.root_path)
        host, port = listener.sock.getsockname()[:2]
        scheme = "https" if self.cfg.certfile else "http"
        return ServerFacts(str(host), str(port), scheme, self.cfg.root_path)

    def serve(self) -> int:
        app = self.boot()
        self.booted = True
        self.lock.acquire()
        if self.handoff is not None:
            threading.Thread(target=self.watch, name="forkserve-handoff", daemon=True).start()
        self.slot.booted(os.getpid(), time.monotonic())
        self.peers.publish(0)
        log.info("Booted worker with pid: %d", os.getpid())
        self.next_tick = 0.0
        now = time.monotonic()
        while self.alive:
            try:
                events = self.epoll.poll(self.poll_timeout(now, bool(self.ready)))
            except InterruptedError:
                events = []
            now = time.monotonic()
            for fd, _mask in events:
                conn = self.conns.get(fd)
                if conn is not None:
                    # Read just before it runs, not all up front: while one
                    # request runs, the others of this batch stay unread in
                    # the kernel, and the watcher can still hand them to an
                    # idle peer if that request is slow.
                    self.unmovable(fd)
                    state = conn.on_readable(now)
                    if state is State.READY:
                        self.run(conn, app)
                    elif state is State.CLOSED:
                        self._forget(conn)
                else:
                    self.on_loop_event(fd, now, app)
            for _ in range(len(self.ready)):
                conn = self.ready.popleft()
                if conn.state is State.READY:
                    self.run(conn, app)
            if self.housekeeping(now) is WorkerExit.ORPHANED:
                return WorkerExit.ORPHANED
        self.peers.withdraw()
        self.nothing_movable()
        for conn in list(self.conns.values()):
            conn.close()
        return WorkerExit.OK

    def on_loop_event(self, fd: int, now: float, app: Callable[..., Any]) -> None:
        """An event on one of the loop's own descriptors: a listener, the signal
        pipe or the handoff queue (the sync and threaded loops alike)."""
        if fd in self.listen_socks:
            self.accept(fd, now)
        elif fd == self.signals.read_fd:
            self.handle_signals()
        elif self.handoff is not None and fd == self.handoff.fileno():
            self.take_handed_off(now, app)

    def count_connections(self) -> None:
        """--metrics-bind: publish how many connections idle and how many are arriving."""
        idle = reading = 0
        for conn in self.parked():  # (threaded: those on a thread are in progress, not here)
            if conn.state is State.IDLE or (conn.state is State.HEAD and not conn.buf
                                            and conn.requests):
                idle += 1
            elif conn.state in (State.HEAD, State.BODY, State.READY):
                reading += 1  # (CLOSING: answered with an error, lingering to close)
        assert self.stats is not None
        self.stats.connections(idle, reading)

    def poll_timeout(self, now: float, runnable: bool) -> float:
        """How long the loop may wait in epoll: not at all while a request can run."""
        if runnable:
            return 0.0
        if self.aside:
            return min(TICK, max(0.0, self.recheck_at - now))
        if self.fd_shortage.paused:
            return min(TICK, max(0.0, self.fd_shortage.until - now))
        return TICK

    def housekeeping(self, now: float) -> WorkerExit | None:
        """After each pass's events: balance, the descriptor pause, the tick, the drain.

        Shared by the sync loop and the threaded one (threads.ThreadedLoop), so
        the two cannot drift. Returns ORPHANED when the master is gone.
        """
        if self.aside and now >= self.recheck_at:
            self.balance(now)
        if self.fd_shortage.paused and now >= self.fd_shortage.until:
            self.fd_shortage.paused = False
            self._listen(not self.aside)
        if now >= self.next_tick:
            self.next_tick = now + TICK
            self.slot.beat(now)
            self.sweep(now)
            if self.stats is not None:
                self.count_connections()
            # Loads change as the others' clients come and go. While aside,
            # the recheck above already looks every BALANCE_RECHECK_S.
            if not self.aside:
                self.balance(now)
            self.on_tick(now)
            self.update_title(now)
            if os.getppid() != self.master_pid:
                log.warning("Master %d is gone; worker %d exiting", self.master_pid,
                            os.getpid())
                return WorkerExit.ORPHANED
        # Checked every pass, not every tick: a worker told to stop with
        # nothing in flight exits now instead of up to TICK later (a HUP or
        # a recycle then frees its memory and its slot sooner).
        if self.draining and ((not self.conns and not self.relaying())
                              or now >= self.drain_deadline):
            self.alive = False
        return None

    def relaying(self) -> bool:
        """Does this worker still relay TLS connections for its peers?"""
        return self.relays is not None and self.relays.count > 0

    def on_tick(self, now: float) -> None:
        """Once per TICK, after balancing: the threaded loop checks its timeouts here."""

    def update_title(self, now: float) -> None:
        """Show the request count in the process title, at most once per TITLE_INTERVAL."""
        requests = self.slot.requests
        if requests != self.title_requests and now - self.title_at >= TITLE_INTERVAL:
            self.title_requests, self.title_at = requests, now
            setproctitle.setproctitle(worker_title(self.name, self.worker.generation, requests))

    def run(self, conn: Connection, app: Callable[..., Any]) -> None:
        conn.draining = self.drains(conn)
        # The watcher may move parked connections while this one runs; never
        # this one (it turns IDLE at the end of its response, before the
        # lock is back).
        self.running_fd = conn.fd
        self.current = conn  # for the timeout handler (answer_timeout)
        self.lock.release()
        try:
            conn.run(app, self.access_log, self.hooks)
        finally:
            self.lock.acquire()
            self.hooks.busy_since = 0.0
            self.running_fd = -1
            self.current = None
        self.after_request(conn)

    def after_request(self, conn: Connection) -> None:
        """A request on `conn` was answered: count its connection as kept, place it, recycle?"""
        if conn.requests == 1 and conn.state not in (State.CLOSED, State.CLOSING):
            self.keep(conn)
        # Placed (or forgotten) before a recycle starts draining: draining
        # accepts, and a new socket may reuse a closed one's fd number.
        self._place(conn)
        if not self.draining and (self.max_requests or self.statm_fd >= 0):
            why, reason = self.recycle_reason()
            if reason:
                self.leave(why, reason)

    def recycle_reason(self) -> tuple[str, str]:
        """Why to replace this worker now: (restart label, text); ("", "") = it serves on.

        Checked after each request.
        """
        served = self.slot.requests
        if self.max_requests and served >= self.max_requests:
            return "max_requests", (f"served {served} requests "
                                    f"(--max-requests {self.max_requests})")
        if self.statm_fd >= 0:
            # One pread of a few bytes from an fd opened at boot: ~2 µs.
            try:
                resident = int(os.pread(self.statm_fd, 128, 0).split()[1])
            except (OSError, ValueError, IndexError):
                return "", ""
            if resident > self.max_rss_pages:
                mib = resident * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
                return "max_memory", memory_reason(mib, self.cfg.max_worker_memory)
        return "", ""

    def leave(self, why: str, reason: str) -> None:
        """Recycle: take no new request, tell the master (it starts a replacement), drain."""
        self.worker.report_leaving(why, reason)
        self.start_draining()

    def keep(self, conn: Connection) -> None:
        """`conn` stays open across requests: it counts in the load this worker publishes."""
        self.kept.add(conn.fd)
        self.newly_kept = True
        if not self.draining:
            self.peers.publish(len(self.kept))

    def _place(self, conn: Connection) -> None:
        """After a read or a request: queue it, park it in epoll, or forget it."""
        state = conn.state
        if state is State.CLOSED:
            self._forget(conn)
            return
        if state is State.CLOSING and conn.fd in self.kept:
            self.kept.discard(conn.fd)  # lingering after its FIN: no longer a load
            if not self.draining:
                self.peers.publish(len(self.kept))
        if state is State.READY:
            self.ready.append(conn)  # after the others, for fairness
            return
        if conn.fd not in self.polled:
            self.epoll.register(conn.fd, select.EPOLLIN)
            self.polled.add(conn.fd)
        if state is State.IDLE and not conn.buf and not self.draining:
            # Parked between requests with nothing read: the master may take it.
            try:
                self.movable[conn.fd] = self.move_codes[id(conn.base)][0]
            except IndexError:
                pass  # past MOVABLE_FDS: not published

    def nothing_movable(self) -> None:
        """Draining or exiting: the master may take none of this worker's connections."""
        self.movable[:] = bytes(MOVABLE_FDS)

    def unmovable(self, fd: int) -> None:
        """Before the loop reads, closes or hands off a parked connection: the master
        must not take it any more (it may be frozen right after this)."""
        try:
            self.movable[fd] = NOT_MOVABLE
        except IndexError:
            pass

    def accept(self, fd: int, now: float, batch: int = ACCEPT_BATCH) -> None:
        listener, base = self.listen_socks[fd]
        have_ready = False
        for _ in range(batch):
            if have_ready and not self.parks_unread:
                break  # the rest stay in the backlog, for a peer with a free thread
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self._short_of_descriptors(listener, now, exc)
                else:
                    log.warning("accept failed: %s", exc)
                break
            self.fd_shortage.succeeded()
            sock.setblocking(False)
            peer: tuple[str, int] | None = None
            if sock.family != socket.AF_UNIX:
                peer = (addr[0], addr[1])
                if self.nodelay_inherited is None:
                    self.nodelay_inherited = bool(
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                if not self.nodelay_inherited:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if len(self.conns) >= self.cfg.worker_connections:
                self.evict(now)
            conn = Connection(sock, peer, base, self.settings, now)
            self.conns[conn.fd] = conn
            self.unmovable(conn.fd)  # a number freed by a path that did not clear it
            if have_ready:
                # One connection of this batch already runs the app next. The
                # others are parked unread: read at the next pass, or, if that
                # request turns out slow, handed to an idle peer by the
                # watcher, their bytes all still in the kernel. (Read now, they
                # would queue behind it: four 1 s requests on four idle workers
                # finished at 1, 1, 2 and 3 s when a worker read four per
                # wake-up; issue 11.)
                self._place(conn)
                if not self.draining:
                    # Nothing read from it: movable as a fresh connection.
                    try:
                        self.movable[conn.fd] = self.move_codes[id(base)][1]
                    except IndexError:
                        pass
                continue
            # TCP_DEFER_ACCEPT means the request is usually already here.
            state = conn.on_readable(now)
            if state is State.READY and conn.keep_alive:
                self.keep(conn)
            self._place(conn)
            # A threaded worker with a free thread reads on: the next one runs too.
            have_ready = state is State.READY and not self.draining and not self.has_room()
        if not self.draining:
            self.balance(now)

    def has_room(self) -> bool:
        """Could a request accepted now start at once? The sync worker's next one waits."""
        return False

    def parked(self) -> list[Connection]:
        """The connections this loop may read, expire or close now (all, in a sync worker)."""
        return list(self.conns.values())

    # -- balance between workers ------------------------------------------
    # With EPOLLEXCLUSIVE the kernel wakes the first waiting worker in the
    # listener's queue. While the server is quiet that is always the same
    # worker, so every client that connects one at a time (nginx's upstream
    # keep-alive pool, long-lived API clients) lands on it, and under load it
    # alone serves them while the others idle. A burst splits by chance: 50
    # clients opened at once split anywhere from 25/25 to 19/31. Each worker
    # publishes its count (heartbeat.Peers); one that is ahead leaves the
    # accept queue until the others catch up. It leaves only after accepting
    # what it was woken for, so no connection is left in the backlog with
    # nobody told of it, and the least loaded serving worker never leaves, so
    # someone always accepts.

    def balance(self, now: float) -> None:
        """Step out of the accept queue while ahead of the others; back in once not."""
        if self.draining:
            return
        ahead = False
        # Only connections kept alive make an imbalance last, and only they are
        # counted, here and in the load each worker publishes: under
        # Connection: close each one is gone after its answer, and the kernel
        # already hands each to whichever worker is waiting. (Counting them
        # made every worker look ahead at once under connection-close traffic
        # beside idle keep-alive connections, and all of them left the accept
        # queue together: issue 11, 7,539 requests/s fell to 344.) A worker
        # leaves only when strictly ahead of a serving peer by more than the
        # slack, so the least loaded serving worker always accepts.
        #
        # A worker steps aside only when a kept-alive connection has landed on
        # it since it last looked (that is what balancing steers), and stays
        # aside at most BALANCE_MAX_ASIDE_S. Otherwise one left ahead by one
        # connection too many when the keep-alive clients stopped coming (6
        # against 4) would stay out of the accept queue for good, and the
        # connection-close traffic that follows would have one worker fewer
        # (measured: 80% of its throughput instead of 100%).
        kept = len(self.kept)
        fewest: int | None = None
        if kept > BALANCE_SLACK and (self.aside or self.newly_kept):
            fewest = self.peers.fewest(now)
            ahead = fewest is not None and kept > fewest + BALANCE_SLACK
        self.newly_kept = False
        if ahead and self.aside and now - self.aside_since >= BALANCE_MAX_ASIDE_S:
            ahead = False
        # A threaded worker whose threads are all busy steps aside too, while
        # some peer serves: what it accepts now would only wait for a thread.
        # (Not capped: it is back as soon as a thread is free.)
        if not ahead and self.saturated_since:
            if fewest is None:
                fewest = self.peers.fewest(now)
            ahead = fewest is not None
        if ahead and not self.aside:
            self.aside_since = now
            log.debug("Worker %d steps out of the accept queue: %d kept-alive connections, "
                      "a serving peer has %s", os.getpid(), kept, fewest)
        elif self.aside and not ahead:
            log.debug("Worker %d is back in the accept queue", os.getpid())
        # Back in: at the tail of the queue, behind the workers that stayed
        # (not while short of descriptors: AcceptBackoff ends that pause).
        self._listen(not ahead and not self.fd_shortage.paused)
        self.aside = ahead
        self.recheck_at = now + BALANCE_RECHECK_S

    def _listen(self, want: bool) -> None:
        """Put the listeners in the epoll set (join the accept queue) or take them out."""
        if want == self.listening:
            return
        for fd in self.listen_socks:
            if want:
                self.epoll.register(fd, select.EPOLLIN | EPOLLEXCLUSIVE)
            else:
                self.epoll.unregister(fd)
        self.listening = want

    def _short_of_descriptors(self, listener: socket.socket, now: float,
                              exc: OSError) -> None:
        """accept() failed with EMFILE/ENFILE: tell one client why, then pause accepting.

        The connections waiting in the backlog stay there (or go to a worker
        that has descriptors) until this worker frees some: nothing is lost
        by waiting, and the pause ends by itself.
        """
        if self.spare_fd >= 0:
            os.close(self.spare_fd)
            self.spare_fd = -1
            _refuse_one(listener)
            self.spare_fd = _open_spare()
        self.fd_shortage.failed(now, exc, len(self.conns))
        self._listen(False)

    # -- moving parked connections away from a slow request ---------------------
    def watch(self) -> None:
        """The handoff watcher thread: while a request runs long, move waiting neighbours.

        Runs in its own thread in the worker, for the worker's life. It sleeps
        but for a glance every WATCH_INTERVAL_S; it takes the loop's lock only
        once a request has run past HANDOFF_AFTER_S, when the serving loop is
        inside the app and does not hold it. With TLS it also runs the relays
        (forkserve.relay), waiting on their sockets instead of sleeping: they
        are its own, no other thread touches them.
        """
        relays = self.relays
        while True:
            if relays is not None:
                relays.wait(WATCH_INTERVAL_S)
            else:
                time.sleep(WATCH_INTERVAL_S)
            started = self.hooks.busy_since
            if (not started or self.draining
                    or time.monotonic() - started < HANDOFF_AFTER_S):
                continue
            if not self.lock.acquire(blocking=False):
                continue  # the loop is back from the app
            try:
                if self.hooks.busy_since == started:
                    self.hand_off_waiting()
            finally:
                self.lock.release()

    def hand_off_waiting(self) -> None:
        """Send every parked connection whose next request is arriving to another worker.

        Watcher thread, under the loop's lock. A connection moves when the
        taker can rebuild its state exactly (Connection.carried: between
        requests, with its head arriving, or with a request without a body
        waiting; up to MAX_CARRIED bytes read, which go with it). A TLS
        connection stays here and is relayed (relay_away), once its handshake,
        which this thread advances meanwhile, is done; a plain one goes whole,
        and the taker reads the rest of the request as if the connection had
        always been its own.
        """
        assert self.handoff is not None
        proxy_off = self.settings.proxy_protocol is None
        # Those with bytes arriving, and those with a complete request waiting
        # for its turn behind the slow one (read in the same pass).
        waiting = [fd for fd, _mask in self.epoll.poll(0)]
        waiting += [c.fd for c in self.ready if c.state is State.READY]
        for fd in waiting:
            conn = self.conns.get(fd)  # (None once moved: a READY one may be in both lists)
            if conn is None or fd == self.running_fd:
                continue
            if conn.handshaking:
                # Its TLS session cannot move before it exists: take the
                # handshake on here, without waiting for the slow request, and
                # relay the connection once its request starts to arrive.
                if not conn.handshake() and conn.state is State.CLOSED:
                    self._forget(conn)
                continue
            data = conn.carried()
            if data is None or len(data) > MAX_CARRIED:
                continue
            index = next((i for i, base in enumerate(self.bases) if base is conn.base), -1)
            if index < 0:
                continue
            # Fresh: nothing consumed yet, so the taker expects its PROXY header
            # as this worker would (one whose header was read goes as kept).
            fresh = conn.requests == 0 and (conn.proxy_pending or proxy_off)
            moved = Moved(index, conn.peer, fresh, data, conn.deadline, self.relayed.get(fd))
            record = self.movable[fd] if fd < MOVABLE_FDS else NOT_MOVABLE
            self.unmovable(fd)  # on its way: the master must not take a second copy
            sent = self.relay_away(conn, moved) if conn.tls else self.handoff.send(fd, moved)
            if not sent:
                if record != NOT_MOVABLE:
                    self.movable[fd] = record  # it stays here, parked as it was
                continue
            if conn.tls:
                conn.hold_fd = True  # the TLS socket is the relay's now
            log.debug("Handing %s to another worker%s: this one is busy", conn.peer_label,
                      " (relayed)" if conn.tls else "")
            self.relayed.pop(fd, None)
            self.polled.discard(fd)
            try:
                self.epoll.unregister(fd)
            except (OSError, ValueError):
                pass
            self.conns.pop(fd, None)
            if fd in self.kept:
                self.kept.discard(fd)
                self.peers.publish(len(self.kept))
            conn.close()  # our copy only: the one in flight keeps the connection open

    def relay_away(self, conn: Connection, moved: Moved) -> bool:
        """Hand the plaintext of TLS connection `conn` to a peer through a new relay.

        Watcher thread, under the loop's lock. The peer gets one end of a unix
        socket pair, marked as relayed by this worker, with the bytes already
        decrypted; this worker keeps the TLS socket and relays (forkserve.relay).
        """
        assert self.handoff is not None and self.relays is not None
        try:
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:  # out of descriptors: the connection stays here
            return False
        try:
            sent = self.handoff.send(theirs.fileno(),
                                     moved._replace(relay=(self.worker.slot, os.getpid())))
        finally:
            theirs.close()  # the message holds its own reference until taken
        if not sent:
            mine.close()
            return False
        self.relays.add(conn.sock, mine)  # type: ignore[arg-type]  # an ssl.SSLSocket
        return True

    def take_handed_off(self, now: float, app: Callable[..., Any]) -> None:
        """Serving loop: serve the connections busy peers handed over, one after another.

        Each is taken from the pair's queue only when this worker is free to
        run it, and run at once: the queue is shared and first in, first out,
        so what waits in it waits in arrival order and goes to whichever
        worker is free first. Up to HANDOFF_TAKE per wake-up, then the rest
        of this pass's events get their turn.

        (Taking several at once and parking all but one here, unread, made
        them wait for this worker's next request and then go round the queue
        again, behind fresher ones: under saturation a request could wait
        seconds while later ones ran; issue 11's tail.)
        """
        assert self.handoff is not None
        for _ in range(HANDOFF_TAKE):
            got = self.handoff.receive()
            if got is None:
                return
            sock, moved = got
            if moved.listener >= len(self.bases):
                sock.close()
                continue
            # Never wrapped in TLS here: a TLS connection moves only as the
            # plaintext end of a relay (its TLS ends in the relaying worker),
            # served with its listener's environ: https, the client's address.
            conn = Connection(sock, moved.peer, self.bases[moved.listener],
                              self.plain_settings, now)
            self.conns[conn.fd] = conn
            self.unmovable(conn.fd)
            if moved.relay is not None:
                self.relayed[conn.fd] = moved.relay
            if not moved.fresh:
                conn.proxy_pending = False  # the worker it came from read its PROXY header
                conn.requests = 1  # answered before: a kept-alive connection
                conn.state = State.IDLE  # between requests, as it was in the other worker
                conn.deadline = now + self.settings.keepalive
                self.keep(conn)
            if moved.data:
                # Its head had started to arrive there: go on from those bytes.
                conn.state, conn.buf, conn.deadline = State.HEAD, bytearray(moved.data), \
                    moved.deadline
                state = conn.advance_head(now)
                if state is State.HEAD:
                    state = conn.on_readable(now)
            else:
                state = conn.on_readable(now)
            if state is State.READY:
                self.run(conn, app)
                now = time.monotonic()
            elif state is State.CLOSED:
                self._forget(conn)
            else:
                self._place(conn)

    def evict(self, now: float) -> None:
        """At the connection cap: close the connection idle the longest."""
        idle = [c for c in self.parked() if c.state in (State.IDLE, State.HEAD)]
        if not idle:
            return
        victim = min(idle, key=lambda c: (c.state is not State.IDLE, c.last_active))
        if now - self.last_eviction_log > 1.0:
            self.last_eviction_log = now
            log.warning(
                "worker at --worker-connections=%d: closing the longest idle connection",
                self.cfg.worker_connections,
            )
        self.unmovable(victim.fd)
        victim.close()
        self._forget(victim)

    def sweep(self, now: float) -> None:
        """Close connections past their deadline (idle, slow head, slow body, lingering)."""
        if self.relayed:
            self.end_relayed(now)
        for conn in [c for c in self.parked() if c.deadline <= now]:
            if conn.state in (State.READY,):
                continue
            self.unmovable(conn.fd)
            conn.expire(now)  # an idle one with a request just in is served instead
            self._place(conn)

    def end_relayed(self, now: float) -> None:
        """Relayed connections whose relaying worker is leaving: end them as a drain would.

        That worker waits for its relays to close before it exits (bounded by
        --graceful-timeout); an idle one gets the same last chance as a
        draining worker's own, then a FIN, which the relay passes on.
        """
        for conn in self.parked():
            owner = self.relayed.get(conn.fd)
            if owner is not None and conn.state is State.IDLE and self.peers.gone(*owner):
                conn.deadline = min(conn.deadline, now + DRAIN_LAST_CHANCE_S)

    def drains(self, conn: Connection) -> bool:
        """Answer `conn`'s request with Connection: close? (This worker or its relay leaves.)"""
        if self.draining:
            return True
        owner = self.relayed.get(conn.fd) if self.relayed else None
        return owner is not None and self.peers.gone(*owner)

    def _forget(self, conn: Connection) -> None:
        self.unmovable(conn.fd)
        if self.relayed:
            self.relayed.pop(conn.fd, None)
        if self.conns.pop(conn.fd, None) is not None:
            if conn.fd in self.kept:
                self.kept.discard(conn.fd)
                if not self.draining:
                    self.peers.publish(len(self.kept))
            if conn.fd in self.polled:
                self.polled.discard(conn.fd)
                try:
                    self.epoll.unregister(conn.fd)
                except (OSError, ValueError):
                    pass  # already closed: the kernel dropped it from the epoll set
        conn.close()

    def handle_signals(self) -> None:
        for sig in self.signals.drain():
            if sig == signal.SIGTERM:
                self.start_draining()
            elif sig in (signal.SIGINT, signal.SIGQUIT):
                self.worker.hooks.call("worker_int", self.worker)
                self.alive = False
            elif sig == signal.SIGUSR1:
                setup_error_log(self.cfg.error_logfile, self.cfg.log_level, self.cfg.log_format)
                self.access_log.reopen()
                faulthandler.enable(file=self._dump_fd(), all_threads=True)

    def start_draining(self) -> None:
        """Graceful stop: serve what was already accepted, close idle connections, exit."""
        if self.draining:
            return
        self.draining = True
        self.peers.withdraw()  # the others stop making room for this worker
        # It reads every idle connection next, and publishes none again: a
        # draining worker is not rescued (the master only rescues READY ones).
        self.nothing_movable()
        if self.handoff is not None:
            # Leaving: take no more connections from busy peers.
            self.epoll.unregister(self.handoff.fileno())
        self.drain_deadline = time.monotonic() + self.cfg.graceful_timeout
        now = time.monotonic()
        # Connections the kernel already completed into the backlog: take them all
        # (up to the connection cap), so they get an answer instead of a reset
        # when the last copy of the socket closes. On a reload or recycle the
        # socket stays open in the other workers, which serve what arrives later.
        for fd in list(self.listen_socks):
            self.accept(fd, now, batch=max(0, self.cfg.worker_connections - len(self.conns)))
        self._listen(False)
        for sock, _base in self.listen_socks.values():
            sock.close()
        self.listen_socks.clear()
        self.aside = False
        # Nothing that has arrived is dropped. An idle keep-alive connection
        # may hold a request the kernel received while this worker was busy in
        # the app (it has not been read yet): read it now, and it is served
        # with Connection: close. The others get a short last chance
        # (DRAIN_LAST_CHANCE_S), then the sweep ends them with a FIN. One just
        # accepted whose first bytes are still in flight (no TCP_DEFER_ACCEPT on
        # unix sockets) is a request on its way: it keeps its head deadline.
        last_chance = now + DRAIN_LAST_CHANCE_S
        for conn in self.parked():
            if conn.state is State.IDLE:
                conn.on_readable(now)
                if conn.state is State.IDLE:
                    conn.deadline = min(conn.deadline, last_chance)
                self._place(conn)


class AcceptBackoff:
    """Pausing accept() while the process is out of descriptors (worker, post-fork)."""

    def __init__(self) -> None:
        self.paused = False
        self.until = 0.0  # monotonic end of the current pause
        self.pause = 0.0  # length of the last pause: doubles while failures go on
        self.reported_at = 0.0
        self.unreported = 0  # failures since the last log line

    def failed(self, now: float, exc: OSError, open_conns: int) -> None:
        self.pause = min(ACCEPT_PAUSE_MAX, self.pause * 2 or ACCEPT_PAUSE_FIRST)
        self.paused, self.until = True, now + self.pause
        self.unreported += 1
        if now - self.reported_at >= 1.0:
            log.warning(
                "accept failed: %s (%d times since the last report; %d connections open); "
                "not accepting for %.2fs (raise the descriptor limit, `ulimit -n`, or lower "
                "--worker-connections)", exc.strerror or exc, self.unreported, open_conns,
                self.pause)
            self.reported_at, self.unreported = now, 0

    def succeeded(self) -> None:
        self.pause = 0.0


def _open_spare() -> int:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1  # none to spare now: taken again at the next shortage


def _refuse_one(listener: socket.socket) -> None:
    """Accept one waiting connection with the spare descriptor, answer 503, close it."""
    try:
        sock, _addr = listener.accept()
    except OSError:
        return
    try:
        sock.setblocking(False)
        try:
            sock.recv(65536)  # what already came: closing with it unread would send RST
        except OSError:
            pass
        sock.send(error_response(503, body=OUT_OF_DESCRIPTORS))
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        sock.close()


OUT_OF_DESCRIPTORS = b"503 Service Unavailable\nThe server is out of file descriptors; retry.\n"


def python_stacks(interrupted: FrameType | None) -> str:
    """Every thread's Python stack, with source lines, as `traceback` prints them.

    `interrupted` is the main thread's frame where the signal arrived: the
    handler's own frames above it are left out.
    """
    names = {t.ident: t.name for t in threading.enumerate()}
    main = threading.main_thread().ident
    out = ["Python stacks of the worker's threads (most recent call last):\n"]
    for ident, frame in sys._current_frames().items():
        if ident == main and interrupted is not None:
            frame = interrupted
        out.append(f"\nThread {names.get(ident, '?')} (0x{ident:016x}):\n")
        out.extend(traceback.format_stack(frame))
    return "".join(out)


def _write_error_log(text: str) -> None:
    data = text.encode("utf-8", "replace")
    fd = _error_log_fd()
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass


def _error_log_fd() -> int:
    """The fd the error log writes to (stderr unless --error-logfile), for faulthandler."""
    for handler in log.handlers:
        stream = getattr(handler, "stream", None)
        if stream is not None:
            try:
                fd: int = stream.fileno()
                return fd
            except (AttributeError, OSError, ValueError):
                continue
    return sys.stderr.fileno()


def open_dump_file() -> int:
    """An unlinked temporary file for faulthandler's dump (--log-format json)."""
    import tempfile

    fd, path = tempfile.mkstemp(prefix="forkserve-dump-")
    os.unlink(path)
    return fd


def read_dump(dump_fd: int) -> str:
    """What faulthandler wrote to the --log-format json dump file."""
    try:
        size = os.fstat(dump_fd).st_size
        return os.pread(dump_fd, size, 0).decode("utf-8", "replace")
    except OSError:
        return ""


def _write_stack_record(stack: str) -> None:
    """--log-format json: a worker's thread stacks as one error-log record.

    Runs in a signal handler (TIMEOUT_SIGNAL or SIGABRT): the record is
    formatted here and written with os.write, never through a logging
    handler, whose lock the interrupted code may hold.
    """
    record = logging.LogRecord(log.name, logging.CRITICAL, __file__, 0,
                               "Worker %d: the stacks of its threads", (os.getpid(),), None)
    record.stack = stack
    _write_error_log(JsonFormatter().format(record) + "\n")
