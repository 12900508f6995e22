"""The master process: keeps the pool of workers at its wanted size.

Runs in the master only; it never imports the request path beyond what a
fork needs. Signal handlers only record (`signals.SignalQueue`); one loop
drains the recorded signals, reaps children, checks heartbeats and reconciles
the pool. Adding a signal is adding one entry to `Arbiter.handlers`.
"""

from __future__ import annotations

import enum
import errno
import os
import random
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import setproctitle

from forkserve import __version__
from forkserve.config import Config
from forkserve.errors import WorkerExit
from forkserve.heartbeat import Heartbeats
from forkserve.log import log, setup_error_log
from forkserve.notify import Notifier
from forkserve.signals import SignalQueue, reset_to_default
from forkserve.sockets import Listener
from forkserve.worker import Worker

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
MAX_BACKOFF = 10.0
BOOT_ERROR_MAX = 4000  # one pipe write of at most PIPE_BUF is atomic


class Phase(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"


class Arbiter:
    """The master loop (pre-fork setup and the loop itself; master only)."""

    def __init__(self, cfg: Config, listeners: list[Listener],
                 app: Callable[..., Any] | None = None,
                 reload_config: Callable[[], Config] | None = None,
                 notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.notifier = notifier or Notifier(None)  # sd_notify; a no-op outside systemd
        self.reload_config = reload_config or (lambda: cfg)
        self.listeners = listeners
        self.app = app
        self.num_workers = cfg.workers
        self.workers: dict[int, Worker] = {}
        self.heartbeats = Heartbeats(max(64, cfg.workers * 4))
        self.generation = 1
        self.phase = Phase.RUNNING
        self.exit_status = 0
        self.crashes: list[float] = []
        self.spawn_not_before = 0.0
        self.signals: SignalQueue | None = None
        self.stop_graceful = True
        # Workers that cannot load the app write why here, then exit APP_LOAD_ERROR.
        self.boot_errors_r, self.boot_errors_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.handlers: dict[int, Callable[[], None]] = {
            signal.SIGTERM: self.handle_term,
            signal.SIGINT: self.handle_quit,
            signal.SIGQUIT: self.handle_quit,
            signal.SIGCHLD: lambda: None,  # the loop reaps after every wake-up
            signal.SIGHUP: self.handle_unsupported,
            signal.SIGTTIN: self.handle_ttin,
            signal.SIGTTOU: self.handle_ttou,
            signal.SIGUSR1: self.handle_usr1,
            signal.SIGUSR2: self.handle_unsupported,
            signal.SIGWINCH: self.handle_unsupported,
        }

    @property
    def name(self) -> str:
        return self.cfg.proc_name or self.cfg.app

    # -- the loop ---------------------------------------------------------
    def run(self) -> int:
        """Serve until stopped; returns the process exit status."""
        setproctitle.setproctitle(f"forkserve: master [{self.name}]")
        log.info("Starting forkserve %s", __version__)
        for listener in self.listeners:
            log.info("Listening at: %s (%d)", listener.url, os.getpid())
        log.info("Using worker: sync")
        self.signals = SignalQueue(MASTER_SIGNALS)
        try:
            self.manage_workers()
            while self.phase is Phase.RUNNING:
                self.wait(LOOP_INTERVAL)
                self.dispatch_signals()
                self.reap()
                if self.phase is not Phase.RUNNING:
                    break
                self.check_heartbeats()
                self.manage_workers()
                self.notify_progress()
        finally:
            self.shutdown()
        return self.exit_status

    def wait(self, timeout: float) -> None:
        assert self.signals is not None
        if self.signals.pending:
            return
        try:
            select.select([self.signals.read_fd], [], [], timeout)
        except InterruptedError:
            pass

    def dispatch_signals(self) -> None:
        assert self.signals is not None
        for sig in self.signals.drain():
            if sig != signal.SIGCHLD:
                log.info("Handling signal: %s", signal.Signals(sig).name)
            if sig == signal.SIGHUP and self.phase is Phase.RUNNING:
                self.notifier.reloading()  # READY=1 follows once the new generation serves
            self.handlers[sig]()

    # -- signal handlers (run in the loop, not in signal context) ----------
    def handle_term(self) -> None:
        self.stop(graceful=True)

    def handle_quit(self) -> None:
        self.stop(graceful=False)

    def handle_ttin(self) -> None:
        self.num_workers += 1

    def handle_ttou(self) -> None:
        self.num_workers = max(1, self.num_workers - 1)

    def handle_usr1(self) -> None:
        setup_error_log(self.cfg.error_logfile, self.cfg.log_level)
        self.kill_all(signal.SIGUSR1)

    def handle_unsupported(self) -> None:
        log.warning("This signal is not handled yet; ignoring it")

    # -- workers ----------------------------------------------------------
    def manage_workers(self) -> None:
        """Reconcile the pool with `num_workers`: spawn the missing, retire the extra."""
        live = [w for w in self.workers.values() if not w.stopping]
        if len(live) > self.num_workers:
            for worker in sorted(live, key=lambda w: w.booted_at)[: len(live) - self.num_workers]:
                self.retire(worker)
            return
        missing = self.num_workers - len(live)
        while missing > 0 and self.phase is Phase.RUNNING:
            if time.monotonic() < self.spawn_not_before:
                return
            self.spawn()
            missing -= 1

    def spawn(self) -> Worker:
        slot = self.heartbeats.claim({w.slot for w in self.workers.values()})
        self.heartbeats.reset(slot, 0)
        worker = Worker(self.cfg, self.listeners, slot, self.heartbeats, self.generation,
                        self.app)
        pid = os.fork()
        if pid == 0:  # the child: becomes the worker and never returns
            self._become_worker(worker)
        worker.pid = pid
        self.workers[pid] = worker
        log.info("Booting worker with pid: %d", pid)
        return worker

    def _become_worker(self, worker: Worker) -> None:
        try:
            reset_to_default(MASTER_SIGNALS)
            if self.signals is not None:
                os.close(self.signals.read_fd)
                os.close(self.signals.write_fd)
            os.close(self.boot_errors_r)
            random.seed()
            worker.boot_error_fd = self.boot_errors_w
            worker.run()
        finally:
            os._exit(WorkerExit.BOOT_ERROR)

    def retire(self, worker: Worker, sig: int = signal.SIGTERM) -> None:
        worker.stopping = True
        self.kill(worker.pid, sig)

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
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue  # not ours: an orphan re-parented to us as PID 1
            self.on_worker_exit(worker, status)

    def on_worker_exit(self, worker: Worker, status: int) -> None:
        if os.WIFSIGNALED(status):
            how = f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
            code = -1
        else:
            code = os.WEXITSTATUS(status)
            how = f"exited with {WorkerExit.describe(code)}"
        if worker.stopping and code in (WorkerExit.OK, -1):
            log.info("Worker %d %s", worker.pid, how)
            return
        if code in (WorkerExit.APP_LOAD_ERROR, WorkerExit.BOOT_ERROR):
            if self.phase is not Phase.RUNNING:
                return  # another worker already reported why: one line is enough
            reason = self.read_boot_error() or "see the log above"
            log.error("Worker failed to boot: %s", reason)
            self.exit_status = 3 if code == WorkerExit.APP_LOAD_ERROR else 1
            self.stop(graceful=False)
            return
        if self.phase is not Phase.RUNNING:
            log.info("Worker %d %s", worker.pid, how)
            return
        now = time.monotonic()
        self.crashes = [t for t in self.crashes if now - t < 60] + [now]
        backoff = min(MAX_BACKOFF, 0.1 * 2 ** (len(self.crashes) - 1))
        self.spawn_not_before = now + backoff
        log.warning("Worker %d %s; replacing it in %.1fs", worker.pid, how, backoff)

    def read_boot_error(self) -> str:
        try:
            text = os.read(self.boot_errors_r, 65536).decode("utf-8", "replace")
            return text.strip().split("\n", 1)[0]  # each failing worker wrote one line
        except BlockingIOError:
            return ""

    def check_heartbeats(self) -> None:
        if not self.cfg.timeout:
            return
        now = time.monotonic()
        for worker in list(self.workers.values()):
            view = self.heartbeats.read(worker.slot)
            silent = now - view.heartbeat
            if silent <= self.cfg.timeout or worker.stopping:
                continue
            if view.request_started:
                doing = f"serving {view.request} for {now - view.request_started:.1f}s"
            elif view.pid == 0:
                doing = "still booting"
            else:
                doing = "idle"
            log.critical("WORKER TIMEOUT (pid:%d) silent for %.1fs, %s", worker.pid, silent,
                         doing)
            worker.stopping = True
            self.kill(worker.pid, signal.SIGKILL)
            self.spawn_not_before = 0.0

    def notify_progress(self) -> None:
        """sd_notify: READY=1 once every current-generation worker serves, STATUS, watchdog."""
        current = [self.heartbeats.read(w.slot) for w in self.workers.values()
                   if w.generation == self.generation and not w.stopping]
        self.notifier.tick(time.monotonic(), current, self.num_workers)

    # -- stopping ---------------------------------------------------------
    def stop(self, graceful: bool) -> None:
        if self.phase is Phase.STOPPING and graceful:
            return
        self.phase = Phase.STOPPING
        self.stop_graceful = graceful
        self.notifier.stopping()

    def shutdown(self) -> None:
        """Stop every worker (gracefully or fast), wait for them, then clean up."""
        graceful = self.stop_graceful
        sig = signal.SIGTERM if graceful else signal.SIGQUIT
        for worker in self.workers.values():
            worker.stopping = True
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
        for listener in self.listeners:
            if listener.is_unix and listener.bind.startswith("unix:"):
                try:
                    os.unlink(listener.bind[5:])
                except OSError:
                    pass
        log.info("Shutting down: Master")
        sys.stdout.flush()
