"""A real Flask app: routing, query strings, forms, JSON, cookies, streaming."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Flask, Response, jsonify, request

app = Flask(__name__)


@app.get("/")
def index() -> str:
    return "flask index"


@app.get("/hello/<name>")
def hello(name: str) -> Response:
    return jsonify(hello=name, q=request.args.get("q"), tags=request.args.getlist("tag"))


@app.post("/form")
def form() -> Response:
    return jsonify(form=request.form.to_dict(), files=list(request.files))


@app.post("/json")
def json_echo() -> Response:
    data = request.get_json()
    return jsonify(received=data, doubled=[x * 2 for x in data["numbers"]])


@app.get("/cookie/set")
def set_cookie() -> Response:
    resp = jsonify(ok=True)
    resp.set_cookie("flavour", "oatmeal")
    resp.set_cookie("size", "large")
    return resp


@app.get("/cookie/get")
def get_cookie() -> Response:
    return jsonify(cookies=request.cookies.to_dict())


@app.get("/stream")
def stream() -> Response:
    def generate() -> Iterator[str]:
        for i in range(100):
            yield f"line {i}\n"

    return Response(generate(), mimetype="text/plain")
