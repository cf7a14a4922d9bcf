"""Waiting for the supervised backends before the listeners accept connections.

With ``processes:``, the gateway's listening sockets are bound at once (so a
busy port fails fast) but accept their first connection only once every
backend address answers a TCP connect, or after a bounded wait.  Until then
clients wait in the listen backlog instead of meeting refused backends.
"""

from __future__ import annotations

from typing import Iterable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

log = Logger(namespace="gateway")


class BackendsReady:
    """Fires :meth:`ready` Deferreds once every address accepts connections, or after *timeout*."""

    def __init__(self, reactor, addresses: Iterable[tuple[str, int]], timeout: float = 15.0,
                 interval: float = 0.1) -> None:
        self._reactor = reactor
        self._pending = set(addresses)
        self._timeout = timeout
        self._interval = interval
        self._deadline = 0.0
        self._waiters: list[Deferred] = []
        self._done = False

    def start(self) -> None:
        self._deadline = self._reactor.seconds() + self._timeout
        if not self._pending:
            self._open()
        for address in list(self._pending):
            self._probe(address)

    def ready(self) -> Deferred:
        if self._done:
            return succeed(None)
        waiter: Deferred = Deferred()
        self._waiters.append(waiter)
        return waiter

    def _probe(self, address: tuple[str, int]) -> None:
        host, port = address
        endpoint_type = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        attempt = connectProtocol(endpoint_type(self._reactor, host, port, timeout=1), Protocol())
        attempt.addCallbacks(self._answered, self._refused, callbackArgs=(address,), errbackArgs=(address,))

    def _answered(self, protocol: Protocol, address: tuple[str, int]) -> None:
        protocol.transport.loseConnection()
        self._pending.discard(address)
        if not self._pending:
            self._open()

    def _refused(self, failure, address: tuple[str, int]) -> None:
        if self._done:
            return
        if self._reactor.seconds() >= self._deadline:
            log.warn("backends not listening after {timeout} s: {addresses}; accepting connections anyway",
                     timeout=self._timeout, addresses=", ".join(f"{h}:{p}" for h, p in sorted(self._pending)))
            self._open()
            return
        self._reactor.callLater(self._interval, self._probe, address)

    def _open(self) -> None:
        if self._done:
            return
        self._done = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)
