"""Signal handling that only records.

`signal.set_wakeup_fd` makes CPython write one byte, the signal number, to
a pipe for each delivery: that pipe is the queue, and it wakes the loop's
select/epoll at once. The Python-level handler does nothing. All the work
happens in the loop (gunicorn's arbiter learnt this the hard way: logging and
reaping inside handlers deadlocked on reentrant locks).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from types import FrameType


class SignalQueue:
    """Installed in one process (master, or a worker after fork).

    The record is the wakeup pipe itself: CPython's C-level handler writes one
    byte, the signal number, for every delivery. The Python-level handler runs
    later and only once for deliveries that came in the meantime (it keeps one
    "tripped" flag per signal), so counting its calls lost signals: two
    `kill -TTOU` in a row removed one worker (issue 11).
    """

    def __init__(self, signals: Iterable[signal.Signals]) -> None:
        self.installed = frozenset(int(sig) for sig in signals)
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous_wakeup = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        for sig in signals:
            signal.signal(sig, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        """Nothing to do: the delivery is already a byte in the wakeup pipe.

        A Python handler must be installed all the same: it is what makes
        CPython catch the signal (and write the byte) instead of the default
        action.
        """

    def drain(self) -> list[int]:
        """Empty the wakeup pipe: one entry per delivered signal, by signal number.

        Signals pending together are delivered by the kernel in no order the
        sender chose (USR1 then TTIN arrive as TTIN, USR1), so a batch is
        handled in signal-number order, as CPython runs its handlers: USR1
        (reopen the logs) comes before what logs about TTIN, TTOU or WINCH.
        """
        data = b""
        try:
            while chunk := os.read(self.read_fd, 4096):
                data += chunk
        except BlockingIOError:
            pass
        return sorted(sig for sig in data if sig in self.installed)

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        os.close(self.read_fd)
        os.close(self.write_fd)


def reset_to_default(signals: Iterable[signal.Signals]) -> None:
    """Worker side, right after fork: forget the master's handlers."""
    signal.set_wakeup_fd(-1)
    for sig in signals:
        signal.signal(sig, signal.SIG_DFL)
