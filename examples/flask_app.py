"""A Flask app with the middleware from chapter 3: chapters 3 and 4 of the guide.

    cd examples && forkserve flask_app:app
"""

from flask import Flask, request

from middleware import RequestID, Timing

app = Flask(__name__)


@app.get("/")
def index():
    request.environ["wsgi.errors"].write("view: index\n")
    return {
        "request_id": request.environ["HTTP_X_REQUEST_ID"],
        "server": request.environ["SERVER_SOFTWARE"],
    }


@app.get("/hello/<name>")
def hello(name):
    return f"Hello, {name}!\n", {"Content-Type": "text/plain; charset=utf-8"}


# Flask's own WSGI callable is app.wsgi_app; wrapping it keeps `app` the
# Flask object (its config, its test client) while every request goes
# through the middleware first.
app.wsgi_app = Timing(RequestID(app.wsgi_app))
