"""The Flask scenario's app: `benchmarks.flask_app:app`.

Kept apart from `benchmarks.apps` so that only the Flask runs import Flask:
its import time and memory belong to this scenario, not to hello world.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from flask import Flask, jsonify, request

app = Flask("benchmarks")


@app.route("/", defaults={"path": ""}, methods=["GET", "POST"])
@app.route("/<path:path>", methods=["GET", "POST"])
def query(path: str) -> Any:
    """JSON built from the query string.

    Routing, request parsing and JSON serialisation: the work a small real
    API endpoint does on every request.
    """
    items = dict(parse_qsl(request.query_string.decode("latin-1")))
    return jsonify(path=path, query=items, count=len(items))
