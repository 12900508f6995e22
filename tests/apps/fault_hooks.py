"""A --hooks module whose post_request calls sys.exit(4) after GET /exit-in-hook.

4 is WorkerExit.APP_LOAD_ERROR: a worker that has served must not report it.
"""

from __future__ import annotations

import sys
from typing import Any


def post_request(worker: Any, req: Any, environ: dict[str, Any], resp: Any) -> None:
    if req.path == "/exit-in-hook":
        sys.exit(4)
