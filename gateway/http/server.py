"""The client-facing side: an HTTP/1.1 server protocol around llhttp (httptools).

Each request head becomes a :class:`RequestHead` and an exchange (a
:class:`ProxyExchange`, or a :class:`LocalResponse` when the gateway answers
itself).  Exchanges are kept in arrival order: only the first one writes its
response; pipelined requests behind it wait their turn with the connection's
reading paused, and are answered in order.

The protocol is also where the exchanges write their responses
(``send_head``, ``send_body``, ``finish_response``...): it frames each
response for this client (Content-Length, chunked, or close-delimited
for HTTP/1.0) and decides whether the connection stays open.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any, Final

import httptools
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.core.accesslog import UNLOGGED, AccessRecord
from gateway.core.config import ListenerConfig
from gateway.core.headers import Headers, NameKinds
from gateway.core.messages import CHUNKED, FIXED_LENGTH, NO_BODY, RequestHead, host_without_port
from gateway.core.routing import prefix_matches
from gateway.core.validation import Problem, normalize_path, request_problem
from gateway.http.flow import BackendThrottle, ReadGate
from gateway.http.proxy import LocalResponse, ProxyContext, ProxyExchange, decide
from gateway.http.sending import BatchedWriter
from gateway.http.tunnel import TunnelExchange

log: Final = Logger(namespace="gateway.server")

_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_REDIRECT_REASONS: Final = {301: b"Moved Permanently", 302: b"Found", 307: b"Temporary Redirect", 308: b"Permanent Redirect"}
#: A Host that may be copied into a Location header: a DNS name or IPv4 address, or an IPv6 literal.
_SAFE_HOST: Final = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?\.?|\[[0-9a-f:.]+\]")
_STATUS_LINES: Final[dict[tuple[int, bytes], bytes]] = {}
_VERSIONS: Final = {"1.1": b"1.1", "1.0": b"1.0"}
# The request headers that on_headers_complete reads (every other name is kind 0).
_HOST: Final = 1
_CONTENT_LENGTH: Final = 2
_TRANSFER_ENCODING: Final = 3
_EXPECT: Final = 4
_UPGRADE: Final = 5
_NOTED_REQUEST_HEADERS: Final = NameKinds({b"host": _HOST, b"content-length": _CONTENT_LENGTH,
                                           b"transfer-encoding": _TRANSFER_ENCODING, b"expect": _EXPECT,
                                           b"upgrade": _UPGRADE})
#: What answers one request: the gateway itself, a backend, or a backend over a WebSocket tunnel.
Exchange = LocalResponse | ProxyExchange | TunnelExchange


def _status_line(status: int, reason: bytes) -> bytes:
    key = (status, reason)
    line = _STATUS_LINES.get(key)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % key
        if len(_STATUS_LINES) < 256:
            _STATUS_LINES[key] = line
    return line


class HTTP11ServerProtocol(Protocol):
    """One client connection."""

    # Slots rather than the instance dict: past 30 attributes CPython (3.11) stops sharing
    # an instance dict's keys between instances, and its attribute caches then miss on every
    # access (2.8% of the gateway's instructions per request, bench/instructions.py).  An
    # attribute left out of this list still works, from the dict that Protocol gives, only slower.
    __slots__ = (
        "_context", "_clock", "_time", "_connections", "_draining", "_scheme", "_redirect", "_response_headers",
        "_listener", "_head_size", "_unframed", "_body_seen", "_timer", "_timer_at", "_deadline",
        "_deadline_kind", "_exchanges", "_reading", "_closing", "_keep_alive", "_chunked", "_head_sent",
        "_url_parts", "_headers", "_tunnel", "_writer", "_write", "_write_sequence", "read_gate", "_throttle",
        "_client_ip", "_parser",
    )
    transport: Any  # (a TCP or TLS transport once connected: Twisted types it as ITransport | None)

    def __init__(self, context: ProxyContext, listener: HTTP11ServerFactory) -> None:
        self._context = context
        self._clock = context.reactor
        self._time = context.time  # (the time now, for deadlines: read once per reactor iteration)
        self._connections = listener.connections
        self._draining = False  # the gateway is shutting down: finish in-flight work, then close
        self._scheme = listener.scheme
        self._redirect = listener.redirect
        self._response_headers = listener.response_headers  # added to every response (HSTS)
        self._listener = listener  # its timeouts and limits
        self._head_size = 0  # bytes of request line and headers seen so far (431 / 414 beyond the limit)
        self._unframed = 0  # bytes fed to the parser since the head began or body data last came out
        self._body_seen = 0  # request body bytes the parser has delivered, ever
        self._timer: Any = None  # the one timer (IDelayedCall) of the connection (see _set_deadline)
        self._timer_at = 0.0  # when it fires (kept here: cheaper than asking it)
        self._deadline = 0.0
        self._deadline_kind = ""  # "header", "idle" or "body": what the client is expected to send
        self._exchanges: deque[Exchange] = deque()  # in arrival order; the first one is responding
        self._reading: Exchange | None = None  # the exchange whose request body the parser is reading
        self._closing = False  # no further request will be read on this connection
        self._keep_alive = True  # of the response being written
        self._chunked = False  # the response being written uses chunked coding
        self._head_sent = False  # the response being written has begun
        self._url_parts: list[bytes] = []
        self._headers: Headers = []
        self._tunnel: TunnelExchange | None = None  # after a 101: bytes, not HTTP

    # -- Twisted ------------------------------------------------------------

    def connectionMade(self) -> None:
        self._connections.add(self)
        self._writer = BatchedWriter(self.transport)
        self._write = self._writer.write
        self._write_sequence = self._writer.write_sequence
        self.read_gate = ReadGate(self.transport)
        self._throttle = BackendThrottle()
        if len(self._connections) > self._listener.max_connections:
            log.warn("listener at max_connections ({limit}): closing a new connection",
                     limit=self._listener.max_connections)
            self._closing = True
            self.transport.abortConnection()
            return
        self.transport.setTcpNoDelay(True)
        self.transport.registerProducer(self._throttle, True)
        self._client_ip = self.transport.getPeer().host
        self._parser = httptools.HttpRequestParser(self)
        self._set_deadline("header", self._listener.header_timeout)

    def dataReceived(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.from_client(data)
            return
        if self._deadline_kind == "body":
            self._deadline = self._time.now + self._listener.body_timeout
        while data and not self._closing:
            try:
                body_before = self._body_seen
                self._parser.feed_data(data)
                if self._body_seen != body_before:
                    self._unframed = 0  # (what _check_unframed_bytes does, inline on the hot path)
                elif self._deadline_kind == "header" or self._deadline_kind == "body":
                    self._check_unframed_bytes(len(data), 0)
                return
            except httptools.HttpParserUpgrade as upgrade:
                data = data[upgrade.args[0]:]
                last = self._exchanges[-1] if self._exchanges else None
                if isinstance(last, TunnelExchange) and not self._closing:
                    # A WebSocket request: no more HTTP on this connection.  What
                    # follows waits for the backend's 101 (or its refusal, after
                    # which the connection closes).
                    self._closing = True
                    self.read_gate.pause("upgrade")
                    if data:
                        last.from_client(data)
                    return
                # Another protocol (h2c...) is not offered: the request was handled as
                # plain HTTP without its Upgrade header, and what follows is a new request.
                self._parser = httptools.HttpRequestParser(self)
            except httptools.HttpParserCallbackError:
                log.failure("error while handling a request")
                self._protocol_error(500, b"Internal Server Error", "internal error")
                return
            except httptools.HttpParserError as error:
                if self._closing:
                    return  # after a refused request, nothing more is answered
                if "Invalid HTTP version" in str(error):
                    self._protocol_error(505, b"HTTP Version Not Supported", "HTTP/1.0 and HTTP/1.1 only")
                else:
                    self._protocol_error(400, b"Bad Request", f"malformed request: {error}")
                return

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._connections.discard(self)
        if self._tunnel is not None:
            self._tunnel.client_closed()
        self._closing = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        pending = list(self._exchanges)
        if self._reading is not None and self._reading not in pending:
            pending.append(self._reading)
        self._exchanges.clear()
        self._reading = None
        for exchange in pending:
            exchange.downstream_lost()

    # -- httptools callbacks --------------------------------------------------

    def on_message_begin(self) -> None:
        self._url_parts = []
        self._headers = []
        self._head_size = 0
        self._unframed = 0
        if self._deadline_kind != "header":
            self._set_deadline("header", self._listener.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url_parts.append(url)
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head_size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        if self._closing:
            return  # llhttp parses the whole buffer: requests behind a refused one are ignored
        self._context.requests += 1
        parser = self._parser
        headers = self._headers
        parts = self._url_parts
        target = parts[0] if len(parts) == 1 else b"".join(parts)
        version = _VERSIONS.get(parser.get_http_version()) or parser.get_http_version().encode("ascii")
        method = parser.get_method()
        hosts: list[bytes] = []
        content_lengths: list[bytes] = []
        transfer_encodings: list[bytes] = []
        expect_continue = False
        upgrade = None
        noted = _NOTED_REQUEST_HEADERS
        for name, value in headers:
            kind = noted.kind(name)
            if kind == 0:
                continue
            elif kind == _HOST:
                hosts.append(value)
            elif kind == _CONTENT_LENGTH:
                content_lengths.append(value)
            elif kind == _TRANSFER_ENCODING:
                transfer_encodings.append(value)
            elif kind == _EXPECT:
                expect_continue = value.lower() == b"100-continue"
            else:
                upgrade = value
        chunked = bool(transfer_encodings)
        content_length = int(content_lengths[0]) if len(content_lengths) == 1 else None  # llhttp checked digits
        path_bytes, question, query = target.partition(b"?")
        path = normalize_path(path_bytes.decode("latin-1"))
        if chunked:
            body = CHUNKED
        elif content_length is not None:
            body = FIXED_LENGTH
        else:
            body = NO_BODY
        # (positional, in RequestHead's field order: this runs for every request)
        head = RequestHead(
            method, target, path if path is not None else "", question + query, version, headers,
            hosts[0] if len(hosts) == 1 else None, self._client_ip, self._scheme,
            # HTTP/1.0 with Transfer-Encoding: the connection must close after it (RFC 9112 6.1).
            parser.should_keep_alive() and not (chunked and version == b"1.0"), body, content_length,
            expect_continue and version == b"1.1" and (chunked or bool(content_length)),
        )
        record = UNLOGGED if self._context.access_log is None else AccessRecord(self._client_ip, self._time.now,
                                                                                 head=head)
        exchange: Exchange
        problem = self._head_problem(version, hosts, content_lengths, transfer_encodings, target, path)
        if problem is None and self._draining:
            problem = 503, b"Service Unavailable", "the gateway is shutting down"
        if problem is not None:
            status, reason, text = problem
            self._closing = True
            exchange = LocalResponse(self, head, record, self._context, status, reason, text, close=True)
        elif self._redirect is not None and not any(prefix_matches(prefix.rstrip("/") or "/", head.path)
                                                    for prefix in self._redirect.exempt):
            exchange = self._redirect_to_https(head, record)
        else:
            decision = decide(self._context, head)
            if decision is None:
                exchange = LocalResponse(self, head, record, self._context, 404, b"Not Found",
                                         "no route for this path",
                                         close=expect_continue and body != NO_BODY)
            else:
                upstream, upstream_target, route = decision
                limit = route.max_body_size
                if limit is not None and content_length is not None and content_length > limit:
                    self._closing = True
                    exchange = LocalResponse(self, head, record, self._context, 413, b"Content Too Large",
                                             f"the request body is larger than {limit} bytes", close=True)
                elif upgrade is not None and method == b"GET" and parser.should_upgrade() \
                        and b"websocket" in upgrade.lower():
                    exchange = TunnelExchange(self._context, self, head, upstream, upstream_target, record,
                                              upgrade=upgrade)
                else:
                    exchange = ProxyExchange(self._context, self, head, upstream, upstream_target, record, limit)
        self._reading = exchange
        if body != NO_BODY and not self._closing:
            self._set_deadline("body", self._listener.body_timeout)
        else:
            self._deadline_kind = ""  # _set_deadline("", 0.0)
        self._enqueue(exchange)

    def on_body(self, data: bytes) -> None:
        self._body_seen += len(data)
        if self._reading is not None:
            self._reading.body_received(data)

    def on_message_complete(self) -> None:
        reading, self._reading = self._reading, None
        if self._deadline_kind == "body":
            self._set_deadline("", 0.0)
        if reading is not None:
            if reading.head.body != NO_BODY:  # (nothing to finish otherwise: one call less per request)
                reading.body_finished()
            if not self._exchanges and not self._closing:
                self._set_deadline("idle", self._listener.idle_timeout)  # answered before its body ended

    # -- written to by the exchanges ------------------------------------------------

    def send_head(self, head: RequestHead | None, status: int, reason: bytes, header_lines: bytes, body: int,
                  content_length: int | None, close: bool = False) -> None:
        """Write a response head: *header_lines* are serialized, without the framing headers (written here)."""
        # Parsing stopped (refused request, upgrade): the last queued response closes the connection.
        last = self._closing and len(self._exchanges) <= 1
        keep_alive = head is not None and head.keep_alive and not close and not last and not self._draining
        chunked = False
        if content_length is not None and (body == FIXED_LENGTH or (body == NO_BODY and status not in (204, 304))):
            framing = b"Content-Length: %d\r\n" % content_length
        elif body != NO_BODY:
            if head is not None and head.version == b"1.1":
                chunked = True
                framing = b"Transfer-Encoding: chunked\r\n"
            else:
                framing = b""
                keep_alive = False  # HTTP/1.0: the body ends when the connection closes
        else:
            framing = b""
        if not keep_alive:
            framing += b"Connection: close\r\n"
        elif head.version == b"1.0":
            framing += b"Connection: keep-alive\r\n"
        self._keep_alive = keep_alive
        self._chunked = chunked
        self._head_sent = True
        status_line = _STATUS_LINES.get((status, reason)) or _status_line(status, reason)
        # (pieces, joined once with the rest of the iteration's writes: one copy of the head fewer)
        self._write_sequence((status_line, header_lines, framing, self._response_headers, b"\r\n"))

    def send_body(self, data: bytes) -> None:
        if not data:
            return
        if self._chunked:
            self._write_sequence((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            self._write(data)

    def finish_response(self, close: bool = False) -> None:
        if self._chunked:
            self._write(b"0\r\n\r\n")
            self._chunked = False
        self._head_sent = False
        if self._exchanges:
            self._exchanges.popleft()
        if close or not self._keep_alive or (self._closing and not self._exchanges):
            self._close_after_response()
            return
        if len(self._exchanges) <= 1 and self.read_gate.paused:
            self.read_gate.resume("pipeline")  # the next request may be read (its body included)
        if self._exchanges:
            self._start(self._exchanges[0])
        elif self._draining and self._reading is None:
            self._lose_connection()
        elif self._reading is None:
            self._set_deadline("idle", self._listener.idle_timeout)

    def shut_down(self) -> None:
        """Graceful shutdown: let the requests in flight finish, then close; close at once if idle."""
        self._draining = True
        if not self._exchanges and self._reading is None:
            self._lose_connection()

    def abort_response(self) -> None:
        """The response cannot be completed: close, so that the client sees it was cut short."""
        if self._exchanges:
            self._exchanges.popleft()
        self._close_after_response()

    def start_tunnel(self, tunnel: TunnelExchange, header_lines: bytes) -> None:
        """Relay the backend's 101 (*header_lines*: all it sent) and switch this connection to carrying raw bytes."""
        self._tunnel = tunnel
        self._set_deadline("", 0.0)
        self._write(b"".join((b"HTTP/1.1 101 Switching Protocols\r\n", header_lines,
                              self._response_headers, b"\r\n")))
        self.read_gate.resume("upgrade")

    def send_raw(self, data: bytes) -> None:
        self._write(data)

    def end_tunnel(self) -> None:
        self._lose_connection()

    def register_producer(self, producer: ReadGate) -> None:
        self._throttle.attach(producer)

    def unregister_producer(self) -> None:
        self._throttle.source = None

    # -- internals ------------------------------------------------------------

    def _head_problem(self, version: bytes, hosts: list[bytes], content_lengths: list[bytes],
                      transfer_encodings: list[bytes], target: bytes, path: str | None) -> Problem | None:
        """Why a request llhttp accepted is still refused, or None."""
        listener = self._listener
        if len(target) > listener.max_header_bytes:
            return 414, b"URI Too Long", "request-target too long"
        if self._head_size > listener.max_header_bytes or len(self._headers) > listener.max_headers:
            return 431, b"Request Header Fields Too Large", "request header too large or too many header fields"
        problem = request_problem(version, hosts, content_lengths, transfer_encodings, target)
        if problem is None and path is None:
            problem = 400, b"Bad Request", "invalid path (dot-segments above the root, or a bad %-escape)"
        return problem

    def _check_unframed_bytes(self, fed: int, body: int) -> None:
        """Bound what llhttp buffers outside body data: a header or trailer line that never ends.

        httptools gathers a header field whole before handing it over, so a
        field that never ends would grow without limit; the same goes for
        trailers and chunk extensions.  Bytes fed since the head began (or
        since body data last came out) are counted, one read's worth of
        slack included, and the connection refused beyond twice the limit.
        """
        if body:
            self._unframed = 0
            return
        if self._deadline_kind not in ("header", "body"):
            return
        self._unframed += fed
        if self._unframed > 2 * self._listener.max_header_bytes + 65536:
            if self._deadline_kind == "header" and self._url_parts and not self._headers:
                self._protocol_error(414, b"URI Too Long", "request-target too long")
            else:
                self._protocol_error(431, b"Request Header Fields Too Large", "request header or trailer too large")

    def _set_deadline(self, kind: str, seconds: float) -> None:
        """Expect the client to send *kind* within *seconds* (an empty kind: nothing expected).

        One timer per connection, moved lazily: it fires at the earliest
        deadline it was set for and re-arms itself when the deadline moved on.
        """
        self._deadline_kind = kind
        if not kind:
            return
        deadline = self._deadline = self._time.now + seconds
        if self._timer is None:
            self._timer = self._clock.callLater(seconds, self._deadline_passed)
            self._timer_at = deadline
        elif self._timer_at > deadline:
            self._timer.reset(seconds)
            self._timer_at = deadline

    def _deadline_passed(self) -> None:
        self._timer = None
        kind = self._deadline_kind
        if not kind or self._closing:
            return
        remaining = self._deadline - self._clock.seconds()
        if remaining > 0:
            self._timer = self._clock.callLater(remaining, self._deadline_passed)
            self._timer_at = self._deadline
            return
        if kind == "idle" or (kind == "header" and not self._url_parts and not self._exchanges):
            self._closing = True  # an idle connection, or one that never sent a byte: close quietly
            self._lose_connection()
        else:
            log.info("client {client} too slow sending the request {what}: closing", client=self._client_ip,
                     what="head" if kind == "header" else "body")
            self._protocol_error(408, b"Request Timeout", f"request {'head' if kind == 'header' else 'body'} "
                                 "not received in time")

    def _redirect_to_https(self, head: RequestHead, record: AccessRecord) -> LocalResponse:
        """301 (GET, HEAD) or the configured status to the same host, path and query over HTTPS."""
        redirect = self._redirect
        host = host_without_port(head.host.decode("latin-1")) if head.host is not None else ""
        if not _SAFE_HOST.fullmatch(host):
            self._closing = True
            return LocalResponse(self, head, record, self._context, 400, b"Bad Request",
                                 "a valid Host header is required", close=True)
        port = "" if redirect.port == 443 else f":{redirect.port}"
        location = f"https://{host}{port}".encode("ascii") + head.target
        status = 301 if head.method in (b"GET", b"HEAD") else redirect.status_other
        return LocalResponse(self, head, record, self._context, status, _REDIRECT_REASONS[status],
                             f"moved to {location.decode('latin-1')}", headers=[(b"Location", location)],
                             close=head.expect_continue and head.body != NO_BODY)

    def _enqueue(self, exchange: Exchange) -> None:
        self._exchanges.append(exchange)
        if len(self._exchanges) == 1:
            self._start(exchange)
        else:
            self.read_gate.pause("pipeline")

    def _start(self, exchange: Exchange) -> None:
        if exchange is self._reading and isinstance(exchange, ProxyExchange) and exchange.head.expect_continue:
            self._write(_CONTINUE)
        exchange.start()

    def _protocol_error(self, status: int, reason: bytes, text: str) -> None:
        """A request could not be parsed: answer it (when still possible) and close."""
        self._closing = True
        self.read_gate.pause("closing")
        reading, self._reading = self._reading, None
        if reading is not None:
            # The error is inside a request body that is already being forwarded.
            reading.downstream_lost()
            if self._exchanges and self._exchanges[0] is reading:
                self._exchanges.popleft()
            if self._exchanges or self._head_sent:
                self._close_after_response()
                return
        record = AccessRecord(client_ip=self._client_ip, started=self._context.reactor.seconds(),
                              request_line="-")
        self._enqueue(LocalResponse(self, None, record, self._context, status, reason, text, close=True))

    def _lose_connection(self) -> None:
        self._writer.flush()  # the close follows what was written
        self.transport.unregisterProducer()  # (a paused producer would hold the connection open)
        self._writer.lose_connection()

    def _close_after_response(self) -> None:
        self._closing = True
        pending = list(self._exchanges)
        self._exchanges.clear()
        for exchange in pending:
            exchange.downstream_lost()
        self._lose_connection()


