"""The composition root: a validated configuration in, a running gateway's services out.

``build_service`` is the only place where the parts meet: the live upstream
pools, their connection pools, the route table, the listeners, the access log
and the supervised processes.  Children start in the order they are added:
the processes, then the access log, then the listeners.
"""

from __future__ import annotations

import os
import signal

from dataclasses import replace

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from gateway.accesslog import AccessLogWriter
from gateway.admin.tokens import TokenError, read_token
from gateway.core.config import AdminConfig, ConfigError, GatewayConfig, ListenerConfig, load_config
from gateway.core.routing import RouteTable
from gateway.health import HealthChecker
from gateway.http.proxy import ProxyContext
from gateway.http.server import HTTP11ServerFactory
from gateway.live import LiveUpstreams, StateStore, read_live_changes
from gateway.processes import build_process_monitor
from gateway.readiness import BackendsReady
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
                 tls: ServerTLS | None = None, shutdown_timeout: float = 10.0,
                 backends: BackendsReady | None = None) -> None:
        self._reactor = reactor
        self._backends = backends
        self._listener = listener
        self._http_factory = factory
        self._shutdown_timeout = shutdown_timeout
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

    def startService(self) -> None:
        super().startService()
        if self._backends is not None and self.port is not None:
            port = self.port
            port.stopReading()  # connections wait in the backlog until the backends listen
            self._backends.ready().addCallback(lambda _: port.startReading() if port.connected else None)

    def stopService(self) -> Deferred | None:
        """Stop accepting, then let the requests in flight finish (within the shutdown timeout)."""
        super().stopService()
        if self.port is None:
            return None
        port, self.port = self.port, None
        stopped = maybeDeferred(port.stopListening)
        stopped.addCallback(lambda _: self._http_factory.shut_down(self._reactor, self._shutdown_timeout))
        return stopped


class UpstreamConnectionsService(Service):
    """Closes the idle backend connections when the gateway stops."""

    def __init__(self, context: ProxyContext) -> None:
        self._context = context

    def stopService(self) -> None:
        super().stopService()
        for upstream in self._context.upstreams.values():
            upstream.connections.close_idle()


class SequentialMultiService(MultiService):
    """Stops its children one after the other, last added first, each after the previous has finished.

    Twisted's MultiService stops all children at once; the gateway must first
    let its listeners finish the requests in flight, and only then stop the
    backend processes those requests are waiting on.
    """

    def stopService(self) -> Deferred:
        Service.stopService(self)
        children = list(self)
        children.reverse()

        def stop_next(_: object = None) -> Deferred | None:
            if not children:
                return None
            return maybeDeferred(children.pop(0).stopService).addBoth(stop_next)

        return maybeDeferred(stop_next)


class ConfigReloader(Service):
    """SIGHUP: re-read the configuration file and apply it for new requests.

    Upstreams, servers, weights, balance policies, routes and certificates
    change; requests and connections in flight keep what they started with.
    Listeners, processes, the admin API and the access log need a restart
    (a warning says so).  A file that does not validate is rejected with a
    logged error and the running configuration keeps serving.
    """

    def __init__(self, reactor, config: GatewayConfig, live: LiveUpstreams,
                 tls_listeners: dict[str, ServerTLS]) -> None:
        self._reactor = reactor
        self._config = config
        self._live = live
        self._tls_listeners = tls_listeners

    def startService(self) -> None:
        super().startService()
        signal.signal(signal.SIGHUP, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        # The handler stays installed while the gateway stops: SIGHUP's default
        # action would kill it in the middle of draining requests.
        self._reactor.callFromThread(self.reload if self.running else self._ignore)

    @staticmethod
    def _ignore() -> None:
        log.info("SIGHUP ignored: the gateway is shutting down")

    def reload(self) -> Deferred:
        path = self._config.source
        log.info("SIGHUP: reloading {path}", path=path)
        reading = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), load_config, path)
        return reading.addCallbacks(self._apply, self._rejected)

    def _rejected(self, failure) -> None:
        failure.trap(ConfigError)
        log.error("SIGHUP: configuration rejected, the previous one keeps serving: {error}",
                  error=failure.getErrorMessage())

    def _apply(self, config: GatewayConfig) -> None:
        try:
            # Every certificate is loaded before any is served: all change, or none.
            prepared = [(self._tls_listeners[listener.name], self._tls_listeners[listener.name].load(listener.tls))
                        for listener in config.listeners
                        if listener.tls is not None and listener.name in self._tls_listeners]
        except ConfigError as error:
            log.error("SIGHUP: configuration rejected, the previous one keeps serving: {error}", error=str(error))
            return
        except Exception:
            log.failure("SIGHUP: configuration rejected, the previous one keeps serving")
            return
        for tls, loaded in prepared:
            tls.install(loaded)
        old = self._config
        for what, before, after in (("listeners", old.listeners, config.listeners),
                                    ("processes", old.processes, config.processes),
                                    ("admin", old.admin, config.admin), ("access_log", old.access_log, config.access_log),
                                    ("state_file", old.state_file, config.state_file)):
            if _without_tls(before) != _without_tls(after):
                log.warn("SIGHUP: changes to {what} take effect at the next restart", what=what)
        self._live.apply_config(config)
        self._config = config
        log.info("SIGHUP: configuration reloaded: {upstreams} upstream(s), {routes} route(s)",
                 upstreams=len(config.upstreams), routes=len(config.routes))


