"""Helpers shared by the example backends.

Each app is a plain Flask app whose ``wsgi_app`` sits behind werkzeug's
``ProxyFix`` (one trusted proxy: the gateway), so the URLs it builds use the
client-facing scheme and host from ``X-Forwarded-Proto``/``X-Forwarded-Host``.
Every response carries ``X-Served-By: <service> <bind address> pid=<pid>``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

from flask import Flask, current_app, request, url_for
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Response

#: The byte pattern that ``/stream`` and ``/sized`` repeat.
PATTERN = b"0123456789abcdef"

#: Request bodies are read in pieces of this size, never whole.
READ_CHUNK = 64 * 1024


def create_app(import_name: str, default_service: str) -> Flask:
    """A Flask app behind ProxyFix that stamps every response with who served it."""
    app = Flask(import_name, static_folder=None)
    app.config["SERVICE_NAME"] = os.environ.get("BACKEND_NAME", default_service)
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)  # type: ignore[method-assign]

    @app.after_request
    def add_served_by(response: Response) -> Response:
        response.headers["X-Served-By"] = served_by_header()
        return response

    return app


def bind_address(environ: dict[str, Any]) -> str:
    """The local address (``host:port``) of the socket this request arrived on.

    Under Gunicorn the accepted socket is in ``environ["gunicorn.socket"]``;
    elsewhere fall back to ``SERVER_NAME:SERVER_PORT`` (as the WSGI server saw
    them: ProxyFix keeps the originals aside when it rewrites them).
    """
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        try:
            name = sock.getsockname()
        except OSError:
            name = None
        if isinstance(name, tuple):
            host, port = name[0], name[1]
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if isinstance(name, str) and name:
            return name  # a Unix socket path
    original = environ.get("werkzeug.proxy_fix.orig", {})
    server_name = original.get("SERVER_NAME", environ.get("SERVER_NAME", "?"))
    server_port = original.get("SERVER_PORT", environ.get("SERVER_PORT", "?"))
    return f"{server_name}:{server_port}"


def served_by() -> dict[str, Any]:
    """Who is serving the current request: service name, bind address, worker pid."""
    return {
        "service": current_app.config["SERVICE_NAME"],
        "address": bind_address(request.environ),
        "pid": os.getpid(),
    }


def served_by_header() -> str:
    """The X-Served-By value: ``web-1 127.0.0.1:8001 pid=1234``."""
    info = served_by()
    return f"{info['service']} {info['address']} pid={info['pid']}"


def raw_headers(environ: dict[str, Any]) -> dict[str, str]:
    """The request headers as the WSGI server received them, lower-case names.

    Read from the ``HTTP_*`` environ keys (plus ``CONTENT_TYPE`` and
    ``CONTENT_LENGTH``), with ProxyFix's rewrite of ``Host`` undone.  Repeated
    headers arrive already joined with commas by the server.
    """
    headers: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers[key[5:].replace("_", "-").lower()] = value
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.replace("_", "-").lower()] = environ[key]
    original = environ.get("werkzeug.proxy_fix.orig", {})
    if original.get("HTTP_HOST") is not None:
        headers["host"] = original["HTTP_HOST"]
    return headers


def read_body() -> tuple[int, str]:
    """Read the request body piece by piece: (byte count, sha256 hex digest)."""
    digest = hashlib.sha256()
    count = 0
    stream = request.stream
    while True:
        piece = stream.read(READ_CHUNK)
        if not piece:
            break
        count += len(piece)
        digest.update(piece)
    return count, digest.hexdigest()


def echo() -> dict[str, Any]:
    """What the request looked like on arrival, as a JSON-ready dict.

    ``headers`` are the raw headers; ``remote_addr``, ``scheme``, ``host`` and
    ``url`` are what the app sees after ProxyFix applied X-Forwarded-*.
    ``peer`` is the TCP peer (``host:port``) of the connection the request came
    on, before ProxyFix: behind the gateway, the gateway's end of a pooled
    backend connection, so a test can see that connections are reused.
    The body, if any, is read and summarised as ``body_bytes``/``body_sha256``.
    """
    body_bytes, body_sha256 = read_body()
    original = request.environ.get("werkzeug.proxy_fix.orig", {})
    peer_host = original.get("REMOTE_ADDR", request.environ.get("REMOTE_ADDR"))
    peer_port = request.environ.get("REMOTE_PORT")
    return {
        "method": request.method,
        "path": request.path,
        "query_string": request.query_string.decode("latin-1"),
        "headers": raw_headers(request.environ),
        "remote_addr": request.remote_addr,
        "peer": f"{peer_host}:{peer_port}",
        "scheme": request.scheme,
        "host": request.host,
        "url": url_for("echo", _external=True),
        "body_bytes": body_bytes,
        "body_sha256": body_sha256,
        "served_by": served_by(),
    }


def pattern_chunks(total: int, chunk: int) -> Iterator[bytes]:
    """Yield exactly ``total`` bytes of ``PATTERN`` repeated, ``chunk`` bytes at a time."""
    chunk = max(1, chunk)
    offset = 0
    while offset < total:
        size = min(chunk, total - offset)
        start = offset % len(PATTERN)
        repeats = (start + size) // len(PATTERN) + 1
        yield (PATTERN * repeats)[start:start + size]
        offset += size
