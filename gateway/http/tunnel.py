"""WebSocket (HTTP Upgrade) tunnelling.

A ``GET`` with ``Upgrade: websocket`` is routed and balanced like any
request, and forwarded with its ``Connection: Upgrade`` / ``Upgrade`` headers
(which the gateway otherwise drops as hop-by-hop).  When the backend answers
``101 Switching Protocols``, the gateway relays that answer and from then on
copies bytes both ways, with backpressure, until either side closes or
nothing has moved for the upstream's read timeout.  Any other answer is
relayed as a normal response, after which the client connection closes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from twisted.logger import Logger

from gateway.core.accesslog import AccessRecord
from gateway.core.messages import RequestHead
from gateway.http.client import HTTP11ClientProtocol
from gateway.http.flow import BACKPRESSURE
from gateway.http.proxy import ProxyContext, ProxyExchange, Upstream, write_access_log

if TYPE_CHECKING:
    from gateway.http.server import HTTP11ServerProtocol

log: Final = Logger(namespace="gateway.tunnel")


class TunnelExchange(ProxyExchange):
    """An Upgrade request: a proxied request first, a byte tunnel after 101."""

    def __init__(self, context: ProxyContext, sink: HTTP11ServerProtocol, head: RequestHead, upstream: Upstream,
                 target: bytes, record: AccessRecord, upgrade: bytes) -> None:
        super().__init__(context, sink, head, upstream, target, record)
        self.upgrade = upgrade
        self._early: list[bytes] = []  # client bytes that came after the request, before the 101
        self._backend: HTTP11ClientProtocol | None = None
        self._open = False
        self._closed = False
        self._timer: Any = None  # (an IDelayedCall)
        self._last_activity = 0.0

    def _request_header_lines(self) -> bytes:
        upgrade = self.upgrade
        assert upgrade is not None
        return super()._request_header_lines() + b"Connection: Upgrade\r\nUpgrade: " + upgrade + b"\r\n"

    # -- the switch ------------------------------------------------------------------

    def response_head(self, status: int, reason: bytes, header_lines: bytes, body: int,
                      content_length: int | None) -> None:
        if status != 101:
            super().response_head(status, reason, header_lines, body, content_length)
            return
        backend = self._connection
        server = self._server
        assert backend is not None and backend.gate is not None and server is not None
        self._connection = None
        self._backend = backend
        self._responding = True
        self._open = True
        self._upstream.pool.record_success(server)
        self._record.status = 101
        self._record.upstream = server.address
        backend.start_tunnel(self)
        self._sink.start_tunnel(self, header_lines)
        # Each side's full buffer pauses reading on the other.
        self._sink.register_producer(backend.gate)
        backend.transport.registerProducer(self._sink.read_gate, True)
        early, self._early = self._early, []
        for data in early:
            backend.write_raw(data)
        self._last_activity = self._context.reactor.seconds()
        self._timer = self._context.reactor.callLater(self._upstream.config.read_timeout, self._check_idle)

    # -- bytes both ways ------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        if not self._open:
            self._early.append(data)  # the client did not wait for the 101
            return
        self._last_activity = self._context.reactor.seconds()
        self._backend.write_raw(data)

    def from_backend(self, data: bytes) -> None:
        self._last_activity = self._context.reactor.seconds()
        self._record.body_bytes += len(data)
        self._sink.send_raw(data)

    # -- the end ---------------------------------------------------------------------

    def backend_closed(self) -> None:
        self._close_tunnel()

    def client_closed(self) -> None:
        self._close_tunnel()

    def downstream_lost(self) -> None:
        if self._open:
            self._close_tunnel()
        else:
            super().downstream_lost()

    def _check_idle(self) -> None:
        self._timer = None
        if self._closed:
            return
        remaining = self._last_activity + self._upstream.config.read_timeout - self._context.reactor.seconds()
        if remaining > 0:
            self._timer = self._context.reactor.callLater(remaining, self._check_idle)
            return
        log.info("closing an idle tunnel to {server}", server=self._server.address)
        self._close_tunnel()

    def _close_tunnel(self) -> None:
        if self._closed or not self._open:
            return
        self._closed = True
        self._finished = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._sink.read_gate.resume(BACKPRESSURE)
        self._sink.unregister_producer()
        self._backend.transport.unregisterProducer()
        self._backend.transport.loseConnection()
        self._sink.end_tunnel()
        server = self._server
        assert server is not None
        self._upstream.request_finished(server)
        self._record.upstream_time = self._context.reactor.seconds() - self._upstream_started
        write_access_log(self._context, self._record)
