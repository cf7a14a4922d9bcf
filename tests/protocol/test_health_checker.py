"""gateway.health: the active health checker on a MemoryReactorClock, no sockets, no real time."""

from __future__ import annotations

import gc
from dataclasses import replace

import pytest
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from gateway.core.config import HealthCheckConfig, ServerConfig, UpstreamConfig
from gateway.core.routing import RouteTable
from gateway.health import DISCOVERY_PERIOD, HealthChecker
from gateway.core.pool import UpstreamPool
from gateway.http.connections import UpstreamConnections
from gateway.http.proxy import ProxyContext, Upstream
from protocol_harness import FakeTransport

HEALTH = HealthCheckConfig(path="/healthz", interval=2.0, timeout=1.0, rise=2, fall=2, expect=200)
A, B = "127.0.0.1:8001", "127.0.0.1:8002"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"


def upstream_config(name: str = "web", ports=(8001, 8002), health: HealthCheckConfig | None = HEALTH):
    servers = tuple(ServerConfig("127.0.0.1", port) for port in ports)
    return UpstreamConfig(name=name, servers=servers, health=health)


class Harness:
    def __init__(self, *configs: UpstreamConfig) -> None:
        self.reactor = MemoryReactorClock()
        upstreams = {config.name: self.upstream(config) for config in (configs or (upstream_config(),))}
        self.context = ProxyContext(reactor=self.reactor, routes=RouteTable(()), upstreams=upstreams,
                                    access_log=None)
        self.checker = HealthChecker(self.reactor, self.context)
        self.connected = 0  # tcpClients already answered

    def upstream(self, config: UpstreamConfig) -> Upstream:
        return Upstream(pool=UpstreamPool(config), connections=UpstreamConnections(self.reactor, 1.5, 4, 5.0),
                        config=config)

    @property
    def pool(self) -> UpstreamPool:
        return self.context.upstreams["web"].pool

    def start(self) -> None:
        self.checker.startService()
        self.reactor.advance(0)

    def pending(self) -> list[tuple[str, int]]:
        return [(host, port) for host, port, *_ in self.reactor.tcpClients[self.connected:]]

    def accept(self) -> tuple[FakeTransport, object]:
        """The oldest unanswered connection attempt succeeds."""
        host, port, factory, timeout, _ = self.reactor.tcpClients[self.connected]
        self.connected += 1
        address = IPv4Address("TCP", host, port)
        protocol = factory.buildProtocol(address)
        transport = FakeTransport(self.reactor, protocol, address, IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(transport)
        return transport, protocol

    def refuse(self) -> None:
        _, _, factory, _, _ = self.reactor.tcpClients[self.connected]
        connector = self.reactor.connectors[self.connected]
        self.connected += 1
        factory.clientConnectionFailed(connector, Failure(error.ConnectionRefusedError()))

    def answer_all(self, response: bytes) -> list[FakeTransport]:
        """Every pending check gets *response*; the transports, in order."""
        transports = []
        while self.connected < len(self.reactor.tcpClients):
            transport, protocol = self.accept()
            protocol.dataReceived(response)
            transports.append(transport)
        self.reactor.advance(0)
        return transports

    def round(self, response: bytes) -> list[FakeTransport]:
        """Let the next round start and answer all its checks."""
        self.reactor.advance(HEALTH.interval)
        return self.answer_all(response)

    def status(self, address: str) -> str:
        return self.pool.server(address).status


def messages(events) -> list[str]:
    from twisted.logger import formatEvent

    return [formatEvent(event) for event in events if event.get("log_namespace") == "gateway.health"]


def test_the_first_round_comes_one_interval_after_start():
    harness = Harness()
    harness.start()
    assert harness.pending() == []
    harness.reactor.advance(HEALTH.interval)
    assert harness.pending() == [("127.0.0.1", 8001), ("127.0.0.1", 8002)]
    assert [timeout for *_, timeout, _ in harness.reactor.tcpClients] == [HEALTH.timeout, HEALTH.timeout]


def test_a_check_sends_one_get_and_closes_after_a_passing_response():
    harness = Harness()
    harness.start()
    harness.reactor.advance(HEALTH.interval)
    transport, protocol = harness.accept()
    assert transport.value() == (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:8001\r\nConnection: close\r\n"
                                 b"User-Agent: gateway-health-check\r\nAccept: */*\r\n\r\n")
    protocol.dataReceived(OK)
    assert transport.disconnecting and not transport.aborted
    assert harness.status(A) == "up"


def test_fall_failures_take_a_server_out_and_rise_passes_bring_it_back():
    harness = Harness()
    harness.start()
    with capturedLogs() as events:
        harness.reactor.advance(HEALTH.interval)
        first, second = harness.accept(), harness.accept()
        first[1].dataReceived(UNAVAILABLE)
        second[1].dataReceived(OK)
        assert harness.status(A) == "up"  # one failure of fall=2
        harness.reactor.advance(HEALTH.interval)
        first, second = harness.accept(), harness.accept()
        first[1].dataReceived(UNAVAILABLE)
        second[1].dataReceived(OK)
        assert first[0].aborted
        assert harness.status(A) == "down"
        assert {harness.pool.choose("client").address for _ in range(10)} == {B}
        harness.round(UNAVAILABLE)
        assert harness.status(A) == "down"
        harness.round(OK)
        assert harness.status(A) == "down"  # one pass of rise=2
        harness.round(OK)
        assert harness.status(A) == "up"
        assert {harness.pool.choose("client").address for _ in range(10)} == {A, B}
    down = [event for event in events if event.get("server") == A and "fall" in event]
    assert down[0]["upstream"] == "web" and down[0]["fall"] == 2
    assert down[0]["reason"] == "status 503, expected 200"
    assert messages(events) == [
        "upstream web: server 127.0.0.1:8001 is down after 2 failed health checks: status 503, expected 200",
        "upstream web: server 127.0.0.1:8001 is up again after 2 passed checks",
    ]


def test_a_refused_connection_is_a_failure():
    harness = Harness(upstream_config(ports=(8001,)))
    harness.start()
    with capturedLogs() as events:
        for _ in range(2):
            harness.reactor.advance(HEALTH.interval)
            harness.refuse()
    assert harness.status(A) == "down"
    assert "cannot connect: Connection was refused by other side" in messages(events)[-1]


def test_no_response_within_the_timeout_aborts_and_fails():
    harness = Harness(upstream_config(ports=(8001,)))
    harness.start()
    with capturedLogs() as events:
        for _ in range(2):
            harness.reactor.advance(HEALTH.interval)
            transport, _ = harness.accept()
            harness.reactor.advance(HEALTH.timeout)
            assert transport.aborted
            harness.reactor.advance(0)
    assert harness.status(A) == "down"
    assert messages(events)[-1].endswith("is down after 2 failed health checks: no response within 1s")


def test_a_connection_that_never_completes_times_out():
    harness = Harness(upstream_config(ports=(8001,)))
    harness.start()
    harness.reactor.advance(HEALTH.interval)
    harness.reactor.advance(HEALTH.timeout)
    assert harness.reactor.connectors[0].stoppedConnecting


@pytest.mark.parametrize("response, reason", [
    (b"NOT HTTP AT ALL\r\n\r\n", "invalid response"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "connection closed in the middle of the response"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "invalid response"),
    (b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n", "status 302, expected 200"),
    (b"", "connection closed before a response"),
])
def test_invalid_or_unexpected_responses_fail(response, reason):
    harness = Harness(upstream_config(ports=(8001,), health=replace(HEALTH, fall=1)))
    harness.start()
    with capturedLogs() as events:
        harness.reactor.advance(HEALTH.interval)
        transport, protocol = harness.accept()
        protocol.dataReceived(response)
        transport.peer_closes()
        harness.reactor.advance(0)
    assert harness.status(A) == "down"
    assert reason in messages(events)[-1]


def test_a_close_delimited_response_passes_when_the_connection_ends():
    harness = Harness(upstream_config(ports=(8001,), health=replace(HEALTH, fall=1)))
    harness.start()
    harness.reactor.advance(HEALTH.interval)
    transport, protocol = harness.accept()
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nfine")
    transport.peer_closes()
    assert harness.status(A) == "up"


def test_the_expected_status_is_configurable():
    harness = Harness(upstream_config(ports=(8001,), health=replace(HEALTH, expect=204, fall=1)))
    harness.start()
    harness.round(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert harness.status(A) == "up"
    harness.round(OK)
    assert harness.status(A) == "down"


def test_checks_of_one_server_never_overlap():
    slow = replace(HEALTH, interval=1.0, timeout=2.5)
    harness = Harness(upstream_config(ports=(8001,), health=slow))
    harness.start()
    harness.reactor.advance(1.0)
    assert len(harness.reactor.tcpClients) == 1
    harness.accept()
    harness.reactor.advance(1.0)
    harness.reactor.advance(1.0)
    assert len(harness.reactor.tcpClients) == 1  # still running: the rounds skip it
    harness.reactor.advance(0.5)  # timed out at 2.5 s
    harness.reactor.advance(1.0)
    assert len(harness.reactor.tcpClients) == 2


def test_servers_added_are_checked_and_removed_ones_forgotten():
    harness = Harness()
    harness.start()
    harness.reactor.advance(HEALTH.interval)
    transport_a, _ = harness.accept()
    harness.connected += 1  # leave B's attempt pending
    connector_b = harness.reactor.connectors[1]
    harness.pool.add(ServerConfig("127.0.0.1", 8003))
    assert harness.pool.remove(A) == [A]
    assert harness.pool.remove(B) == [B]
    harness.reactor.advance(HEALTH.interval)
    assert transport_a.aborted and connector_b.stoppedConnecting  # in-flight checks cancelled
    assert harness.pending() == [("127.0.0.1", 8003)]


def test_a_server_removed_and_added_again_starts_afresh():
    harness = Harness(upstream_config(ports=(8001,), health=replace(HEALTH, fall=1, rise=3)))
    harness.start()
    harness.round(UNAVAILABLE)
    assert harness.status(A) == "down"
    harness.pool.remove(A)
    harness.pool.add(ServerConfig("127.0.0.1", 8001))
    assert harness.status(A) == "up"  # a new member starts healthy
    harness.round(OK)
    assert harness.status(A) == "up"
    harness.round(UNAVAILABLE)
    assert harness.status(A) == "down"


def test_a_reload_that_turns_checks_off_puts_servers_back():
    harness = Harness(upstream_config(health=replace(HEALTH, fall=1)))
    harness.start()
    harness.round(UNAVAILABLE)
    assert harness.status(A) == harness.status(B) == "down"
    harness.context.upstreams["web"].config = upstream_config(health=None)
    with capturedLogs() as events:
        harness.reactor.advance(DISCOVERY_PERIOD)
    assert harness.status(A) == harness.status(B) == "up"
    assert messages(events) == [f"upstream web: health checks off; back in rotation: {A}, {B}"]
    before = len(harness.reactor.tcpClients)
    harness.reactor.advance(10 * HEALTH.interval)
    assert len(harness.reactor.tcpClients) == before


def test_a_reload_that_turns_checks_on_or_adds_an_upstream():
    harness = Harness(upstream_config(health=None))
    harness.start()
    harness.reactor.advance(10)
    assert harness.reactor.tcpClients == []
    with capturedLogs() as events:
        harness.context.upstreams = {"web": harness.context.upstreams["web"],
                                     "api": harness.upstream(upstream_config("api", (9001,)))}
        harness.context.upstreams["web"].config = upstream_config(health=HEALTH)
        harness.reactor.advance(DISCOVERY_PERIOD)
        harness.reactor.advance(HEALTH.interval)
    assert sorted(harness.pending()) == [("127.0.0.1", 8001), ("127.0.0.1", 8002), ("127.0.0.1", 9001)]
    assert sum("health checks GET /healthz every 2.0s" in message for message in messages(events)) == 2


def test_a_reload_with_new_thresholds_applies_them():
    harness = Harness(upstream_config(ports=(8001,), health=replace(HEALTH, fall=3)))
    harness.start()
    harness.round(UNAVAILABLE)
    harness.round(UNAVAILABLE)
    assert harness.status(A) == "up"
    harness.context.upstreams["web"].config = upstream_config(ports=(8001,), health=replace(HEALTH, fall=2,
                                                                                              path="/ready"))
    harness.reactor.advance(DISCOVERY_PERIOD)
    transports = harness.round(UNAVAILABLE)
    assert transports[0].value().startswith(b"GET /ready HTTP/1.1\r\n")
    assert harness.status(A) == "down"


def test_a_removed_upstream_is_forgotten():
    harness = Harness()
    harness.start()
    harness.reactor.advance(HEALTH.interval)
    transport, _ = harness.accept()
    harness.context.upstreams = {}
    harness.reactor.advance(DISCOVERY_PERIOD)
    assert transport.aborted
    harness.reactor.advance(10)
    assert len(harness.reactor.tcpClients) == 2


def test_stopping_cancels_the_timer_and_the_checks_in_flight():
    harness = Harness()
    harness.start()
    harness.reactor.advance(HEALTH.interval)
    transport, _ = harness.accept()
    connector_b = harness.reactor.connectors[1]
    with capturedLogs() as events:
        harness.checker.stopService()
        assert transport.aborted and connector_b.stoppedConnecting
        harness.reactor.advance(0)
        del transport, harness.reactor.tcpClients[:], harness.reactor.connectors[:]
        gc.collect()  # an unhandled failure in a Deferred would be logged now
    assert [event for event in events if "log_failure" in event] == []
    assert harness.reactor.getDelayedCalls() == []
    assert harness.status(A) == harness.status(B) == "up"


def test_importing_the_checker_installs_no_reactor():
    import subprocess
    import sys

    code = "import sys, gateway.health; sys.exit('twisted.internet.reactor' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
