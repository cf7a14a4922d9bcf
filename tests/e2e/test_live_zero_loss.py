"""Zero loss, proven: live backend changes under a steady stream of requests.

Four client threads (two on one keep-alive connection each, two opening a
fresh connection per request) send requests through the gateway for about
ten seconds to real Gunicorn backends, about a third of them slow
(``/sleep``), so that there is always work in flight.  Meanwhile the test,
through the admin API and SIGHUP:

1. adds a backend (POST),
2. changes a weight (PATCH),
3. removes another backend with draining (DELETE, then GET until it is
   gone) while a long request runs on it, then stops that Gunicorn: a
   request the gateway still sent there would be refused,
4. reloads a changed config.yaml (SIGHUP).

Every client request must get a 2xx (an exception counts as a failure), the
added backend must get traffic, and the removed one none after its drain.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import HOST, KeepAliveClient, free_port, http_get, parse_served_by, wait_until
from live_helpers import (
    admin_config,
    admin_request,
    reload_config,
    server_path,
    upstream_servers,
    wait_for_admin,
)

#: How long the clients send requests (they also stop after MAX_REQUESTS_PER_CLIENT).
DURATION = 10.0
MAX_REQUESTS_PER_CLIENT = 20000
#: What each client sends, in turn.  The "mixed" clients (one keep-alive, one
#: fresh-connection) keep a backend busy with every third request, so that a
#: drain always has work in flight; the "fast" ones push the request rate.
SLOW_PATH = "/sleep?seconds=0.3"
PATHS = {
    "mixed": (SLOW_PATH, "/json", "/healthz"),
    "fast": ("/json", "/healthz", "/", "/json", "/stream?bytes=100000"),
}
#: The request kept in flight on the backend being removed.
PROBE_SECONDS = 1.5
PROBE_PATH = f"/sleep?seconds={PROBE_SECONDS}"
PROBE_SETTLE = 0.3
CLIENT_TIMEOUT = 10.0
JOIN_TIMEOUT = 30.0


@dataclass(frozen=True)
class Outcome:
    client: str
    path: str
    sent: float  # time.monotonic() before the request was sent
    done: float
    status: int | None
    served_by: str | None  # the service name in X-Served-By
    error: str | None  # the exception, when there was no response


class ClientThread(threading.Thread):
    """Sends requests until told to stop, the deadline passes, or the count bound is reached."""

    def __init__(self, name: str, port: int, keep_alive: bool, paths: tuple[str, ...], stop: threading.Event,
                 deadline: float, outcomes: list[Outcome]) -> None:
        super().__init__(name=name, daemon=True)
        self.port = port
        self.keep_alive = keep_alive
        self.paths = paths
        self.stop = stop
        self.deadline = deadline
        self.outcomes = outcomes
        self.connections_opened = 0

    def run(self) -> None:
        client: KeepAliveClient | None = None
        try:
            for index in range(MAX_REQUESTS_PER_CLIENT):
                if self.stop.is_set() or time.monotonic() >= self.deadline:
                    break
                path = self.paths[index % len(self.paths)]
                sent = time.monotonic()
                try:
                    if self.keep_alive:
                        if client is None:
                            client = KeepAliveClient(self.port, timeout=CLIENT_TIMEOUT)
                        status, headers, _ = client.get(path)
                    else:
                        status, headers, _ = http_get(self.port, path, timeout=CLIENT_TIMEOUT)
                except (OSError, http.client.HTTPException) as error:
                    self.outcomes.append(Outcome(self.name, path, sent, time.monotonic(), None, None,
                                                 f"{type(error).__name__}: {error}"))
                    if client is not None:
                        self.connections_opened += client.connections_opened
                        client.close()
                        client = None
                    continue
                served = headers.get("X-Served-By")
                self.outcomes.append(Outcome(self.name, path, sent, time.monotonic(), status,
                                             parse_served_by(served)[0] if served else None, None))
        finally:
            if client is not None:
                self.connections_opened += client.connections_opened
                client.close()


class ProbeThread(threading.Thread):
    """One request on a fresh connection, in the background."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(name="probe", daemon=True)
        self.port = port
        self.path = path
        self.outcome: Outcome | None = None

    def run(self) -> None:
        sent = time.monotonic()
        try:
            status, headers, _ = http_get(self.port, self.path, timeout=CLIENT_TIMEOUT)
        except (OSError, http.client.HTTPException) as error:
            self.outcome = Outcome(self.name, self.path, sent, time.monotonic(), None, None,
                                   f"{type(error).__name__}: {error}")
            return
        served = headers.get("X-Served-By")
        self.outcome = Outcome(self.name, self.path, sent, time.monotonic(), status,
                               parse_served_by(served)[0] if served else None, None)


def sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(min(delay, DURATION))


def web_config(port: int, admin_port: int, state_file: Path, servers: list[tuple[str, int]],
               access_log: Path, extra_upstreams: dict[str, Any] | None = None,
               extra_routes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    upstreams: dict[str, Any] = {
        "web": {"servers": [{"address": address, "weight": weight} for address, weight in servers]}}
    upstreams.update(extra_upstreams or {})
    return {
        "listeners": [{"name": "public", "port": port, "interface": HOST}],
        "upstreams": upstreams,
        "routes": [*(extra_routes or []), {"path": "/", "upstream": "web"}],
        "access_log": str(access_log),
        "shutdown_timeout": 10,
        **admin_config(admin_port, str(state_file)),
    }


def test_no_request_fails_while_backends_are_added_drained_reweighted_and_reloaded(
        backend_factory, gateway, tmp_path: Path) -> None:
    keep = backend_factory("zl-keep")
    leaving = backend_factory("zl-leaving")
    added = backend_factory("zl-added")
    port, admin_port = free_port(), free_port()
    state_file = tmp_path / "state" / "gateway-state.json"
    access_log = tmp_path / "access.log"
    config = web_config(port, admin_port, state_file, [(keep.address, 1), (leaving.address, 1)], access_log)
    instance = wait_for_admin(gateway(config), admin_port)

    # Both configured backends answer before the stream starts.
    first = Counter(parse_served_by(http_get(port, "/healthz")[1]["X-Served-By"])[0] for _ in range(4))
    assert first == {"zl-keep": 2, "zl-leaving": 2}

    stop = threading.Event()
    outcomes: list[Outcome] = []  # list.append is atomic: the threads share it
    start = time.monotonic()
    clients = [ClientThread(f"{connection}-{mix}", port, connection == "keepalive", PATHS[mix], stop,
                            start + DURATION, outcomes)
               for connection in ("keepalive", "fresh") for mix in ("mixed", "fast")]
    for client in clients:
        client.start()
    marks: dict[str, float] = {}
    try:
        # 1. Add a backend through the API.
        sleep_until(start + 1.5)
        marks["add"] = time.monotonic()
        status, body = admin_request(admin_port, "POST", "/upstreams/web/servers",
                                     {"address": added.address, "weight": 1})
        assert status == 201, (status, body)
        assert body["address"] == added.address

        # 2. Change a weight.
        sleep_until(start + 3.0)
        status, body = admin_request(admin_port, "PATCH", server_path("web", keep.address), {"weight": 3})
        assert (status, body["weight"]) == (200, 3), (status, body)

        # 3. Remove a backend with draining while a long request is in flight on it.  To be
        #    sure one is, the other two servers are drained for a moment (PATCH state), a
        #    probe is sent (it can only go to the leaving one), and they are put back up.
        sleep_until(start + 4.5)
        for address in (keep.address, added.address):
            status, body = admin_request(admin_port, "PATCH", server_path("web", address), {"state": "drain"})
            assert (status, body["state"]) == (200, "draining"), (status, body)
        probe = ProbeThread(port, PROBE_PATH)
        probe.start()
        time.sleep(PROBE_SETTLE)  # the probe reaches the gateway and is dispatched
        for address in (keep.address, added.address):
            status, body = admin_request(admin_port, "PATCH", server_path("web", address), {"state": "up"})
            assert (status, body["state"]) == (200, "up"), (status, body)
        marks["delete"] = time.monotonic()
        status, body = admin_request(admin_port, "DELETE", server_path("web", leaving.address))
        assert (status, body) == (202, {"address": leaving.address, "state": "draining"})
        draining = upstream_servers(admin_port, "web")[leaving.address]
        assert draining["state"] == "draining" and draining["active_requests"] >= 1, draining
        marks["gone"] = wait_until(
            lambda: leaving.address not in upstream_servers(admin_port, "web") and time.monotonic(),
            timeout=10.0, interval=0.01, message="the leaving backend gone from GET /upstreams")
        # Any request still sent there from now on would be refused (and logged as such).
        leaving.stop()
        probe.join(JOIN_TIMEOUT)
        assert probe.outcome is not None and probe.outcome.status == 200, probe.outcome
        assert probe.outcome.served_by == "zl-leaving", probe.outcome
        # The drain waited for the probe.
        assert marks["gone"] >= probe.outcome.sent + PROBE_SECONDS - 0.1, (marks, probe.outcome)

        # 4. Reload a changed config.yaml: a new upstream and route.
        sleep_until(start + 6.5)
        changed = web_config(port, admin_port, state_file, [(keep.address, 1), (leaving.address, 1)], access_log,
                             extra_upstreams={"extra": {"servers": [{"address": added.address}]}},
                             extra_routes=[{"path": "/extra/", "upstream": "extra", "strip_prefix": True}])
        marks["reload"] = time.monotonic()
        reload_config(instance, changed)
        marks["reloaded"] = time.monotonic()
        status, headers, _ = http_get(port, "/extra/json")
        assert (status, parse_served_by(headers["X-Served-By"])[0]) == (200, "zl-added")

        sleep_until(start + DURATION)
    finally:
        stop.set()
        for client in clients:
            client.join(JOIN_TIMEOUT)
    assert not any(client.is_alive() for client in clients), "a client thread did not finish"
    marks["end"] = time.monotonic()

    stdout = instance.stdout_text()
    total = len(outcomes)
    failures = [outcome for outcome in outcomes if outcome.error is not None or not 200 <= outcome.status < 300]
    served = Counter(outcome.served_by for outcome in outcomes)
    per_client = Counter(outcome.client for outcome in outcomes)
    slow = sum(1 for outcome in outcomes if outcome.path == SLOW_PATH)
    print(f"\nzero-loss: {total} requests ({slow} slow) in {marks['end'] - start:.1f} s, "
          f"{len(failures)} failed; per client {dict(per_client)}; served by {dict(served)}; "
          f"drain took {marks['gone'] - marks['delete']:.3f} s; "
          f"keep-alive connections opened {[c.connections_opened for c in clients if c.keep_alive]}")

    # Zero failed requests: every one got a 2xx, none raised.
    assert total >= 200, f"only {total} requests were sent"
    assert not failures, f"{len(failures)} of {total} requests failed, first ones: {failures[:5]}"
    assert all(outcome.served_by for outcome in outcomes)
    # The keep-alive clients kept their one connection through every change.
    assert [c.connections_opened for c in clients if c.keep_alive] == [1, 1]

    # The added backend received traffic, only after it was added.
    added_outcomes = [outcome for outcome in outcomes if outcome.served_by == "zl-added"]
    assert len(added_outcomes) >= 10, served
    assert all(outcome.done > marks["add"] for outcome in added_outcomes)

    # The removed backend served requests before, and none sent after its drain finished.
    leaving_outcomes = [outcome for outcome in outcomes if outcome.served_by == "zl-leaving"]
    assert leaving_outcomes, served
    late = [outcome for outcome in leaving_outcomes if outcome.sent >= marks["gone"]]
    assert not late, f"{len(late)} request(s) reached the removed backend after its drain: {late[:5]}"
    # It really drained: it had work in flight when the DELETE came, and the gateway
    # never tried to reach it after it was stopped.
    drained = re.search(rf"draining server {re.escape(leaving.address)} \((\d+) request", stdout)
    assert drained and int(drained.group(1)) >= 1, stdout[-3000:]
    assert f"cannot connect to {leaving.address}" not in stdout
    assert f"backend {leaving.address}" not in stdout

    # Requests kept flowing through every phase, the reload included.
    for begin, end in (("add", "delete"), ("delete", "gone"), ("gone", "reload"), ("reload", "reloaded"),
                       ("reloaded", "end")):
        during = [outcome for outcome in outcomes if marks[begin] <= outcome.sent < marks[end]]
        if marks[end] - marks[begin] > 0.2:
            assert during, f"no request was sent between {begin} and {end}"

    # After all of it: the live changes survived the reload, nothing else changed.
    servers = upstream_servers(admin_port, "web")
    assert {address: server["weight"] for address, server in servers.items()} == {
        keep.address: 3, added.address: 1}
    assert all(server["state"] == "up" for server in servers.values())
    # The gateway's own record agrees: every request in its access log got a 2xx from a backend.
    expected_lines = total + 6  # the four warm-up requests, the probe and /extra/json
    lines = wait_until(lambda: (lambda found: found if len(found) >= expected_lines else None)(
        access_log.read_text(encoding="utf-8").splitlines() if access_log.exists() else []),
        timeout=5.0, message=f"{expected_lines} access-log lines")
    statuses = Counter(int(re.search(r'" (\d{3}) ', line).group(1)) for line in lines)
    assert set(statuses) == {200}, statuses
