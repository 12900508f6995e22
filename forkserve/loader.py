"""Turn `module:attribute` or `module:factory()` into a WSGI callable.

Runs in a worker after fork (or in the master with preload). Every failure is
an `AppLoadError` whose first line names the problem; when the app's own code
raised (at import, or in its factory), the lines after it are the traceback
of that code, with forkserve's loader and importlib's frames left out.

`check_spec` runs in the master before binding and imports nothing: a module
name that cannot be found is one line (with a "did you mean") at once.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import re
import sys
import traceback
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


def _parse_spec(spec: str, what: str) -> tuple[str, str, bool]:
    """(module, attribute, call?) of `module:attr` / `module:factory()`."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise AppLoadError(
            f"{what} {spec!r} is not MODULE:ATTRIBUTE or MODULE:FACTORY(){_path_hint(spec)}"
        )
    # Without ":attr" the name is `application`, as in gunicorn and mod_wsgi.
    return m.group("module"), m.group("attr") or "application", bool(m.group("call"))


def _path_hint(spec: str) -> str:
    """`pkg/web.py:app` was meant as `pkg.web:app`."""
    module, sep, attr = spec.strip().partition(":")
    if module.endswith(".py") or "/" in module:
        dotted = module.removesuffix(".py").strip("/").replace("/", ".")
        if re.fullmatch(r"[\w.]+", dotted):
            return f" (did you mean {dotted + sep + attr!r}?)"
    return ""


def import_object(spec: str, what: str = "app") -> Any:
    """Import `module:attr` (dotted attr allowed) and return the object."""
    module_name, attr, call = _parse_spec(spec, what)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise AppLoadError(
                f"cannot import {what} module {module_name!r}: no such module"
                f"{_module_hint(exc.name, spec.strip())}"
            ) from None
        raise AppLoadError(
            f"importing {what} module {module_name!r} failed: {user_traceback(exc)}"
        ) from exc
    except BaseException as exc:  # an import may raise anything, even SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise AppLoadError(
            f"importing {what} module {module_name!r} failed: {user_traceback(exc)}"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(
                f"module {module_name!r} has no attribute {attr!r}"
                f"{_attribute_hint(module, module_name, attr, call)}"
            ) from None
    if call:
        try:
            obj = obj()
        except Exception as exc:
            raise AppLoadError(
                f"calling {what} factory {spec!r} failed: {user_traceback(exc)}"
            ) from exc
    return obj


# Common names of a WSGI callable, offered when the one asked for is missing
# even if they are not spelled alike (`app` vs `application`).
_USUAL_NAMES = ("application", "app", "create_app", "make_app", "wsgi_app")


def _attribute_hint(module: Any, module_name: str, attr: str, call: bool) -> str:
    import difflib  # only on the way to an error

    names = [n for n in dir(module) if not n.startswith("_")]
    head = attr.split(".")[0]
    close = difflib.get_close_matches(head, names, n=1)
    if not close:
        close = [n for n in _USUAL_NAMES if n in names and n != head][:1]
    if not close:
        return ""
    suggestion = f"{module_name}:{close[0]}"
    if call or close[0] in ("create_app", "make_app"):
        suggestion += "()"
    return f" (did you mean {suggestion!r}?)"


def _module_hint(missing: str, full: str) -> str:
    """`full` with its prefix `missing` replaced by a name near it that can be imported."""
    import difflib  # only on the way to an error

    parent, _, leaf = missing.rpartition(".")
    close = difflib.get_close_matches(leaf, _importable_names(parent), n=1)
    if not close:
        return ""
    return f" (did you mean {(parent + '.' if parent else '') + close[0] + full[len(missing):]!r}?)"


def _importable_names(parent: str) -> list[str]:
    """Modules and packages in the directories `parent` is found in ("": the working
    directory and the other sys.path entries outside Python's installation)."""
    if parent:
        locations = _package_locations(parent)
    else:
        installed = (sys.prefix, sys.base_prefix, sys.exec_prefix)
        locations = [os.getcwd(), *(p for p in sys.path if p and not p.startswith(installed))]
    names = set()
    for directory in locations or []:
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        for entry in entries:
            stem, ext = os.path.splitext(entry)
            if ext == ".py" and stem.isidentifier():
                names.add(stem)
            elif not ext and entry.isidentifier() and os.path.isdir(
                    os.path.join(directory, entry)):
                names.add(entry)
    return sorted(names)


