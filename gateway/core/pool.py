"""The live servers of each upstream: weights, states and request counts.

This is the gateway's only shared mutable state.  It is changed only through
the methods below, on the reactor thread.  The request path asks
:meth:`UpstreamPool.choose` for a server and reports back with
:meth:`~UpstreamPool.request_started` / :meth:`~UpstreamPool.request_finished`.
"""

from __future__ import annotations

from typing import Collection

from gateway.core.balancing import make_balancer
from gateway.core.config import ServerConfig, UpstreamConfig

UP = "up"
DOWN = "down"
DRAINING = "draining"


class ServerState:
    """One backend server as the balancer and the operators see it."""

    __slots__ = ("host", "port", "address", "weight", "state", "active", "total", "failures")

    def __init__(self, config: ServerConfig) -> None:
        self.host = config.host
        self.port = config.port
        self.address = config.address
        self.weight = config.weight
        self.state = UP
        self.active = 0  # requests in flight
        self.total = 0  # requests started since the gateway started
        self.failures = 0  # connections that failed

    def __repr__(self) -> str:
        return f"<ServerState {self.address} weight={self.weight} {self.state} active={self.active}>"


class UpstreamPool:
    """The servers of one upstream and the policy that balances across them."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.name = config.name
        self.balance = config.balance
        self._balancer = make_balancer(config.balance)
        self.servers: list[ServerState] = [ServerState(server) for server in config.servers]
        self._available: list[ServerState] = list(self.servers)

    def choose(self, client_key: str, tried: Collection[ServerState] = ()) -> ServerState | None:
        """The server for the next request, or None when no untried server is available."""
        candidates = self._available
        if tried:
            candidates = [server for server in candidates if server not in tried]
        if not candidates:
            return None
        return self._balancer.choose(candidates, client_key)  # type: ignore[return-value]

    @property
    def is_empty(self) -> bool:
        """True when the upstream has no server that may take requests at all."""
        return not self._available

    def request_started(self, server: ServerState) -> None:
        server.active += 1
        server.total += 1

    def request_finished(self, server: ServerState) -> None:
        server.active -= 1

    def connect_failed(self, server: ServerState) -> None:
        server.failures += 1
