"""statsd over UDP with gunicorn's metric names (--statsd-host, --statsd-prefix).

Names and types are gunicorn's, so dashboards built for it keep working:
`gunicorn.requests` (counter), `gunicorn.request.duration` (timer, ms),
`gunicorn.request.status.<code>` (counter), `gunicorn.workers` (gauge, from
the master) and `gunicorn.log.critical|error|warning|exception` (counters),
all under the prefix.

A send never blocks and never raises: the socket is non-blocking UDP and a
datagram that cannot go out (no daemon listening, a full buffer) is dropped.
Runs in the master and, after fork, in each worker (each has its own socket).
"""

from __future__ import annotations

import logging
import socket

from forkserve.errors import ConfigError

PROTOCOL_PREFIX = "gunicorn."  # part of gunicorn's metric names, kept for its dashboards


class Statsd:
    """A connected, non-blocking UDP socket and the metric prefix."""

    def __init__(self, host: str, prefix: str) -> None:
        name, _, port = host.rpartition(":")
        name = name.strip("[]")
        try:
            family, kind, proto, _canon, address = socket.getaddrinfo(
                name, int(port), type=socket.SOCK_DGRAM)[0]
        except (OSError, UnicodeError) as exc:
            raise ConfigError(f"--statsd-host {host}: cannot resolve {name!r}: {exc}") from None
        self.sock = socket.socket(family, kind, proto)
        self.sock.setblocking(False)
        # connect() on UDP only fixes the destination: no packet is sent.
        self.sock.connect(address)
        self.prefix = (prefix.rstrip(".") + "." if prefix else "") + PROTOCOL_PREFIX

    def send(self, lines: str) -> None:
        """One datagram; dropped silently when it cannot go out now."""
        try:
            self.sock.send(lines.encode("ascii", "replace"))
        except OSError:
            pass  # nobody listening (ECONNREFUSED from an ICMP), buffer full, ...

    def request(self, code: int, seconds: float) -> None:
        """After each request, in a worker: three metrics in one datagram (one syscall)."""
        p = self.prefix
        self.send(f"{p}requests:1|c\n{p}request.duration:{seconds * 1000:.3f}|ms\n"
                  f"{p}request.status.{code}:1|c")

    def workers(self, count: int) -> None:
        self.send(f"{self.prefix}workers:{count}|g")

    def close(self) -> None:
        self.sock.close()


class LogCounter(logging.Filter):
    """Counts forkserve's own warning, error, critical and exception records.

    A filter on the "forkserve" logger rather than a handler: the error log's
    handlers are replaced on USR1, its filters stay. It lets every record through.
    """

    def __init__(self, statsd: Statsd) -> None:
        super().__init__()
        self.statsd = statsd

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            if record.exc_info and record.levelno == logging.ERROR:
                name = "exception"  # logger.exception(): gunicorn counts these apart
            else:
                name = record.levelname.lower()
            self.statsd.send(f"{self.statsd.prefix}log.{name}:1|c")
        return True


def install(logger: logging.Logger, statsd: Statsd) -> LogCounter:
    """Count `logger`'s records into statsd (master; workers inherit it across fork)."""
    counter = LogCounter(statsd)
    logger.addFilter(counter)
    return counter
