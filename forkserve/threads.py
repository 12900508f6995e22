"""The threaded worker (--threads N > 1, or -k gthread): the sync loop, with the app on N threads.

Runs in a worker process, after fork. The process's main thread runs the
same loop as the sync worker (forkserve.worker.WorkerLoop): it accepts, reads
heads and bodies while connections are parked, keeps connections alive,
enforces deadlines, balances with its peers and handles signals. What changes
is the last step: a connection whose request is complete goes to a pool of N
threads instead of running the app in the loop, so up to N requests wait on
their database or upstream at once while the loop keeps going.

Ownership is what keeps this safe, not locks around the connection: a
connection handed to a thread (`busy`) is out of the epoll set and out of
every loop that reads, expires or closes connections (`parked`), until the
thread gives it back through `done` and a wake-up of the loop (an eventfd in
its epoll set). So a connection is handled by one thread at a time, and
pipelined requests on it are answered in order: the next one is handed out
only after the previous one came back. A pool thread never frees a socket's
fd number either (`Connection.hold_fd`): the loop closes it after forgetting
the connection, so the next accept cannot reuse the number under it.

The sync worker's handoff watcher (forkserve.handoff: a worker inside a slow
request moves its parked connections that have a request arriving to an idle
peer) does not run here: this loop is never inside the app, and reads such a
request at once. A threaded worker takes connections handed over by busy
sync peers (a mixed pool during a HUP that changes --threads) like any other.

Per request in flight, what the sync worker does per worker:
- the heartbeat slot holds one record per thread (start, request line), for
  the master's stuck-worker view and the process title;
- --timeout is checked here, per request, by the loop (which keeps beating,
  so the master's stale-heartbeat check only catches a loop that stopped): a
  request past it gets its stack, every thread's stack and request line
  logged, and the worker leaves as a recycle does (the master starts its
  replacement first; the others in flight get --graceful-timeout);
- a worker whose threads are all busy shows it in its slot and steps out of
  the accept queue while a peer serves (WorkerLoop.balance).
"""

from __future__ import annotations

import collections
import os
import queue
import select
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import setproctitle

from forkserve.connection import Connection, State
from forkserve.errors import WorkerExit
from forkserve.heartbeat import SlotWriter
from forkserve.hooks import HookRequest, HookResponse
from forkserve.log import AccessLog, ErrorStream, RefusalLog, log
from forkserve.parser import RequestHead
from forkserve.response import ResponseWriter
from forkserve.stats import StatsWriter
from forkserve.worker import (
    DRAIN_LAST_CHANCE_S,
    TITLE_INTERVAL,
    Worker,
    WorkerLoop,
    _Hooks,
    worker_title,
)

# How much of the oldest requests in flight the process title shows.
TITLE_REQUESTS = 3


class LockedAccessLog(AccessLog):
    """The access log, one whole line at a time from any thread."""

    def __init__(self, path: str | None, fmt: str, json_lines: bool = False,
                 request_id_key: str | None = None) -> None:
        self.lock = threading.Lock()
        super().__init__(path, fmt, json_lines, request_id_key)

    def write(self, *args: Any) -> None:
        with self.lock:
            super().write(*args)

    def reopen(self) -> None:
        with self.lock:
            super().reopen()


class LockedRefusalLog(RefusalLog):
    """Refusals from any thread: the loop reads requests, and a pool thread reads the
    next pipelined one after its response. The once-a-second budget is shared."""

    def __init__(self, access_log: AccessLog) -> None:
        self.lock = threading.Lock()
        super().__init__(access_log)

    def record(self, *args: Any) -> None:
        with self.lock:
            super().record(*args)


class LockedStatsWriter(StatsWriter):
    """The worker's one statistics slot, counted into from every pool thread.

    A count is a read-modify-write of a shared word (and claiming a new
    (method, status) pair moves the writer's own cursors), so two threads
    finishing at once would lose one without the lock. The loop thread
    writes the connection gauges, which no pool thread touches.
    """

    __slots__ = ("lock",)

    def __init__(self, words: memoryview, index: int) -> None:
        super().__init__(words, index)
        self.lock = threading.Lock()

    def request_finished(self, method: str, status: str, seconds: float) -> None:
        with self.lock:
            super().request_finished(method, status, seconds)

    def rejected(self, status: int) -> None:
        with self.lock:
            super().rejected(status)


