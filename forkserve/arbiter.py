"""The master process: keeps the pool of workers at its wanted size.

Runs in the master only; it never imports the request path beyond what a
fork needs. Signal handlers only record (`signals.SignalQueue`); one loop
drains the recorded signals, reaps children, checks the workers' heartbeats
and reconciles the pool. Adding a signal is adding one entry to
`Arbiter.handlers`.

Workers come in generations. HUP (and `--reload`) starts a new generation;
the old one keeps serving until every new worker is READY, then drains. A
worker being replaced (recycling, TTOU) likewise serves until the pool is
complete without it. One rule in `manage_workers` does all of this, so
capacity never dips.
"""

from __future__ import annotations

import enum
import errno
import gc
import os
import random
import select
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import setproctitle

from forkserve import __version__, loader
from forkserve.config import Config, threads_per_worker
from forkserve.errors import ConfigError, ForkserveError, WorkerExit
from forkserve.handoff import HandoffChannel
from forkserve.heartbeat import MIN_RECORDS, Heartbeats, SlotView
from forkserve.hooks import HookError, Hooks
from forkserve.log import log, setup_error_log
from forkserve.notify import Notifier
from forkserve.parser import describe as describe_parser
from forkserve.parser import resolve as resolve_parser
from forkserve.pidfile import Pidfile
from forkserve.process import memory_reason
from forkserve.rescue import Rescuer
from forkserve.signals import SignalQueue, reset_to_default
from forkserve.sockets import REEXEC_FDS_ENV, Listener, handshakes_under_way, reexec_fds
from forkserve.stats import APP_METRICS_ENV, StatsTable, Totals
from forkserve.worker import (
    BOOT_ERROR_LINE_BREAK,
    TIMEOUT_SIGNAL,
    Worker,
    WorkerState,
    open_dump_file,
    read_dump,
)

if TYPE_CHECKING:
    from forkserve.metrics import AppMetricsDir, MetricsServer, Snapshot
    from forkserve.reloader import Reloader
    from forkserve.statsd import Statsd

MASTER_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGCHLD,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)
LOOP_INTERVAL = 0.5  # seconds between heartbeat checks when nothing happens
FAST_STOP_GRACE = 2.0  # seconds workers get to exit on INT/QUIT before SIGKILL
ABORT_GRACE = 2.0  # seconds a timed-out worker gets to dump its stacks before SIGKILL
# After TIMEOUT_SIGNAL, a worker still there this long is stuck where Python
# cannot run: SIGABRT makes faulthandler dump its stacks from C.
ABORT_DUMP_AFTER = 1.0
# An idle worker (no request running) beats every worker.TICK (0.25 s) from
# its event loop. One silent this long while idle is frozen (SIGSTOP, a
# debugger, swapped out, blocked outside the app) and its parked keep-alive
# connections wait for nobody: the master kills it then rather than at
# --timeout. Twelve missed beats: far beyond a loaded box's scheduling delay
# or a full garbage collection, well under --timeout's default 30 s. In a
# request a worker does not beat, and a slow app is not frozen: that stays
# --timeout's business, unless the kernel shows the worker stopped by a
# signal (SIGSTOP: state T), which runs no app either. A ptrace stop (t: a
# debugger at a breakpoint in the app) is left to --timeout.
IDLE_STALE_S = 3.0
STOPPED = "T"  # /proc/PID/stat state: stopped by a signal (SIGSTOP, SIGTSTP)
TRACED = "t"  # stopped under ptrace (a debugger)
DRAIN_GRACE = 1.0  # a draining worker is killed this long after its own --graceful-timeout
# A graceful stop, once new handshakes are refused, waits this long at most
# before signalling the workers, for handshakes already under way to finish
# into the backlog: a client's ACK and first bytes follow the SYN-ACK by one
# round trip, and after 1 s the kernel retransmits its SYN-ACK (the initial
# RTO, RFC 6298), which also ends TCP_DEFER_ACCEPT's wait for a client that
# has sent nothing. Checked every HANDSHAKE_POLL_S; no wait when none is.
HANDSHAKE_WAIT_S = 1.0
HANDSHAKE_POLL_S = 0.01
MAX_BACKOFF = 10.0
CRASH_WINDOW = 60.0  # crashes older than this no longer lengthen the back-off
OLD_MASTER_ENV = "FORKSERVE_OLD_MASTER"  # set by USR2 for the new master: the old one's pid
# Where the master was started: a USR2 re-exec runs from here (a relative
# --chdir or app path means the same thing again). Captured at import, which
# the CLI does before it changes directory.
LAUNCH_CWD = os.getcwd()


class State(enum.Enum):
    """The master's life (DESIGN.md §4.6)."""

    BOOTING = "booting"  # the first generation is loading: a worker that cannot boot stops us
    RUNNING = "running"  # serving; replacements start before the workers they replace stop
    RELOADING = "reloading"  # a new generation boots beside the serving one (HUP, --reload)
    STOPPING = "stopping"