def _package_locations(name: str) -> list[str] | None:
    """Where package `name`'s submodules live, found without running any package's code.

    None when that is not certain: not found, not a plain package, or an
    `__init__.py` that edits its own `__path__` (pkgutil.extend_path and the like).
    """
    top, *rest = name.split(".")
    try:
        # A top-level lookup asks the finders only; it executes nothing.
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    locations: list[str] = []
    for part in [None, *rest]:
        if part is not None:
            spec = importlib.machinery.PathFinder.find_spec(part, locations)
        if spec is None or spec.submodule_search_locations is None:
            return None
        if spec.origin and spec.origin.endswith("__init__.py") and _edits_path(spec.origin):
            return None
        locations = list(spec.submodule_search_locations)
    return locations


def _edits_path(init_file: str) -> bool:
    try:
        with open(init_file, encoding="utf-8", errors="replace") as f:
            return "__path__" in f.read()
    except OSError:
        return True


def check_spec(spec: str, what: str = "app") -> None:
    """Master, before binding: fail at once if `spec` is malformed or its module cannot be
    found. Imports nothing (no package's `__init__` runs); whatever is not certain is
    left to the import in the worker."""
    module_name, _attr, _call = _parse_spec(spec, what)
    top = module_name.split(".")[0]
    if _find_top(top) is False:
        raise AppLoadError(f"cannot import {what} module {module_name!r}: no such module"
                           f"{_module_hint(top, spec.strip())}")
    parent, _, leaf = module_name.rpartition(".")
    if parent:
        locations = _package_locations(parent)
        if locations is not None and importlib.machinery.PathFinder.find_spec(
                leaf, locations) is None:
            raise AppLoadError(f"cannot import {what} module {module_name!r}: no such module"
                               f"{_module_hint(module_name, spec.strip())}")


def _find_top(name: str) -> bool | None:
    """Whether a top-level module can be found (None: the finders could not tell)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return None


# Frames a user never wants to read in a failed import: forkserve's own and
# importlib's machinery between `import_module` and the user's module.
_FORKSERVE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_IMPORTLIB_DIR = os.path.dirname(importlib.__file__ or "") + os.sep
MAX_FRAMES = 12  # past this the middle of the stack is left out: no wall of text


def _hidden(filename: str) -> bool:
    return (filename.startswith(("<frozen importlib.", _FORKSERVE_DIR))
            or (bool(_IMPORTLIB_DIR.strip(os.sep)) and filename.startswith(_IMPORTLIB_DIR)))


def user_traceback(exc: BaseException) -> str:
    """`Type: message`, then the frames of the code that raised it, without
    forkserve's and importlib's (for a SyntaxError: its file, line and caret)."""
    te = traceback.TracebackException.from_exception(exc, capture_locals=False)
    frames = [f for f in te.stack if not _hidden(f.filename)]
    only = [line.rstrip("\n") for line in te.format_exception_only()]
    # The `Type: message` line; a SyntaxError's location comes before it, notes after.
    names = (type(exc).__qualname__, f"{type(exc).__module__}.{type(exc).__qualname__}")
    at = next((i for i, line in enumerate(only) if line.startswith(names)), 0)
    summary = only[at] if only else type(exc).__name__
    if summary.startswith(names[1]):
        summary = summary[len(type(exc).__module__) + 1:]
    if len(frames) > MAX_FRAMES:
        left_out = len(frames) - MAX_FRAMES
        body = [*_format(frames[:2]), f"  ... {left_out} more frames ...",
                *_format(frames[-(MAX_FRAMES - 2):])]
    else:
        body = _format(frames)
    return "\n".join([summary, *body, *only[:at], *only[at + 1:]])


def _format(frames: list[traceback.FrameSummary]) -> list[str]:
    chunks = traceback.StackSummary.from_list(frames).format()
    return [line for chunk in chunks for line in chunk.rstrip("\n").split("\n")]


def load_app(spec: str) -> Any:
    """Import the WSGI app named by `spec`; fail with one clear line."""
    app = import_object(spec, "app")
    if not callable(app):
        raise AppLoadError(f"app {spec!r} is not callable (it is a {type(app).__name__})")
    return app