class ThreadErrorStream(ErrorStream):
    """`wsgi.errors` shared by the pool: each thread's partial line is its own."""

    def __init__(self) -> None:
        self.local = threading.local()  # first: the base __init__ sets _pending
        super().__init__()

    @property
    def _pending(self) -> str:
        pending: str = getattr(self.local, "pending", "")
        return pending

    @_pending.setter
    def _pending(self, value: str) -> None:
        self.local.pending = value


class ThreadHooks(_Hooks):
    """Around each request, on the request's own thread: its heartbeat record and hooks."""

    def __init__(self, worker: Worker, slot: SlotWriter, stats: StatsWriter | None) -> None:
        self.local = threading.local()
        super().__init__(worker, slot, stats)
        # Thread index -> (started, request line) while it runs a request. Each
        # thread sets only its own entry; the loop reads them for --timeout.
        self.running: list[tuple[float, bytes] | None] = []

    @property
    def req(self) -> Any:  # the HookRequest pre_request got, for post_request on this thread
        return getattr(self.local, "req", None)

    @req.setter
    def req(self, value: Any) -> None:
        self.local.req = value

    def started(self, request: RequestHead, environ: dict[str, Any], peer: bytes,
                now: float) -> None:
        text = b"%s %s from %s" % (request.method, request.target[:160], peer)
        index: int = self.local.index
        self.running[index] = (now, text)
        self.slot.thread_started(index, now, text)
        self.local.req = None

    def finished(self, environ: dict[str, Any], writer: ResponseWriter, now: float) -> None:
        index: int = self.local.index
        entry = self.running[index]
        self.running[index] = None
        self.slot.thread_finished(index)
        self.count(environ, writer, now - entry[0] if entry is not None else 0.0)
        if self.want_post:
            req = self.local.req or HookRequest.from_environ(environ)
            resp = HookResponse(writer.status_line(), list(writer.sent_headers), writer.sent)
            self.hooks.call("post_request", self.worker, req, environ, resp)


