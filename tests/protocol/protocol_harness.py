"""In-memory plumbing for the protocol tests: a gateway with no sockets and no real time.

``Gateway`` assembles the request path the way ``gateway.service`` does (route
table, upstream pools, connection pools, ``ProxyContext``) around a
``MemoryReactorClock``.  ``gateway.client()`` opens a client connection on a
``FakeTransport``; when the proxy calls ``reactor.connectTCP``,
``gateway.accept_backend()`` builds the upstream protocol from the recorded
factory and connects it to another ``FakeTransport``, whose bytes the test
then plays by hand.

``FakeTransport`` is a ``StringTransport`` that behaves like a TCP transport
where that matters here: ``setTcpNoDelay`` exists, ``loseConnection`` and
``abortConnection`` deliver ``connectionLost`` later (on the next
``reactor.advance(0)``, as the real reactor does on its next iteration), a
producer can be (un)registered as loosely as on a real transport, and every
pause/resume is recorded.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path

import httptools
from twisted.internet import error, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway import certs
from gateway.core.config import CertificateConfig, TLSConfig, parse_config
from gateway.core.pool import UpstreamPool
from gateway.core.routing import RouteTable
from gateway.http.connections import UpstreamConnections
from gateway.http.proxy import ProxyContext, Upstream
from gateway.http.server import HTTP11ServerFactory

CONFIG = """\
listeners: [{port: 0}]
upstreams:
  api:
    servers: [{address: "127.0.0.1:9001"}]
    keepalive_timeout: 1.5
  web:
    servers: [{address: "127.0.0.1:8001"}, {address: "127.0.0.1:8002"}]
  empty:
    servers: []
routes:
  - {path: /api/, upstream: api}
  - {path: /web/, upstream: web}
  - {path: /empty/, upstream: empty}
  - {path: /strip/, upstream: api, strip_prefix: true}
"""


class FakeTransport(StringTransport):
    """A StringTransport with TCP's asynchronous close and loose producer rules."""

    def __init__(self, reactor: MemoryReactorClock, protocol, peer: IPv4Address, host: IPv4Address) -> None:
        super().__init__(hostAddress=host, peerAddress=peer, lenient=True)
        self.reactor = reactor
        self.protocol = protocol
        self.no_delay = False
        self.aborted = False
        self.lost = False
        self.producer_history: list[str] = []  # "paused" / "producing", in order
        self.registered_producers: list[object] = []

    # ITCPTransport bits the protocols use
    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled

    def getTcpNoDelay(self) -> bool:
        return self.no_delay

    # Closing: connectionLost comes on a later reactor iteration, once.
    def loseConnection(self) -> None:
        if self.disconnecting:
            return
        self.disconnecting = True
        self.reactor.callLater(0, self._lost, Failure(error.ConnectionDone("Connection was closed cleanly.")))

    def abortConnection(self) -> None:
        self.aborted = True
        self.disconnected = True
        if not self.disconnecting:
            self.disconnecting = True
        self.reactor.callLater(0, self._lost, Failure(error.ConnectionAborted()))

    def peer_closes(self, reason: Exception | None = None) -> None:
        """The other end closed (or reset) the connection: connectionLost now."""
        self._lost(Failure(reason or error.ConnectionDone("Connection was closed cleanly.")))

    def _lost(self, reason: Failure) -> None:
        if self.lost:
            return
        self.lost = True
        self.connected = False
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.stopProducing()
        self.protocol.connectionLost(reason)

    # IConsumer, as loose as abstract.FileDescriptor
    def registerProducer(self, producer, streaming) -> None:
        if self.producer is not None:
            raise RuntimeError(f"Cannot register producer {producer}, because producer {self.producer} "
                               "was never unregistered.")
        self.registered_producers.append(producer)
        if self.lost:
            producer.stopProducing()
            return
        self.producer = producer
        self.streaming = streaming

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None

    # IPushProducer, recorded
    def pauseProducing(self) -> None:
        super().pauseProducing()
        self.producer_history.append("paused")

    def resumeProducing(self) -> None:
        super().resumeProducing()
        self.producer_history.append("producing")

    @property
    def reading(self) -> bool:
        return self.producerState == "producing"

    def take(self) -> bytes:
        """Everything written since the last take()."""
        data = self.value()
        self.clear()
        return data


