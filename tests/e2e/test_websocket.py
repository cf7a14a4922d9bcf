"""WebSocket through the gateway: a real client, the real api backend (flask-sock under Gunicorn)."""

from __future__ import annotations

import socket

import simple_websocket

from harness import free_port, gateway_config, http_get, wait_until


def _ws_gateway(gateway, backends, **extra):
    port = free_port()
    return gateway(gateway_config(port, web=[backends.web1.address], api=[backends.api.address], **extra))


def test_messages_go_both_ways_through_the_tunnel(gateway, backends):
    gw = _ws_gateway(gateway, backends)
    ws = simple_websocket.Client.connect(f"ws://127.0.0.1:{gw.port}/api/ws")
    try:
        for message in ("hello", "x" * 200_000, "ünïcode"):
            ws.send(message)
            answer = ws.receive(timeout=10)
            assert answer == f"api-1 {backends.api.address} pid={answer.split('pid=')[1].split(':')[0]}: {message}"
    finally:
        ws.close()
    # The tunnel is logged once, with its 101 and the bytes that came back.
    line = gw.wait_for_output('"GET /api/ws HTTP/1.1" 101 ')
    assert f"upstream={backends.api.address}" in line


def test_other_clients_keep_working_while_a_tunnel_is_open(gateway, backends):
    gw = _ws_gateway(gateway, backends)
    ws = simple_websocket.Client.connect(f"ws://127.0.0.1:{gw.port}/api/ws")
    try:
        for _ in range(5):
            status, _, _ = http_get(gw.port, "/api/users")
            assert status == 200
        ws.send("still here")
        assert ws.receive(timeout=10).endswith(": still here")
    finally:
        ws.close()


def test_upgrade_refused_by_the_backend_is_relayed(gateway, backends):
    """The web backend has no WebSocket route: its answer comes back and the connection closes."""
    gw = _ws_gateway(gateway, backends)
    request = (b"GET /json HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
               b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    status_line = received.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 ") and b" 101 " not in status_line
    assert b"\r\nX-Served-By: web-1 " in received  # the backend's own answer, relayed
    assert b"\r\nConnection: close\r\n" in received


def test_idle_tunnel_is_closed_after_the_read_timeout(gateway, backends):
    port = free_port()
    config = gateway_config(port, web=[backends.web1.address], api=[backends.api.address])
    config["upstreams"]["api"]["timeouts"] = {"read": 1}
    gw = gateway(config)
    ws = simple_websocket.Client.connect(f"ws://127.0.0.1:{gw.port}/api/ws")
    assert wait_until(lambda: not ws.connected, timeout=10)
    assert "closing an idle tunnel" in gw.stdout_text() + gw.stderr_text()
