"""Backends that fail: refused connections, empty pools, dead and stale connections.

Besides the Gunicorn backends, some tests use a ``ScriptedBackend``
(harness.py): a tiny TCP server in a thread whose every connection follows a
script, to produce failures that a real backend only shows by bad luck (a
keep-alive connection closed just as a request arrives, a response cut
short, garbage).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time

import pytest
from harness import (
    HOST,
    ScriptedBackend,
    free_port,
    gateway_config,
    http_get,
    parse_responses,
    read_request_head,
    respond,
    send_raw,
    served_by_name,
)


def dead_address() -> str:
    """An address where nothing listens: connections are refused."""
    return f"{HOST}:{free_port()}"


def refused_first_config(port: int, dead: str, live: str) -> dict:
    """Round robin over [dead, live]: the first request, and every other one, tries ``dead`` first.

    Passive health checks are turned off (``max_fails: 0``) so that the refused
    server stays in the rotation and every other request has to fail over.
    """
    config = gateway_config(port, web=[dead, live])
    config["upstreams"]["web"]["max_fails"] = 0
    return config


def assert_gateway_error(status: int, headers, body: bytes, expected: int) -> None:
    assert status == expected, body
    assert headers.get_content_type() == "text/plain"
    assert headers["X-Served-By"] is None
    assert 0 < len(body) < 200, body


# -- refused connections, empty pools -----------------------------------------------------

def test_refused_server_is_skipped_for_a_live_one(backends, gateway) -> None:
    port = free_port()
    dead = dead_address()
    instance = gateway(refused_first_config(port, dead, backends.web1.address))

    for _ in range(20):
        status, headers, _ = http_get(port, "/healthz")
        assert status == 200
        assert served_by_name(headers) == "web-1"
    instance.wait_for_output(dead)  # the failures are logged, naming the server


def test_request_bodies_survive_a_refused_server(backends, gateway) -> None:
    """The body read while connecting to the refused server goes to the live one, whole."""
    port = free_port()
    gateway(refused_first_config(port, dead_address(), backends.web1.address))

    for size in (1_000_000, 10, 200_001, 200_000, 5_000_000, 0):  # every other one tries the refused server first
        data = os.urandom(size)
        status, _, body = http_get(port, "/upload", method="POST", body=data)
        assert status == 200, body
        assert json.loads(body)["sha256"] == hashlib.sha256(data).hexdigest(), size


def test_every_server_refusing_is_a_502(gateway) -> None:
    port = free_port()
    gateway(gateway_config(port, web=[dead_address(), dead_address()]))

    assert_gateway_error(*http_get(port, "/"), 502)
    assert_gateway_error(*http_get(port, "/upload", method="POST", body=b"x" * 100_000), 502)
    # The gateway itself is fine: it answers the next request the same way.
    assert_gateway_error(*http_get(port, "/json"), 502)


def test_empty_pool_is_a_503(backends, gateway) -> None:
    port = free_port()
    config = gateway_config(port, web=[backends.web1.address], api=[backends.api.address])
    config["upstreams"]["api"]["servers"] = []
    gateway(config)

    assert_gateway_error(*http_get(port, "/api/users"), 503)
    status, headers, _ = http_get(port, "/json")  # other upstreams are unaffected
    assert status == 200 and served_by_name(headers) == "web-1"


# -- backends that go away ---------------------------------------------------------------

def test_backend_restarted_on_the_same_port_is_used_again(backend_factory, gateway) -> None:
    backend = backend_factory("web-k1")
    port = free_port()
    gateway(gateway_config(port, web=[backend.address]))
    for _ in range(3):  # leaves an idle pooled connection behind
        status, headers, _ = http_get(port, "/healthz")
        assert status == 200 and served_by_name(headers) == "web-k1"

    backend.stop()
    assert_gateway_error(*http_get(port, "/healthz"), 502)

    backend_factory("web-k2", port=backend.port)
    for _ in range(5):
        status, headers, _ = http_get(port, "/healthz")
        assert status == 200
        assert served_by_name(headers) == "web-k2"


def test_backend_closing_idle_pooled_connections_itself(backend_factory, gateway) -> None:
    """Gunicorn drops idle keep-alive connections after 2 s; a pool that keeps them longer must cope."""
    backend = backend_factory("web-ka", extra_args=["--keep-alive", "1"])
    port = free_port()
    config = gateway_config(port, web=[backend.address])
    config["upstreams"]["web"]["keepalive_timeout"] = 30  # longer than the backend's keep-alive
    gateway(config)

    status, _, body = http_get(port, "/echo")
    assert status == 200
    first_peer = json.loads(body)["peer"]
    time.sleep(2.0)  # the backend closes the idle connection meanwhile
    for _ in range(3):
        status, _, body = http_get(port, "/echo")
        assert status == 200, body
    assert json.loads(body)["peer"] != first_peer


def test_stale_pooled_connection_is_retried_on_a_fresh_one(gateway) -> None:
    """The backend closes a kept-alive connection just as the next request arrives on it."""
    def script(index: int, sock: socket.socket) -> None:
        buffer = bytearray()
        if index == 0:
            assert read_request_head(sock, buffer) is not None
            respond(sock, b"first")
            read_request_head(sock, buffer)  # the second request arrives... and is dropped
            return
        while read_request_head(sock, buffer) is not None:
            respond(sock, b"fresh %d" % index)

    with ScriptedBackend(script) as backend:
        port = free_port()
        gateway(gateway_config(port, web=[backend.address]))

        assert http_get(port, "/one")[::2] == (200, b"first")
        status, _, body = http_get(port, "/two")
        assert (status, body) == (200, b"fresh 1")
        assert backend.accepted == 2
    assert not backend.errors


def test_response_cut_short_by_the_backend_is_cut_short_for_the_client(gateway) -> None:
    def script(index: int, sock: socket.socket) -> None:
        read_request_head(sock, bytearray())
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)

    with ScriptedBackend(script) as backend:
        port = free_port()
        gateway(gateway_config(port, web=[backend.address]))
        data = send_raw(port, f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode(), timeout=5.0)

    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:300]
    # The client must be able to tell: it gets fewer bytes than announced, then the close.
    with pytest.raises(AssertionError, match="truncated"):
        parse_responses(data)
    assert len(body) < 1000


def test_garbage_from_the_backend_is_a_502(gateway) -> None:
    def script(index: int, sock: socket.socket) -> None:
        read_request_head(sock, bytearray())
        sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")

    with ScriptedBackend(script) as backend:
        port = free_port()
        gateway(gateway_config(port, web=[backend.address]))
        assert_gateway_error(*http_get(port, "/"), 502)