def _without_tls(value):
    """Listeners compared without their certificates, which a reload does apply."""
    if isinstance(value, tuple) and value and isinstance(value[0], ListenerConfig):
        return tuple(replace(listener, tls=None) for listener in value)
    return value


class AdminService(Service):
    """The operator API on its own (loopback by default) listener."""

    def __init__(self, reactor, config: AdminConfig, live: LiveUpstreams) -> None:
        self._reactor = reactor
        self._config = config
        self._live = live
        self.port = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        from gateway.admin.api import build_admin_site

        try:
            token = read_token(self._config.token_file) if self._config.token_file else None
        except TokenError as error:
            raise SystemExit(f"gateway: admin.token_file: {error}") from None
        try:
            self.port = self._reactor.listenTCP(self._config.port, build_admin_site(self._live, token),
                                                interface=self._config.host)
        except CannotListenError as error:
            raise SystemExit(f"gateway: the admin API cannot listen on {self._config.host}:{self._config.port}: "
                             f"{error.socketError}") from None
        log.info("admin API on {host}:{port}{auth}", host=self._config.host, port=self.port.getHost().port,
                 auth=" (bearer token required)" if token else "")

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


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
    """All of the gateway for *config*, as one service for twistd to run.

    Children start in this order and stop in the reverse one: processes,
    access log, backend connections, listeners, health checks, SIGHUP reloader, admin API.
    """
    root = SequentialMultiService()
    if config.processes:
        build_process_monitor(config.processes, config.source, reactor).setServiceParent(root)
    access_log = None
    if config.access_log is not None:
        writer = AccessLogWriter(config.access_log, reactor)
        writer.setServiceParent(root)
        access_log = writer.write
    context = ProxyContext(reactor=reactor, routes=RouteTable(()), upstreams={}, access_log=access_log)
    store = StateStore(reactor, config.state_file) if config.state_file else None
    live = LiveUpstreams(reactor, context, config, read_live_changes(config.state_file), store)
    live.apply_config(config)
    UpstreamConnectionsService(context).setServiceParent(root)
    if config.admin is not None:
        # Bound before the listeners (so it answers as soon as they do), stopped after their drain.
        AdminService(reactor, config.admin, live).setServiceParent(root)
    # The listeners stop (and drain) together, before anything added earlier stops.
    listeners = MultiService()
    listeners.setServiceParent(root)
    backends = None
    if config.processes:
        backends = BackendsReady(reactor, {(server.host, server.port) for upstream in config.upstreams.values()
                                           for server in upstream.servers})
        reactor.callWhenRunning(backends.start)
    tls_listeners: dict[str, ServerTLS] = {}
    for listener in config.listeners:
        tls = build_tls(listener, config.source) if listener.tls is not None else None
        if tls is not None:
            tls_listeners[listener.name] = tls
        ListenerService(reactor, listener, HTTP11ServerFactory(context, listener), tls,
                        config.shutdown_timeout, backends).setServiceParent(listeners)
    # Active health checks: after the listeners, so that they stop first.
    HealthChecker(reactor, context).setServiceParent(root)
    ConfigReloader(reactor, config, live, tls_listeners).setServiceParent(root)
    return root
