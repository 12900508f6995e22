"""The built-in health endpoint (`--health-path`), answered by the worker itself.

Runs in a worker, after fork. The app never sees the health path: a probe
should measure whether this worker can take traffic, not run app code (which
may touch a database and turn a slow dependency into a restart storm).

200 while the worker serves; 503 once it drains for a stop or reload, so a
load balancer or a Kubernetes readiness probe stops routing new requests to
it while in-flight ones finish (the worker also answers `Connection: close`
then, so the client's next request goes elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

WSGIApp = Callable[..., Iterable[bytes]]

_SERVING = b"ok\n"
_DRAINING = b"draining\n"


def with_health_path(app: WSGIApp, path: str | None,
                     is_draining: Callable[[], bool]) -> WSGIApp:
    """`app`, with requests for `path` answered here; `app` itself when `path` is None."""
    if not path:
        return app

    def health(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        # Match the path as sent (before --root-path is stripped), without the
        # query: probes are configured with the URL they hit.
        target = environ.get("RAW_URI") or environ.get("PATH_INFO", "")
        if target.split("?", 1)[0] != path:
            return app(environ, start_response)
        draining = is_draining()
        body = _DRAINING if draining else _SERVING
        start_response(
            "503 Service Unavailable" if draining else "200 OK",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [body]  # the response writer drops it for HEAD

    return health
