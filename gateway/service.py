"""The composition root: a validated configuration in, a running gateway's services out.

``build_service`` is the only place where the parts meet: the live upstream
pools, their connection pools, the route table, the listeners, the access log
and the supervised processes.  Children start in the order they are added
(see each builder's docstring) and stop in the reverse order.  With
``workers: N`` the same parts are split between a master
(:func:`build_master_service`) and N workers (:func:`build_worker_service`).
"""

from __future__ import annotations

import os
import signal
import socket

from dataclasses import replace

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.abstract import isIPv6Address
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from gateway import compiled
from gateway.accesslog import AccessLogWriter
from gateway.admin.tokens import TokenError, read_token
from gateway.core.config import AdminConfig, ConfigError, GatewayConfig, ListenerConfig, load_config
from gateway.core.routing import RouteTable
from gateway.health import HealthChecker
from gateway.http.proxy import ProxyContext
from gateway.http.server import HTTP11ServerFactory
from gateway.http.tls_transport import TLSServerFactory
from gateway.core.state import LiveChanges
from gateway.live import LiveUpstreams, StateStore, read_live_changes
from gateway.processes import build_process_monitor
from gateway.readiness import BackendsReady
from gateway.tls import ServerTLS
from gateway.tls_tickets import SharedTicketKeys

log = Logger(namespace="gateway")

InheritedSocket = tuple[int, int]  # a listening socket's file descriptor and address family


class ListenerService(Service):
    """One ``listeners:`` entry: a listening TCP socket serving the gateway's protocol.

    The socket is bound in ``privilegedStartService`` (before twistd drops
    privileges or daemonizes), so that a port already in use stops the
    gateway at once with a clear message.  Connections are accepted once the
    reactor runs, after the processes have been started.

    In a worker of ``workers: N``, the socket is the master's, inherited as a
    file descriptor (*inherited*).
    """

    def __init__(self, reactor, listener: ListenerConfig, factory: HTTP11ServerFactory,
                 tls: ServerTLS | None = None, shutdown_timeout: float = 10.0,
                 backends: BackendsReady | None = None, inherited: InheritedSocket | None = None) -> None:
        self._reactor = reactor
        self._backends = backends
        self._listener = listener
        self._http_factory = factory
        self._shutdown_timeout = shutdown_timeout
        self._inherited = inherited
        self._factory = TLSServerFactory(tls.wrap, factory, reactor) if tls is not None else factory
        self.tls = tls
        self.port = None
        self.setName(f"listener:{listener.name}")

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        listener = self._listener
        if self._inherited is not None:
            fd, family = self._inherited
            self.port = self._reactor.adoptStreamPort(fd, family, self._factory)
            os.close(fd)  # adoptStreamPort works on its own duplicate
            return
        try:
            self.port = self._reactor.listenTCP(listener.port, self._factory, backlog=511,
                                                interface=listener.interface)
        except CannotListenError as error:
            raise SystemExit(f"gateway: listener {listener.name!r} cannot listen on "
                             f"{listener.interface}:{listener.port}: {error.socketError}") from None
        address = self.port.getHost()
        log.info("listener {name} serving {scheme} on {host}:{port}", name=listener.name, host=address.host,
                 port=address.port, scheme="https" if listener.tls is not None else "http")

    def startService(self) -> None:
        super().startService()
        port = self.port
        if port is not None and self._backends is not None:
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


class SharedSocketService(Service):
    """The master's side of a listener with ``workers: N``: bound sockets it never accepts on.

    One socket per worker, all bound to the listener's address with
    ``SO_REUSEPORT`` (nginx's ``listen ... reuseport``): the kernel spreads
    new connections evenly over them by address hash, and each worker accepts
    on its own.  On one shared socket the first worker to wake took every
    connection waiting (Twisted accepts up to a hundred per event): with
    ``wrk -c50`` one worker often served all 50 connections and the other
    none.  The master keeps the sockets, so the connections queued on the
    socket of a worker that died wait for its replacement (a worker that is
    stuck, though, holds up its share of new connections).  Where
    ``SO_REUSEPORT`` is missing (not Linux or BSD), one socket is shared.

    Plain sockets rather than Twisted ports: stopping a port shuts the
    socket down, which would make a worker's ``accept()`` on its copy fail
    mid-shutdown; closing the master's copy does not.
    """

    def __init__(self, listener: ListenerConfig, workers: int) -> None:
        self._listener = listener
        self._count = workers if hasattr(socket, "SO_REUSEPORT") else 1
        self._sockets: list[socket.socket] = []
        self.setName(f"listener:{listener.name}")

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        listener = self._listener
        family = socket.AF_INET6 if isIPv6Address(listener.interface) else socket.AF_INET
        port = listener.port
        try:
            for _ in range(self._count):
                bound = socket.socket(family, socket.SOCK_STREAM)
                self._sockets.append(bound)
                bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if self._count > 1:
                    bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                bound.bind((listener.interface, port))
                port = bound.getsockname()[1]  # (port 0: the others join the port the first one got)
                bound.listen(511)
                bound.setblocking(False)  # used by the workers' reactors, which must never block on accept()
        except OSError as error:
            self._close()
            raise SystemExit(f"gateway: listener {listener.name!r} cannot listen on "
                             f"{listener.interface}:{listener.port}: {error}") from None
        host = self._sockets[0].getsockname()[0]
        log.info("listener {name} serving {scheme} on {host}:{port}", name=listener.name, host=host, port=port,
                 scheme="https" if listener.tls is not None else "http")

    def inheritable(self, worker: int) -> InheritedSocket:
        """The file descriptor and address family of worker number *worker*'s listening socket (from 1)."""
        bound = self._sockets[(worker - 1) % len(self._sockets)]
        return bound.fileno(), bound.family

    def stopService(self) -> None:
        super().stopService()
        self._close()

    def _close(self) -> None:
        for bound in self._sockets:
            bound.close()
        self._sockets.clear()


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


