"""The admin API end to end: a real ``twistd -n gateway`` with its admin listener, real Gunicorn backends.

The gateway serves ``/`` from upstream ``web`` (the shared web-1 and web-2)
and ``/api/`` from ``api``; the admin API listens on another 127.0.0.1 port
and persists live changes to ``state.json``.  Who served a request is read
from the backends' ``X-Served-By`` header.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from admin_harness import TOKEN, AdminGateway, Background, admin_setup
from harness import (
    HOST,
    KeepAliveClient,
    free_port,
    gateway_config,
    http_get,
    run_gateway_expecting_failure,
    served_by_name,
    wait_until,
)

from gateway.core.balancing import SmoothWeightedRoundRobin

SERVER_FIELDS = {"address", "weight", "state", "active_requests", "total_requests", "recent_failures"}
#: How long the slow request of the draining tests keeps its backend busy.
SLOW_SECONDS = 2.0


@pytest.fixture
def admin(backends, gateway, tmp_path) -> AdminGateway:
    return admin_setup(gateway, tmp_path, web=[backends.web1.address, backends.web2.address],
                       api=[backends.api.address])


def served(port: int, count: int, path: str = "/healthz") -> list[str]:
    """Who served each of *count* sequential requests (one keep-alive connection)."""
    names = []
    with KeepAliveClient(port) as client:
        for _ in range(count):
            status, headers, _ = client.get(path)
            assert status == 200
            names.append(served_by_name(headers))
    return names


def start_slow_request(port: int, seconds: float = SLOW_SECONDS) -> Background:
    return Background(lambda: http_get(port, f"/sleep?seconds={seconds}", timeout=seconds + 10))


def busy_server(admin: AdminGateway) -> str:
    """The address of the web server with a request in flight (waits for the gateway to dispatch it)."""
    def find() -> str | None:
        busy = [address for address, server in admin.servers().items() if server["active_requests"] == 1]
        return busy[0] if len(busy) == 1 else None

    return wait_until(find, 5.0, message="one web server with a request in flight")


def name_of(backends, address: str) -> str:
    return {backends.web1.address: "web-1", backends.web2.address: "web-2"}[address]


# -- GET ------------------------------------------------------------------------------------

def test_get_upstreams_lists_every_upstream_with_its_servers(admin, backends):
    assert served(admin.port, 4) == ["web-1", "web-2", "web-1", "web-2"]
    status, headers, document = admin.call("GET", "/upstreams")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    upstreams = {upstream["name"]: upstream for upstream in document["upstreams"]}
    assert set(upstreams) == {"web", "api"}
    assert upstreams["web"]["balance"] == "round_robin"
    web = upstreams["web"]["servers"]
    assert [server["address"] for server in web] == [backends.web1.address, backends.web2.address]
    for server in web:
        assert SERVER_FIELDS <= set(server), server
        assert (server["weight"], server["state"], server["active_requests"], server["total_requests"],
                server["recent_failures"]) == (1, "up", 0, 2, 0)
    [api] = upstreams["api"]["servers"]
    assert (api["address"], api["total_requests"]) == (backends.api.address, 0)


def test_get_one_upstream(admin, backends):
    document = admin.upstream("api")
    assert document["name"] == "api"
    assert [server["address"] for server in document["servers"]] == [backends.api.address]
    assert SERVER_FIELDS <= set(document["servers"][0])


def test_get_an_unknown_upstream_is_404(admin):
    status, _, document = admin.call("GET", "/upstreams/nope")
    assert status == 404
    assert "nope" in document["error"]


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/", 404),
    ("GET", "/elsewhere", 404),
    ("PUT", "/upstreams", 405),
    ("DELETE", "/upstreams/web", 405),
    ("GET", "/upstreams/web/servers", 405),
])
def test_other_paths_and_methods(admin, method, path, status):
    code, _, document = admin.call(method, path)
    assert code == status
    assert document["error"]


def test_recent_failures_count_refused_connections(admin, backends, gateway):
    dead = f"{HOST}:{free_port()}"
    status, _, _ = admin.call("POST", "/upstreams/web/servers", {"address": dead})
    assert status == 201
    for _ in range(6):
        code, _, _ = http_get(admin.port, "/healthz")
        assert code == 200  # the refused server is skipped
    assert admin.servers()[dead]["recent_failures"] >= 1


# -- POST ------------------------------------------------------------------------------------

def test_post_adds_a_server_that_then_gets_traffic(admin, backend_factory):
    web3 = backend_factory("web-3")
    status, headers, server = admin.call("POST", "/upstreams/web/servers", {"address": web3.address, "weight": 2})
    assert status == 201
    assert headers["Content-Type"] == "application/json"
    assert server["address"] == web3.address
    assert (server["weight"], server["state"], server["active_requests"], server["total_requests"]) == (2, "up", 0, 0)
    assert list(admin.servers())[-1] == web3.address
    counts = Counter(served(admin.port, 40))
    assert counts == {"web-1": 10, "web-2": 10, "web-3": 20}
    assert admin.servers()[web3.address]["total_requests"] == 20


def test_post_without_weight_means_weight_1(admin, backend_factory):
    web3 = backend_factory("web-3")
    status, _, server = admin.call("POST", "/upstreams/web/servers", {"address": web3.address})
    assert (status, server["weight"]) == (201, 1)


def test_post_a_duplicate_is_409(admin, backends):
    before = admin.servers()
    status, _, document = admin.call("POST", "/upstreams/web/servers", {"address": backends.web1.address})
    assert status == 409
    assert backends.web1.address in document["error"]
    assert admin.servers() == before


def test_post_to_an_unknown_upstream_is_404(admin, backends):
    status, _, document = admin.call("POST", "/upstreams/nope/servers", {"address": f"{HOST}:8009"})
    assert status == 404
    assert "nope" in document["error"]


@pytest.mark.parametrize(("raw", "expected"), [
    (b"not json", "not valid JSON"),
    (b"{\"address\": ", "not valid JSON"),
    (b"[]", "JSON object"),
    (b"\"127.0.0.1:8003\"", "JSON object"),
    (b"", "address"),
    (b"{}", "address"),
    (b"{\"weight\": 2}", "address"),
    (b"{\"address\": 8003}", "address"),
    (b"{\"address\": \"127.0.0.1:8003\", \"weight\": 0}", "weight"),
    (b"{\"address\": \"127.0.0.1:8003\", \"weight\": -1}", "weight"),
    (b"{\"address\": \"127.0.0.1:8003\", \"weight\": \"x\"}", "weight"),
    (b"{\"address\": \"127.0.0.1:8003\", \"weight\": 1.5}", "weight"),
    (b"{\"address\": \"127.0.0.1:8003\", \"weight\": true}", "weight"),
    (b"{\"address\": \"127.0.0.1:8003\", \"colour\": \"blue\"}", "colour"),
    (b"{\"address\": \"localhost\"}", "address"),
    (b"{\"address\": \"127.0.0.1:0\"}", "address"),
    (b"{\"address\": \"127.0.0.1:70000\"}", "address"),
    (b"{\"address\": \"::1:8003\"}", "address"),
    (b"{\"address\": \"\"}", "address"),
])
def test_post_a_bad_body_is_400_with_a_message_and_changes_nothing(admin, raw, expected):
    before = admin.servers()
    status, _, document = admin.call("POST", "/upstreams/web/servers", raw=raw)
    assert status == 400, document
    assert expected in document["error"], document
    assert admin.servers() == before
    assert not admin.state_path.exists()  # nothing persisted either


def test_post_a_body_over_64_kib_is_400(admin):
    raw = b'{"address": "127.0.0.1:8003", "pad": "' + b"x" * (70 * 1024) + b'"}'
    status, _, document = admin.call("POST", "/upstreams/web/servers", raw=raw)
    assert status == 400
    assert "too large" in document["error"]


# -- PATCH ----------------------------------------------------------------------------------

def test_patch_weight_changes_the_distribution_exactly(admin, backends):
    web1, web2 = backends.web1.address, backends.web2.address
    assert served(admin.port, 40) == ["web-1", "web-2"] * 20  # 1:1, and the scores are back at zero
    status, _, server = admin.call("PATCH", f"/upstreams/web/servers/{web1}", {"weight": 3})
    assert status == 200
    assert (server["address"], server["weight"], server["state"]) == (web1, 3, "up")
    names = served(admin.port, 40)
    assert Counter(names) == {"web-1": 30, "web-2": 10}
    assert names[:4] == ["web-1", "web-1", "web-2", "web-1"]  # smooth: a a b a
    assert {address: server["weight"] for address, server in admin.servers().items()} == {web1: 3, web2: 1}


def test_patch_weight_mid_cycle_follows_smooth_wrr(admin, backends):
    """A change in the middle of a cycle starts a new one: the requests that follow are exactly
    nginx's sequence for the new weights, from its start (as after an nginx reload)."""

    class Server:
        def __init__(self, name: str, weight: int) -> None:
            self.address, self.weight, self.active = name, weight, 0

    servers = [Server("web-1", 1), Server("web-2", 1)]
    model = SmoothWeightedRoundRobin()
    first = served(admin.port, 3)
    assert first == [model.choose(servers).address for _ in range(3)]
    status, _, _ = admin.call("PATCH", f"/upstreams/web/servers/{backends.web2.address}", {"weight": 4})
    assert status == 200
    servers[1].weight = 4
    model = SmoothWeightedRoundRobin()
    assert served(admin.port, 25) == [model.choose(servers).address for _ in range(25)]
    assert served(admin.port, 25)[:5] == ["web-2", "web-2", "web-1", "web-2", "web-2"]  # (a cycle: 5 requests)


