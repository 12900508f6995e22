"""Exception types and the worker exit-code protocol.

Pure: imports no sockets, no os.fork, no signal.
"""

from __future__ import annotations

import enum


class ForkserveError(Exception):
    """An error that ends the server with one clear line and a non-zero status."""

    exit_status = 1


class ConfigError(ForkserveError):
    """A setting has a wrong value, or a config source cannot be read."""

    exit_status = 2


class AppLoadError(ForkserveError):
    """The APP import path cannot be turned into a WSGI callable."""

    exit_status = 3


class BindError(ForkserveError):
    """A listening socket cannot be created."""

    exit_status = 4


class HTTPError(Exception):
    """A request the server answers itself, never reaching the app.

    Carries its HTTP meaning as data (h11's `error_status_hint`, waitress's
    `Error.code`): one place turns it into a response and closes the connection.
    """

    def __init__(self, status: int, detail: str, body: bytes | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail  # for the error log, never sent
        self.body = body  # for the client, where the standard page would not help


class WriteTimeout(Exception):
    """The client did not read the response in time."""


class ClientGone(Exception):
    """The client closed or reset the connection, or a deadline passed mid-request."""


class WorkerExit(enum.IntEnum):
    """Exit statuses a worker uses to tell the master why it stopped.

    The master reads these in `waitpid`; anything else is an unexpected crash.
    """

    OK = 0  # graceful stop, recycled, or told to quit
    CRASHED = 1  # an unexpected exception after booting: respawned with back-off
    BOOT_ERROR = 3  # post-fork setup failed (hooks, privileges, ...): do not respawn
    APP_LOAD_ERROR = 4  # the app could not be imported/created: do not respawn
    ORPHANED = 5  # the master went away
    ABORTED = 6  # SIGABRT (timeout or operator): stacks dumped to the error log first

    @classmethod
    def describe(cls, status: int) -> str:
        try:
            return cls(status).name
        except ValueError:
            return f"exit code {status}"
