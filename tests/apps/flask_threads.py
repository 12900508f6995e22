"""A Flask app with sessions and SQLite (one connection per request) for the threads smoke test.

The database file is FLASKTHREADS_DB; the app creates its table on import.
"""

from __future__ import annotations

import os
import sqlite3
import threading

from flask import Flask, Response, g, jsonify, session

DB = os.environ.get("FLASKTHREADS_DB", "")

app = Flask(__name__)
app.secret_key = "forkserve-tests-only"

with sqlite3.connect(DB, timeout=30) as _db:
    _db.execute("CREATE TABLE IF NOT EXISTS visit (client TEXT, number INTEGER, thread TEXT)")


def db() -> sqlite3.Connection:
    if "db" not in g:
        g.db = sqlite3.connect(DB, timeout=30)
    conn: sqlite3.Connection = g.db
    return conn


@app.teardown_appcontext
def close_db(exc: BaseException | None) -> None:
    conn = g.pop("db", None)
    if conn is not None:
        conn.close()


@app.get("/visit/<client>")
def visit(client: str) -> Response:
    number = session.get("visits", 0) + 1
    session["visits"] = number
    session.setdefault("client", client)
    thread = threading.current_thread().name
    with db() as conn:
        conn.execute("INSERT INTO visit VALUES (?, ?, ?)", (client, number, thread))
    rows = db().execute("SELECT COUNT(*) FROM visit WHERE client = ?", (client,)).fetchone()[0]
    return jsonify(client=session["client"], number=number, rows=rows, thread=thread)


@app.get("/total")
def total() -> Response:
    return jsonify(visits=db().execute("SELECT COUNT(*) FROM visit").fetchone()[0])
