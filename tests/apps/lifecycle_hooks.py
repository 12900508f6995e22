"""A --hooks module that appends each call to the file named by LIFECYCLE_HOOKS_FILE.

One line per call: `hook pid detail`. LIFECYCLE_HOOKS_FAIL names a hook that raises.
"""

from __future__ import annotations

import os
from typing import Any

RECORD = os.environ.get("LIFECYCLE_HOOKS_FILE", os.devnull)
FAIL = os.environ.get("LIFECYCLE_HOOKS_FAIL", "")


def _record(hook: str, detail: str = "") -> None:
    with open(RECORD, "a", encoding="utf-8") as f:
        f.write(f"{hook} {os.getpid()} {detail}".rstrip() + "\n")
    if hook == FAIL:
        raise RuntimeError(f"{hook} fails on purpose")


def on_starting(server: Any) -> None:
    _record("on_starting")


def when_ready(server: Any) -> None:
    _record("when_ready")


def pre_fork(server: Any, worker: Any) -> None:
    _record("pre_fork", f"gen={worker.generation}")


def post_fork(server: Any, worker: Any) -> None:
    _record("post_fork", f"worker={worker.pid}")


def post_worker_init(worker: Any) -> None:
    _record("post_worker_init", f"worker={worker.pid}")


def worker_int(worker: Any) -> None:
    _record("worker_int", f"worker={worker.pid}")


def worker_abort(worker: Any) -> None:
    _record("worker_abort", f"worker={worker.pid}")


def pre_exec(server: Any) -> None:
    _record("pre_exec")


def pre_request(worker: Any, req: Any) -> None:
    _record("pre_request", f"{req.method} {req.path}")


def post_request(worker: Any, req: Any, environ: dict[str, Any], resp: Any) -> None:
    _record("post_request", f"{req.method} {req.path} {resp.status_code}")


def child_exit(server: Any, worker: Any) -> None:
    _record("child_exit", f"worker={worker.pid}")


def worker_exit(server: Any, worker: Any) -> None:
    _record("worker_exit", f"worker={worker.pid}")


def nworkers_changed(server: Any, new: int, old: int | None) -> None:
    _record("nworkers_changed", f"{old}->{new}")


def on_reload(server: Any) -> None:
    _record("on_reload")


def on_exit(server: Any) -> None:
    _record("on_exit")
