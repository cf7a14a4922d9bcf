"""Active health checks end to end: a real gateway, real Gunicorn backends, the admin API, the logs.

Each backend is told which file to watch through ``HEALTH_FILE`` (see
``backends/web.py``): while the file exists its ``/healthz`` answers 503 (or
hangs, for ``sleep S``), so a test makes a server fail its checks and recover
on demand.  Checks run every 0.2 s with a 0.5 s timeout, rise 2, fall 2.
"""

from __future__ import annotations

import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from admin_harness import admin_call
from harness import (
    HOST,
    Backend,
    ScriptedBackend,
    free_port,
    gateway_config,
    http_get,
    read_request_head,
    respond,
    served_by_name,
    wait_for_port,
    wait_until,
)
from live_helpers import reload_config

HEALTH = {"path": "/healthz", "interval": 0.2, "timeout": 0.5, "rise": 2, "fall": 2}
STATE_TIMEOUT = 10.0  # a few rounds of checks, with a wide margin


@pytest.fixture
def health_backends(backend_factory, monkeypatch, tmp_path: Path):
    """Two web backends ``hc-1`` and ``hc-2``; ``health_files[name]`` makes one unhealthy while it exists."""
    files: dict[str, Path] = {}
    started: dict[str, Backend] = {}
    for name in ("hc-1", "hc-2"):
        files[name] = tmp_path / f"{name}.health"
        monkeypatch.setenv("HEALTH_FILE", str(files[name]))  # read by the backend process at start
        started[name] = backend_factory(name)
    monkeypatch.delenv("HEALTH_FILE")
    return started, files


def start_gateway(gateway, servers: list[str], health: dict[str, Any] | None = HEALTH):
    """A gateway (``/`` -> upstream ``web``) with its admin API; (gateway, admin port, config)."""
    port, admin_port = free_port(), free_port()
    config = gateway_config(port, web=servers, admin={"listen": f"{HOST}:{admin_port}"})
    if health is not None:
        config["upstreams"]["web"]["health"] = dict(health)
    running = gateway(config)
    wait_for_port(HOST, admin_port, 10.0, running.process)
    return running, admin_port, config


def states(admin_port: int) -> dict[str, str]:
    """GET /upstreams/web: each server's state by address."""
    status, _, document = admin_call(admin_port, "GET", "/upstreams/web")
    assert status == 200, document
    return {server["address"]: server["state"] for server in document["servers"]}


def wait_for_state(admin_port: int, address: str, state: str, running) -> None:
    try:
        wait_until(lambda: states(admin_port).get(address) == state, STATE_TIMEOUT,
                   message=f"{address} {state}")
    except TimeoutError as error:
        raise AssertionError(f"{error}: {states(admin_port)}\n{running.output()}") from None


def served(port: int, count: int) -> Counter:
    """Who served *count* requests for ``/`` (every one must be a 200)."""
    names: Counter = Counter()
    for _ in range(count):
        status, headers, _ = http_get(port, "/")
        assert status == 200
        names[served_by_name(headers)] += 1
    return names


def test_an_unhealthy_server_gets_no_traffic_until_it_recovers(gateway, health_backends):
    backends, files = health_backends
    bad, good = backends["hc-1"], backends["hc-2"]
    running, admin_port, _ = start_gateway(gateway, [bad.address, good.address])
    running.wait_for_output("upstream web: health checks GET /healthz every 0.2s")
    assert served(running.port, 8) == {"hc-1": 4, "hc-2": 4}

    files["hc-1"].write_text("")  # /healthz answers 503 from now on
    wait_for_state(admin_port, bad.address, "down", running)
    assert states(admin_port)[good.address] == "up"
    running.wait_for_output(f"upstream web: server {bad.address} is down after 2 failed health checks: "
                            "status 503, expected 200")
    assert served(running.port, 20) == {"hc-2": 20}

    files["hc-1"].unlink()
    wait_for_state(admin_port, bad.address, "up", running)
    running.wait_for_output(f"upstream web: server {bad.address} is up again after 2 passed checks")
    assert served(running.port, 8) == {"hc-1": 4, "hc-2": 4}
    assert running.stdout_text().count(f"server {bad.address} is down") == 1
    assert "Starting factory" not in running.stdout_text()  # a check is not worth a log line


def test_a_server_that_hangs_on_the_health_path_is_marked_down_by_the_timeout(gateway, health_backends):
    backends, files = health_backends
    slow, good = backends["hc-1"], backends["hc-2"]
    running, admin_port, _ = start_gateway(gateway, [slow.address, good.address])
    files["hc-1"].write_text("sleep 3")
    wait_for_state(admin_port, slow.address, "down", running)
    running.wait_for_output(f"upstream web: server {slow.address} is down after 2 failed health checks: "
                            "no response within 0.5s")
    assert served(running.port, 10) == {"hc-2": 10}

    files["hc-1"].unlink()  # the sleeping threads finish within 3 s, then checks pass again
    wait_for_state(admin_port, slow.address, "up", running)


def test_a_stopped_server_is_marked_down_and_comes_back_when_restarted(gateway, health_backends, backend_factory):
    backends, _ = health_backends
    first, stopped = backends["hc-1"], backends["hc-2"]
    running, admin_port, _ = start_gateway(gateway, [first.address, stopped.address])
    stopped.stop()
    wait_for_state(admin_port, stopped.address, "down", running)
    running.wait_for_output(f"upstream web: server {stopped.address} is down after 2 failed health checks: "
                            "cannot connect: Connection was refused by other side")
    assert served(running.port, 10) == {"hc-1": 10}

    backend_factory("hc-2", port=stopped.port)
    running.wait_for_output(f"upstream web: server {stopped.address} is up again after 2 passed checks",
                            timeout=STATE_TIMEOUT)
    wait_for_state(admin_port, stopped.address, "up", running)
    assert served(running.port, 8) == {"hc-1": 4, "hc-2": 4}


def test_each_check_is_one_get_on_a_fresh_connection(gateway):
    heads: list[bytes] = []

    def script(index: int, sock: socket.socket) -> None:
        head = read_request_head(sock, bytearray())
        if head is not None:
            heads.append(head)
            respond(sock, b"ok")
            assert sock.recv(1) == b""  # the checker closes after one response

    with ScriptedBackend(script, max_connections=3) as backend:
        running, _, _ = start_gateway(gateway, [backend.address])
        wait_until(lambda: len(heads) >= 3, STATE_TIMEOUT, message="three health checks")
    assert not backend.errors, backend.errors
    assert heads[0] == (b"GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n"
                        b"User-Agent: gateway-health-check\r\nAccept: */*\r\n\r\n" % backend.address.encode())
    assert len(set(heads)) == 1
    assert "is down" not in running.stdout_text()


def test_sighup_turns_checks_on_and_off(gateway, health_backends):
    backends, files = health_backends
    bad, good = backends["hc-1"], backends["hc-2"]
    files["hc-1"].write_text("")
    running, admin_port, config = start_gateway(gateway, [bad.address, good.address], health=None)
    assert served(running.port, 4) == {"hc-1": 2, "hc-2": 2}  # no checks: /healthz is not asked

    config["upstreams"]["web"]["health"] = dict(HEALTH)
    reload_config(running, config)
    wait_for_state(admin_port, bad.address, "down", running)
    assert served(running.port, 6) == {"hc-2": 6}

    del config["upstreams"]["web"]["health"]
    reload_config(running, config)
    running.wait_for_output(f"upstream web: health checks off; back in rotation: {bad.address}")
    assert states(admin_port)[bad.address] == "up"
    assert served(running.port, 4) == {"hc-1": 2, "hc-2": 2}
