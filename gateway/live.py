"""The running upstreams as operators change them: admin API calls and SIGHUP reloads.

:class:`LiveUpstreams` is the one place that changes the live pools after
start-up.  Every change goes through :class:`~gateway.core.pool.UpstreamPool`
methods, is recorded in :class:`~gateway.core.state.LiveChanges` and written
to the state file (atomically, in a thread) before the caller is answered.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from gateway.core.config import ConfigError, GatewayConfig, ServerConfig, UpstreamConfig, parse_address
from gateway.core.pool import DRAINING, UP, UpstreamPool
from gateway.core.routing import RouteTable
from gateway.core.state import LiveChanges
from gateway.http.connections import UpstreamConnections
from gateway.http.proxy import ProxyContext, Upstream

log = Logger(namespace="gateway.live")


class OperatorError(Exception):
    """A refused operator request, with the HTTP status the admin API answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def write_atomically(path: str, text: str) -> None:
    """Write *text* to *path* so that a crash leaves the old file or the new one, never half of one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".state-", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def read_live_changes(path: str | None) -> LiveChanges:
    """The state file's changes, or none when there is no file yet (start-up only: blocking)."""
    if path is None or not os.path.exists(path):
        return LiveChanges()
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the state file: {error.strerror}") from None
    return LiveChanges.from_json(text, path)


class StateStore:
    """Writes the live changes to the state file, one write at a time, off the reactor thread."""

    def __init__(self, reactor, path: str) -> None:
        self._reactor = reactor
        self.path = path
        self._lock = DeferredLock()

    def save(self, changes: LiveChanges) -> Deferred:
        return self._lock.run(deferToThreadPool, self._reactor, self._reactor.getThreadPool(), write_atomically,
                              self.path, changes.to_json())


def describe_upstream(pool: UpstreamPool) -> dict[str, Any]:
    return {"name": pool.name, "balance": pool.balance,
            "servers": [describe_server(server) for server in pool.servers]}


def describe_server(server) -> dict[str, Any]:
    return {"address": server.address, "weight": server.weight, "state": server.status,
            "active_requests": server.active, "total_requests": server.total,
            "recent_failures": server.recent_failures, "total_failures": server.failures,
            "removing": server.removing}


