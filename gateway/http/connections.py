"""Idle keep-alive connections to the servers of one upstream, reused across requests.

Connections are kept per server address, most recently used first, at most
``keepalive_connections`` of them, each for ``keepalive_timeout`` seconds: a
limit below the backend's own keep-alive (Gunicorn's is 2 s) so that it is the
gateway that closes an idle connection, not the backend racing a new request.
A connection that the backend closes while idle leaves the pool at once.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure

from gateway.core.pool import ServerState
from gateway.http.client import HTTP11ClientProtocol
from gateway.http.clock import cached_time

ReadyCallback = Callable[[HTTP11ClientProtocol, bool], None]
FailedCallback = Callable[[Failure], None]


class _ConnectAttempt(ClientFactory):
    """Builds the protocol for one new connection and reports how it went."""

    noisy = False

    def __init__(self, ready: ReadyCallback, failed: FailedCallback, clock: Any) -> None:
        self._ready = ready
        self._failed = failed
        self._clock = clock

    def buildProtocol(self, addr) -> HTTP11ClientProtocol:
        connection = HTTP11ClientProtocol(self._clock)
        connection.connected_handler = lambda conn: self._ready(conn, False)
        return connection

    def clientConnectionFailed(self, connector, reason: Failure) -> None:
        self._failed(reason)


class UpstreamConnections:
    """The connection pool of one upstream."""

    def __init__(self, reactor: Any, keepalive_timeout: float,
                 keepalive_connections: int, connect_timeout: float = 5.0) -> None:
        self._reactor = reactor
        self._time = cached_time(reactor)
        self.keepalive_timeout = keepalive_timeout
        self.keepalive_connections = keepalive_connections
        self.connect_timeout = connect_timeout
        self._idle: dict[str, list[HTTP11ClientProtocol]] = {}  # oldest first, most recently used last
        self._sweeper: Any = None  # one timer (IDelayedCall) for the pool, at the next idle connection's expiry
        self._forget_idle = self._forget_idle_connection

    def acquire(self, server: ServerState, ready: ReadyCallback, failed: FailedCallback) -> None:
        """Call ``ready(connection, reused)`` with a connection to *server*, or ``failed(reason)``.

        An idle connection is handed over at once; otherwise a new one is opened.
        """
        idle = self._idle.get(server.address)
        while idle:
            connection = idle.pop()
            connection.on_idle_lost = None
            if connection.usable:
                ready(connection, True)
                return
        self._reactor.connectTCP(server.host, server.port, _ConnectAttempt(ready, failed, self._reactor),
                                 timeout=self.connect_timeout)

    def release(self, server: ServerState, connection: HTTP11ClientProtocol) -> None:
        """Keep a connection whose last response was read completely, for the next request."""
        idle = self._idle.get(server.address)
        if idle is None:
            idle = self._idle[server.address] = []
        if len(idle) >= self.keepalive_connections or not connection.usable:
            connection.transport.loseConnection()
            return
        connection.gate.clear()  # keep reading, so that a close by the backend is noticed
        connection.idle_address = server.address
        connection.on_idle_lost = self._forget_idle  # (one bound method for the pool, not a closure per release)
        connection.idle_since = self._time.now
        idle.append(connection)
        if self._sweeper is None:
            self._sweeper = self._reactor.callLater(self.keepalive_timeout, self._sweep)

    def close_idle(self, address: str | None = None) -> None:
        """Close the idle connections to one server (that left the pool), or to all (on shutdown)."""
        addresses = [address] if address is not None else list(self._idle)
        for key in addresses:
            for connection in self._idle.pop(key, ()):
                connection.on_idle_lost = None
                connection.transport.loseConnection()

    def idle_count(self, address: str) -> int:
        return len(self._idle.get(address, ()))

    def _sweep(self) -> None:
        """Close the connections idle for keepalive_timeout; come back at the next expiry.

        One timer per pool rather than one per released connection: under
        load, connections are reused long before they expire, and a timer
        set and cancelled for every request would cost more than the request.
        """
        self._sweeper = None
        now = self._reactor.seconds()
        next_expiry = None
        for idle in self._idle.values():
            while idle and now - idle[0].idle_since >= self.keepalive_timeout:
                connection = idle.pop(0)
                connection.on_idle_lost = None
                connection.transport.loseConnection()
            if idle:
                expiry = idle[0].idle_since + self.keepalive_timeout
                next_expiry = expiry if next_expiry is None else min(next_expiry, expiry)
        if next_expiry is not None:
            self._sweeper = self._reactor.callLater(max(0.0, next_expiry - now), self._sweep)

    def _forget_idle_connection(self, connection: HTTP11ClientProtocol) -> None:
        self._forget(connection.idle_address, connection)

    def _forget(self, address: str, connection: HTTP11ClientProtocol) -> None:
        idle = self._idle.get(address)
        if idle and connection in idle:
            idle.remove(connection)
