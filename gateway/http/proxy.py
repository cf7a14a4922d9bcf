"""One request's trip through the gateway: route, balance, forward, relay.

A :class:`ProxyExchange` takes a :class:`RequestHead` and the request body as
it arrives from the client side, picks a server, borrows a pooled connection
and streams both directions with backpressure.  A :class:`LocalResponse`
answers from the gateway itself (404, 400, 502, 503...).  The client-side
protocol drives either through the same small interface, one at a time, in
the order the requests arrived.

Both write their response to that protocol (``send_head``, ``send_body``,
``finish_response``...), typed as the class it is,
:class:`~gateway.http.server.HTTP11ServerProtocol` (imported for the type
checker only: the server imports this module).  Compiled, each of those
calls is then a direct C call, where an interface typed as a
``typing.Protocol`` costs a method lookup by name (about 200 instructions,
five times per request).  Another kind of client side (an HTTP/2 stream)
would be a second class here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Final, Mapping, Sequence

from twisted.internet.error import ConnectingCancelledError, TimeoutError
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.core.accesslog import AccessRecord
from gateway.core.headers import serialize_headers, upstream_request_header_block
from gateway.core.messages import CHUNKED, FIXED_LENGTH, NO_BODY, RequestHead
from gateway.core.config import RouteConfig, UpstreamConfig
from gateway.core.pool import ServerState, UpstreamPool
from gateway.core.retry import may_resend, may_try_again
from gateway.core.routing import RouteTable, strip_route_prefix
from gateway.http.client import HTTP11ClientProtocol
from gateway.http.clock import Time, cached_time
from gateway.http.connections import UpstreamConnections
from gateway.http.flow import BACKPRESSURE

if TYPE_CHECKING:
    from gateway.http.server import HTTP11ServerProtocol

log: Final = Logger(namespace="gateway.proxy")

#: Request body kept for a replay on a fresh connection when a reused one turns out stale.
REPLAY_LIMIT: Final = 64 * 1024
#: Request body buffered while the backend connection is being opened.
CONNECT_BUFFER_LIMIT: Final = 64 * 1024
#: The header line of every response the gateway writes itself.
_TEXT_PLAIN: Final = b"Content-Type: text/plain; charset=utf-8\r\n"


@dataclass
class Upstream:
    """One upstream at run time: its live servers and its connection pool."""

    pool: UpstreamPool
    connections: UpstreamConnections
    config: UpstreamConfig  # timeouts, retries and failure rules (replaced on reload)
    #: Told ``(upstream name, address)`` when a removed server has finished draining.
    on_server_gone: Callable[[str, str], None] | None = None

    def request_finished(self, server: ServerState) -> None:
        gone = self.pool.request_finished(server)
        if gone:
            self.servers_gone(gone)

    def servers_gone(self, addresses: list[str]) -> None:
        """Carry out what the pool decided: servers that left close their idle connections."""
        for address in addresses:
            self.connections.close_idle(address)
            if self.on_server_gone is not None:
                self.on_server_gone(self.pool.name, address)


@dataclass
class ProxyContext:
    """Everything the request path needs, built once by the service."""

    reactor: Any  # an IReactorTCP and IReactorTime
    routes: RouteTable
    upstreams: Mapping[str, Upstream]
    access_log: Callable[[AccessRecord, float], None] | None
    #: Requests received from clients since the process started (every one, whatever its answer).
    requests: int = 0
    #: The reactor's time, read once per iteration (see gateway.http.clock).
    time: Time = field(init=False)

    def __post_init__(self) -> None:
        self.time = cached_time(self.reactor)


class LocalResponse:
    """A short text/plain answer from the gateway itself."""

    def __init__(self, sink: HTTP11ServerProtocol, head: RequestHead | None, record: AccessRecord,
                 context: ProxyContext, status: int, reason: bytes, text: str, close: bool = False,
                 headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        self._sink = sink
        self._headers = headers
        self.head = head
        self._record = record
        self._context = context
        self._status = status
        self._reason = reason
        self._body = text.encode() + b"\n"
        self._close = close

    def start(self) -> None:
        respond_locally(self._sink, self.head, self._status, self._reason, self._body, self._close, self._headers)
        self._record.status = self._status
        self._record.body_bytes = len(self._body)
        write_access_log(self._context, self._record)

    def body_received(self, data: bytes) -> None:
        """The request body of a refused request is read and dropped, keeping the connection usable."""

    def body_finished(self) -> None:
        pass

    def downstream_lost(self) -> None:
        pass


def respond_locally(sink: HTTP11ServerProtocol, head: RequestHead | None, status: int, reason: bytes, body: bytes,
                    close: bool, extra_headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    header_lines = _TEXT_PLAIN + serialize_headers(extra_headers) if extra_headers else _TEXT_PLAIN
    if head is None or head.method != b"HEAD":
        sink.send_head(head, status, reason, header_lines, FIXED_LENGTH, len(body), close)
        sink.send_body(body)
    else:
        sink.send_head(head, status, reason, header_lines, NO_BODY, len(body), close)
    sink.finish_response(close=close)


def write_access_log(context: ProxyContext, record: AccessRecord) -> None:
    if context.access_log is not None:
        context.access_log(record, context.reactor.seconds())


class ProxyExchange:
    """Forwards one request to a server of *upstream* and relays the response."""

    #: The protocol an Upgrade request asks for (see gateway.http.tunnel); None for plain requests.
    upgrade: bytes | None = None

    # Per-request state starts as these class-level values (fewer stores per request).
    _body_size = 0
    _server: ServerState | None = None
    _connection: HTTP11ClientProtocol | None = None
    _pending_size = 0
    _replay_size = 0
    _responding = False
    _reused = False
    _finished = False
    _upstream_started = 0.0
    _first_try_at = 0.0
    _timed_out = False  # the last try failed by a connect timeout: 504 rather than 502
    _producing = False  # the client side is registered as the backend transport's producer

    def __init__(self, context: ProxyContext, sink: HTTP11ServerProtocol, head: RequestHead, upstream: Upstream,
                 target: bytes, record: AccessRecord, max_body_size: int | None = None) -> None:
        self._max_body_size = max_body_size
        self._context = context
        self._sink = sink
        self.head = head
        self._upstream = upstream
        self._target = target
        self._record = record
        self._tried: list[ServerState] = []
        no_body = head.body == NO_BODY
        # Body received before a connection was ready (a bodiless request never has any).
        self._pending_body: list[bytes] | tuple[()] = () if no_body else []
        self._replay: list[bytes] | None = None if no_body else []
        self._body_done = no_body

    # -- driven by the client side -------------------------------------------------

    def body_received(self, data: bytes) -> None:
        if self._finished:
            return
        if self._max_body_size is not None:
            self._body_size += len(data)
            if self._body_size > self._max_body_size:
                self._body_too_large()
                return
        if self._replay is not None:
            self._replay_size += len(data)
            if self._replay_size <= REPLAY_LIMIT:
                self._replay.append(data)
            else:
                self._replay = None
        if self._connection is not None:
            self._connection.write_body(data)
        else:
            self._pending_body.append(data)
            self._pending_size += len(data)
            if self._pending_size > CONNECT_BUFFER_LIMIT:
                self._sink.read_gate.pause("connecting")

    def body_finished(self) -> None:
        if self._body_done:
            return  # a request without a body: nothing was streamed, nothing to end
        self._body_done = True
        if self._connection is not None and not self._finished:
            self._connection.end_body()
            if self._producing:
                self._producing = False
                self._connection.transport.unregisterProducer()
            # Unregistering does not resume: a pause from the backend's full buffer must be lifted here.
            self._sink.read_gate.resume(BACKPRESSURE)

    def _body_too_large(self) -> None:
        """A chunked body went past the route's max_body_size: 413 if still possible, else cut."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abort()
        if self._server is not None:
            self._upstream.request_finished(self._server)
        if self._responding:
            self._finished = True
            self._sink.unregister_producer()
            self._sink.abort_response()
            write_access_log(self._context, self._record)
        else:
            self._respond_error(413, b"Content Too Large",
                                f"the request body is larger than {self._max_body_size} bytes")

    def downstream_lost(self) -> None:
        """The client went away: drop the backend connection, it cannot be reused mid-message."""
        if self._finished:
            return
        self._finished = True
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abort()
        if self._server is not None:
            self._upstream.request_finished(self._server)
        self._record.status = self._record.status or 499  # nginx's "client closed request"
        write_access_log(self._context, self._record)

    # -- server selection ----------------------------------------------------------

    def _try_next_server(self, same_server: bool = False) -> None:
        pool = self._upstream.pool
        now = self._context.time.now
        server = self._server  # (same_server: the one whose pooled connection turned out closed)
        if not same_server:
            if self._tried:
                config = self._upstream.config
                if not may_try_again(len(self._tried), config.retries, len(pool.servers), self._first_try_at,
                                     config.retry_timeout, now):
                    self._no_server_left()
                    return
            else:
                self._first_try_at = now
            server = pool.choose(self.head.client_ip, self._tried, now)
            if server is None:
                if not self._tried:
                    self._respond_error(503, b"Service Unavailable", "no server available for this request")
                else:
                    self._no_server_left()
                return
            self._server = server
            self._tried.append(server)
            pool.request_started(server)
        assert server is not None
        self._upstream_started = now
        self._upstream.connections.acquire(server, self._connection_ready, self._connection_failed)

    def start(self) -> None:
        self._try_next_server()

    def _connection_failed(self, reason: Failure) -> None:
        if self._finished:
            return
        self._timed_out = reason.check(TimeoutError, ConnectingCancelledError) is not None
        server = self._server
        assert server is not None
        log.warn("cannot connect to {server} of upstream {upstream}: {error}", server=server.address,
                 upstream=self._upstream.pool.name, error=reason.getErrorMessage())
        self._server_failed(server)
        self._upstream.request_finished(server)
        self._try_next_server()

    def _connection_ready(self, connection: HTTP11ClientProtocol, reused: bool) -> None:
        if self._finished:
            server = self._server
            assert server is not None
            if reused:
                self._upstream.connections.release(server, connection)
            else:
                connection.transport.loseConnection()
            return
        self._connection = connection
        self._reused = reused
        head = self.head
        if head.body == NO_BODY:
            framing = b""
        elif head.body == CHUNKED:
            framing = b"Transfer-Encoding: chunked\r\n"
        else:
            assert head.content_length is not None  # (FIXED_LENGTH)
            framing = b"Content-Length: %d\r\n" % head.content_length
        request = b"".join((head.method, b" ", self._target, b" HTTP/1.1\r\n", self._request_header_lines(), framing,
                            b"\r\n"))
        connection.send_request(self, request, head.method == b"HEAD", head.body == CHUNKED,
                                self._upstream.config.read_timeout, upgrade=self.upgrade is not None)
        if self._pending_body:
            pending, self._pending_body = self._pending_body, []
            self._pending_size = 0
            for chunk in pending:
                connection.write_body(chunk)
        if self._body_done:
            if head.body != NO_BODY:
                connection.end_body()
        else:
            connection.transport.registerProducer(self._sink.read_gate, True)
            self._producing = True
            self._sink.read_gate.resume("connecting")

    def _request_header_lines(self) -> bytes:
        head = self.head
        return upstream_request_header_block(head.headers, head.client_ip, head.scheme, head.host)

    # -- driven by the backend connection -----------------------------------------

    def response_head(self, status: int, reason: bytes, header_lines: bytes, body: int,
                      content_length: int | None) -> None:
        self._responding = True
        self._replay = None
        server = self._server
        assert server is not None and self._connection is not None and self._connection.gate is not None
        if status in self._upstream.config.fail_statuses:
            self._server_failed(server)
        elif server.recent_failures or server.down_until:  # (otherwise record_success changes nothing)
            self._upstream.pool.record_success(server)
        self._record.status = status
        self._record.upstream = server.address
        self._sink.send_head(self.head, status, reason, header_lines, body, content_length)
        self._sink.register_producer(self._connection.gate)

    def response_body(self, data: bytes) -> None:
        self._record.body_bytes += len(data)
        self._sink.send_body(data)

    def response_finished(self, connection: HTTP11ClientProtocol, reusable: bool) -> None:
        self._finished = True
        self._connection = None
        server = self._server
        assert server is not None
        self._upstream.request_finished(server)
        self._sink.unregister_producer()
        if not self._body_done:
            # The backend answered before reading the whole request: the connection
            # is out of step, and the client side stops sending into it.
            connection.transport.unregisterProducer()
            self._producing = False
            self._sink.read_gate.resume("connecting")
            self._sink.read_gate.resume(BACKPRESSURE)
            reusable = False
        if reusable:
            self._upstream.connections.release(server, connection)
        else:
            connection.transport.loseConnection()
        self._sink.finish_response()
        context = self._context
        if context.access_log is not None:
            self._record.upstream_time = context.reactor.seconds() - self._upstream_started
            write_access_log(context, self._record)

    def upstream_lost(self, connection: HTTP11ClientProtocol, reason: Failure | str) -> None:
        if self._finished:
            return
        self._connection = None
        self._sink.read_gate.resume(BACKPRESSURE)
        server = self._server
        assert server is not None
        error = reason if isinstance(reason, str) else reason.getErrorMessage()
        if self._responding:
            # Part of the response went out: it cannot be completed honestly.
            log.warn("backend {server} closed the connection mid-response: {error}", server=server.address,
                     error=error)
            self._finished = True
            self._upstream.request_finished(server)
            self._sink.unregister_producer()
            self._sink.abort_response()
            write_access_log(self._context, self._record)
            return
        replayable = not connection.response_started and may_resend(
            self.head.method, True, self.head.body == NO_BODY or self._replay is not None)
        if self._reused and replayable:
            # A pooled connection that the backend had closed: try again on a fresh one.
            self._rewind_body()
            self._try_next_server(same_server=True)
            return
        log.warn("backend {server} failed before responding: {error}", server=server.address, error=error)
        self._server_failed(server)
        self._upstream.request_finished(server)
        if replayable:
            self._rewind_body()
            self._try_next_server()
        else:
            self._respond_error(502, b"Bad Gateway", "the backend server failed to respond")

    def upstream_timed_out(self, connection: HTTP11ClientProtocol) -> None:
        """The backend sent nothing for read_timeout seconds: 504, or a cut response."""
        if self._finished:
            return
        self._connection = None
        server = self._server
        assert server is not None
        log.warn("backend {server} sent nothing for {timeout} s", server=server.address,
                 timeout=self._upstream.config.read_timeout)
        self._server_failed(server)
        self._upstream.request_finished(server)
        if self._responding:
            self._finished = True
            self._sink.unregister_producer()
            self._sink.abort_response()
            write_access_log(self._context, self._record)
        else:
            self._sink.read_gate.resume(BACKPRESSURE)
            self._respond_error(504, b"Gateway Timeout", "the backend server did not answer in time")

    def _no_server_left(self) -> None:
        if self._timed_out:
            self._respond_error(504, b"Gateway Timeout", "no backend server answered the connection in time")
        else:
            self._respond_error(502, b"Bad Gateway", "no backend server could take the request")

    def _server_failed(self, server: ServerState) -> None:
        if self._upstream.pool.record_failure(server, self._context.reactor.seconds()):
            log.warn("upstream {upstream}: server {server} failed {count} time(s) within {window} s; "
                     "taking it out for {window} s", upstream=self._upstream.pool.name, server=server.address,
                     count=server.recent_failures, window=server.fail_timeout)

    def _rewind_body(self) -> None:
        if self._replay:
            self._pending_body = list(self._replay)
            self._pending_size = self._replay_size

    def _respond_error(self, status: int, reason: bytes, text: str) -> None:
        self._finished = True
        self._record.status = status
        if self._tried:
            self._record.upstream = self._tried[-1].address
        body = text.encode() + b"\n"
        self._record.body_bytes = len(body)
        # When the request body is still arriving the connection cannot be reused safely.
        respond_locally(self._sink, self.head, status, reason, body, close=not self._body_done)
        write_access_log(self._context, self._record)


def decide(context: ProxyContext, head: RequestHead) -> tuple[Upstream, bytes, RouteConfig] | None:
    """The upstream, backend request-target and route for *head*, or None when no route matches.

    The backend gets the normalised path (what the route was chosen on) and
    the query as received.

    This is the gateway's routing decision point, kept in one function so that
    a scripted hook can wrap it later.
    """
    routes = context.routes
    route = routes.match(head.host_name if routes.has_host_routes else None, head.path)
    if route is None:
        return None
    path = strip_route_prefix(route, head.path) if route.strip_prefix else head.path
    return context.upstreams[route.upstream], path.encode("latin-1") + head.query, route