class ConfigApplier:
    """Puts a new configuration into service for new requests (SIGHUP, and in every worker).

    Upstreams, servers, weights, balance policies, routes and certificates
    change; requests and connections in flight keep what they started with.
    Certificates are all loaded before any is installed: all change, or none,
    and then nothing else changes either.
    """

    def __init__(self, config: GatewayConfig, live: LiveUpstreams, tls_listeners: dict[str, ServerTLS],
                 warn_restart: bool = True) -> None:
        self.config = config
        self._live = live
        self._tls_listeners = tls_listeners
        self._warn_restart = warn_restart

    def apply(self, config: GatewayConfig, changes: LiveChanges | None = None) -> Deferred:
        """Fires True once *config* (and *changes*, when given) is in service (in every worker, with
        workers); False (logged) when it was rejected."""
        try:
            prepared = [(self._tls_listeners[listener.name], self._tls_listeners[listener.name].load(listener.tls))
                        for listener in config.listeners
                        if listener.tls is not None and listener.name in self._tls_listeners]
        except ConfigError as error:
            log.error("SIGHUP: configuration rejected, the previous one keeps serving: {error}", error=str(error))
            return succeed(False)
        except Exception:
            log.failure("SIGHUP: configuration rejected, the previous one keeps serving")
            return succeed(False)
        for tls, loaded in prepared:
            tls.install(loaded)
        old = self.config
        if self._warn_restart:
            for what, before, after in (("listeners", old.listeners, config.listeners),
                                        ("processes", old.processes, config.processes),
                                        ("admin", old.admin, config.admin),
                                        ("access_log", old.access_log, config.access_log),
                                        ("state_file", old.state_file, config.state_file),
                                        ("workers", old.workers, config.workers)):
                if _without_tls(before) != _without_tls(after):
                    log.warn("SIGHUP: changes to {what} take effect at the next restart", what=what)
        self.config = config
        return self._live.apply_config(config, changes).addCallback(lambda _: True)


class ConfigReloader(Service):
    """SIGHUP: re-read the configuration file (in a thread) and apply it.

    Listeners, processes, the admin API, the access log, the state file and
    the number of workers need a restart (a warning says so).  A file that
    does not validate is rejected with a logged error and the running
    configuration keeps serving.
    """

    def __init__(self, reactor, applier: ConfigApplier) -> None:
        self._reactor = reactor
        self._applier = applier

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
        path = self._applier.config.source
        log.info("SIGHUP: reloading {path}", path=path)
        reading = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), load_config, path)
        return reading.addCallbacks(self._apply, self._rejected)

    def _rejected(self, failure) -> None:
        failure.trap(ConfigError)
        log.error("SIGHUP: configuration rejected, the previous one keeps serving: {error}",
                  error=failure.getErrorMessage())

    def _apply(self, config: GatewayConfig) -> Deferred:
        def applied(in_service: bool) -> None:
            if in_service:
                log.info("SIGHUP: configuration reloaded: {upstreams} upstream(s), {routes} route(s)",
                         upstreams=len(config.upstreams), routes=len(config.routes))

        return self._applier.apply(config).addCallback(applied)


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


def build_tls(listener: ListenerConfig, source: str, ticket_keys: SharedTicketKeys | None = None) -> ServerTLS:
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
    return ServerTLS(tls, source, ticket_keys)


def build_service(config: GatewayConfig, reactor) -> MultiService:
    """All of the gateway for *config*, as one service for twistd to run.

    Children start in this order and stop in the reverse one: processes,
    access log, backend connections, admin API, listeners, health checks,
    SIGHUP reloader.  With ``workers`` above 1 this process becomes the
    master instead (:func:`build_master_service`).
    """
    log.info("request path: {kind}", kind="compiled (mypyc)" if compiled.in_use()
             else "pure Python, slower (see README, Install)")
    if config.workers > 1:
        return build_master_service(config, reactor)
    root = SequentialMultiService()
    backends = _supervise_processes(config, reactor, root)
    store = StateStore(reactor, config.state_file) if config.state_file else None
    context, live = _live_upstreams(config, reactor, root, read_live_changes(config.state_file), store)
    if config.admin is not None:
        # Bound before the listeners (so it answers as soon as they do), stopped after their drain.
        AdminService(reactor, config.admin, live).setServiceParent(root)
    tls_listeners = _listeners(config, reactor, root, context, backends=backends)
    # Active health checks: after the listeners, so that they stop first.
    HealthChecker(reactor, context).setServiceParent(root)
    ConfigReloader(reactor, ConfigApplier(config, live, tls_listeners)).setServiceParent(root)
    return root


