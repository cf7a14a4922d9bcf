"""SIGHUP: config.yaml is read again and applied to new requests.

Upstreams, servers, weights and routes change for new requests; requests and
connections in flight keep going.  A file that does not validate is rejected
with a logged error naming it, and the running configuration keeps serving.
"""

from __future__ import annotations

import http.client
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from harness import HOST, KeepAliveClient, free_port, http_get, served_by_name, wait_until
from live_helpers import (
    REJECTED,
    RELOADED,
    admin_config,
    admin_request,
    reload_config,
    upstream_servers,
    wait_for_admin,
)

SLOW_SECONDS = 2.0


def make_config(port: int, web: list[tuple[str, int]] | None = None, api: list[str] | None = None,
                **extra: Any) -> dict[str, Any]:
    """``/api/`` -> api (when given), ``/`` -> web with (address, weight) servers."""
    upstreams: dict[str, Any] = {}
    routes: list[dict[str, Any]] = []
    if api is not None:
        upstreams["api"] = {"servers": [{"address": address} for address in api]}
        routes.append({"path": "/api/", "upstream": "api"})
    if web is not None:
        upstreams["web"] = {"servers": [{"address": address, "weight": weight} for address, weight in web]}
        routes.append({"path": "/", "upstream": "web"})
    config: dict[str, Any] = {
        "listeners": [{"name": "public", "port": port, "interface": HOST}],
        "upstreams": upstreams,
        "routes": routes,
        "access_log": None,
    }
    config.update(extra)
    return config


def who(port: int, path: str = "/healthz") -> tuple[int, str]:
    status, headers, _ = http_get(port, path)
    return status, served_by_name(headers)


def sequence(client: KeepAliveClient, count: int, path: str = "/healthz") -> list[str]:
    names = []
    for _ in range(count):
        status, headers, _ = client.get(path)
        assert status == 200
        names.append(served_by_name(headers))
    return names


class Background(threading.Thread):
    """One request in the background: ``result`` is (status, served by) or the exception."""

    def __init__(self, call) -> None:
        super().__init__(daemon=True)
        self._call = call
        self.result: Any = None

    def run(self) -> None:
        try:
            status, headers, _ = self._call()
            self.result = (status, served_by_name(headers))
        except (OSError, http.client.HTTPException) as error:
            self.result = error


def test_a_new_upstream_and_route_become_reachable(backends, gateway) -> None:
    port = free_port()
    instance = gateway(make_config(port, web=[(backends.web1.address, 1)]))
    assert who(port, "/api/users") == (404, "web-1")  # no /api/ route yet: the web app answers

    stdout = reload_config(instance, make_config(port, web=[(backends.web1.address, 1)], api=[backends.api.address]))

    assert who(port, "/api/users") == (200, "api-1")
    assert who(port, "/") == (200, "web-1")
    assert "SIGHUP: configuration reloaded: 2 upstream(s), 2 route(s)" in stdout


def test_a_removed_upstream_and_route_are_gone(backends, gateway) -> None:
    port = free_port()
    instance = gateway(make_config(port, web=[(backends.web1.address, 1)], api=[backends.api.address]))
    assert who(port, "/api/users") == (200, "api-1")

    reload_config(instance, make_config(port, web=[(backends.web1.address, 1)]))

    assert who(port, "/api/users") == (404, "web-1")


def test_a_removed_server_stops_getting_traffic(backends, gateway) -> None:
    port = free_port()
    instance = gateway(make_config(port, web=[(backends.web1.address, 1), (backends.web2.address, 1)]))
    with KeepAliveClient(port) as client:
        assert Counter(sequence(client, 4)) == {"web-1": 2, "web-2": 2}

        reload_config(instance, make_config(port, web=[(backends.web1.address, 1)]))

        assert Counter(sequence(client, 20)) == {"web-1": 20}
    assert Counter(who(port)[1] for _ in range(5)) == {"web-1": 5}


def test_a_changed_weight_changes_the_distribution(backends, gateway) -> None:
    port = free_port()
    instance = gateway(make_config(port, web=[(backends.web1.address, 1), (backends.web2.address, 1)]))
    with KeepAliveClient(port) as client:
        # An even number of picks at 1:1 leaves the round robin at the start of a cycle.
        assert Counter(sequence(client, 8)) == {"web-1": 4, "web-2": 4}

        reload_config(instance, make_config(port, web=[(backends.web1.address, 3), (backends.web2.address, 1)]))

        # nginx's smooth cycle for 3:1, then exact counts over whole cycles.
        assert sequence(client, 4) == ["web-1", "web-1", "web-2", "web-1"]
        assert Counter(sequence(client, 400)) == {"web-1": 300, "web-2": 100}
        # The client's keep-alive connection was not touched by the reload.
        assert client.connections_opened == 1


INVALID_CONFIGS = {
    "invalid-yaml": "listeners: [\n  {port: 1\n",
    "zero-weight": None,  # built in the test: a weight of 0
    "unknown-upstream": None,  # built in the test: a route to an upstream that does not exist
    "missing-file": None,  # the file is deleted
}