def test_patch_drain_stops_new_requests_and_up_brings_it_back(admin, backends):
    web1 = backends.web1.address
    status, _, server = admin.call("PATCH", f"/upstreams/web/servers/{web1}", {"state": "drain"})
    assert status == 200
    assert server["state"] == "draining"
    assert admin.servers()[web1]["state"] == "draining"
    assert admin.servers()[web1]["removing"] is False  # drained, still a member
    assert served(admin.port, 10) == ["web-2"] * 10
    status, _, server = admin.call("PATCH", f"/upstreams/web/servers/{web1}", {"state": "up"})
    assert (status, server["state"]) == (200, "up")
    assert Counter(served(admin.port, 10)) == {"web-1": 5, "web-2": 5}


def test_patch_weight_and_state_together(admin, backends):
    web2 = backends.web2.address
    status, _, server = admin.call("PATCH", f"/upstreams/web/servers/{web2}", {"weight": 7, "state": "drain"})
    assert (status, server["weight"], server["state"]) == (200, 7, "draining")


def test_drain_lets_a_request_in_flight_finish(admin, backends):
    slow = start_slow_request(admin.port)
    busy = busy_server(admin)
    status, _, _ = admin.call("PATCH", f"/upstreams/web/servers/{busy}", {"state": "drain"})
    assert status == 200
    others = set(served(admin.port, 6))
    assert name_of(backends, busy) not in others
    code, headers, _ = slow.result(SLOW_SECONDS + 15)
    assert code == 200
    assert served_by_name(headers) == name_of(backends, busy)
    assert admin.servers()[busy]["state"] == "draining"  # drained servers stay


