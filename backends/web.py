"""The ``web`` example backend: HTML, JSON, downloads, uploads and an echo.

Routes:

- ``GET /``: a small HTML page naming the process that served it.
- ``GET /json``: the same as JSON.
- ``GET /stream?bytes=N&chunk=M``: exactly N bytes of ``0123456789abcdef``
  repeated, from a generator (no Content-Length, so Gunicorn sends it chunked).
- ``GET /sized?bytes=N``: the same bytes, with a Content-Length.
- ``POST /upload`` (or PUT): reads the body in pieces, answers
  ``{"bytes": count, "sha256": hex}``; ``?delay=S`` waits S seconds (at most
  30) before reading, like a slow consumer.
- ``/echo`` (any method): what the request looked like on arrival.
- ``GET /healthz``: ``ok``; while the file named by the ``HEALTH_FILE``
  environment variable exists, what the file says: a status (empty: 503),
  or ``sleep S`` to answer only after S seconds (at most 30).  Tests use it
  to make a backend fail its health checks on demand.
- ``GET /status/<code>``: an answer with that status.
- ``GET /sleep?seconds=S``: answers after S seconds (at most 30), to keep a
  request in flight (least_conn tests).
"""

from __future__ import annotations

import os
import time
from html import escape
from flask import abort, jsonify, request
from werkzeug.wrappers import Response

from backends import common

app = common.create_app(__name__, "web")

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _size_argument(name: str, default: int) -> int:
    value = request.args.get(name, default, type=int)
    if value is None or value < 0:
        abort(400, f"{name} must be a non-negative integer")
    return value


@app.get("/")
def index() -> Response:
    info = common.served_by()
    who = escape(f"{info['service']} at {info['address']} (pid {info['pid']})")
    page = (
        "<!doctype html>\n<html><head><title>gateway demo: web</title></head>\n"
        f"<body><h1>Hello from web</h1><p>Served by {who}.</p></body></html>\n"
    )
    return Response(page, mimetype="text/html")


@app.get("/json")
def json_view() -> Response:
    return jsonify(message="hello from web", served_by=common.served_by())


@app.get("/stream")
def stream() -> Response:
    total = _size_argument("bytes", 1024 * 1024)
    chunk = _size_argument("chunk", 64 * 1024) or 1
    return Response(common.pattern_chunks(total, chunk), mimetype="application/octet-stream")


@app.get("/sized")
def sized() -> Response:
    total = _size_argument("bytes", 1024 * 1024)
    response = Response(common.pattern_chunks(total, 64 * 1024), mimetype="application/octet-stream")
    response.headers["Content-Length"] = str(total)
    return response


@app.route("/upload", methods=["POST", "PUT"])
def upload() -> Response:
    delay = request.args.get("delay", 0.0, type=float)
    if delay is None or not 0 <= delay <= 30:
        abort(400, "delay must be a number from 0 to 30")
    if delay:
        time.sleep(delay)  # a slow consumer: the sender must be held back meanwhile
    count, sha256 = common.read_body()
    return jsonify(bytes=count, sha256=sha256, served_by=common.served_by())


@app.route("/echo", methods=ALL_METHODS)
def echo() -> Response:
    return jsonify(common.echo())


@app.get("/healthz")
def healthz() -> Response:
    path = os.environ.get("HEALTH_FILE", "")
    try:
        with open(path, encoding="utf-8") as stream:
            override = stream.read().strip()
    except OSError:  # no HEALTH_FILE (open("") fails too), or no such file: healthy
        return Response("ok", mimetype="text/plain")
    if override.startswith("sleep"):
        time.sleep(min(max(float(override[5:] or 1), 0.0), 30.0))
        return Response("ok", mimetype="text/plain")
    code = int(override) if override.isdigit() else 503
    return Response(f"unhealthy (status {code} from {path})\n", status=code, mimetype="text/plain")


@app.get("/status/<int:code>")
def status(code: int) -> Response:
    if not 200 <= code <= 599:
        abort(400, "status must be between 200 and 599")
    body = "" if code in (204, 304) else f"status {code}\n"
    return Response(body, status=code, mimetype="text/plain")


@app.get("/sleep")
def sleep() -> Response:
    seconds = request.args.get("seconds", 1.0, type=float)
    if seconds is None or not 0 <= seconds <= 30:
        abort(400, "seconds must be a number from 0 to 30")
    time.sleep(seconds)
    return jsonify(slept=seconds, served_by=common.served_by())
