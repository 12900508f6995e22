"""The signal queue counts every delivery (issue 11: two TTOU in a row removed one worker)."""

from __future__ import annotations

import os
import signal
import threading
import time

from forkserve.signals import SignalQueue


def test_every_delivery_is_counted_even_when_the_python_handler_runs_once() -> None:
    # CPython runs a Python-level handler once for all the deliveries of a
    # signal that came while the main thread was elsewhere. Here the main
    # thread blocks SIGUSR2 and waits in join(); a helper thread receives three
    # deliveries (each a byte in the wakeup pipe), and the handler can run only
    # once the main thread is back.
    previous = signal.getsignal(signal.SIGUSR2)
    queue = SignalQueue([signal.SIGUSR2])
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})

        def send_three() -> None:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
            for _ in range(3):
                os.kill(os.getpid(), signal.SIGUSR2)
                time.sleep(0.05)  # delivered before the next: the kernel merges nothing

        helper = threading.Thread(target=send_three)
        helper.start()
        helper.join()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
        time.sleep(0.01)  # the Python-level handler runs here, once
        assert queue.drain() == [signal.SIGUSR2] * 3
        assert queue.drain() == []
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
        queue.close()
        signal.signal(signal.SIGUSR2, previous)


def test_only_the_installed_signals_are_reported() -> None:
    previous = signal.getsignal(signal.SIGUSR1)
    queue = SignalQueue([signal.SIGUSR1])
    try:
        os.write(queue.write_fd, bytes([signal.SIGUSR2]))  # not ours: never reported
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)
        assert queue.drain() == [signal.SIGUSR1]
    finally:
        queue.close()
        signal.signal(signal.SIGUSR1, previous)
