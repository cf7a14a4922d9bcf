"""The ``api`` example backend: JSON under ``/api/``.

Routes:

- ``GET /api/``: an index of the routes below.
- ``GET /api/users``: a list of sample users.
- ``/api/echo`` (any method): what the request looked like on arrival.
- ``GET /api/healthz`` and ``GET /healthz``: ``ok``.
- ``/api/ws``: a WebSocket echo (flask-sock): each message comes back
  prefixed with who served it, e.g. ``api-1 127.0.0.1:9001 pid=42: hello``.
- ``/api/<anything>``: 200 JSON echoing the path it saw.
- anything else: 404 JSON with the path that arrived, so that a test can see
  what a route with ``strip_prefix`` actually forwarded.
"""

from __future__ import annotations

from flask import jsonify, request
from flask_sock import Sock
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from backends import common

app = common.create_app(__name__, "api")
sock = Sock(app)

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

USERS = [
    {"id": 1, "name": "Ada Lovelace", "email": "ada@example.org"},
    {"id": 2, "name": "Alan Turing", "email": "alan@example.org"},
    {"id": 3, "name": "Grace Hopper", "email": "grace@example.org"},
]


@app.get("/api/")
def api_index() -> Response:
    routes = ["/api/users", "/api/echo", "/api/healthz"]
    return jsonify(routes=routes, served_by=common.served_by())


@app.get("/api/users")
def users() -> Response:
    return jsonify(users=USERS, served_by=common.served_by())


@app.route("/api/echo", methods=ALL_METHODS)
def echo() -> Response:
    return jsonify(common.echo())


@app.get("/api/healthz")
@app.get("/healthz")
def healthz() -> Response:
    return Response("ok", mimetype="text/plain")


@sock.route("/api/ws")
def websocket_echo(ws) -> None:
    """Echo every message until the client closes (runs in one of Gunicorn's threads)."""
    while True:
        message = ws.receive()
        if message is None:
            return
        ws.send(f"{common.served_by_header()}: {message}")


@app.route("/api/<path:rest>", methods=ALL_METHODS)
def api_catch_all(rest: str) -> Response:
    return jsonify(path=request.path, rest=rest, method=request.method,
                   query_string=request.query_string.decode("latin-1"),
                   served_by=common.served_by())


@app.route("/", defaults={"rest": ""}, methods=ALL_METHODS)
@app.route("/<path:rest>", methods=ALL_METHODS)
def not_api(rest: str) -> tuple[Response, int]:
    return jsonify(error="not found", path=request.path, served_by=common.served_by()), 404


@app.errorhandler(HTTPException)
def http_error(error: HTTPException) -> tuple[Response, int]:
    code = error.code or 500
    return jsonify(error=error.name.lower(), path=request.path, served_by=common.served_by()), code
