"""Server hooks: gunicorn's hook vocabulary, as plain functions of one module.

`--hooks myproject.serving` names a module; each of its functions named like
a hook below is called where gunicorn calls it (docs/hooks.md has the table).
The module is imported in the master before any fork, so workers inherit it.

An exception in a hook is logged with its traceback. Where gunicorn's failure
is fatal, ours is too: a master hook stops the server (`HookError`, exit 1), a
worker boot hook fails that worker's boot (which stops the server on the first
boot and abandons a reload later). The others are logged and survived.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from forkserve.errors import ForkserveError
from forkserve.log import log

HOOK_NAMES = (
    "on_starting",
    "when_ready",
    "pre_fork",
    "post_fork",
    "post_worker_init",
    "worker_int",
    "worker_abort",
    "pre_exec",
    "pre_request",
    "post_request",
    "child_exit",
    "worker_exit",
    "nworkers_changed",
    "on_reload",
    "on_exit",
)

# gunicorn lets these propagate: into the master loop (which then exits), or
# out of the worker's boot (a boot error). pre_request is special: it runs as
# part of the request, so its exception becomes that request's 500.
FATAL = frozenset(
    {
        "on_starting",
        "when_ready",
        "pre_fork",
        "post_fork",
        "post_worker_init",
        "child_exit",
        "nworkers_changed",
        "on_reload",
        "pre_exec",  # in the child a USR2 forked: the upgrade is abandoned
    }
)


class HookError(ForkserveError):
    """A hook whose failure is fatal raised (its traceback is already logged)."""

    exit_status = 1


class Hooks:
    """The hook functions of one module (or none); runs in master and workers."""

    def __init__(self, functions: dict[str, Callable[..., Any]] | None = None) -> None:
        self.functions = functions or {}

    @classmethod
    def load(cls, module_name: str | None) -> Hooks:
        """Import `module_name` and take its hook functions (master, before forking)."""
        if not module_name:
            return cls()
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise HookError(
                f"cannot import the --hooks module {module_name!r}: {type(exc).__name__}: {exc}"
            ) from None
        functions = {}
        for name in HOOK_NAMES:
            fn = getattr(module, name, None)
            if fn is None:
                continue
            if not callable(fn):
                raise HookError(f"{module_name}.{name} is a hook name but not a function")
            functions[name] = fn
        return cls(functions)

    def __contains__(self, name: str) -> bool:
        return name in self.functions

    def call(self, name: str, *args: Any) -> None:
        """Run one hook; log its exception, and raise HookError where that is fatal."""
        fn = self.functions.get(name)
        if fn is None:
            return
        try:
            fn(*args)
        except Exception as exc:
            log.exception("Exception in the %s hook", name)
            if name in FATAL:
                raise HookError(f"the {name} hook failed: {type(exc).__name__}: {exc}") from None


@dataclass
class HookRequest:
    """What `pre_request` and `post_request` get as `req` (gunicorn's Request, in short)."""

    method: str
    path: str
    query: str
    uri: str
    version: str
    headers: list[tuple[str, str]]
    peer: tuple[str, int] | None

    @classmethod
    def from_environ(cls, environ: dict[str, Any]) -> HookRequest:
        headers = [
            (key[5:].replace("_", "-").title(), str(value))
            for key, value in environ.items()
            if key.startswith("HTTP_")
        ]
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(key):
                headers.append((key.replace("_", "-").title(), str(environ[key])))
        port = str(environ.get("REMOTE_PORT", ""))
        peer = (str(environ.get("REMOTE_ADDR", "")), int(port)) if port.isdigit() else None
        return cls(
            method=str(environ.get("REQUEST_METHOD", "")),
            path=str(environ.get("PATH_INFO", "")),
            query=str(environ.get("QUERY_STRING", "")),
            uri=str(environ.get("RAW_URI", "")),
            version=str(environ.get("SERVER_PROTOCOL", "")),
            headers=headers,
            peer=peer,
        )


@dataclass
class HookResponse:
    """What `post_request` gets as `resp`: the response as it was sent."""

    status: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    sent: int = 0

    @property
    def status_code(self) -> int:
        try:
            return int(self.status.split(" ", 1)[0])
        except ValueError:
            return 0