class Arbiter:
    """The master loop (pre-fork setup and the loop itself; master only)."""

    log = log  # gunicorn's hooks call server.log.info(...)

    def __init__(self, cfg: Config, listeners: list[Listener],
                 app: Callable[..., Any] | None = None,
                 reload_config: Callable[[], Config] | None = None,
                 notifier: Notifier | None = None, metrics: MetricsServer | None = None,
                 statsd: Statsd | None = None) -> None:
        self.cfg = cfg
        self.notifier = notifier or Notifier(None)  # sd_notify; a no-op outside systemd
        self.reload_config = reload_config or (lambda: cfg)
        self.listeners = listeners
        self.app = app
        self.pid = os.getpid()
        self.num_workers = cfg.workers
        self.workers: dict[int, Worker] = {}
        self.heartbeats = Heartbeats(
            max(64, cfg.workers * 4),
            max(MIN_RECORDS, threads_per_worker(cfg.worker_class, cfg.threads)))
        self.generation = 1
        self.last_generation = 1
        # What a failed reload falls back to: generation, config, pool size.
        self.fallback: tuple[int, Config, int] = (1, cfg, cfg.workers)
        self.state = State.BOOTING
        self.stop_graceful = True
        self.exit_status = 0
        self.crashes: list[float] = []
        self.spawn_not_before = 0.0
        self.signals: SignalQueue | None = None
        self.hooks = Hooks()
        self.pidfile: Pidfile | None = None
        self.reloader: Reloader | None = None
        self.reexec_pid = 0  # the new master a USR2 started, while it runs
        self.old_master_pid = int(os.environ.pop(OLD_MASTER_ENV, "0") or 0)
        # Workers that cannot boot write "PID reason" here, then exit with a boot code.
        self.boot_errors_r, self.boot_errors_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.boot_errors: dict[int, str] = {}
        # Workers that leave by themselves (--max-requests, --max-worker-memory)
        # write "PID reason" here: it wakes the loop, which starts the
        # replacement at once instead of at its next 0.5 s check.
        self.notices_r, self.notices_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Busy workers move parked connections with a request waiting to idle
        # ones over this (forkserve.handoff), or relay TLS ones through it (forkserve.relay).
        self.handoff = HandoffChannel()
        # A frozen worker's parked connections with nothing read go to the
        # others through the same channel before it is killed (forkserve.rescue);
        # not with TLS: the session lives in the frozen worker's OpenSSL.
        self.rescuer = (Rescuer(self.handoff,
                                {lst.sock.getsockname()[1] for lst in listeners
                                 if not lst.is_unix},
                                any(lst.is_unix for lst in listeners))
                        if not cfg.certfile else None)
        # Observability (--metrics-bind, --statsd-host, PROMETHEUS_MULTIPROC_DIR):
        # the sockets are bound by the CLI before privileges are dropped.
        self.metrics = metrics
        self.statsd = statsd
        self.stats = StatsTable(self.heartbeats.slots) if metrics is not None else None
        self.exited = Totals()  # the counts of workers already reaped
        self.restarts: Counter[str] = Counter()  # reason -> workers replaced
        self.app_metrics: AppMetricsDir | None = None
        self.statsd_workers = -1  # the `workers` gauge last sent
        self.handlers: dict[int, Callable[[], None]] = {
            signal.SIGTERM: self.handle_term,
            signal.SIGINT: self.handle_quit,
            signal.SIGQUIT: self.handle_quit,
            signal.SIGCHLD: lambda: None,  # the loop reaps after every wake-up
            signal.SIGHUP: self.handle_hup,
            signal.SIGTTIN: self.handle_ttin,
            signal.SIGTTOU: self.handle_ttou,
            signal.SIGUSR1: self.handle_usr1,
            signal.SIGUSR2: self.handle_usr2,
            signal.SIGWINCH: self.handle_winch,
        }

    @property
    def name(self) -> str:
        return self.cfg.proc_name or self.cfg.app

    @property
    def running(self) -> bool:
        """Not stopping (a property, so mypy does not narrow `state` across the loop)."""
        return self.state is not State.STOPPING

    def set_title(self) -> None:
        new = " (new master)" if self.old_master_pid else ""
        setproctitle.setproctitle(f"forkserve: master [{self.name}] gen {self.generation}{new}")

    # -- the loop ---------------------------------------------------------
    def run(self) -> int:
        """Serve until stopped; returns the process exit status."""
        try:
            self.start()
            self.manage_workers()
            while self.running:
                self.wait(self.next_wakeup())
                self.dispatch_signals()
                self.collect_notices()
                self.reap()
                if not self.running:
                    break
                now = time.monotonic()
                self.check_workers(now)
                if self.rescuer is not None and self.rescuer.pending:
                    self.rescuer.send_pending(now)
                self.check_recycling(now)
                self.check_reloader(now)
                self.check_old_master()
                self.manage_workers()
                self.notify_progress()
        except HookError as exc:
            log.error("Stopping: %s", exc)
            self.exit_status = exc.exit_status
            self.stop(graceful=False)
        finally:
            self.shutdown()
        return self.exit_status

    def start(self) -> None:
        """Before the first fork: pidfile, hooks, preload, then announce the sockets."""
        if self.cfg.reload and self.cfg.preload_app:
            raise ConfigError("--reload and --preload do not mix: a preloaded app is "
                              "imported once, in the master, and cannot be reloaded")
        self.set_title()
        log.info("Starting forkserve %s", __version__)
        self.hooks = Hooks.load(self.cfg.hooks)
        if self.cfg.preload_app and self.app is None:
            self.app = loader.load_app(self.cfg.app)  # an AppLoadError ends here, exit 3
        share_common_modules()
        if self.cfg.pidfile:
            self.pidfile = Pidfile(self.cfg.pidfile)
            self.pidfile.create(self.pid)
        self.hooks.call("on_starting", self)
        # Handlers before the first line a supervisor or a test may wait for:
        # a TERM that follows "Listening at" must stop the server gracefully,
        # not kill the master with the default action.
        self.signals = SignalQueue(MASTER_SIGNALS)
        for listener in self.listeners:
            log.info("Listening at: %s (%d)", listener.url, self.pid)
        threads = threads_per_worker(self.cfg.worker_class, self.cfg.threads)
        log.info("Using worker: %s", f"gthread ({threads} threads)" if threads > 1 else "sync")
        # Also imports httptools when it serves: its pages are then shared by
        # every worker, like ssl's (share_common_modules).
        log.info("Using parser: %s", describe_parser(self.cfg.http))
        self.start_observability()
        if self.cfg.reload:
            # Imported only here: it loads ctypes (and subprocess), ~10 ms of
            # start-up that a server without --reload should not pay.
            from forkserve.reloader import Reloader

            self.reloader = Reloader([os.getcwd(), *self.cfg.pythonpath],
                                     self.cfg.reload_extra_files)
            how = "inotify" if self.reloader.fileno() is not None else "stat polling"
            log.info("Watching for code changes (%s, %d files)", how,
                     len(self.reloader.snapshot))
        self.hooks.call("nworkers_changed", self, self.num_workers, None)
        self.hooks.call("when_ready", self)

    def start_observability(self) -> None:
        """Before the first fork: the metrics endpoint, the app's metrics dir, statsd."""
        if os.environ.get(APP_METRICS_ENV):
            from forkserve.metrics import AppMetricsDir

            self.app_metrics = AppMetricsDir.from_env(os.environ)
            # A USR2 master shares the directory with the old master's workers.
            if self.app_metrics is not None and not self.old_master_pid:
                self.app_metrics.clear()
        if self.metrics is not None:
            self.metrics.register(self.metrics_snapshot,
                                  self.app_metrics.path if self.app_metrics else None)
            log.info("Metrics at: %s", self.metrics.url)
        if self.statsd is not None:
            from forkserve.statsd import install

            install(log, self.statsd)

    def metrics_snapshot(self) -> Snapshot:
        """At a scrape: the exited workers' counts plus every live slot."""
        from forkserve.metrics import Snapshot, listen_queues

        totals = Totals()
        totals.add(self.exited)
        states: Counter[str] = Counter()
        for worker in self.workers.values():
            if self.stats is not None:
                self.stats.read(worker.slot, totals)
            if worker.state is not WorkerState.BOOTING:
                # The heartbeat slot says whether the worker is inside a request;
                # a threaded worker's records, how many (its head's start field
                # then says "every thread busy since", not a request).
                view = self.heartbeats.read(worker.slot)
                totals.in_progress += len(view.in_flight) or bool(view.request_started)
            if worker.state is not WorkerState.KILLED:
                states[worker.state.value] += 1
        return Snapshot(totals, states, self.restarts, listen_queues(self.listeners),
                        __version__, resolve_parser(self.cfg.http))  # what serves, not "auto"

    def next_wakeup(self) -> float:
        """Until the next heartbeat check, or sooner when a respawn after back-off is due."""
        due = self.spawn_not_before - time.monotonic()
        return min(LOOP_INTERVAL, due) if due > 0 else LOOP_INTERVAL

    def wait(self, timeout: float) -> None:
        assert self.signals is not None
        fds = [self.signals.read_fd, self.notices_r]  # a signal delivered makes it readable
        if self.reloader is not None and self.reloader.fileno() is not None:
            fds.append(self.reloader.fileno())  # type: ignore[arg-type]
        write_fds: list[int] = []
        if self.metrics is not None:
            fds += self.metrics.read_fds()
            write_fds = self.metrics.write_fds()
        if self.rescuer is not None and (queue := self.rescuer.writable_fd()) is not None:
            write_fds.append(queue)  # rescued connections wait for room in the handoff queue
        try:
            readable, writable, _ = select.select(fds, write_fds, [], timeout)
        except InterruptedError:
            return
        if self.metrics is not None:
            self.metrics.handle(set(readable), set(writable), time.monotonic())

    def dispatch_signals(self) -> None:
        assert self.signals is not None
        for sig in self.signals.drain():
            if sig != signal.SIGCHLD:
                log.info("Handling signal: %s", signal.Signals(sig).name)
            self.handlers[sig]()

    # -- signal handlers (run in the loop, not in signal context) ----------
    def handle_term(self) -> None:
        self.stop(graceful=True)

    def handle_quit(self) -> None:
        self.stop(graceful=False)

    def handle_hup(self) -> None:
        self.reload("SIGHUP")

    def handle_ttin(self) -> None:
        self.set_num_workers(self.num_workers + 1)

    def handle_ttou(self) -> None:
        self.set_num_workers(max(1, self.num_workers - 1))

    def handle_usr1(self) -> None:
        setup_error_log(self.cfg.error_logfile, self.cfg.log_level, self.cfg.log_format)
        self.kill_all(signal.SIGUSR1)

    def handle_usr2(self) -> None:
        self.reexec()

    def handle_winch(self) -> None:
        # A terminal sends WINCH on every window resize: in a terminal's
        # foreground, stopping all workers then would be a trap (gunicorn only
        # honours WINCH when daemonized, for the same reason).
        if _in_terminal_foreground():
            log.info("SIGWINCH ignored: running in a terminal's foreground")
            return
        log.info("Gracefully stopping all workers; the master stays (HUP starts them again)")
        self.set_num_workers(0)

    def set_num_workers(self, wanted: int) -> None:
        old, self.num_workers = self.num_workers, wanted
        if old != wanted:
            self.hooks.call("nworkers_changed", self, wanted, old)

    # -- the pool ---------------------------------------------------------
    def manage_workers(self) -> None:
        """Reconcile the pool: `num_workers` current workers, READY, and nothing else.

        Current workers are of this generation and not being replaced. The others
        (an older generation, or one being recycled or removed) keep serving until
        every current worker is READY, then drain: capacity never dips.
        """
        if self.state is State.STOPPING:
            return
        alive = [w for w in self.workers.values() if w.alive]
        current = [w for w in alive if w.generation == self.generation and not w.retire_reason]
        extra = len(current) - self.num_workers
        if extra > 0:  # TTOU, WINCH, a reload with fewer workers: idle ones first, oldest first
            for worker in sorted(current, key=self.retire_order)[:extra]:
                worker.retire_reason = "fewer workers wanted"
            current = [w for w in current if not w.retire_reason]
        outgoing = [w for w in alive if w not in current]
        for worker in outgoing:
            if worker.state is WorkerState.BOOTING:
                self.retire(worker)  # serves nothing yet: no capacity to keep
        if len(current) < self.num_workers:
            if time.monotonic() >= self.spawn_not_before:
                for _ in range(self.num_workers - len(current)):
                    if self.spawn() is None:
                        break
            return
        if any(w.state is not WorkerState.READY for w in current):
            return
        for worker in outgoing:
            if worker.state is WorkerState.READY:
                log.info("Retiring worker %d (gen %d): %s", worker.pid, worker.generation,
                         worker.retire_reason or "replaced by a new generation")
                if worker.generation != self.generation and not worker.restart_reason:
                    worker.restart_reason = "reload"
                self.retire(worker)
        if self.state in (State.BOOTING, State.RELOADING):
            log.info("%s: generation %d is serving with %s",
                     "Ready" if self.state is State.BOOTING else "Reload complete",
                     self.generation, _workers(len(current)))
            self.state = State.RUNNING
            self.fallback = (self.generation, self.cfg, self.num_workers)

    def retire_order(self, worker: Worker) -> tuple[bool, float]:
        view = self.heartbeats.read(worker.slot)
        busy = worker.state is WorkerState.READY and bool(view.request_started or view.in_flight)
        return busy, worker.started_at

    def spawn(self) -> Worker | None:
        try:
            slot = self.heartbeats.claim({w.slot for w in self.workers.values()})
        except RuntimeError:
            # The shared table is sized at start (4x --workers, at least 64) and
            # cannot grow under running workers: a restart sizes it anew.
            log.error("Cannot start more than %d workers at once in this master; restart it "
                      "(or USR2) to raise the limit", self.heartbeats.slots)
            self.spawn_not_before = time.monotonic() + MAX_BACKOFF
            return None
        self.heartbeats.reset(slot, 0)
        if self.stats is not None:
            self.stats.reset(slot)
        cfg = self.cfg
        worker = Worker(cfg, self.listeners, slot, self.heartbeats, self.generation, self.app,
                        self.hooks, handoff=self.handoff, stats=self.stats, statsd=self.statsd)
        if cfg.max_requests:
            worker.max_requests = cfg.max_requests + random.randint(0, cfg.max_requests_jitter)
        if cfg.max_worker_lifetime:
            worker.retire_at = (worker.started_at + cfg.max_worker_lifetime
                                + random.uniform(0, cfg.max_worker_lifetime_jitter))
        if cfg.log_format == "json":
            try:
                worker.dump_fd = open_dump_file()
            except OSError as exc:  # no temporary directory: the dump goes unlogged
                log.warning("Cannot create a stack dump file for the worker: %s", exc)
        self.hooks.call("pre_fork", self, worker)
        if cfg.gc_freeze:
            # The master's objects (and a --preload app) are the worker's from
            # birth: frozen before fork, no collection in the worker writes to
            # their headers, so their pages stay shared instead of being copied.
            gc.freeze()
        # Signals wait while the child still has the master's handlers: one
        # delivered then (the child may not run at all before the master sends
        # TERM on a stop right after a spawn) wrote its byte to the master's
        # wakeup pipe and was lost to the worker, which then served on until
        # SIGKILL (1 stop in 8 right after start, measured). The child
        # unblocks them once its own SignalQueue is in place (WorkerLoop).
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
        pid = os.fork()
        if pid == 0:  # the child: becomes the worker and never returns
            self._become_worker(worker)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        worker.pid = pid
        self.workers[pid] = worker
        log.info("Booting worker with pid: %d (gen %d)", pid, worker.generation)
        return worker

    def _become_worker(self, worker: Worker) -> None:
        try:
            reset_to_default(MASTER_SIGNALS)
            if self.signals is not None:
                os.close(self.signals.read_fd)
                os.close(self.signals.write_fd)
            if self.reloader is not None:
                self.reloader.close()
            os.close(self.boot_errors_r)
            os.close(self.notices_r)
            if self.rescuer is not None:
                self.rescuer.close_in_child()
            for other in self.workers.values():  # the others' dump files are not its own
                if other.dump_fd >= 0:
                    os.close(other.dump_fd)
            if self.metrics is not None:
                self.metrics.close_in_worker()
            random.seed()
            worker.boot_error_fd = self.boot_errors_w
            worker.notice_fd = self.notices_w
            worker.pid = os.getpid()
            self.hooks.call("post_fork", self, worker)
            worker.run(self)
        except HookError as exc:
            worker.report_boot_error(str(exc))
        finally:
            os._exit(WorkerExit.BOOT_ERROR)

    def retire(self, worker: Worker) -> None:
        """Graceful stop of one worker: TERM, then SIGKILL after its --graceful-timeout."""
        worker.state = WorkerState.DRAINING
        worker.kill_at = time.monotonic() + worker.cfg.graceful_timeout + DRAIN_GRACE
        self.kill(worker.pid, signal.SIGTERM)

    def abort(self, worker: Worker) -> None:
        """Timed out: TIMEOUT_SIGNAL (Python dump, a 500, exit), SIGABRT (C dump), SIGKILL."""
        worker.state = WorkerState.KILLED
        now = time.monotonic()
        worker.dump_at = now + ABORT_DUMP_AFTER
        worker.kill_at = now + ABORT_GRACE
        self.kill(worker.pid, TIMEOUT_SIGNAL)

    def kill(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def kill_all(self, sig: int) -> None:
        for pid in list(self.workers):
            self.kill(pid, sig)

    def reap(self) -> None:
        """Collect every exited child (also strays when forkserve is PID 1)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.reexec_pid:
                self.on_new_master_exit(status)
                continue
            worker = self.workers.get(pid)
            if worker is None:
                continue  # not ours: an orphan re-parented to us as PID 1
            # One that left by itself wrote its notice before exiting, maybe
            # after this loop last looked: read it while it is still listed.
            self.collect_notices()
            del self.workers[pid]
            self.heartbeats.clear_load(worker.slot)  # even a killed worker stops counting
            self.account_exit(worker)
            self.on_worker_exit(worker, status)
            if worker.dump_fd >= 0:
                self.log_dump(worker)
            try:
                self.hooks.call("child_exit", self, worker)
            except HookError:
                if self.state is not State.STOPPING:
                    raise  # fatal as in gunicorn; while stopping, logged is enough

    def account_exit(self, worker: Worker) -> None:
        """A reaped worker: keep its counts, count its restart, drop its live app metrics."""
        if self.stats is not None:
            gone = Totals()
            self.stats.read(worker.slot, gone)
            self.exited.add(gone)  # counters only: its gauges (in progress, ...) end with it
            self.stats.reset(worker.slot)
        reason = self.restart_reason(worker)
        if reason:
            self.restarts[reason] += 1
        if self.app_metrics is not None:
            self.app_metrics.process_dead(worker.pid)

    def restart_reason(self, worker: Worker) -> str:
        """Why a reaped worker is being replaced ("" when it is not: stopping, fewer wanted)."""
        if self.state is State.STOPPING:
            return ""
        if worker.restart_reason:  # timeout, max_requests, max_memory, max_lifetime, reload
            return worker.restart_reason
        if worker.state in (WorkerState.DRAINING, WorkerState.KILLED):
            return ""  # TTOU, WINCH: stopped on purpose, not replaced
        return "crash"

    def on_worker_exit(self, worker: Worker, status: int) -> None:
        if os.WIFSIGNALED(status):
            how = f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
            code = -1
        else:
            code = os.WEXITSTATUS(status)
            how = f"exited with {WorkerExit.describe(code)}"
        if worker.boot_failure:
            self.boot_failed(worker, worker.boot_failure, 1)
        elif code in (WorkerExit.APP_LOAD_ERROR, WorkerExit.BOOT_ERROR):
            self.collect_boot_errors()
            reason = self.boot_errors.pop(worker.pid, "see the log above")
            # The master's exit status mirrors the CLI's: 3 = the app cannot load.
            self.boot_failed(worker, reason, 3 if code == WorkerExit.APP_LOAD_ERROR else 1)
        elif worker.state in (WorkerState.DRAINING, WorkerState.KILLED) or (
                self.state is State.STOPPING) or (worker.retire_reason and code == 0):
            log.info("Worker %d %s", worker.pid, how)
        else:
            self.backoff(f"Worker {worker.pid} {how}")

    def log_dump(self, worker: Worker) -> None:
        """--log-format json: a dump the worker could not log itself, as one record.

        faulthandler writes from C to the worker's dump file; a worker stuck in
        C until SIGKILL (or killed by SIGSEGV) never runs the Python code that
        would log it, so the master does, after the reap.
        """
        try:
            dump = read_dump(worker.dump_fd).rstrip()
        finally:
            os.close(worker.dump_fd)
            worker.dump_fd = -1
        if dump:
            log.critical("Worker %d: the stacks of its threads (written by faulthandler)",
                         worker.pid, extra={"stack": dump})

    def backoff(self, what: str) -> None:
        """A crash: respawn later, twice as late for each recent crash (up to MAX_BACKOFF)."""
        now = time.monotonic()
        self.crashes = [t for t in self.crashes if now - t < CRASH_WINDOW] + [now]
        delay = min(MAX_BACKOFF, 0.1 * 2 ** (len(self.crashes) - 1))
        self.spawn_not_before = now + delay
        log.warning("%s; replacing it in %.1fs", what, delay)

    def boot_failed(self, worker: Worker, reason: str, exit_status: int) -> None:
        """A worker could not load the app or boot: what that means depends on our state."""
        if (self.state is State.STOPPING or worker.generation != self.generation
                or worker.state is WorkerState.DRAINING):  # no longer wanted anyway
            log.info("Worker %d (gen %d) could not boot: %s", worker.pid, worker.generation,
                     reason)
        elif self.state is State.BOOTING:
            log.error("Worker failed to boot: %s", reason)
            self.exit_status = exit_status
            self.stop(graceful=False)
        elif self.state is State.RELOADING:
            failed = self.generation
            self.generation, self.cfg, self.num_workers = self.fallback
            self.state = State.RUNNING
            self.set_title()
            log.error("Reload failed, generation %d keeps serving: a worker of generation %d "
                      "could not boot: %s", self.generation, failed, reason)
        elif any(w.state is WorkerState.READY for w in self.workers.values()):
            # The code on disk broke since the last (re)load: keep serving with
            # the workers that have it loaded, retry with back-off.
            self.backoff(f"Worker {worker.pid} could not boot: {reason}")
        else:
            log.error("Worker failed to boot and none is serving: %s", reason)
            self.exit_status = exit_status
            self.stop(graceful=False)

    def collect_notices(self) -> None:
        """Workers that are leaving by themselves: mark them, so replacements start now."""
        try:
            text = os.read(self.notices_r, 65536).decode("utf-8", "replace")
        except BlockingIOError:
            return
        for line in text.splitlines():  # "PID LABEL REASON" (Worker.report_leaving)
            pid, _, rest = line.partition(" ")
            why, _, reason = rest.partition(" ")
            worker = self.workers.get(int(pid)) if pid.isdigit() else None
            if worker is not None:
                self.mark_leaving(worker, why, reason)

    def mark_leaving(self, worker: Worker, why: str, reason: str) -> None:
        """A worker leaving by itself: replaced now, counted under restart reason `why`."""
        if not worker.retire_reason:
            log.info("Replacing worker %d: %s", worker.pid, reason)
            worker.retire_reason = reason
            worker.restart_reason = why

    def collect_boot_errors(self) -> None:
        try:
            text = os.read(self.boot_errors_r, 65536).decode("utf-8", "replace")
        except BlockingIOError:
            return
        for line in text.split("\n"):
            pid, _, reason = line.partition(" ")
            if pid.isdigit():
                self.boot_errors[int(pid)] = reason.replace(BOOT_ERROR_LINE_BREAK, "\n")

    # -- health -----------------------------------------------------------
    def check_workers(self, now: float) -> None:
        """Booted yet? Booting too long? Silent too long? Past its kill deadline?"""
        for worker in list(self.workers.values()):
            if worker.dump_at and now >= worker.dump_at:
                worker.dump_at = 0.0
                self.kill(worker.pid, signal.SIGABRT)
            if worker.kill_at and now >= worker.kill_at:
                worker.state, worker.kill_at = WorkerState.KILLED, 0.0
                self.kill(worker.pid, signal.SIGKILL)
                continue
            view = self.heartbeats.read(worker.slot)
            if worker.state is WorkerState.BOOTING:
                if view.pid:
                    worker.state = WorkerState.READY
                elif self.cfg.boot_timeout and now - worker.started_at > self.cfg.boot_timeout:
                    worker.boot_failure = (f"it did not load the app within --boot-timeout "
                                           f"{self.cfg.boot_timeout:g}s")
                    log.critical("WORKER BOOT TIMEOUT (pid:%d) still loading the app after "
                                 "%.1fs; the stacks of its threads follow",
                                 worker.pid, now - worker.started_at)
                    worker.restart_reason = "timeout"
                    self.abort(worker)
            elif worker.state is WorkerState.READY and self.cfg.timeout:
                silent = now - view.heartbeat
                if silent > self.cfg.timeout:
                    log.critical("WORKER TIMEOUT (pid:%d) %s; the stacks of its threads follow",
                                 worker.pid, describe_activity(view, now, silent))
                    worker.restart_reason = "timeout"
                    self.abort(worker)
                elif silent > IDLE_STALE_S and (
                        not (view.request_started or view.in_flight)
                        or process_state(worker.pid) == STOPPED):
                    self.kill_frozen(worker, silent)

    def kill_frozen(self, worker: Worker, silent: float) -> None:
        """Master: an idle worker stopped beating, or the kernel shows it stopped.

        Its parked keep-alive clients must not wait for it until --timeout.

        SIGKILL at once (a stopped process would not run a dump handler), and
        manage_workers starts a replacement. First the connections it parked
        with nothing read (published in its slot) are taken out of it and
        passed to the other workers (forkserve.rescue): a request a client
        already sent on one is answered on the same connection. The rest (the
        one in the app, half-read heads, TLS) close with it; their clients
        see a reset and reconnect.
        """
        how = {STOPPED: "stopped (SIGSTOP)", TRACED: "stopped by a debugger"}.get(
            process_state(worker.pid), "frozen")
        rescuing = self.rescuer is not None and not self.rescuer.unavailable
        log.critical("WORKER FROZEN (pid:%d) %s and silent for %.1fs; killing it; %s",
                     worker.pid, how, silent,
                     "its parked idle connections go to the other workers" if rescuing
                     else "its keep-alive clients reconnect to a live worker")
        worker.restart_reason = "timeout"
        worker.state = WorkerState.KILLED
        if self.rescuer is None:
            self.kill(worker.pid, signal.SIGKILL)
            return
        rescued = self.rescuer.kill(worker.pid, lambda: self.heartbeats.read_movable(worker.slot),
                                    self.kill)
        if rescued:
            log.info("Rescued %d parked connection(s) of worker %d for the other workers",
                     rescued, worker.pid)

    def check_recycling(self, now: float) -> None:
        """Mark at most one worker for replacement at a time, so recycles spread out."""
        if self.state is not State.RUNNING:
            return
        if any(w.retire_reason and w.alive for w in self.workers.values()):
            return  # one replacement at a time
        for worker in sorted(self.workers.values(), key=lambda w: w.started_at):
            if worker.state is not WorkerState.READY or worker.generation != self.generation:
                continue
            why, reason = self.recycle_reason(worker, now)
            if reason:
                log.info("Replacing worker %d: %s", worker.pid, reason)
                worker.retire_reason = reason
                worker.restart_reason = why
                return

    def recycle_reason(self, worker: Worker, now: float) -> tuple[str, str]:
        """(the restart reason's label, the same for people), or ("", "") to keep it."""
        cfg = worker.cfg
        if worker.max_requests:
            served = self.heartbeats.read(worker.slot).requests
            if served >= worker.max_requests:
                return "max_requests", (f"served {served} requests (--max-requests "
                                        f"{worker.max_requests})")
        if worker.retire_at and now >= worker.retire_at:
            return "max_lifetime", (f"ran for {now - worker.started_at:.0f}s "
                                    f"(--max-worker-lifetime {cfg.max_worker_lifetime:g})")
        if cfg.max_worker_memory:
            rss = rss_mib(worker.pid)
            if rss > cfg.max_worker_memory:
                return "max_memory", memory_reason(rss, cfg.max_worker_memory)
        return "", ""

    # -- reloads ----------------------------------------------------------
    def reload(self, why: str) -> None:
        """Start a new generation with the configuration re-read (HUP, --reload)."""
        if self.state is State.STOPPING:
            return
        # Workers may have booted since the last loop turn: a reload falls back to
        # the first generation only once it serves.
        self.check_workers(time.monotonic())
        self.manage_workers()
        self.hooks.call("on_reload", self)
        try:
            cfg = self.reload_config()
            parser = describe_parser(cfg.http)  # a missing httptools fails here, not at fork
        except ForkserveError as exc:
            log.error("Reload failed, the current workers keep serving: %s", exc)
            return
        if cfg.http != self.cfg.http:
            log.info("Using parser: %s", parser)
        if cfg.bind != self.cfg.bind:
            log.warning("--bind changed; a reload keeps the listening sockets (USR2 or a "
                        "restart binds the new addresses)")
        if self.state is not State.BOOTING:
            self.state = State.RELOADING
            self.notifier.reloading()  # READY=1 follows once the new generation serves
        self.cfg = cfg
        self.set_num_workers(cfg.workers)
        self.last_generation += 1
        self.generation = self.last_generation
        self.spawn_not_before = 0.0
        self.set_title()
        log.info("Reloading (%s): starting generation %d with %s%s", why,
                 self.generation, _workers(self.num_workers),
                 "; the preloaded app is not reloaded" if self.app is not None else "")

    def check_reloader(self, now: float) -> None:
        if self.reloader is None:
            return
        changed = self.reloader.changed(now)
        if changed:
            shown = ", ".join(os.path.relpath(p) for p in changed[:3])
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            self.reload(f"{shown}{more} changed")

    # -- USR2: a new master on the same sockets ----------------------------
    def reexec(self) -> None:
        """Fork and exec a new master that inherits the listening sockets."""
        if self.reexec_pid:
            log.warning("USR2 ignored: the new master (pid %d) is still running",
                        self.reexec_pid)
            return
        if self.old_master_pid and os.getppid() == self.old_master_pid:
            log.warning("USR2 ignored: the old master (pid %d) is still running; stop it first",
                        self.old_master_pid)
            return
        if self.pidfile is not None:
            self.pidfile.rename(self.pidfile.path + ".oldbin")
        pid = os.fork()
        if pid:
            self.reexec_pid = pid
            log.info("Started a new master (pid %d) on the same sockets; send this master "
                     "(pid %d) WINCH or TERM once it is serving", pid, self.pid)
            return
        try:  # the child: becomes the new master
            reset_to_default(MASTER_SIGNALS)
            self.hooks.call("pre_exec", self)
            env = dict(os.environ)
            env[REEXEC_FDS_ENV] = reexec_fds(self.listeners)
            env[OLD_MASTER_ENV] = str(self.pid)
            os.chdir(LAUNCH_CWD)
            argv = [sys.executable, *sys.orig_argv[1:]]
            os.execve(sys.executable, argv, env)
        except HookError:
            pass  # logged with its traceback; the old master sees this child exit
        except BaseException:
            log.exception("Re-executing the master failed")
        finally:
            os._exit(1)

    def on_new_master_exit(self, status: int) -> None:
        log.error("The new master (pid %d) exited (status %d); this master stays in charge",
                  self.reexec_pid, os.waitstatus_to_exitcode(status))
        self.reexec_pid = 0
        if self.pidfile is not None and self.pidfile.path.endswith(".oldbin"):
            self.pidfile.rename(self.pidfile.path[: -len(".oldbin")])

    def check_old_master(self) -> None:
        if self.old_master_pid and os.getppid() != self.old_master_pid:
            log.info("The old master (pid %d) is gone: this master is in charge",
                     self.old_master_pid)
            self.old_master_pid = 0
            self.set_title()

    # -- stopping ---------------------------------------------------------
    def stop(self, graceful: bool) -> None:
        if self.state is State.STOPPING and graceful:
            return
        self.state = State.STOPPING
        self.stop_graceful = graceful
        self.notifier.stopping()

    def notify_progress(self) -> None:
        """sd_notify: READY=1 once every current-generation worker serves, STATUS, watchdog."""
        current = [self.heartbeats.read(w.slot) for w in self.workers.values()
                   if w.generation == self.generation and not w.retire_reason and w.alive]
        self.notifier.tick(time.monotonic(), current, self.num_workers)
        if self.statsd is not None:
            alive = sum(1 for w in self.workers.values() if w.alive)
            if alive != self.statsd_workers:  # gunicorn's gauge; a change is worth a datagram
                self.statsd_workers = alive
                self.statsd.workers(alive)

    def refuse_new_connections(self, unix: bool) -> set[int]:
        """Master, full stop: from now on no connection completes into a closing backlog.

        Each worker accepts what is queued when it gets its TERM, then closes
        its copy of the socket; a connection completed after that would be
        reset when the last copy closes, after its client sent a request.
        Refused at the door instead, the client learns before it sends
        anything (Listener.refuse_new_connections says how). Only on sockets
        a forkserve master bound (Listener.owned) and no other master shares:
        not while the new master of a USR2 upgrade serves on them, nor while
        the old one still does (a rollback), and never on sockets systemd or
        a parent (fd://) passed in, which live on after this process exits
        (a filter would stay attached to them). `unix`: the unix sockets,
        else the TCP ones. Returns the TCP ports now refusing new handshakes.
        """
        if self.reexec_pid or (self.old_master_pid and os.getppid() == self.old_master_pid):
            return set()
        ports = set()
        for listener in self.listeners:
            if listener.owned and listener.is_unix == unix:
                why = listener.refuse_new_connections()
                if why:
                    log.info("New connections to %s are not refused during the stop (%s): "
                             "one arriving after the workers' last accept is reset",
                             listener.url, why)
                elif not listener.is_unix:
                    ports.add(listener.sock.getsockname()[1])
        return ports

    def let_handshakes_finish(self, ports: set[int]) -> None:
        """Master, graceful stop, new handshakes refused: let those under way land first.

        A handshake the kernel answered before the door closed completes
        into the backlog one round trip later; an idle worker told to stop
        now would make its last accept before that, and the connection
        would be reset when the port closes, after its client sent its
        request. The workers keep serving as usual meanwhile.
        """
        deadline = time.monotonic() + HANDSHAKE_WAIT_S
        under_way = handshakes_under_way(ports)
        if under_way > 0:
            log.info("Letting %d TCP handshake(s) under way finish before the workers stop "
                     "(at most %.1fs)", under_way, HANDSHAKE_WAIT_S)
        while under_way > 0 and time.monotonic() < deadline:
            time.sleep(HANDSHAKE_POLL_S)
            under_way = handshakes_under_way(ports)

    def shutdown(self) -> None:
        """Stop every worker (gracefully or fast), wait for them, then clean up."""
        graceful = self.stop_graceful
        sig = signal.SIGTERM if graceful else signal.SIGQUIT
        for worker in self.workers.values():
            worker.state = WorkerState.DRAINING
        # Before the workers' last accepts. Unix sockets last: a unix connect
        # has no handshake to wait for, and a unix listener shut down for
        # reading stays readable, which would spin the workers' loops until
        # their TERM.
        ports = self.refuse_new_connections(unix=False)
        if graceful and ports:  # (a fast stop takes no last accepts)
            self.let_handshakes_finish(ports)
        self.refuse_new_connections(unix=True)
        self.kill_all(sig)
        # Workers hold their own copies; the socket closes when the last one goes.
        for listener in self.listeners:
            listener.close(unlink=False)
        limit = self.cfg.graceful_timeout if graceful else FAST_STOP_GRACE
        deadline = time.monotonic() + limit
        while self.workers and time.monotonic() < deadline:
            self.wait(0.1)
            if self.signals is not None:
                for sig_seen in self.signals.drain():
                    if sig_seen in (signal.SIGINT, signal.SIGQUIT) and graceful:
                        graceful = False  # a second, impatient signal: hurry up
                        deadline = min(deadline, time.monotonic() + FAST_STOP_GRACE)
                        self.kill_all(signal.SIGQUIT)
            self.reap()
        if self.workers:
            log.warning("Killing %d worker(s) still running after %.0fs", len(self.workers),
                        limit)
            self.kill_all(signal.SIGKILL)
            while self.workers:
                try:
                    pid, status = os.waitpid(-1, 0)
                except ChildProcessError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EINTR:
                        break
                    continue
                self.workers.pop(pid, None)
        if not self.reexec_pid:  # a new master still serves on these unix socket paths
            for listener in self.listeners:
                if listener.is_unix and listener.bind.startswith("unix:"):
                    try:
                        os.unlink(listener.bind[5:])
                    except OSError:
                        pass
        try:
            self.hooks.call("on_exit", self)
        except HookError:
            pass  # logged; we are exiting anyway
        if self.pidfile is not None:
            self.pidfile.remove(self.pid)
        if self.metrics is not None:
            # A new master (USR2) may serve a unix: metrics path now: leave the file.
            self.metrics.close(unlink=not self.reexec_pid)
        log.info("Shutting down: Master")
        sys.stdout.flush()


def describe_activity(view: SlotView, now: float, silent: float) -> str:
    """What a silent worker was doing, from its heartbeat slot, for the timeout line."""
    if view.in_flight:  # a threaded worker: every request in flight, oldest first
        running = "; ".join(f"{text} for {now - since:.1f}s" for since, text in view.in_flight)
        return f"stuck serving {running} (no heartbeat for {silent:.1f}s)"
    if view.request_started:
        return (f"stuck serving {view.request} for {now - view.request_started:.1f}s "
                f"(no heartbeat for {silent:.1f}s)")
    return f"idle but silent for {silent:.1f}s"


def process_state(pid: int) -> str:
    """`pid`'s state letter from /proc/PID/stat (STOPPED, TRACED, "R", "S"...); "" if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return ""
    end = stat.rfind(b")")
    return stat[end + 2 : end + 3].decode("ascii", "replace")


def rss_mib(pid: int) -> float:
    """Resident memory of `pid` in MiB (Linux /proc), 0 when it cannot be read."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


def _in_terminal_foreground() -> bool:
    """True when a terminal's window resizes reach us (we are its foreground group)."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False  # no controlling terminal: systemd, Docker, a test's new session
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


def share_common_modules() -> None:
    """Import, before the first fork, what nearly every app imports anyway.

    Flask, Django and requests all import `ssl`. Imported in the master, its
    pages (and OpenSSL's initialisation) are shared by every worker; imported
    by each worker's app, every worker pays for its own copy. Measured with
    the benchmark suite's Flask app and 2 workers: 28.7 MiB per worker instead
    of 30.3, 2.1 MiB less in all (PSS), for 4.2 MiB more in the master.
    """
    try:
        import ssl  # noqa: F401
    except ImportError:  # a Python built without OpenSSL: nothing to share
        pass


def _workers(count: int) -> str:
    return f"{count} worker" if count == 1 else f"{count} workers"
