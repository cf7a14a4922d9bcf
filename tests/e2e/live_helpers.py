"""Helpers for the live-backend end-to-end tests: admin API calls, SIGHUP, signals.

Used by test_live_zero_loss.py, test_live_persistence.py, test_reload.py and
test_shutdown.py.  Every call has a timeout and every wait a bound.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
from typing import Any
from urllib.parse import quote

from harness import GATEWAY_START_TIMEOUT, HOST, Gateway, wait_for_port, wait_until

ADMIN_TIMEOUT = 15.0
RELOAD_TIMEOUT = 10.0

RELOADED = "configuration reloaded"
REJECTED = "configuration rejected"


def admin_request(port: int, method: str, path: str, body: Any = None,
                  timeout: float = ADMIN_TIMEOUT) -> tuple[int, Any]:
    """One call to the admin API on 127.0.0.1:port: (status, decoded JSON body or None)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        return response.status, (json.loads(raw) if raw.strip() else None)
    finally:
        conn.close()


def server_path(upstream: str, address: str) -> str:
    return f"/upstreams/{quote(upstream, safe='')}/servers/{quote(address, safe='')}"


def upstream_servers(admin_port: int, upstream: str) -> dict[str, dict[str, Any]]:
    """GET /upstreams: the servers of ``upstream`` by address (empty if no such upstream)."""
    status, body = admin_request(admin_port, "GET", "/upstreams")
    assert status == 200, (status, body)
    for entry in body["upstreams"]:
        if entry["name"] == upstream:
            return {server["address"]: server for server in entry["servers"]}
    return {}


def admin_config(admin_port: int, state_file: str | None = None, **extra: Any) -> dict[str, Any]:
    """The top-level keys that turn the admin API (and optionally the state file) on."""
    config: dict[str, Any] = {"admin": {"listen": f"{HOST}:{admin_port}"}}
    if state_file is not None:
        config["state_file"] = state_file
    config.update(extra)
    return config


def wait_for_admin(gateway: Gateway, admin_port: int, timeout: float = GATEWAY_START_TIMEOUT) -> Gateway:
    """Wait until the admin API accepts connections too (the harness waits for the listeners only)."""
    try:
        wait_for_port(HOST, admin_port, timeout, gateway.process)
    except (RuntimeError, TimeoutError) as error:
        raise AssertionError(f"the admin API did not start: {error}\n{gateway.output()}") from None
    return gateway


def reload_config(gateway: Gateway, config: Any, expect: str = RELOADED,
                  timeout: float = RELOAD_TIMEOUT) -> str:
    """Write ``config``, send SIGHUP, wait for one more ``expect`` line on stdout; return stdout."""
    before = gateway.stdout_text().count(expect)
    gateway.write_config(config)
    gateway.send_signal(signal.SIGHUP)

    def seen() -> str | None:
        stdout = gateway.stdout_text()
        return stdout if stdout.count(expect) > before else None

    try:
        return wait_until(seen, timeout, message=f"{expect!r} after SIGHUP")
    except TimeoutError as error:
        raise AssertionError(f"{error}\n{gateway.output()}") from None


def wait_for_exit(gateway: Gateway, timeout: float) -> int:
    """The gateway's exit code once it exits; fails the test after ``timeout`` seconds."""
    try:
        return gateway.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"the gateway did not exit within {timeout}s: {error}\n{gateway.output()}") from None


def connect_refused(port: int, timeout: float = 0.5) -> bool:
    """Whether a TCP connection to 127.0.0.1:port is refused right now."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
