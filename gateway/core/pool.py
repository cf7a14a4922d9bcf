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

    __slots__ = ("host", "port", "address", "weight", "state", "active", "total", "failures", "removing",
                 "max_fails", "fail_timeout", "recent_failures", "window_start", "down_until", "healthy")

    def __init__(self, config: ServerConfig, state: str = UP, max_fails: int = 1, fail_timeout: float = 10.0) -> None:
        self.host = config.host
        self.port = config.port
        self.address = config.address
        self.weight = config.weight
        self.state = state  # the operator's word: up or draining
        self.active = 0  # requests in flight
        self.total = 0  # requests started since the gateway started
        self.failures = 0  # failures since the gateway started
        self.removing = False  # leaves the pool once its active requests are done
        self.max_fails = config.max_fails if config.max_fails is not None else max_fails
        self.fail_timeout = config.fail_timeout if config.fail_timeout is not None else fail_timeout
        self.recent_failures = 0  # failures in the current fail_timeout window
        self.window_start = 0.0
        self.down_until = 0.0  # passive health: out of rotation until then
        self.healthy = True  # active health checks' verdict

    @property
    def status(self) -> str:
        """What operators see: ``down`` (failing), ``draining`` or ``up``."""
        if not self.healthy or self.down_until:
            return DOWN
        return self.state

    def __repr__(self) -> str:
        return f"<ServerState {self.address} weight={self.weight} {self.state} active={self.active}>"


class UpstreamPool:
    """The servers of one upstream and the policy that balances across them."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.name = config.name
        self.balance = config.balance
        self.max_fails = config.max_fails
        self.fail_timeout = config.fail_timeout
        self._balancer = make_balancer(config.balance)
        self.servers: list[ServerState] = [self._new_server(server) for server in config.servers]
        self._available: list[ServerState] = []
        self._fallback: list[ServerState] = []  # passively down: tried when nothing else is left
        self._next_revival = float("inf")  # the earliest down_until among the servers
        self._refresh()

    # -- the request path -------------------------------------------------------------

    def choose(self, client_key: str, tried: Collection[ServerState] = (), now: float = 0.0) -> ServerState | None:
        """The server for the next request, or None when no untried server is available.

        Servers that passive health took out are used only when every other
        one is out too (as nginx does): better a server that failed a moment
        ago than a certain 502.
        """
        if now >= self._next_revival:
            self._revive(now)
        candidates = self._available or self._fallback
        if tried:
            candidates = [server for server in candidates if server not in tried]
            if not candidates and self._available:
                candidates = [server for server in self._fallback if server not in tried]
        if not candidates:
            return None
        return self._balancer.choose(candidates, client_key)  # type: ignore[return-value]

    @property
    def is_empty(self) -> bool:
        """True when the upstream has no server that may take requests at all."""
        return not self._available and not self._fallback

    def request_started(self, server: ServerState) -> None:
        server.active += 1
        server.total += 1

    def request_finished(self, server: ServerState) -> list[str]:
        """Count a request as done; returns ``[address]`` when that was the last one of a removed server."""
        server.active -= 1
        if server.removing and server.active == 0:
            return self._drop(server)
        return []

    def record_failure(self, server: ServerState, now: float) -> bool:
        """Passive health: count a failure; True when it takes the server out for fail_timeout."""
        server.failures += 1
        if now - server.window_start > server.fail_timeout:
            server.window_start = now
            server.recent_failures = 0
        server.recent_failures += 1
        if server.max_fails and server.recent_failures >= server.max_fails and not server.down_until:
            server.down_until = now + server.fail_timeout
            self._refresh()
            return True
        return False

    def record_success(self, server: ServerState) -> None:
        """A response came: the failure count restarts, and a server taken out is back (it works)."""
        if server.recent_failures:
            server.recent_failures = 0
        if server.down_until:
            server.down_until = 0.0
            self._refresh()

    def set_healthy(self, address: str, healthy: bool) -> bool:
        """Active health checks' verdict; True when it changed."""
        server = self.server(address)
        if server is None or server.healthy == healthy:
            return False
        server.healthy = healthy
        self._refresh()
        return True

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
        server = self._new_server(config, state)
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
            present = self.server(address)
            if present is None or present.removing:
                self.add(config, state)
            else:
                present.weight = config.weight
                present.state = state
        self._refresh()
        return gone

    def set_balance(self, policy: str) -> None:
        if policy != self.balance:
            self.balance = policy
            self._balancer = make_balancer(policy)
            self._balancer.plan(self._available)

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

    def _new_server(self, config: ServerConfig, state: str = UP) -> ServerState:
        return ServerState(config, state, self.max_fails, self.fail_timeout)

    def set_passive_health(self, max_fails: int, fail_timeout: float) -> None:
        """New upstream defaults (on reload); servers keep their own overrides."""
        self.max_fails, self.fail_timeout = max_fails, fail_timeout

    def _revive(self, now: float) -> None:
        for server in self.servers:
            if server.down_until and server.down_until <= now:
                server.down_until = 0.0
                server.recent_failures = 0
        self._refresh()

    def _refresh(self) -> None:
        """Work out the candidates again after any change to the servers, their weights or states.

        The lists are made anew each time: the balancer recognises its plan's list by identity.
        """
        usable = [server for server in self.servers if server.state == UP and not server.removing and server.healthy]
        self._available = [server for server in usable if not server.down_until]
        self._fallback = [server for server in usable if server.down_until]
        self._next_revival = min((server.down_until for server in self._fallback), default=float("inf"))
        self._balancer.plan(self._available)  # (a new list: the balancer knows its plan is for these servers)