def test_patch_the_address_percent_encoded(admin, backends):
    encoded = backends.web1.address.replace(":", "%3A")
    status, _, server = admin.call("PATCH", f"/upstreams/web/servers/{encoded}", {"weight": 2})
    assert (status, server["address"], server["weight"]) == (200, backends.web1.address, 2)


@pytest.mark.parametrize(("body", "expected"), [
    ({}, "weight"),
    ({"weight": 0}, "weight"),
    ({"weight": "5"}, "weight"),
    ({"weight": None}, "weight"),
    ({"state": "down"}, "state"),
    ({"state": "draining"}, "state"),
    ({"state": None, "weight": None}, "weight"),
    ({"address": "127.0.0.1:1"}, "address"),
])
def test_patch_a_bad_body_is_400(admin, backends, body, expected):
    before = admin.servers()
    status, _, document = admin.call("PATCH", f"/upstreams/web/servers/{backends.web1.address}", body)
    assert status == 400, document
    assert expected in document["error"], document
    assert admin.servers() == before


def test_patch_an_unknown_server_or_upstream_is_404(admin, backends):
    status, _, document = admin.call("PATCH", f"/upstreams/web/servers/{HOST}:1", {"weight": 2})
    assert status == 404
    assert f"{HOST}:1" in document["error"]
    status, _, document = admin.call("PATCH", f"/upstreams/nope/servers/{backends.web1.address}", {"weight": 2})
    assert status == 404
    assert "nope" in document["error"]


# -- DELETE ----------------------------------------------------------------------------------

def test_delete_an_idle_server_is_204_and_it_is_gone(admin, backends):
    web1 = backends.web1.address
    status, _, document = admin.call("DELETE", f"/upstreams/web/servers/{web1}")
    assert (status, document) == (204, None)
    assert list(admin.servers()) == [backends.web2.address]
    assert served(admin.port, 6) == ["web-2"] * 6


