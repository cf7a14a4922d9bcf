"""The live servers of each upstream: weights, states and request counts.

This is the gateway's only shared mutable state.  It is changed only through
the methods below, on the reactor thread.  The request path asks
:meth:`UpstreamPool.choose` for a server and reports back with
:meth:`~UpstreamPool.request_started` / :meth:`~UpstreamPool.request_finished`;
operators (admin API, SIGHUP reload, later a discovery source) change the
membership through :meth:`~UpstreamPool.set_servers` and its smaller
siblings.

A removed server first drains: it takes no new request, the requests already
on it finish, and only then does it leave the pool.  Methods that can make a
server leave return the addresses that just left, so that the caller can
close their idle connections and tell whoever waits for it (decide here, do
the I/O after).
"""

from __future__ import annotations

from typing import Collection, Iterable

from gateway.core.balancing import make_balancer
from gateway.core.config import ServerConfig, UpstreamConfig

UP = "up"
DOWN = "down"
DRAINING = "draining"


class ServerState:
    """One backend server as the balancer and the operators see it."""

    __slots__ = ("host", "port", "address", "weight", "state", "active", "total", "failures", "removing")

    def __init__(self, config: ServerConfig, state: str = UP) -> None:
        self.host = config.host
        self.port = config.port
        self.address = config.address
        self.weight = config.weight
        self.state = state
        self.active = 0  # requests in flight
        self.total = 0  # requests started since the gateway started
        self.failures = 0  # connections that failed
        self.removing = False  # leaves the pool once its active requests are done

    def __repr__(self) -> str:
        return f"<ServerState {self.address} weight={self.weight} {self.state} active={self.active}>"


class UpstreamPool:
    """The servers of one upstream and the policy that balances across them."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.name = config.name
        self.balance = config.balance
        self._balancer = make_balancer(config.balance)
        self.servers: list[ServerState] = [ServerState(server) for server in config.servers]
        self._available: list[ServerState] = []
        self._refresh()

    # -- the request path -------------------------------------------------------------

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

    def request_finished(self, server: ServerState) -> list[str]:
        """Count a request as done; returns ``[address]`` when that was the last one of a removed server."""
        server.active -= 1
        if server.removing and server.active == 0:
            return self._drop(server)
        return []

    def connect_failed(self, server: ServerState) -> None:
        server.failures += 1

    # -- membership -------------------------------------------------------------------

    def server(self, address: str) -> ServerState | None:
        for server in self.servers:
            if server.address == address:
                return server
        return None

    def add(self, config: ServerConfig, state: str = UP) -> ServerState:
        """Add a server (or take back one that was leaving); ValueError when it is already a member."""
        existing = self.server(config.address)
        if existing is not None:
            if not existing.removing:
                raise ValueError(f"server {config.address} is already in upstream {self.name}")
            existing.removing = False
            existing.weight = config.weight
            existing.state = state
            self._refresh()
            return existing
        server = ServerState(config, state)
        self.servers.append(server)
        self._refresh()
        return server

    def set_weight(self, address: str, weight: int) -> None:
        self._member(address).weight = weight
        self._refresh()

    def set_state(self, address: str, state: str) -> None:
        """``up`` or ``draining`` (no new requests; the server stays a member)."""
        server = self._member(address)
        server.state = state
        self._refresh()

    def remove(self, address: str) -> list[str]:
        """Start removing a server: returns ``[address]`` if it left at once, ``[]`` while it drains."""
        server = self._member(address)
        server.removing = True
        server.state = DRAINING
        if server.active == 0:
            return self._drop(server)
        self._refresh()
        return []

    def set_servers(self, desired: Iterable[tuple[ServerConfig, str]]) -> list[str]:
        """Make the membership match *desired* ``(server, state)`` pairs.

        The one entry point for "these are now the servers of this upstream"
        (SIGHUP reload, and later service discovery).  Servers not listed are
        removed with draining; returns the addresses that left at once.
        """
        wanted = {config.address: (config, state) for config, state in desired}
        gone: list[str] = []
        for server in list(self.servers):
            if server.address not in wanted and not server.removing:
                gone += self.remove(server.address)
        for address, (config, state) in wanted.items():
            server = self.server(address)
            if server is None or server.removing:
                self.add(config, state)
            else:
                server.weight = config.weight
                server.state = state
        self._refresh()
        return gone

    def set_balance(self, policy: str) -> None:
        if policy != self.balance:
            self.balance = policy
            self._balancer = make_balancer(policy)

    # -- internals --------------------------------------------------------------------

    def _member(self, address: str) -> ServerState:
        server = self.server(address)
        if server is None or server.removing:
            raise KeyError(address)
        return server

    def _drop(self, server: ServerState) -> list[str]:
        self.servers.remove(server)
        self._balancer.forget(server.address)
        self._refresh()
        return [server.address]

    def _refresh(self) -> None:
        self._available = [server for server in self.servers if server.state == UP and not server.removing]