class HTTP11ServerFactory(Factory):
    """Builds one :class:`HTTP11ServerProtocol` per client connection of a listener."""

    noisy = False

    def __init__(self, context: ProxyContext, listener: ListenerConfig) -> None:
        self.connections: set[HTTP11ServerProtocol] = set()
        # The listener's timeouts and limits, as attributes of this (compiled) class: the protocol reads
        # them for every request, and an attribute of a config dataclass is a dictionary lookup.
        self.header_timeout = listener.timeouts.header
        self.idle_timeout = listener.timeouts.idle
        self.body_timeout = listener.timeouts.body
        self.max_header_bytes = listener.limits.max_header_bytes
        self.max_headers = listener.limits.max_headers
        self.max_connections = listener.limits.max_connections
        self.context = context
        self.scheme = "https" if listener.tls is not None else "http"
        self.redirect = listener.redirect
        hsts = listener.tls.hsts if listener.tls is not None else None
        #: Header lines added to every response (HSTS), serialized once.
        self.response_headers = b"" if hsts is None else b"Strict-Transport-Security: max-age=%d\r\n" % hsts

    def buildProtocol(self, addr) -> HTTP11ServerProtocol:
        return HTTP11ServerProtocol(self.context, self)

    def shut_down(self, clock, timeout: float) -> Deferred:
        """Close every connection once its requests in flight are done; abort what is left after *timeout*."""
        finished: Deferred = Deferred()
        for connection in list(self.connections):
            connection.shut_down()

        def check() -> None:
            if not self.connections or clock.seconds() >= deadline:
                poll.stop()
                for connection in list(self.connections):
                    log.warn("shutdown: aborting a connection whose request did not finish in {timeout} s",
                             timeout=timeout)
                    connection.transport.abortConnection()
                finished.callback(None)

        deadline = clock.seconds() + timeout
        poll = LoopingCall(check)
        poll.clock = clock
        poll.start(0.05, now=True)
        return finished