def test_delete_during_a_request_in_flight_is_202_then_the_server_leaves(admin, backends):
    slow = start_slow_request(admin.port)
    busy = busy_server(admin)
    status, _, document = admin.call("DELETE", f"/upstreams/web/servers/{busy}")
    assert status == 202
    assert document["state"] == "draining"
    listed = admin.servers()[busy]
    assert (listed["state"], listed["removing"], listed["active_requests"]) == ("draining", True, 1)
    assert name_of(backends, busy) not in served(admin.port, 6)  # no new request goes there
    code, headers, _ = slow.result(SLOW_SECONDS + 15)
    assert code == 200
    assert served_by_name(headers) == name_of(backends, busy)
    wait_until(lambda: busy not in admin.servers(), 5.0, message=f"{busy} gone from GET")


def test_delete_again_while_draining_is_202(admin, backends):
    slow = start_slow_request(admin.port)
    busy = busy_server(admin)
    assert admin.call("DELETE", f"/upstreams/web/servers/{busy}")[0] == 202
    assert admin.call("DELETE", f"/upstreams/web/servers/{busy}")[0] == 202
    assert admin.call("PATCH", f"/upstreams/web/servers/{busy}", {"weight": 2})[0] == 404  # leaving
    assert slow.result(SLOW_SECONDS + 15)[0] == 200


def test_delete_with_wait_blocks_until_the_server_is_gone(admin, backends):
    slow = start_slow_request(admin.port)
    busy = busy_server(admin)
    started = time.monotonic()
    status, _, _ = admin.call("DELETE", f"/upstreams/web/servers/{busy}?wait=1", timeout=SLOW_SECONDS + 15)
    elapsed = time.monotonic() - started
    assert status == 204
    assert elapsed > SLOW_SECONDS / 4, elapsed  # it waited for the request in flight
    assert busy not in admin.servers()
    code, headers, _ = slow.result(SLOW_SECONDS + 15)
    assert code == 200 and served_by_name(headers) == name_of(backends, busy)


def test_delete_with_wait_of_an_idle_server_answers_at_once(admin, backends):
    status, _, _ = admin.call("DELETE", f"/upstreams/web/servers/{backends.web2.address}?wait=1", timeout=5)
    assert status == 204
    assert list(admin.servers()) == [backends.web1.address]


def test_delete_the_last_server_leaves_an_empty_upstream(admin, backends):
    status, _, _ = admin.call("DELETE", f"/upstreams/api/servers/{backends.api.address}")
    assert status == 204
    assert admin.upstream("api")["servers"] == []
    assert http_get(admin.port, "/api/users")[0] == 503


def test_delete_unknown_is_404(admin, backends):
    status, _, document = admin.call("DELETE", f"/upstreams/web/servers/{HOST}:1")
    assert status == 404 and document["error"]
    status, _, document = admin.call("DELETE", f"/upstreams/nope/servers/{backends.web1.address}")
    assert status == 404 and "nope" in document["error"]


def test_add_back_a_server_that_is_draining_out(admin, backends):
    slow = start_slow_request(admin.port)
    busy = busy_server(admin)
    assert admin.call("DELETE", f"/upstreams/web/servers/{busy}")[0] == 202
    status, _, server = admin.call("POST", "/upstreams/web/servers", {"address": busy, "weight": 2})
    assert status == 201
    assert (server["state"], server["weight"], server["removing"]) == ("up", 2, False)
    assert slow.result(SLOW_SECONDS + 15)[0] == 200
    time.sleep(0.2)
    assert admin.servers()[busy]["removing"] is False  # it stayed


# -- the state file -----------------------------------------------------------------------

def test_every_change_is_persisted_to_the_state_file(admin, backends, backend_factory):
    web1, web2 = backends.web1.address, backends.web2.address
    web3 = backend_factory("web-3").address
    assert not admin.state_path.exists()  # nothing changed yet

    assert admin.call("POST", "/upstreams/web/servers", {"address": web3, "weight": 2})[0] == 201
    assert admin.state() == {"version": 1, "upstreams": {"web": {web3: {"weight": 2, "state": "up"}}}}

    assert admin.call("PATCH", f"/upstreams/web/servers/{web1}", {"weight": 4, "state": "drain"})[0] == 200
    assert admin.state()["upstreams"]["web"][web1] == {"weight": 4, "state": "draining"}

    assert admin.call("DELETE", f"/upstreams/web/servers/{web2}")[0] == 204
    assert admin.state()["upstreams"]["web"][web2] == {"removed": True}  # configured: remembered as removed

    assert admin.call("DELETE", f"/upstreams/web/servers/{web3}")[0] == 204
    assert web3 not in admin.state()["upstreams"]["web"]  # added live: simply forgotten

    leftovers = [path.name for path in Path(admin.state_path).parent.iterdir() if path.name.startswith(".state-")]
    assert leftovers == []


