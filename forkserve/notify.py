"""The systemd notification protocol (sd_notify), without libsystemd.

Runs in the master only. When systemd starts a `Type=notify` service it puts
the path of a unix datagram socket in NOTIFY_SOCKET; the service sends
newline-separated `KEY=value` datagrams to it (sd_notify(3)). We send:

- `READY=1` (with `MAINPID=`) once every worker of the current generation has
  loaded the app and is serving. gunicorn sends it when the master starts,
  before any worker has booted, so systemd (and whatever waits on the unit)
  routes traffic to a server that cannot answer yet.
- `RELOADING=1` with `MONOTONIC_USEC=` when a HUP starts a reload, then
  `READY=1` again once the new generation serves (`Type=notify-reload`
  semantics, systemd >= 253; older systemd ignores the extra keys).
- `STOPPING=1` when a stop begins.
- `STATUS=` lines (workers booted, requests served) when they change.
- `WATCHDOG=1` at half of WATCHDOG_USEC, when systemd asks for it.

`MAINPID=` goes with every `READY=1`: after a USR2 upgrade the new master is
the one serving, and this is how systemd learns to follow it (the unit needs
`NotifyAccess=all`, since the new master is not yet the main pid when it
speaks). For the original master it restates what systemd already knows.

State messages and STATUS lines travel in separate datagrams, so a reader can
follow the state without the status noise.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Mapping

from forkserve.heartbeat import SlotView
from forkserve.log import log


class Notifier:
    """Sends sd_notify messages; every method is a no-op when systemd did not ask."""

    def __init__(self, address: str | None, watchdog_usec: int = 0) -> None:
        self.address = address
        self.sock: socket.socket | None = None
        if address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # Ping at half the interval systemd allows, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec > 0 else 0.0
        self.next_ping = 0.0
        self.is_ready = False
        self.is_stopping = False
        self.last_status = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Notifier:
        """The notifier systemd asked for via NOTIFY_SOCKET / WATCHDOG_USEC / WATCHDOG_PID."""
        address = env.get("NOTIFY_SOCKET") or None
        watchdog = 0
        usec = env.get("WATCHDOG_USEC", "")
        wd_pid = env.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process systemd watches; a child that inherited
        # the variable must not ping on its parent's behalf.
        if usec.isdigit() and (not wd_pid or wd_pid == str(os.getpid())):
            watchdog = int(usec)
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def send(self, *lines: str) -> None:
        if self.sock is None or self.address is None:
            return
        # A leading '@' names a socket in the abstract namespace (sd_notify(3)).
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            self.sock.sendto("\n".join(lines).encode("utf-8", "replace"), target)
        except OSError as exc:
            # systemd gone or the socket full: never let notification stop the server.
            log.debug("sd_notify to %s failed: %s", self.address, exc)

    # -- state changes, called by the arbiter ----------------------------
    def ready(self) -> None:
        """Every worker of the current generation has loaded the app and serves."""
        if self.sock is None or self.is_stopping:
            return
        self.is_ready = True
        self.send("READY=1", f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        """A HUP reload starts; `ready()` follows once the new generation serves."""
        if self.sock is None or self.is_stopping:
            return
        self.is_ready = False
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        if self.sock is None or self.is_stopping:
            return
        self.is_stopping = True
        self.send("STOPPING=1")
        self.status("Stopping")

    def status(self, text: str) -> None:
        if text != self.last_status:
            self.last_status = text
            self.send(f"STATUS={text}")

    def tick(self, now: float, current: Iterable[SlotView], wanted: int) -> None:
        """Each master loop turn, with the heartbeat slots of the current generation.

        Sends READY=1 once all `wanted` workers have booted (a booted worker's
        slot carries its pid), a STATUS line when it changed, and a watchdog
        ping when due.
        """
        if self.sock is None:
            return
        slots = list(current)
        serving = sum(1 for slot in slots if slot.pid)
        requests = sum(slot.requests for slot in slots)
        if not self.is_ready and not self.is_stopping and wanted and serving >= wanted:
            self.ready()
        if self.is_stopping:
            pass
        elif self.is_ready:
            self.status(f"Serving: {serving} workers, {requests} requests")
        else:
            self.status(f"Starting workers: {serving} of {wanted} serving")
        if self.watchdog_interval and now >= self.next_ping:
            self.next_ping = now + self.watchdog_interval
            self.send("WATCHDOG=1")