@dataclass
class Client:
    """One client connection to the gateway."""

    protocol: object
    transport: FakeTransport

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def received(self) -> bytes:
        return self.transport.value()

    def take(self) -> bytes:
        return self.transport.take()

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting


@dataclass
class Backend:
    """The gateway's connection to one backend server; the test speaks for the server."""

    protocol: object
    transport: FakeTransport
    host: str
    port: int

    def request(self) -> bytes:
        """What the gateway has sent on this connection so far (and forget it)."""
        return self.transport.take()

    def reply(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def close(self, reason: Exception | None = None) -> None:
        self.transport.peer_closes(reason)

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting or self.transport.lost


@dataclass
class Gateway:
    config_text: str = CONFIG
    listener: int = 0  # which listeners: entry the client connections arrive on
    access_log: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.config = parse_config(self.config_text, "<protocol test>")
        self.upstreams = {
            name: Upstream(pool=UpstreamPool(upstream),
                           connections=UpstreamConnections(self.reactor, upstream.keepalive_timeout,
                                                           upstream.keepalive_connections),
                           config=upstream)
            for name, upstream in self.config.upstreams.items()
        }
        self.context = ProxyContext(reactor=self.reactor, routes=RouteTable(self.config.routes),
                                    upstreams=self.upstreams,
                                    access_log=lambda record, finished: self.access_log.append((record, finished)))
        self.factory = HTTP11ServerFactory(self.context, self.config.listeners[self.listener])
        self._accepted = 0

    def client(self, ip: str = "10.0.0.7", port: int = 50000) -> Client:
        peer = IPv4Address("TCP", ip, port)
        protocol = self.factory.buildProtocol(peer)
        transport = FakeTransport(self.reactor, protocol, peer, IPv4Address("TCP", "127.0.0.1", 8080))
        protocol.makeConnection(transport)
        return Client(protocol, transport)

    @property
    def connect_attempts(self) -> list[tuple[str, int]]:
        return [(host, port) for host, port, *_ in self.reactor.tcpClients]

    @property
    def pending_connects(self) -> int:
        return len(self.reactor.tcpClients) - self._accepted

    def _next_attempt(self):
        assert self.pending_connects > 0, f"no connectTCP pending (attempts so far: {self.connect_attempts})"
        host, port, factory, timeout, bind = self.reactor.tcpClients[self._accepted]
        connector = self.reactor.connectors[self._accepted]
        self._accepted += 1
        return host, port, factory, connector

    def accept_backend(self) -> Backend:
        """The oldest pending connectTCP succeeds."""
        host, port, factory, _ = self._next_attempt()
        address = IPv4Address("TCP", host, port)
        protocol = factory.buildProtocol(address)
        transport = FakeTransport(self.reactor, protocol, address, IPv4Address("TCP", "127.0.0.1", 40000 + self._accepted))
        protocol.makeConnection(transport)
        return Backend(protocol, transport, host, port)

    def refuse_backend(self) -> tuple[str, int]:
        """The oldest pending connectTCP fails with 'connection refused'."""
        host, port, factory, connector = self._next_attempt()
        factory.clientConnectionFailed(connector, Failure(error.ConnectionRefusedError()))
        return host, port

    def run(self) -> None:
        """Let the reactor run what is due now (connectionLost after a close)."""
        self.reactor.advance(0)


@dataclass
class Response:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    version: str
    complete: bool = False

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_names(self) -> list[bytes]:
        return [key.lower() for key, _ in self.headers]


class _ResponseCollector:
    def __init__(self) -> None:
        self.responses: list[Response] = []
        self._current: Response | None = None

    def on_message_begin(self) -> None:
        self._current = Response(0, b"", [], b"", "")
        self.responses.append(self._current)

    def on_status(self, status: bytes) -> None:
        self._current.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._current.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._current.body += body

    def on_message_complete(self) -> None:
        self._current.complete = True


def parse_responses(data: bytes, head_requests: tuple[int, ...] = ()) -> list[Response]:
    """The responses in *data* (bodies decoded from their framing).

    llhttp cannot be told that a response answers HEAD, so *head_requests*
    lists the indexes of responses that have no body whatever their headers say;
    they are split off by hand.
    """
    responses: list[Response] = []
    index = 0
    while data:
        if index in head_requests:
            head, sep, data = data.partition(b"\r\n\r\n")
            assert sep, "incomplete head"
            collector = _ResponseCollector()
            parser = httptools.HttpResponseParser(collector)
            try:
                parser.feed_data(head + b"\r\nContent-Length: 0\r\n\r\n")
            except httptools.HttpParserError:
                pass
            response = collector.responses[0]
            response.headers = response.headers[:-1]
            response.status = parser.get_status_code()
            response.version = parser.get_http_version()
            response.complete = True
            responses.append(response)
            index += 1
            continue
        collector = _ResponseCollector()
        parser = httptools.HttpResponseParser(collector)
        consumed = _feed_one(parser, collector, data)
        response = collector.responses[0]
        response.status = parser.get_status_code()
        response.version = parser.get_http_version()
        responses.append(response)
        data = data[consumed:]
        index += 1
        if not response.complete:
            break
    return responses


def _feed_one(parser, collector, data: bytes) -> int:
    """Feed *data* byte-exact up to the end of the first message; return bytes consumed."""
    # Feeding one byte at a time is slow but exact, and the responses here are small.
    for position in range(len(data)):
        parser.feed_data(data[position:position + 1])
        if collector.responses and collector.responses[0].complete:
            return position + 1
    return len(data)


def parse_request_head(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """Split a request written by the gateway: (request line, headers, rest)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"incomplete request head: {data!r}"
    line, *header_lines = head.split(b"\r\n")
    headers = []
    for header_line in header_lines:
        name, colon, value = header_line.partition(b": ")
        assert colon, header_line
        headers.append((name, value))
    return line, headers, rest


# -- a real tcp.Server around a fake socket (for the tests of direct sending) ----------


class FakeSocket:
    """Records what is sent; takes at most *room* bytes per send (None: everything)."""

    def __init__(self, room: int | None = None, error: int | None = None) -> None:
        self.sent: list[bytes] = []
        self.room = room
        self.error = error
        self.closed = False

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return 99

    def setsockopt(self, *args) -> None:
        pass

    def shutdown(self, how: int) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def send(self, data) -> int:
        if self.closed:
            raise OSError(errno.EBADF, "Bad file descriptor")  # (as a closed socket.socket)
        if self.error is not None:
            raise OSError(self.error, "error")
        data = bytes(data)
        if self.room is not None:
            data = data[:self.room]
            self.room -= len(data)
        self.sent.append(data)
        return len(data)


def tcp_server(reactor: MemoryReactorClock, sock: FakeSocket, protocol: Protocol | None = None) -> tcp.Server:
    """A connected ``tcp.Server`` (the class the reactor makes) whose socket is *sock*."""
    server = tcp.Server(sock, protocol or Protocol(), ("127.0.0.1", 50000), None, 1, reactor)
    server.connected = 1
    return server


@implementer(IPushProducer)
class Producer:
    """A push producer that records whether it is paused."""

    def __init__(self) -> None:
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


def write_tls_files(folder: Path) -> tuple[Path, TLSConfig]:
    """A CA and a ``localhost`` certificate signed by it in *folder*: the CA's path, and a TLS config
    serving the certificate."""
    ca_cert, ca_key = certs.generate_ca()
    cert, key = certs.generate_server_certificate(ca_cert, ca_key, ["localhost"])
    (folder / "ca.crt").write_bytes(certs.certificate_pem(ca_cert))
    (folder / "gateway.crt").write_bytes(certs.certificate_pem(cert))
    (folder / "gateway.key").write_bytes(certs.private_key_pem(key))
    return folder / "ca.crt", TLSConfig(certificates=(CertificateConfig(cert=str(folder / "gateway.crt"),
                                                                        key=str(folder / "gateway.key")),))