def test_the_state_file_is_always_whole(admin, backends):
    """A reader polling the file while changes are written never sees half a file."""
    web1 = backends.web1.address
    seen: list[str] = []
    stop = threading.Event()

    def read_loop() -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                seen.append(admin.state_path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                pass
            time.sleep(0.001)

    reader = threading.Thread(target=read_loop, daemon=True)
    reader.start()
    try:
        for weight in range(1, 31):
            assert admin.call("PATCH", f"/upstreams/web/servers/{web1}", {"weight": weight})[0] == 200
    finally:
        stop.set()
        reader.join(10)
    assert seen, "the reader never saw the file"
    weights = []
    for text in seen:
        document = json.loads(text)  # raises on a torn file
        weights.append(document["upstreams"]["web"][web1]["weight"])
    assert weights == sorted(weights)  # never goes back
    assert admin.state()["upstreams"]["web"][web1]["weight"] == 30


# -- authentication ----------------------------------------------------------------------------

@pytest.fixture
def admin_with_token(backends, gateway, tmp_path) -> AdminGateway:
    return admin_setup(gateway, tmp_path, web=[backends.web1.address, backends.web2.address], token=TOKEN)


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}x",
                                           TOKEN])
def test_a_missing_or_wrong_token_is_401_and_changes_nothing(admin_with_token, backends, authorization):
    admin = admin_with_token
    headers = {"Authorization": authorization} if authorization else {}
    for method, path, body in (("GET", "/upstreams", None),
                               ("POST", "/upstreams/web/servers", {"address": f"{HOST}:8009"}),
                               ("PATCH", f"/upstreams/web/servers/{backends.web1.address}", {"weight": 9}),
                               ("DELETE", f"/upstreams/web/servers/{backends.web2.address}", None)):
        data = json.dumps(body).encode() if body is not None else None
        status, response_headers, payload = http_get(admin.admin_port, path, headers=headers, method=method,
                                                     body=data)
        assert status == 401, (method, path, status, payload)
        assert json.loads(payload)["error"]
        assert response_headers["WWW-Authenticate"].startswith("Bearer")
    # Nothing changed: the same two servers share the traffic 1:1 and nothing was persisted.
    assert Counter(served(admin.port, 4)) == {"web-1": 2, "web-2": 2}
    assert not admin.state_path.exists()


def test_the_right_token_works(admin_with_token, backends):
    admin = admin_with_token
    assert admin.call("GET", "/upstreams")[0] == 200
    assert admin.call("PATCH", f"/upstreams/web/servers/{backends.web1.address}", {"weight": 2})[0] == 200
    assert admin.servers()[backends.web1.address]["weight"] == 2


def test_the_bearer_scheme_is_case_insensitive(admin_with_token):
    status, _, _ = http_get(admin_with_token.admin_port, "/upstreams", headers={"Authorization": f"bearer {TOKEN}"})
    assert status == 200


def test_a_non_loopback_admin_listener_without_a_token_is_refused(backends, tmp_path):
    config = gateway_config(free_port(), web=[backends.web1.address], admin={"listen": f"0.0.0.0:{free_port()}"})
    code, stdout, stderr = run_gateway_expecting_failure(config, tmp_path)
    assert code != 0
    output = stdout + stderr
    assert "admin.listen" in output and "token_file" in output and "loopback" in output, output
    assert "Traceback" not in output


def test_a_non_loopback_admin_listener_with_a_token_starts(backends, gateway, tmp_path):
    admin_port = free_port()
    admin = admin_setup(gateway, tmp_path, web=[backends.web1.address], token=TOKEN,
                        admin_listen=f"0.0.0.0:{admin_port}")
    assert admin.call("GET", "/upstreams")[0] == 200  # reached on 127.0.0.1 only
    assert admin.call("GET", "/upstreams", token=None)[0] == 401