def build_master_service(config: GatewayConfig, reactor) -> MultiService:
    """The master of ``workers: N``: sockets, processes, admin API, state file and reloads; no traffic.

    Stops in this order: the reloader, the listening sockets (so that new
    connections are refused at once), the workers (each drains its requests),
    the admin API, then the processes.
    """
    from gateway.workers.master import FleetUpstreams, WorkerSet

    root = SequentialMultiService()
    backends = _supervise_processes(config, reactor, root)
    store = StateStore(reactor, config.state_file) if config.state_file else None
    context = ProxyContext(reactor=reactor, routes=RouteTable(()), upstreams={}, access_log=None)
    workers = WorkerSet(reactor, config, backends)
    live = FleetUpstreams(reactor, context, config, read_live_changes(config.state_file), store, workers)
    live.apply_config(config)
    workers.live = live
    if config.admin is not None:
        AdminService(reactor, config.admin, live).setServiceParent(root)
    workers.setServiceParent(root)
    sockets = MultiService()
    sockets.setServiceParent(root)
    tls_listeners: dict[str, ServerTLS] = {}
    for listener in config.listeners:
        if listener.tls is not None:
            # Generated here, once; checked here on SIGHUP before any worker is told.  The ticket
            # keys are tried here too: a Python that cannot share them says so before a worker starts.
            tls_listeners[listener.name] = build_tls(listener, config.source, workers.ticket_keys)
        socket_service = SharedSocketService(listener, config.workers)
        socket_service.setServiceParent(sockets)
        workers.sockets.append(socket_service)
    ConfigReloader(reactor, ConfigApplier(config, live, tls_listeners)).setServiceParent(root)
    return root


def build_worker_service(config: GatewayConfig, changes: LiveChanges, reactor,
                         sockets: list[InheritedSocket], ticket_keys: SharedTicketKeys,
                         on_server_gone) -> tuple[MultiService, LiveUpstreams, ConfigApplier]:
    """One worker of ``workers: N``: the listeners on the master's sockets, without admin or processes."""
    root = SequentialMultiService()
    context, live = _live_upstreams(config, reactor, root, changes, None, on_server_gone)
    tls_listeners = _listeners(config, reactor, root, context, inherited=sockets, ticket_keys=ticket_keys)
    HealthChecker(reactor, context).setServiceParent(root)
    return root, live, ConfigApplier(config, live, tls_listeners, warn_restart=False)


def _supervise_processes(config: GatewayConfig, reactor, root: MultiService) -> BackendsReady | None:
    """The ``processes:`` and, when there are any, the wait for every backend to listen."""
    if not config.processes:
        return None
    build_process_monitor(config.processes, config.source, reactor).setServiceParent(root)
    backends = BackendsReady(reactor, {(server.host, server.port) for upstream in config.upstreams.values()
                                       for server in upstream.servers})
    reactor.callWhenRunning(backends.start)
    return backends


def _live_upstreams(config: GatewayConfig, reactor, root: MultiService, changes: LiveChanges,
                    store: StateStore | None, on_server_gone=None) -> tuple[ProxyContext, LiveUpstreams]:
    """The access log, the live upstreams and routes, and the backend connections' service."""
    access_log = None
    if config.access_log is not None:
        writer = AccessLogWriter(config.access_log, reactor)
        writer.setServiceParent(root)
        access_log = writer.write
    context = ProxyContext(reactor=reactor, routes=RouteTable(()), upstreams={}, access_log=access_log)
    live = LiveUpstreams(reactor, context, config, changes, store, on_server_gone)
    live.apply_config(config)
    UpstreamConnectionsService(context).setServiceParent(root)
    return context, live


def _listeners(config: GatewayConfig, reactor, root: MultiService, context: ProxyContext,
               backends: BackendsReady | None = None,
               inherited: list[InheritedSocket] | None = None,
               ticket_keys: SharedTicketKeys | None = None) -> dict[str, ServerTLS]:
    """The listeners, in one group that stops (and drains) together; returns the TLS ones by name."""
    group = MultiService()
    group.setServiceParent(root)
    tls_listeners: dict[str, ServerTLS] = {}
    for index, listener in enumerate(config.listeners):
        tls = build_tls(listener, config.source, ticket_keys) if listener.tls is not None else None
        if tls is not None:
            tls_listeners[listener.name] = tls
        ListenerService(reactor, listener, HTTP11ServerFactory(context, listener), tls, config.shutdown_timeout,
                        backends, inherited[index] if inherited is not None else None).setServiceParent(group)
    return tls_listeners
