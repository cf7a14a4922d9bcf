"""Live changes survive a restart: the state file, and what happens when it is broken.

The admin API's changes are written to ``state_file`` (JSON) and applied on
top of config.yaml when the gateway starts again.  A state file that cannot
be read as one stops the gateway before it starts, with one line naming it.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from harness import HOST, KeepAliveClient, free_port, run_gateway_expecting_failure, served_by_name
from live_helpers import admin_config, admin_request, server_path, upstream_servers, wait_for_admin, wait_for_exit

STOP_TIMEOUT = 15.0


def config_for(port: int, admin_port: int, state_file: Path, servers: list[str]) -> dict[str, Any]:
    return {
        "listeners": [{"name": "public", "port": port, "interface": HOST}],
        "upstreams": {"web": {"servers": [{"address": address} for address in servers]}},
        "routes": [{"path": "/", "upstream": "web"}],
        "access_log": None,
        **admin_config(admin_port, str(state_file)),
    }


def served_counts(port: int, count: int) -> Counter[str]:
    with KeepAliveClient(port) as client:
        names = []
        for _ in range(count):
            status, headers, _ = client.get("/healthz")
            assert status == 200
            names.append(served_by_name(headers))
    return Counter(names)


def test_live_changes_survive_a_restart(backends, backend_factory, gateway, tmp_path: Path) -> None:
    added = backend_factory("persist-added")
    port, admin_port = free_port(), free_port()
    state_file = tmp_path / "var" / "gateway-state.json"  # the directory does not exist yet
    config = config_for(port, admin_port, state_file, [backends.web1.address, backends.web2.address])
    first = wait_for_admin(gateway(config), admin_port)

    status, body = admin_request(admin_port, "POST", "/upstreams/web/servers", {"address": added.address, "weight": 2})
    assert status == 201, (status, body)
    status, body = admin_request(admin_port, "PATCH", server_path("web", backends.web1.address), {"weight": 4})
    assert status == 200, (status, body)
    status, body = admin_request(admin_port, "DELETE", server_path("web", backends.web2.address) + "?wait=1")
    assert status == 204, (status, body)
    expected = {backends.web1.address: 4, added.address: 2}
    assert {address: server["weight"] for address, server in upstream_servers(admin_port, "web").items()} == expected

    # The state file is valid JSON and says what was done.
    document = json.loads(state_file.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    recorded = document["upstreams"]["web"]
    assert recorded[added.address]["weight"] == 2
    assert recorded[backends.web1.address]["weight"] == 4
    assert recorded[backends.web2.address] == {"removed": True}
    # Written atomically: no temporary file left beside it.
    assert sorted(path.name for path in state_file.parent.iterdir()) == [state_file.name]

    first.send_signal(signal.SIGTERM)
    wait_for_exit(first, STOP_TIMEOUT)

    # Same config.yaml, same state file: a new gateway starts with the live changes.
    second = wait_for_admin(gateway(config), admin_port)
    servers = upstream_servers(admin_port, "web")
    assert {address: server["weight"] for address, server in servers.items()} == expected
    assert all(server["state"] == "up" for server in servers.values())
    assert backends.web2.address not in servers

    # Traffic follows: weights 4:2 give exactly 8 and 4 out of 12 (two full cycles).
    assert served_counts(second.port, 12) == {"web-1": 8, "persist-added": 4}


def test_a_server_drained_with_patch_stays_drained_after_a_restart(backends, gateway, tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    state_file = tmp_path / "state.json"
    config = config_for(port, admin_port, state_file, [backends.web1.address, backends.web2.address])
    first = wait_for_admin(gateway(config), admin_port)
    status, body = admin_request(admin_port, "PATCH", server_path("web", backends.web2.address), {"state": "drain"})
    assert (status, body["state"]) == (200, "draining"), (status, body)
    first.send_signal(signal.SIGTERM)
    wait_for_exit(first, STOP_TIMEOUT)

    second = wait_for_admin(gateway(config), admin_port)
    servers = upstream_servers(admin_port, "web")
    assert {address: server["state"] for address, server in servers.items()} == {
        backends.web1.address: "up", backends.web2.address: "draining"}
    assert served_counts(second.port, 6) == {"web-1": 6}


@pytest.mark.parametrize("content, says", [
    pytest.param("{not json", "not a gateway state file", id="invalid-json"),
    pytest.param("", "not a gateway state file", id="empty"),
    pytest.param("[]", "not a gateway state file", id="not-a-mapping"),
    pytest.param('{"version": 1, "upstreams": {"web": {"127.0.0.1:1": {"weight": 0, "state": "up"}}}}',
                 "upstreams.web.127.0.0.1:1: expected an integer weight >= 1", id="bad-weight"),
])
def test_a_corrupt_state_file_stops_the_gateway_with_a_clear_message(backends, tmp_path: Path, content: str,
                                                                      says: str) -> None:
    state_file = tmp_path / "corrupt-state.json"
    state_file.write_text(content, encoding="utf-8")
    config = config_for(free_port(), free_port(), state_file, [backends.web1.address])

    returncode, stdout, stderr = run_gateway_expecting_failure(config, tmp_path)

    output = stdout + stderr
    assert returncode != 0, output
    assert str(state_file) in output, output
    assert says in output, output
    assert "Traceback" not in output, output
    # One line that says it all, not a wall of text.
    lines = [line for line in output.splitlines() if str(state_file) in line]
    assert len(lines) == 1, output
    # The broken file is left as it was, for the operator to look at.
    assert state_file.read_text(encoding="utf-8") == content
