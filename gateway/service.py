"""The composition root: a validated configuration in, a running gateway's services out.

``build_service`` is the only place where the parts meet: the live upstream
pools, their connection pools, the route table, the listeners, the access log
and the supervised processes.  Children start in the order they are added:
the processes, then the access log, then the listeners.
"""

from __future__ import annotations

import os
import signal

from twisted.application.service import MultiService, Service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from gateway.accesslog import AccessLogWriter
from gateway.core.config import ConfigError, GatewayConfig, ListenerConfig, TLSConfig
from gateway.core.pool import UpstreamPool
from gateway.core.routing import RouteTable
from gateway.http.connections import UpstreamConnections
from gateway.http.proxy import ProxyContext, Upstream
from gateway.http.server import HTTP11ServerFactory
from gateway.processes import build_process_monitor
from gateway.tls import ServerTLS

log = Logger(namespace="gateway")


class ListenerService(Service):
    """One ``listeners:`` entry: a listening TCP socket serving the gateway's protocol.

    The socket is bound in ``privilegedStartService`` (before twistd drops
    privileges or daemonizes), so that a port already in use stops the
    gateway at once with a clear message.  Connections are accepted once the
    reactor runs, after the processes have been started.
    """

    def __init__(self, reactor, listener: ListenerConfig, factory: HTTP11ServerFactory,
                 tls: ServerTLS | None = None) -> None:
        self._reactor = reactor
        self._listener = listener
        self._factory = TLSMemoryBIOFactory(tls, False, factory) if tls is not None else factory
        self.tls = tls
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
        log.info("listener {name} serving {scheme} on {host}:{port}", name=listener.name, host=address.host,
                 port=address.port, scheme="https" if self.tls is not None else "http")

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


class CertificateReloader(Service):
    """On SIGHUP, re-reads every TLS listener's certificate files for new connections."""

    def __init__(self, reactor, listeners: list[tuple[ServerTLS, TLSConfig]]) -> None:
        self._reactor = reactor
        self._listeners = listeners
        self._previous_handler = None

    def startService(self) -> None:
        super().startService()
        self._previous_handler = signal.signal(signal.SIGHUP, self._on_signal)

    def stopService(self) -> None:
        super().stopService()
        if self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)

    def _on_signal(self, signum, frame) -> None:
        self._reactor.callFromThread(self.reload)

    def reload(self) -> None:
        for tls, config in self._listeners:
            try:
                tls.reload(config)
            except ConfigError as error:
                log.error("SIGHUP: certificates not reloaded, the previous ones keep serving: {error}",
                          error=str(error))
            else:
                log.info("SIGHUP: reloaded {count} certificate(s): {files}", count=len(config.certificates),
                         files=", ".join(item.cert for item in config.certificates))


def build_tls(listener: ListenerConfig, source: str) -> ServerTLS:
    """The TLS contexts of a listener, generating absent files first when ``self_signed`` asks for it."""
    tls = listener.tls
    if tls.self_signed:
        from gateway.certs import CertificateError, ensure_self_signed, local_ca_paths

        for item in tls.certificates:
            try:
                generated = ensure_self_signed(item.cert, item.key)
            except CertificateError as error:
                raise ConfigError(f"{source}: listener {listener.name}: cannot generate {item.cert}: {error}") from None
            if generated:
                ca_cert = local_ca_paths(os.path.dirname(item.cert) or ".")[0]
                log.info("listener {name}: generated certificate {cert} (key {key}), signed by the local CA "
                         "{ca}; clients trust that file, e.g. curl --cacert {ca}", name=listener.name,
                         cert=item.cert, key=item.key, ca=ca_cert)
    return ServerTLS(tls, source)


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
    tls_listeners: list[tuple[ServerTLS, TLSConfig]] = []
    for listener in config.listeners:
        tls = build_tls(listener, config.source) if listener.tls is not None else None
        if tls is not None:
            tls_listeners.append((tls, listener.tls))
        ListenerService(reactor, listener, HTTP11ServerFactory(context, listener), tls).setServiceParent(root)
    if tls_listeners:
        CertificateReloader(reactor, tls_listeners).setServiceParent(root)
    return root
