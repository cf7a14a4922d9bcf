"""Active health checks: ``GET path`` on every server of the upstreams that configure ``health``.

:class:`HealthChecker` is a service that wakes up on a timer, reads the live
upstreams (``context.upstreams``) and each one's current ``config.health``,
and starts a round of checks for every upstream whose ``interval`` has come
round.  Reading the live objects each time is how it follows everything that
changes them: a SIGHUP reload (health turned on, off or changed, upstreams
added or removed) and servers added or removed by the admin API.  A server
no longer in its pool (or leaving it) is forgotten, its check in flight
cancelled; a server is identified by its pool object, so one removed and
added again starts afresh.

One check (:class:`HealthCheck`) is a fresh TCP connection, one HTTP/1.1
request (``Host: <server address>``, ``Connection: close``,
``User-Agent: gateway-health-check``) and the response parsed with llhttp
(httptools).  It fails on a connection error, on ``timeout`` seconds without
a complete response (the connection is then aborted), on an invalid
response, or on a status other than ``expect``.  The checks of a round run
concurrently; a server whose previous check is still running (``timeout``
longer than ``interval``) is skipped in that round, so checks of one server
never overlap.

The rise/fall rule is :class:`gateway.core.health.HealthState`; a transition
is carried out with ``UpstreamPool.set_healthy`` (an unhealthy server gets no
new requests) and logged.  Turning an upstream's checks off (a reload
without ``health``) puts the servers they had taken out back in rotation.

The first round of an upstream runs one ``interval`` after the checker
first sees it (start-up or reload), so that processes started by the
gateway get a moment to come up; every server starts healthy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httptools
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import NotConnectingError
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.core.config import HealthCheckConfig
from gateway.core.health import DOWN, HealthState, check_request, status_failure
from gateway.core.pool import ServerState
from gateway.http.proxy import ProxyContext, Upstream

log = Logger(namespace="gateway.health")

#: How often the checker looks for upstreams whose health checks a reload turned on.
DISCOVERY_PERIOD = 1.0
#: A health check's response head (and body) is never read beyond this many bytes.
MAX_RESPONSE_BYTES = 64 * 1024


class HealthCheck:
    """One check of one server; :attr:`result` fires with None (passed) or the reason it failed.

    Cancelling :attr:`result` aborts the check (its connection, or the
    connection attempt) and errbacks it with ``CancelledError``.
    """

    def __init__(self, reactor, host: str, port: int, request: bytes, expect: int, timeout: float) -> None:
        self.result: Deferred = Deferred(lambda _: self._stop())
        self.expect = expect
        self._timeout = timeout
        self._request = request
        self._done = False
        self._protocol: _HealthCheckProtocol | None = None
        self._connecting = True
        self._deadline = reactor.callLater(timeout, self._timed_out)
        try:
            self._connector = reactor.connectTCP(host, port, _HealthCheckFactory(self), timeout=timeout)
        except BaseException:
            self._done = True
            self._deadline.cancel()
            raise

    # -- reported by the protocol and factory ----------------------------------------

    def connected(self, protocol: _HealthCheckProtocol) -> None:
        self._connecting = False
        if self._done:
            protocol.transport.abortConnection()
            return
        self._protocol = protocol
        protocol.transport.write(self._request)

    def connection_failed(self, reason: Failure) -> None:
        self._connecting = False
        self.finished(f"cannot connect: {reason.getErrorMessage()}")

    def finished(self, reason: str | None) -> None:
        """The verdict is in: close the connection and fire :attr:`result`."""
        if self._done:
            return
        self._stop(abort=reason is not None)
        self.result.callback(reason)

    # -- internals ------------------------------------------------------------------

    def _timed_out(self) -> None:
        self.finished(f"no response within {self._timeout:g}s")

    def _stop(self, abort: bool = True) -> None:
        self._done = True
        if self._deadline.active():
            self._deadline.cancel()
        if self._protocol is not None and self._protocol.transport is not None and self._protocol.connected:
            if abort:
                self._protocol.transport.abortConnection()
            else:
                self._protocol.transport.loseConnection()
        elif self._connecting:
            self._connecting = False
            try:
                self._connector.stopConnecting()
            except NotConnectingError:
                pass


class _HealthCheckFactory(ClientFactory):
    noisy = False  # no "Starting factory" line for every check

    def __init__(self, check: HealthCheck) -> None:
        self.check = check

    def buildProtocol(self, addr) -> _HealthCheckProtocol:
        protocol = _HealthCheckProtocol(self.check)
        protocol.factory = self
        return protocol

    def clientConnectionFailed(self, connector, reason: Failure) -> None:
        self.check.connection_failed(reason)


class _HealthCheckProtocol(Protocol):
    """Sends the check's request and reads one response (llhttp callbacks below)."""

    def __init__(self, check: HealthCheck) -> None:
        self._check = check
        self._parser = httptools.HttpResponseParser(self)
        self._received = 0
        self._verdict: str | None = None
        self._head_complete = False
        self._framed = False  # Content-Length or Transfer-Encoding: the body's end is known

    def connectionMade(self) -> None:
        self._check.connected(self)

    def dataReceived(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > MAX_RESPONSE_BYTES:
            self._check.finished(f"response larger than {MAX_RESPONSE_BYTES} bytes")
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._check.finished(f"invalid response: {error}")

    def connectionLost(self, reason: Failure = None) -> None:
        self.connected = 0
        if self._head_complete and not self._framed:
            # A body delimited by the connection's end: it is complete now.
            self._check.finished(self._verdict)
        else:
            where = "in the middle of the response" if self._head_complete else "before a response"
            self._check.finished(f"connection closed {where}"
                                 + (f": {reason.getErrorMessage()}" if reason is not None else ""))

    # llhttp callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self._head_complete = True
        self._verdict = status_failure(self._parser.get_status_code(), self._check.expect)

    def on_message_complete(self) -> None:
        self._check.finished(self._verdict)


@dataclass
class _Tracked:
    """A server under checks: its pool object, its rise/fall state and its check in flight."""

    server: ServerState
    state: HealthState
    check: Deferred | None = None
    last_failure: str = ""


@dataclass
class _UpstreamChecks:
    health: HealthCheckConfig
    due: float  # when its next round starts
    servers: dict[str, _Tracked] = field(default_factory=dict)


class HealthChecker(Service):
    """Runs the active health checks of every upstream that configures ``health``."""

    def __init__(self, reactor, context: ProxyContext) -> None:
        self._reactor = reactor  # IReactorTCP and IReactorTime
        self._context = context
        self._upstreams: dict[str, _UpstreamChecks] = {}
        self._timer = None

    def startService(self) -> None:
        super().startService()
        self._timer = self._reactor.callLater(0, self._tick)

    def stopService(self) -> None:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for checks in self._upstreams.values():
            for tracked in checks.servers.values():
                _cancel(tracked)
        self._upstreams.clear()

    # -- the timer ----------------------------------------------------------------------

    def _tick(self) -> None:
        self._timer = None
        try:
            self._run_due_rounds()
        except Exception:
            log.failure("health checks: unexpected error")
        if self.running:
            now = self._reactor.seconds()
            next_due = min((checks.due for checks in self._upstreams.values()), default=now + DISCOVERY_PERIOD)
            delay = min(max(next_due - now, 0.0), DISCOVERY_PERIOD)
            self._timer = self._reactor.callLater(delay, self._tick)

    def _run_due_rounds(self) -> None:
        now = self._reactor.seconds()
        upstreams = self._context.upstreams
        for name in list(self._upstreams):
            upstream = upstreams.get(name)
            if upstream is None or upstream.config.health is None:
                self._stop_checking(name, upstream)
        for name, upstream in upstreams.items():
            health = upstream.config.health
            if health is None:
                continue
            checks = self._upstreams.get(name)
            if checks is None or checks.health != health:
                log.info("upstream {upstream}: health checks GET {path} every {interval}s (timeout {timeout}s, "
                         "rise {rise}, fall {fall}, expect {expect})", upstream=name, path=health.path,
                         interval=health.interval, timeout=health.timeout, rise=health.rise, fall=health.fall,
                         expect=health.expect)
                if checks is None:
                    checks = self._upstreams[name] = _UpstreamChecks(health, now + health.interval)
                else:  # changed by a reload: the verdicts and runs so far are kept
                    checks.health, checks.due = health, now + health.interval
            self._forget_departed(checks, upstream)
            if now >= checks.due:
                checks.due = now + health.interval
                self._start_round(name, upstream, checks)

    def _stop_checking(self, name: str, upstream: Upstream | None) -> None:
        """Health checks turned off (or the upstream removed): forget them, restore their verdicts."""
        checks = self._upstreams.pop(name)
        restored = []
        for address, tracked in checks.servers.items():
            _cancel(tracked)
            if upstream is not None and upstream.pool.server(address) is tracked.server:
                if upstream.pool.set_healthy(address, True):
                    restored.append(address)
        if upstream is None:
            return
        if restored:
            log.info("upstream {upstream}: health checks off; back in rotation: {servers}", upstream=name,
                     servers=", ".join(restored))
        else:
            log.info("upstream {upstream}: health checks off", upstream=name)

    def _forget_departed(self, checks: _UpstreamChecks, upstream: Upstream) -> None:
        for address, tracked in list(checks.servers.items()):
            server = upstream.pool.server(address)
            if server is not tracked.server or server.removing:
                _cancel(tracked)
                del checks.servers[address]

    # -- rounds and checks ------------------------------------------------------------

    def _start_round(self, name: str, upstream: Upstream, checks: _UpstreamChecks) -> None:
        health = checks.health
        for server in upstream.pool.servers:
            if server.removing:
                continue
            tracked = checks.servers.get(server.address)
            if tracked is None:
                tracked = checks.servers[server.address] = _Tracked(server, HealthState(server.healthy))
            if tracked.check is not None:
                continue  # the previous check of this server is still running
            try:
                check = HealthCheck(self._reactor, server.host, server.port,
                                    check_request(health.path, server.address), health.expect, health.timeout)
            except Exception as error:  # e.g. a host name that cannot be encoded
                self._record(name, tracked, f"cannot start the check: {error}")
                continue
            tracked.check = check.result
            check.result.addCallbacks(self._checked, _ignore_cancelled, callbackArgs=(name, tracked),
                                      errbackArgs=(name, tracked))

    def _checked(self, reason: str | None, name: str, tracked: _Tracked) -> None:
        tracked.check = None
        self._record(name, tracked, reason)

    def _record(self, name: str, tracked: _Tracked, reason: str | None) -> None:
        checks = self._upstreams.get(name)
        upstream = self._context.upstreams.get(name)
        if checks is None or upstream is None or checks.servers.get(tracked.server.address) is not tracked:
            return  # forgotten meanwhile
        if reason is not None:
            tracked.last_failure = reason
        health = checks.health
        transition = tracked.state.record(reason is None, health.rise, health.fall)
        if transition is None:
            return
        address = tracked.server.address
        upstream.pool.set_healthy(address, transition != DOWN)
        if transition == DOWN:
            log.warn("upstream {upstream}: server {server} is down after {fall} failed health checks: {reason}",
                     upstream=name, server=address, fall=health.fall, reason=tracked.last_failure)
        else:
            log.info("upstream {upstream}: server {server} is up again after {rise} passed checks",
                     upstream=name, server=address, rise=health.rise)


def _cancel(tracked: _Tracked) -> None:
    check, tracked.check = tracked.check, None
    if check is not None:
        check.cancel()


def _ignore_cancelled(failure: Failure, name: str, tracked: _Tracked) -> None:
    if not failure.check(CancelledError):
        tracked.check = None
        log.failure("upstream {upstream}: health check of {server} failed unexpectedly", failure,
                    upstream=name, server=tracked.server.address)
