"""Signal handling that only records.

A handler appends the signal number to a queue; `signal.set_wakeup_fd` writes
a byte to a pipe so the loop's select/epoll wakes up at once. All the work
happens in the loop (gunicorn's arbiter learnt this the hard way: logging and
reaping inside handlers deadlocked on reentrant locks).
"""

from __future__ import annotations

import collections
import os
import signal
from collections.abc import Iterable
from types import FrameType


class SignalQueue:
    """Installed in one process (master, or a worker after fork)."""

    def __init__(self, signals: Iterable[signal.Signals]) -> None:
        self.pending: collections.deque[int] = collections.deque()
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous_wakeup = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        for sig in signals:
            signal.signal(sig, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.pending.append(signum)  # deque.append is atomic: safe in a handler

    def drain(self) -> list[int]:
        """Empty the wakeup pipe and return the recorded signals, oldest first."""
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass
        out = []
        while self.pending:
            out.append(self.pending.popleft())
        return out

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        os.close(self.read_fd)
        os.close(self.write_fd)


def reset_to_default(signals: Iterable[signal.Signals]) -> None:
    """Worker side, right after fork: forget the master's handlers."""
    signal.set_wakeup_fd(-1)
    for sig in signals:
        signal.signal(sig, signal.SIG_DFL)
