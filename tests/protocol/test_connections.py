"""gateway.http.connections: the per-upstream pool of keep-alive backend connections."""

from __future__ import annotations

import pytest
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from gateway.core.config import ServerConfig
from gateway.core.pool import ServerState
from gateway.http.client import HTTP11ClientProtocol
from gateway.http.connections import UpstreamConnections
from protocol_harness import FakeTransport

SERVER_A = ServerState(ServerConfig("127.0.0.1", 8001))
SERVER_B = ServerState(ServerConfig("127.0.0.1", 8002))


class Pool:
    def __init__(self, keepalive_timeout: float = 2.0, keepalive_connections: int = 4) -> None:
        self.reactor = MemoryReactorClock()
        self.connections = UpstreamConnections(self.reactor, keepalive_timeout, keepalive_connections,
                                               connect_timeout=3.0)
        self.ready: list[tuple[HTTP11ClientProtocol, bool]] = []
        self.failed: list[Failure] = []
        self._accepted = 0

    def acquire(self, server: ServerState = SERVER_A) -> None:
        self.connections.acquire(server, lambda conn, reused: self.ready.append((conn, reused)),
                                 self.failed.append)

    def connect(self) -> HTTP11ClientProtocol:
        """The oldest pending connectTCP succeeds; return the connection's protocol."""
        host, port, factory, timeout, _ = self.reactor.tcpClients[self._accepted]
        self._accepted += 1
        address = IPv4Address("TCP", host, port)
        protocol = factory.buildProtocol(address)
        transport = FakeTransport(self.reactor, protocol, address, IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(transport)
        return protocol

    def new_connection(self, server: ServerState = SERVER_A) -> HTTP11ClientProtocol:
        self.acquire(server)
        protocol = self.connect()
        assert self.ready[-1] == (protocol, False)
        return protocol

    @property
    def connects(self) -> list[tuple[str, int, float]]:
        return [(host, port, timeout) for host, port, _, timeout, _ in self.reactor.tcpClients]


@pytest.fixture
def pool() -> Pool:
    return Pool()


def test_acquire_without_idle_connection_connects(pool):
    pool.acquire()
    assert pool.connects == [("127.0.0.1", 8001, 3.0)]
    assert pool.ready == []
    protocol = pool.connect()
    assert pool.ready == [(protocol, False)]
    assert isinstance(protocol, HTTP11ClientProtocol)


def test_connect_failure_reported(pool):
    pool.acquire()
    _, _, factory, _, _ = pool.reactor.tcpClients[0]
    factory.clientConnectionFailed(pool.reactor.connectors[0], Failure(error.ConnectionRefusedError()))
    assert pool.ready == []
    assert len(pool.failed) == 1 and pool.failed[0].check(error.ConnectionRefusedError)


def test_released_connection_is_reused(pool):
    protocol = pool.new_connection()
    pool.connections.release(SERVER_A, protocol)
    assert pool.connections.idle_count(SERVER_A.address) == 1
    pool.acquire()
    assert pool.ready[-1] == (protocol, True)
    assert len(pool.connects) == 1
    assert pool.connections.idle_count(SERVER_A.address) == 0
    assert protocol.on_idle_lost is None


def test_idle_connections_are_per_server(pool):
    protocol = pool.new_connection(SERVER_A)
    pool.connections.release(SERVER_A, protocol)
    pool.acquire(SERVER_B)
    assert pool.connects[-1] == ("127.0.0.1", 8002, 3.0)
    assert pool.connections.idle_count(SERVER_A.address) == 1


def test_most_recently_used_first(pool):
    first = pool.new_connection()
    second = pool.new_connection()
    pool.connections.release(SERVER_A, first)
    pool.connections.release(SERVER_A, second)
    pool.acquire()
    assert pool.ready[-1] == (second, True)
    pool.acquire()
    assert pool.ready[-1] == (first, True)


def test_idle_timeout_closes_the_connection(pool):
    protocol = pool.new_connection()
    pool.connections.release(SERVER_A, protocol)
    pool.reactor.advance(1.9)
    assert not protocol.transport.disconnecting
    pool.reactor.advance(0.1)
    assert protocol.transport.disconnecting
    assert pool.connections.idle_count(SERVER_A.address) == 0
    pool.acquire()
    assert len(pool.connects) == 2


def test_reuse_cancels_the_idle_timer(pool):
    protocol = pool.new_connection()
    pool.connections.release(SERVER_A, protocol)
    pool.reactor.advance(1.0)
    pool.acquire()
    pool.reactor.advance(5.0)
    assert not protocol.transport.disconnecting
    assert pool.reactor.getDelayedCalls() == []


def test_backend_closing_an_idle_connection_removes_it(pool):
    protocol = pool.new_connection()
    pool.connections.release(SERVER_A, protocol)
    protocol.transport.peer_closes()
    assert pool.connections.idle_count(SERVER_A.address) == 0
    pool.acquire()
    assert len(pool.connects) == 2
    pool.reactor.advance(10)  # the pool's sweeper finds nothing left and stops
    assert pool.reactor.getDelayedCalls() == []


def test_a_connection_whose_close_has_begun_is_not_handed_out(pool):
    """The idle timer fired (loseConnection called) but connectionLost has not arrived yet,
    as between two reactor iterations: the connection is as good as gone and must not
    receive a request (a POST written into it would be lost and answered 502)."""
    protocol = pool.new_connection()
    pool.connections.release(SERVER_A, protocol)
    protocol.transport.loseConnection()  # what the idle timer (or a shutdown) does
    pool.acquire()
    assert pool.ready[-1] != (protocol, True)
    assert len(pool.connects) == 2


def test_keepalive_connections_limit(pool):
    small = Pool(keepalive_connections=2)
    protocols = [small.new_connection() for _ in range(3)]
    for protocol in protocols:
        small.connections.release(SERVER_A, protocol)
    assert small.connections.idle_count(SERVER_A.address) == 2
    assert protocols[2].transport.disconnecting
    assert not protocols[0].transport.disconnecting


def test_keepalive_connections_zero_never_pools():
    none = Pool(keepalive_connections=0)
    protocol = none.new_connection()
    none.connections.release(SERVER_A, protocol)
    assert protocol.transport.disconnecting
    assert none.connections.idle_count(SERVER_A.address) == 0


def test_release_resumes_reading(pool):
    protocol = pool.new_connection()
    protocol.gate.pause("backpressure")
    assert protocol.transport.producerState == "paused"
    pool.connections.release(SERVER_A, protocol)
    assert protocol.transport.producerState == "producing"


def test_close_idle_closes_everything(pool):
    a1, a2, b1 = pool.new_connection(), pool.new_connection(), pool.new_connection(SERVER_B)
    pool.connections.release(SERVER_A, a1)
    pool.connections.release(SERVER_A, a2)
    pool.connections.release(SERVER_B, b1)
    pool.connections.close_idle()
    assert all(p.transport.disconnecting for p in (a1, a2, b1))
    assert pool.connections.idle_count(SERVER_A.address) == 0
    assert pool.connections.idle_count(SERVER_B.address) == 0
    pool.reactor.advance(10)  # the idle timers must not fire on closed connections
    assert not any(p.transport.aborted for p in (a1, a2, b1))


def test_a_full_exchange_then_reuse(pool):
    """The pool and the client protocol together: request, response, idle, reuse."""
    protocol = pool.new_connection()
    events = []

    class Handler:
        def response_head(self, *args):
            events.append("head")

        def response_body(self, data):
            events.append(data)

        def response_finished(self, connection, reusable):
            events.append(("finished", reusable))
            pool.connections.release(SERVER_A, connection)

        def upstream_lost(self, connection, reason):
            events.append("lost")

    protocol.send_request(Handler(), b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", False, False)
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert events == ["head", b"ok", ("finished", True)]
    assert pool.connections.idle_count(SERVER_A.address) == 1
    pool.acquire()
    assert pool.ready[-1] == (protocol, True)


def test_one_sweeper_closes_each_idle_connection_at_its_own_expiry(pool):
    older, newer = pool.new_connection(), pool.new_connection()
    pool.connections.release(SERVER_A, older)
    pool.reactor.advance(1.5)
    pool.connections.release(SERVER_A, newer)
    assert len(pool.reactor.getDelayedCalls()) == 1  # one timer for the pool, not one per connection
    pool.reactor.advance(0.6)  # 2.1 s after the first release, 0.6 s after the second
    assert older.transport.disconnecting and not newer.transport.disconnecting
    assert pool.connections.idle_count(SERVER_A.address) == 1
    pool.reactor.advance(1.5)
    assert newer.transport.disconnecting
    assert pool.reactor.getDelayedCalls() == []