class LiveUpstreams:
    """Applies configurations and operators' changes to the running upstreams."""

    def __init__(self, reactor, context: ProxyContext, config: GatewayConfig, changes: LiveChanges,
                 store: StateStore | None, on_server_gone: Callable[[str, str], None] | None = None) -> None:
        self._reactor = reactor
        self._context = context
        self._config = config
        self._changes = changes
        self._store = store
        self._on_server_gone = on_server_gone
        self._departures: dict[tuple[str, str], list[Deferred]] = {}

    @property
    def config(self) -> GatewayConfig:
        return self._config

    @property
    def changes(self) -> LiveChanges:
        return self._changes

    # -- configuration (start-up and SIGHUP) ------------------------------------------------

    def apply_config(self, config: GatewayConfig, changes: LiveChanges | None = None) -> Deferred:
        """Make the upstreams and routes those of *config* plus the live changes, for new requests.

        *changes* replaces the live changes held so far (a worker gets them from the master).
        Fires once they are in service (at once here; once every worker has them, with workers).
        """
        if changes is not None:
            self._changes = changes
        for name in self._changes.prune(set(config.upstreams)):
            log.warn("live changes to upstream {name} dropped: it is no longer in the configuration", name=name)
        upstreams = dict(self._context.upstreams)
        for name, upstream_config in config.upstreams.items():
            upstream = upstreams.get(name)
            if upstream is None:
                upstream = self._new_upstream(upstream_config)
                upstreams[name] = upstream
            upstream.config = upstream_config
            upstream.pool.set_balance(upstream_config.balance)
            upstream.pool.set_passive_health(upstream_config.max_fails, upstream_config.fail_timeout)
            upstream.connections.keepalive_timeout = upstream_config.keepalive_timeout
            upstream.connections.keepalive_connections = upstream_config.keepalive_connections
            upstream.connections.connect_timeout = upstream_config.connect_timeout
            upstream.servers_gone(upstream.pool.set_servers(self._changes.effective_servers(upstream_config)))
        for name in [name for name in upstreams if name not in config.upstreams]:
            # Requests already on it finish on the objects they hold; new ones cannot route there.
            removed = upstreams.pop(name)
            removed.servers_gone(removed.pool.set_servers(()))
        self._context.upstreams = upstreams
        self._context.routes = RouteTable(config.routes)
        self._config = config
        return succeed(None)

    def _new_upstream(self, config: UpstreamConfig) -> Upstream:
        pool = UpstreamPool(replace(config, servers=()))
        connections = UpstreamConnections(self._reactor, config.keepalive_timeout, config.keepalive_connections,
                                          config.connect_timeout)
        return Upstream(pool=pool, connections=connections, config=config, on_server_gone=self._server_gone)

    # -- operators ---------------------------------------------------------------------

    def describe(self, name: str | None = None) -> Any:
        if name is None:
            return {"upstreams": [describe_upstream(upstream.pool) for upstream in self._context.upstreams.values()]}
        return describe_upstream(self._upstream(name).pool)

    def removing(self) -> list[tuple[str, str]]:
        """``(upstream, address)`` of every server still draining before it leaves."""
        return [(upstream.pool.name, server.address) for upstream in self._context.upstreams.values()
                for server in upstream.pool.servers if server.removing]

    def counters(self) -> dict[str, int]:
        """This process's requests in flight to backends, and the requests it has received (a worker's
        row in ``GET /workers``)."""
        return {"active_requests": sum(server.active for upstream in self._context.upstreams.values()
                                       for server in upstream.pool.servers),
                "total_requests": self._context.requests}

    def describe_workers(self) -> Any:
        """One process serves traffic: no workers (see gateway.workers.master for ``workers: N``)."""
        return {"pid": os.getpid(), "workers": []}

    def add_server(self, name: str, address: str, weight: int) -> Deferred:
        """Add a server; fires with its description once the change is persisted."""
        upstream = self._upstream(name)
        try:
            host, port = parse_address(address)
        except ValueError as error:
            raise OperatorError(400, f"invalid address {address!r}: {error}") from None
        config = ServerConfig(host=host, port=port, weight=weight)
        existing = upstream.pool.server(config.address)
        if existing is not None and not existing.removing:
            raise OperatorError(409, f"server {config.address} is already in upstream {name}")
        server = upstream.pool.add(config)
        log.info("upstream {name}: added server {address} (weight {weight})", name=name, address=config.address,
                 weight=weight)
        self._changes.record(name, server.address, server.weight, server.state)
        return self._persist().addCallback(lambda _: describe_server(server))

    def update_server(self, name: str, address: str, weight: int | None, state: str | None) -> Deferred:
        """Change a server's weight and/or state (``up`` or ``drain``)."""
        upstream = self._upstream(name)
        server = self._server(upstream, address)
        if weight is not None:
            upstream.pool.set_weight(server.address, weight)
        if state is not None:
            upstream.pool.set_state(server.address, DRAINING if state == "drain" else UP)
        log.info("upstream {name}: server {address} now weight {weight}, {state}", name=name,
                 address=server.address, weight=server.weight, state=server.state)
        self._changes.record(name, server.address, server.weight, server.state)
        return self._persist().addCallback(lambda _: describe_server(server))

    def remove_server(self, name: str, address: str) -> Deferred:
        """Start removing a server; fires once persisted with ``(gone now, a Deferred that fires when gone)``."""
        upstream = self._upstream(name)
        server = upstream.pool.server(address)
        if server is None:
            raise OperatorError(404, f"no server {address} in upstream {name}")
        gone_deferred: Deferred = Deferred()
        self._departures.setdefault((name, server.address), []).append(gone_deferred)
        if server.removing:
            return succeed((False, gone_deferred))  # already draining out
        in_config = any(item.address == server.address for item in self._config.upstreams[name].servers)
        self._changes.record_removed(name, server.address, in_config)
        persisted = self._persist()
        gone = upstream.pool.remove(server.address)
        if gone:
            upstream.servers_gone(gone)
        else:
            log.info("upstream {name}: draining server {address} ({active} request(s) in flight)", name=name,
                     address=server.address, active=server.active)
        return persisted.addCallback(lambda _: (bool(gone), gone_deferred))

    # -- internals ---------------------------------------------------------------------

    def _upstream(self, name: str) -> Upstream:
        upstream = self._context.upstreams.get(name)
        if upstream is None:
            raise OperatorError(404, f"no upstream named {name!r}")
        return upstream

    def _server(self, upstream: Upstream, address: str):
        server = upstream.pool.server(address)
        if server is None or server.removing:
            raise OperatorError(404, f"no server {address} in upstream {upstream.pool.name}")
        return server

    def _server_gone(self, name: str, address: str) -> None:
        log.info("upstream {name}: server {address} removed", name=name, address=address)
        for waiter in self._departures.pop((name, address), ()):
            waiter.callback(None)
        if self._on_server_gone is not None:
            self._on_server_gone(name, address)

    def _persist(self) -> Deferred:
        if self._store is None:
            return succeed(None)
        return self._store.save(self._changes)
