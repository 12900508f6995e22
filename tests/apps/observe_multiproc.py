"""An app that keeps its own metrics with prometheus_client in multiprocess mode.

Imported by each worker after fork (no --preload), so each worker writes its
own files in PROMETHEUS_MULTIPROC_DIR: `app_hits` counts requests, and the
`livesum` gauge `app_workers_alive` is 1 per live worker from boot on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import Counter, Gauge

HITS = Counter("app_hits", "Requests the app saw.")
ALIVE = Gauge("app_workers_alive", "Workers alive.", multiprocess_mode="livesum")
ALIVE.set(1)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    HITS.inc()
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
