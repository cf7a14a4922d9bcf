"""The backend-facing side: one keep-alive HTTP/1.1 connection to a server.

:class:`HTTP11ClientProtocol` writes a request head and body that the
gateway frames itself, parses the response with llhttp (httptools) and hands
it, piece by piece, to the :class:`ResponseHandler` using the connection.
Between requests the connection sits idle in :mod:`gateway.http.connections`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol as TypingProtocol

import httptools
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from gateway.core.headers import Headers, downstream_response_head, serialize_headers
from gateway.core.messages import CHUNKED, FIXED_LENGTH, NO_BODY, UNTIL_CLOSE
from gateway.http.clock import cached_time
from gateway.http.flow import ReadGate
from gateway.http.sending import BatchedWriter

if TYPE_CHECKING:
    from gateway.http.proxy import ProxyExchange


class ResponseHandler(TypingProtocol):
    """What a connection reports to the exchange that is using it.

    The handler is typed ``ProxyExchange | ResponseHandler``: compiled, a
    call on a ProxyExchange (or a TunnelExchange) is then a type check and a
    direct C call, where through this protocol it is a method lookup by name
    (about 200 instructions, three times per request); any other handler (the
    protocol tests' recorders) goes through the protocol.
    """

    def response_head(self, status: int, reason: bytes, header_lines: bytes, body: int,
                      content_length: int | None) -> None:
        """The response's status and header lines for the client (a 101's: all of them, as received)."""

    def response_body(self, data: bytes) -> None: ...

    def response_finished(self, connection: HTTP11ClientProtocol, reusable: bool) -> None: ...

    def upstream_lost(self, connection: HTTP11ClientProtocol, reason: Failure | str) -> None: ...

    def upstream_timed_out(self, connection: HTTP11ClientProtocol) -> None: ...


def response_framing(status: int, content_length: int | None, chunked: bool, head_request: bool) -> int:
    """How the body of a response is delimited (RFC 9112 section 6.3)."""
    if head_request or status in (204, 304) or status < 200:
        return NO_BODY
    if chunked:
        return CHUNKED
    if content_length is not None:
        return FIXED_LENGTH
    return UNTIL_CLOSE


class HTTP11ClientProtocol(Protocol):
    """One connection to a backend server, reused for request after request."""

    transport: Any  # (a TCP transport once connected: Twisted types it as ITransport | None)

    def __init__(self, clock: Any = None) -> None:
        self.clock = clock  # for the read timeout; None: no timeout
        self._time = cached_time(clock) if clock is not None else None
        self.handler: ProxyExchange | ResponseHandler | None = None  # (why the union: see ResponseHandler)
        self.gate: ReadGate | None = None
        #: Set by the connection pool while connecting.
        self.connected_handler: Callable[[HTTP11ClientProtocol], None] | None = None
        #: Set by the connection pool while the connection is idle.
        self.on_idle_lost: Callable[[HTTP11ClientProtocol], None] | None = None
        self.idle_since = 0.0  # when the pool last took it back
        self.idle_address = ""  # the server address it is kept under while idle
        self.requests_sent = 0
        self.response_started = False
        self._parser: httptools.HttpResponseParser | None = None
        # The parser is at the start of a message: the last response ended where llhttp saw it end
        # (not a response to HEAD, ended by the gateway), so the next one may reuse it.
        self._parser_at_start = False
        self._head_request = False
        self._head_done = False
        self._lost = False
        self._chunked_body = False
        self._reason = b""
        self._headers: Headers = []
        self._body_framing = NO_BODY
        self._read_timeout = 0.0
        self._read_timer: Any = None  # (an IDelayedCall)
        self._last_read = 0.0
        self._upgrade = False  # the request asked to switch protocols: 101 is a valid answer
        self.tunnel: Any = None  # after 101 (a TunnelExchange): raw bytes go to tunnel.from_backend

    # -- Twisted ------------------------------------------------------------

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        self._writer = BatchedWriter(self.transport)
        self.write_raw = self._writer.write  # every write to the backend goes through this
        self._write_sequence = self._writer.write_sequence
        self.gate = ReadGate(self.transport)
        ready, self.connected_handler = self.connected_handler, None
        if ready is not None:
            ready(self)

    def dataReceived(self, data: bytes) -> None:
        # (Checked through locals: parsing may set self.tunnel and clear self.handler, and mypyc
        # would trust a narrowing of the attributes themselves across that call.)
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.from_backend(data)
            return
        handler = self.handler
        if handler is None:
            # A backend may not speak before it is asked; an idle connection that
            # does so is out of step with us and cannot be reused.
            self.transport.abortConnection()
            return
        self.response_started = True
        if self._read_timer is not None:
            self._last_read = self._time.now
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if self.tunnel is None:
                self._fail("the backend switched protocols unasked")
            elif len(data) > upgrade.args[0]:
                self.tunnel.from_backend(data[upgrade.args[0]:])
            return
        except httptools.HttpParserError as error:
            self._fail(f"invalid response from backend: {error}")
            return
        if self.handler is not None and self._body_framing == NO_BODY and self._head_done:
            # llhttp cannot be told that a response to HEAD has no body, so the
            # message is finished here and the parser replaced.
            self._finish(self._parser.should_keep_alive())

    @property
    def usable(self) -> bool:
        """Connected and not closing: may carry a request."""
        return self.transport is not None and not self._lost and not self.transport.disconnecting

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._lost = True
        self._stop_read_timer()
        if self.tunnel is not None:
            self.tunnel.backend_closed()
            return
        handler, self.handler = self.handler, None
        if handler is not None:
            if self._body_framing == UNTIL_CLOSE and self._head_done:
                handler.response_finished(self, False)
            else:
                handler.upstream_lost(self, reason if reason is not None else "connection lost")
        elif self.on_idle_lost is not None:
            self.on_idle_lost(self)

    # -- used by the exchange --------------------------------------------------

    def send_request(self, handler: ProxyExchange | ResponseHandler, head: bytes, head_request: bool, chunked_body: bool,
                     read_timeout: float = 0.0, upgrade: bool = False) -> None:
        """Write a request head; the body (if any) follows through :meth:`write_body`.

        With a *read_timeout*, the handler is told ``upstream_timed_out`` when
        the backend sends nothing for that long (unless it is the client that
        is not reading).
        """
        self.handler = handler
        self._upgrade = upgrade
        if read_timeout and self.clock is not None:
            self._read_timeout = read_timeout
            self._last_read = self._time.now
            if self._read_timer is None:
                self._read_timer = self.clock.callLater(read_timeout, self._check_read_timeout)
        self.response_started = False
        self.requests_sent += 1
        self._head_request = head_request
        self._chunked_body = chunked_body
        self._head_done = False
        self._body_framing = NO_BODY
        self._reason = b""
        self._headers = []
        if not self._parser_at_start:
            self._parser = httptools.HttpResponseParser(self)
        self._parser_at_start = False
        self.write_raw(head)

    def write_body(self, data: bytes) -> None:
        if self._chunked_body:
            self._write_sequence((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            self.write_raw(data)

    def end_body(self) -> None:
        if self._chunked_body:
            self.write_raw(b"0\r\n\r\n")

    def start_tunnel(self, tunnel) -> None:
        """After a 101: every byte from now on belongs to *tunnel*, no more HTTP."""
        self._stop_read_timer()
        self.handler = None
        self.tunnel = tunnel

    def abort(self) -> None:
        """Drop the connection without telling the handler (it is going away)."""
        self._stop_read_timer()
        self.handler = None
        self.transport.abortConnection()

    # -- httptools callbacks ------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status == 101 and self._upgrade:
            self.handler.response_head(101, self._reason, serialize_headers(self._headers), NO_BODY, None)
            return  # the handler has called start_tunnel (or dropped the connection)
        if 100 <= status < 200:
            if status == 101:
                raise httptools.HttpParserError("101 Switching Protocols to a request that asked for none")
            # Interim responses (100 Continue, 103) are not relayed; the final one starts afresh.
            # (Here rather than in an on_message_begin callback, which would run for every response.)
            self._reason = b""
            self._headers = []
            return
        try:
            header_lines, content_length, chunked = downstream_response_head(self._headers)
        except ValueError:
            raise httptools.HttpParserError("invalid Content-Length") from None
        framing = response_framing(status, content_length, chunked, self._head_request)
        if framing == CHUNKED:
            content_length = None
        self._body_framing = framing
        self._head_done = True
        self.handler.response_head(status, self._reason, header_lines, framing, content_length)

    def on_body(self, data: bytes) -> None:
        if self.handler is not None:
            self.handler.response_body(data)

    def on_message_complete(self) -> None:
        if self._head_done and self._body_framing != NO_BODY:
            self._parser_at_start = True
            self._finish(self._parser.should_keep_alive())

    # -- internals ------------------------------------------------------------

    def _check_read_timeout(self) -> None:
        self._read_timer = None
        if self.handler is None:
            return
        now = self.clock.seconds()
        if self.gate is not None and self.gate.paused:
            self._last_read = now  # the client is not reading: the backend is not to blame
        remaining = self._last_read + self._read_timeout - now
        if remaining > 0:
            self._read_timer = self.clock.callLater(remaining, self._check_read_timeout)
            return
        handler, self.handler = self.handler, None
        self.transport.abortConnection()
        handler.upstream_timed_out(self)

    def _stop_read_timer(self) -> None:
        if self._read_timer is not None:
            if self._read_timer.active():
                self._read_timer.cancel()
            self._read_timer = None

    def _finish(self, keep_alive: bool) -> None:
        # The read timer stays armed: the next request on this connection reuses it, and
        # if none comes it fires once, finds no handler and lapses (cheaper than cancelling).
        handler, self.handler = self.handler, None
        self._head_done = False
        if handler is not None:
            handler.response_finished(self, keep_alive)

    def _fail(self, reason: str) -> None:
        self._stop_read_timer()
        handler, self.handler = self.handler, None
        self.transport.abortConnection()
        if handler is not None:
            handler.upstream_lost(self, reason)
