"""Turn `module:attribute` or `module:factory()` into a WSGI callable.

Runs in a worker after fork (or in the master with preload). Every failure is
an `AppLoadError` with one line that names the problem (and the innermost
file:line of an import that raised); the full traceback stays on the
exception's `__cause__` for the caller to log at debug level.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any

from forkserve.errors import AppLoadError

_SPEC = re.compile(r"^(?P<module>[\w.]+)(?::(?P<attr>[\w.]+)(?P<call>\(\))?)?$")


def prepare_path(chdir: str | None, pythonpath: list[str]) -> None:
    """Put the working directory (after --chdir) and --pythonpath in front of sys.path."""
    if chdir:
        try:
            os.chdir(chdir)
        except OSError as exc:
            raise AppLoadError(f"cannot change to directory {chdir!r}: {exc.strerror}") from None
    for entry in reversed([os.getcwd(), *pythonpath]):
        path = os.path.abspath(entry)
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)


def import_object(spec: str, what: str = "app") -> Any:
    """Import `module:attr` (dotted attr allowed) and return the object."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise AppLoadError(
            f"{what} {spec!r} is not MODULE:ATTRIBUTE or MODULE:FACTORY()"
        )
    module_name = m.group("module")
    attr = m.group("attr") or "application"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppLoadError(
                f"cannot import {what} module {module_name!r}: no such module"
            ) from None
        raise AppLoadError(
            f"importing {what} module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    except BaseException as exc:  # an import may raise anything, even SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        where = _innermost(exc)
        raise AppLoadError(
            f"importing {what} module {module_name!r} failed: {type(exc).__name__}: {exc}{where}"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(
                f"module {module_name!r} has no attribute {attr!r}"
            ) from None
    if m.group("call"):
        try:
            obj = obj()
        except Exception as exc:
            raise AppLoadError(
                f"calling {what} factory {spec!r} failed: {type(exc).__name__}: {exc}"
                f"{_innermost(exc)}"
            ) from exc
    return obj


def load_app(spec: str) -> Any:
    """Import the WSGI app named by `spec`; fail with one clear line."""
    app = import_object(spec, "app")
    if not callable(app):
        raise AppLoadError(f"app {spec!r} is not callable (it is a {type(app).__name__})")
    return app


def _innermost(exc: BaseException) -> str:
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f" (at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})"