class ThreadedLoop(WorkerLoop):
    """A worker loop that runs complete requests on a pool of `threads` threads."""

    parks_unread = False
    hooks_class = ThreadHooks
    access_log_class = LockedAccessLog
    error_stream_class = ThreadErrorStream
    refusal_log_class = LockedRefusalLog
    multithread = True  # up to `threads` calls of the app at once
    stats_writer_class = LockedStatsWriter

    def __init__(self, worker: Worker, threads: int) -> None:
        super().__init__(worker)
        self.threads = threads
        self.thread_hooks: ThreadHooks = self.hooks  # type: ignore[assignment]
        self.thread_hooks.running = [None] * threads
        self.jobs: queue.SimpleQueue[Connection | None] = queue.SimpleQueue()
        self.done: collections.deque[Connection] = collections.deque()
        # Pool threads write here when they give a connection back; in the epoll set.
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.busy: dict[int, Connection] = {}  # fd -> connection a thread has now
        self.pool: list[threading.Thread] = []
        self.stuck = False  # a request ran past --timeout: this worker is leaving

    # -- the pool ----------------------------------------------------------
    def start_pool(self, app: Callable[..., Any]) -> None:
        for index in range(self.threads):
            thread = threading.Thread(target=self._thread_main, args=(index, app),
                                      name=f"forkserve-thread-{index + 1}", daemon=True)
            thread.start()
            self.pool.append(thread)

    def _thread_main(self, index: int, app: Callable[..., Any]) -> None:
        """A pool thread: run the requests the loop hands over, give each connection back."""
        self.thread_hooks.local.index = index
        jobs, done, wake_fd, access_log = self.jobs, self.done, self.wake_fd, self.access_log
        hooks = self.thread_hooks
        while True:
            conn = jobs.get()
            if conn is None:
                return
            try:
                conn.run(app, access_log, hooks)
            except BaseException:  # Connection.run answers app errors; this is ours
                log.critical("request thread failed:\n%s", traceback.format_exc())
                hooks.running[index] = None
                self.slot.thread_finished(index)
                conn.close()
            done.append(conn)
            os.eventfd_write(wake_fd, 1)

    def has_room(self) -> bool:
        return len(self.busy) + len(self.ready) < self.threads

    def parked(self) -> list[Connection]:
        busy = self.busy
        return [c for c in self.conns.values() if busy.get(c.fd) is not c]

    def _place(self, conn: Connection) -> None:
        if conn.state is State.READY and conn.fd in self.polled:
            # Out of epoll until it is answered: nothing on it is read before
            # its turn (a pipelined request waits in the kernel), and a
            # readable socket does not wake the loop over and over.
            self.polled.discard(conn.fd)
            self.epoll.unregister(conn.fd)
        super()._place(conn)

    def run(self, conn: Connection, app: Callable[..., Any]) -> None:
        """A complete request the base loop would run now (one handed over by a busy
        peer, WorkerLoop.take_handed_off): first in line for a thread, never run here."""
        if conn.fd in self.polled:
            self.polled.discard(conn.fd)
            self.epoll.unregister(conn.fd)
        self.ready.appendleft(conn)

    def dispatch(self, now: float) -> None:
        """Hand complete requests to free threads, oldest first."""
        ready, busy, conns = self.ready, self.busy, self.conns
        while ready and len(busy) < self.threads:
            conn = ready.popleft()
            if conn.state is not State.READY or conns.get(conn.fd) is not conn:
                continue
            conn.draining = self.drains(conn)
            conn.hold_fd = True
            busy[conn.fd] = conn
            self.jobs.put(conn)

    def collect(self, now: float) -> None:
        """Take back the connections the threads have answered; place, count, recycle."""
        try:
            os.eventfd_read(self.wake_fd)
        except BlockingIOError:
            pass
        done = self.done
        while done:
            conn = done.popleft()
            del self.busy[conn.fd]
            conn.release()
            self.slot.requests += 1
            if self.draining and conn.state is State.IDLE:
                self.last_chance(conn, now)
            self.after_request(conn)
        self.slot.saturated(self.saturated_since, now)  # the count moved on

    def update_saturation(self, now: float) -> None:
        """Publish whether every thread is busy (peers and the master read it as busy).

        Looked at once per loop pass, after the freed threads got their next
        requests: a thread that finishes and is handed the next waiting
        request at once never made the worker unsaturated. (Publishing each
        dip made the "busy since" always fresh, so under load both workers
        took the other for a serving peer and stepped aside together: the
        connections in the backlog waited seconds.)
        """
        full = len(self.busy) >= self.threads
        if full == bool(self.saturated_since):
            return
        self.saturated_since = now if full else 0.0
        self.slot.saturated(self.saturated_since, now)
        if not self.draining:
            self.balance(now)

    def last_chance(self, conn: Connection, now: float) -> None:
        """Draining: an idle connection's pending request is served, else it ends soon.

        A request in flight when the drain began is answered as it started
        (keep-alive); its connection comes back idle and is treated here as
        the drain treats those already idle (WorkerLoop.start_draining).
        """
        conn.on_readable(now)
        if conn.state is State.IDLE:
            conn.deadline = min(conn.deadline, now + DRAIN_LAST_CHANCE_S)

    # -- the loop ------------------------------------------------------------
    def on_tick(self, now: float) -> None:
        self.check_timeouts(now)

    def serve(self) -> int:
        app = self.boot()
        self.epoll.register(self.wake_fd, select.EPOLLIN)
        self.start_pool(app)
        self.booted = True
        self.slot.booted(os.getpid(), time.monotonic())
        self.peers.publish(0)
        log.info("Booted worker with pid: %d (%d threads)", os.getpid(), self.threads)
        self.next_tick = 0.0
        now = time.monotonic()
        while self.alive:
            runnable = bool(self.ready) and len(self.busy) < self.threads
            try:
                events = self.epoll.poll(self.poll_timeout(now, runnable))
            except InterruptedError:
                events = []
            now = time.monotonic()
            for fd, _mask in events:
                conn = self.conns.get(fd)
                if conn is not None:
                    self.unmovable(fd)  # the master must not take it while it is read
                    conn.on_readable(now)
                    self._place(conn)  # complete: queued for a thread; closed: forgotten
                elif fd == self.wake_fd:
                    self.collect(now)
                else:
                    self.on_loop_event(fd, now, app)
            if self.ready:
                self.dispatch(now)
            self.update_saturation(now)
            if self.housekeeping(now) is WorkerExit.ORPHANED:
                return WorkerExit.ORPHANED
        self.peers.withdraw()
        if self.busy:
            log.warning("Worker %d exiting with %d request(s) still running after "
                        "--graceful-timeout %g", os.getpid(), len(self.busy),
                        self.cfg.graceful_timeout)
            # As the sync worker's timeout does (WorkerLoop._abort): a 500 if
            # nothing of the response went out yet, else the end of it, instead
            # of an empty reply that proxies report as a bad gateway. The thread
            # is still in the app; this process exits next.
            for conn in list(self.busy.values()):
                conn.answer_timeout()
        self.nothing_movable()
        for conn in self.parked():
            conn.close()
        return WorkerExit.OK

    # -- per request: --timeout, the title ----------------------------------
    def check_timeouts(self, now: float) -> None:
        """A request past --timeout: log every thread's stack and request, then leave."""
        limit = self.cfg.timeout
        if not limit or self.stuck:
            return
        for index, entry in enumerate(self.thread_hooks.running):
            if entry is not None and now - entry[0] > limit:
                self.stuck = True
                self.on_stuck(index, entry, now)
                return

    def on_stuck(self, index: int, entry: tuple[float, bytes], now: float) -> None:
        text = entry[1].decode("latin-1")
        log.critical("WORKER TIMEOUT (pid:%d) %s has run for %.1fs on thread %d (--timeout "
                     "%g); the worker stops accepting, lets its other requests finish within "
                     "--graceful-timeout and is replaced. The stacks of its threads follow:\n%s",
                     os.getpid(), text, now - entry[0], index + 1, self.cfg.timeout,
                     self.thread_stacks(now))
        self.worker.hooks.call("worker_abort", self.worker)
        self.worker.report_leaving("timeout", f"{text} ran past --timeout {self.cfg.timeout:g}")
        self.start_draining()

    def thread_stacks(self, now: float) -> str:
        """Every thread's stack, each with the request it runs (one block per thread)."""
        frames = sys._current_frames()
        running = self.thread_hooks.running
        blocks = []
        for thread in threading.enumerate():
            label = f"Thread {thread.name}"
            if thread in self.pool:
                entry = running[self.pool.index(thread)]
                label += (f" running {entry[1].decode('latin-1')} for {now - entry[0]:.1f}s"
                          if entry else " idle")
            frame = frames.get(thread.ident or -1)
            stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
            blocks.append(f"{label}:\n{stack}")
        return "\n".join(blocks)

    def update_title(self, now: float) -> None:
        """The request count, busy threads and the oldest requests in flight (once a second)."""
        if now - self.title_at < TITLE_INTERVAL:
            return
        running = sorted(e for e in self.thread_hooks.running if e is not None)
        title = worker_title(self.name, self.worker.generation, self.slot.requests)
        title += f" · {len(running)}/{self.threads} busy"
        if running:
            shown = ", ".join(f"{text.decode('latin-1').split(' from ')[0]} {now - since:.0f}s"
                              for since, text in running[:TITLE_REQUESTS])
            title += f": {shown}"
        self.title_at = now
        setproctitle.setproctitle(title)