@pytest.mark.parametrize("problem", list(INVALID_CONFIGS))
def test_an_invalid_file_is_rejected_and_the_old_config_keeps_serving(backends, gateway, problem: str) -> None:
    port = free_port()
    good = make_config(port, web=[(backends.web1.address, 1)], api=[backends.api.address])
    instance = gateway(good)
    assert who(port, "/api/users") == (200, "api-1")

    if problem == "zero-weight":
        bad: Any = make_config(port, web=[(backends.web1.address, 0)])
    elif problem == "unknown-upstream":
        bad = make_config(port, web=[(backends.web1.address, 1)])
        bad["routes"].append({"path": "/nowhere/", "upstream": "nowhere"})
    else:
        bad = INVALID_CONFIGS[problem]
    if problem == "missing-file":
        before = instance.stdout_text().count(REJECTED)
        instance.config_path.unlink()
        instance.send_signal(signal.SIGHUP)
        stdout = wait_until(lambda: instance.stdout_text() if instance.stdout_text().count(REJECTED) > before
                            else None, 10.0, message="the rejection logged")
    else:
        stdout = reload_config(instance, bad, expect=REJECTED)

    rejection = [line for line in stdout.splitlines() if REJECTED in line]
    assert len(rejection) == 1, stdout
    assert str(instance.config_path) in rejection[0], rejection
    assert "Traceback" not in stdout
    assert RELOADED not in stdout
    assert instance.process.poll() is None
    # The old configuration, routes included, keeps serving.
    assert who(port, "/api/users") == (200, "api-1")
    assert who(port, "/") == (200, "web-1")

    # A good file after a bad one is applied as usual.
    reload_config(instance, make_config(port, web=[(backends.web2.address, 1)]))
    assert who(port, "/api/users") == (404, "web-2")


def test_a_request_in_flight_during_a_reload_completes(backends, gateway) -> None:
    port = free_port()
    instance = gateway(make_config(port, web=[(backends.web1.address, 1)]))
    with KeepAliveClient(port) as client:
        assert sequence(client, 1) == ["web-1"]
        slow_fresh = Background(lambda: http_get(port, f"/sleep?seconds={SLOW_SECONDS}"))
        slow_kept = Background(lambda: client.get(f"/sleep?seconds={SLOW_SECONDS}"))
        started = time.monotonic()
        slow_fresh.start()
        slow_kept.start()
        time.sleep(0.5)  # both are on web-1 now

        # The new file replaces web-1 with web-2.
        reload_config(instance, make_config(port, web=[(backends.web2.address, 1)]))
        assert who(port) == (200, "web-2")
        assert slow_fresh.is_alive() and slow_kept.is_alive(), "the slow requests ended early"

        slow_fresh.join(SLOW_SECONDS + 10)
        slow_kept.join(SLOW_SECONDS + 10)
        assert slow_fresh.result == (200, "web-1")
        assert slow_kept.result == (200, "web-1")
        assert time.monotonic() - started >= SLOW_SECONDS
        # The keep-alive connection that carried the slow request goes on, to the new server.
        assert sequence(client, 3) == ["web-2"] * 3
        assert client.connections_opened == 1


def test_live_changes_are_reapplied_on_top_of_the_reloaded_file(backends, backend_factory, gateway,
                                                                   tmp_path: Path) -> None:
    added = backend_factory("reload-added")
    port, admin_port = free_port(), free_port()
    extra = admin_config(admin_port, str(tmp_path / "state.json"))
    instance = wait_for_admin(gateway(make_config(port, web=[(backends.web1.address, 1),
                                                            (backends.web2.address, 1)], **extra)), admin_port)
    status, body = admin_request(admin_port, "POST", "/upstreams/web/servers", {"address": added.address})
    assert status == 201, (status, body)
    status, body = admin_request(admin_port, "DELETE",
                                 f"/upstreams/web/servers/{backends.web2.address}?wait=1")
    assert status == 204, (status, body)

    # The file changes web-1's weight and still lists web-2, which the operator removed.
    reload_config(instance, make_config(port, web=[(backends.web1.address, 2), (backends.web2.address, 1)],
                                        **extra))

    servers = upstream_servers(admin_port, "web")
    assert {address: server["weight"] for address, server in servers.items()} == {
        backends.web1.address: 2, added.address: 1}
    with KeepAliveClient(port) as client:
        assert Counter(sequence(client, 30)) == {"web-1": 20, "reload-added": 10}


def test_a_listener_change_waits_for_a_restart(backends, gateway) -> None:
    port = free_port()
    instance = gateway(make_config(port, web=[(backends.web1.address, 1)]))
    moved = make_config(free_port(), web=[(backends.web2.address, 1)])

    stdout = reload_config(instance, moved)

    assert "changes to listeners take effect at the next restart" in stdout
    assert who(port) == (200, "web-2")  # the old port keeps serving, with the new upstreams
