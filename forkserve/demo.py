"""A small app that ships with forkserve: a page that shows the request as the app sees it.

    forkserve forkserve.demo:app
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable
from typing import Any

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>forkserve demo</title>
<style>body{{font:15px system-ui,sans-serif;margin:2em auto;max-width:60em}}
td{{padding:.2em .8em;vertical-align:top;font-family:monospace}}
tr:nth-child(odd){{background:#f3f3f3}}</style></head>
<body><h1>It works: forkserve is serving this app</h1>
<p>{method} <code>{path}</code> &mdash; the environ the app received:</p>
<table>{rows}</table>
<form method="post"><p>POST a form: <input name="message" value="hello">
<button>Send</button></p></form>{body}
</body></html>
"""


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Show every environ key and, for a POST, the body that came with it."""
    body = b""
    if environ["REQUEST_METHOD"] == "POST":
        body = environ["wsgi.input"].read(65536)
    rows = "".join(
        f"<tr><td>{html.escape(key)}</td><td>{html.escape(repr(value))}</td></tr>"
        for key, value in sorted(environ.items())
    )
    shown = (
        f"<h2>Request body</h2><pre>{html.escape(body.decode('utf-8', 'replace'))}</pre>"
        if body
        else ""
    )
    page = PAGE.format(
        method=html.escape(environ["REQUEST_METHOD"]),
        path=html.escape(environ.get("RAW_URI", "")),
        rows=rows,
        body=shown,
    ).encode("utf-8")
    start_response(
        "200 OK",
        [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(page)))],
    )
    return [page]
