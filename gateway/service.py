"""The composition root: a validated configuration in, a running gateway's services out.

``build_service`` is the only place where the parts meet: the live upstream
pools, their connection pools, the route table, the listeners, the access log
and the supervised processes.  Children start in the order they are added:
the processes, then the access log, then the listeners.
"""

from __future__ import annotations

from twisted.application.service import MultiService, Service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from gateway.accesslog import AccessLogWriter
from gateway.core.config import GatewayConfig, ListenerConfig
from gateway.core.pool import UpstreamPool
from gateway.core.routing import RouteTable
from gateway.http.connections import UpstreamConnections
from gateway.http.proxy import ProxyContext, Upstream
from gateway.http.server import HTTP11ServerFactory
from gateway.processes import build_process_monitor

log = Logger(namespace="gateway")


class ListenerService(Service):
    """One ``listeners:`` entry: a listening TCP socket serving the gateway's protocol.

    The socket is bound in ``privilegedStartService`` (before twistd drops
    privileges or daemonizes), so that a port already in use stops the
    gateway at once with a clear message.  Connections are accepted once the
    reactor runs, after the processes have been started.
    """

    def __init__(self, reactor, listener: ListenerConfig, factory: HTTP11ServerFactory) -> None:
        self._reactor = reactor
        self._listener = listener
        self._factory = factory
        self.port = None
        self.setName(f"listener:{listener.name}")

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        listener = self._listener
        try:
            self.port = self._reactor.listenTCP(listener.port, self._factory, backlog=511,
                                                interface=listener.interface)
        except CannotListenError as error:
            raise SystemExit(f"gateway: listener {listener.name!r} cannot listen on "
                             f"{listener.interface}:{listener.port}: {error.socketError}") from None
        address = self.port.getHost()
        log.info("listener {name} serving http on {host}:{port}", name=listener.name, host=address.host,
                 port=address.port)

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class UpstreamConnectionsService(Service):
    """Closes the idle backend connections when the gateway stops."""

    def __init__(self, upstreams: dict[str, Upstream]) -> None:
        self._upstreams = upstreams

    def stopService(self) -> None:
        super().stopService()
        for upstream in self._upstreams.values():
            upstream.connections.close_idle()


def build_service(config: GatewayConfig, reactor) -> MultiService:
    """All of the gateway for *config*, as one service for twistd to run."""
    root = MultiService()
    if config.processes:
        build_process_monitor(config.processes, config.source, reactor).setServiceParent(root)
    access_log = None
    if config.access_log is not None:
        writer = AccessLogWriter(config.access_log, reactor)
        writer.setServiceParent(root)
        access_log = writer.write
    upstreams = {
        name: Upstream(pool=UpstreamPool(upstream),
                       connections=UpstreamConnections(reactor, upstream.keepalive_timeout,
                                                       upstream.keepalive_connections))
        for name, upstream in config.upstreams.items()
    }
    UpstreamConnectionsService(upstreams).setServiceParent(root)
    context = ProxyContext(reactor=reactor, routes=RouteTable(config.routes), upstreams=upstreams,
                           access_log=access_log)
    for listener in config.listeners:
        ListenerService(reactor, listener, HTTP11ServerFactory(context, scheme="http")).setServiceParent(root)
    return root
