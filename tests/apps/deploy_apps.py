"""Apps for the deployment tests (tests/integration/): they report what the worker sees."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Describe the request and the process serving it, as JSON.

    /slow?S sleeps S seconds first; /spawn?S starts a shell that leaves an
    orphaned `sleep S` behind and is itself never waited for (a careless app).
    """
    path = environ["PATH_INFO"]
    if path == "/slow":
        time.sleep(float(environ.get("QUERY_STRING") or "1"))
    if path == "/spawn":
        seconds = float(environ.get("QUERY_STRING") or "0.3")
        subprocess.Popen(["sh", "-c", f"sleep {seconds} & exit 0"])
    body = json.dumps(
        {
            "path": path,
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "uid": os.getuid(),
            "gid": os.getgid(),
            "remote_addr": environ.get("REMOTE_ADDR"),
            "remote_port": environ.get("REMOTE_PORT"),
            "scheme": environ["wsgi.url_scheme"],
            "xff": environ.get("HTTP_X_FORWARDED_FOR"),
            "host": environ.get("HTTP_HOST"),
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
