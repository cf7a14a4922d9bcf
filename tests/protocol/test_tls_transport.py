"""gateway.http.tls_transport: TLS between a real ``tcp.Server`` (fake socket) and the HTTP protocol.

The client is Python's ``ssl`` over memory BIOs, verifying the generated
certificate; the server side is ``TLSServerTransport`` with the gateway's own
``ServerTLS`` contexts.  No sockets, no real time: the reactor is a
``MemoryReactorClock`` and the iteration's batch runs on ``advance(0)``.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from twisted.internet import main
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from gateway import certs
from gateway.core.config import CertificateConfig, TLSConfig
from gateway.http.tls_transport import TLSServerFactory, TLSServerTransport
from gateway.tls import ServerTLS
from protocol_harness import FakeSocket, Producer, tcp_server, write_tls_files

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> tuple[Path, ServerTLS]:
    cafile, config = write_tls_files(tmp_path_factory.mktemp("tls"))
    return cafile, ServerTLS(config, "test.yaml")


class Recorder(Protocol):
    """The HTTP protocol's place: records what arrives and how the connection ended."""

    def __init__(self) -> None:
        self.data = b""
        self.lost = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason=None) -> None:
        self.lost = reason


class Peer:
    """The client side: a verifying ``ssl.SSLObject`` and the server's fake socket."""

    def __init__(self, cafile: Path, server: TLSServerTransport, sock: FakeSocket,
                 server_hostname: str = "localhost") -> None:
        context = ssl.create_default_context(cafile=str(cafile))
        context.set_alpn_protocols(["http/1.1"])
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname)
        self.server = server
        self.sock = sock

    def to_server(self) -> None:
        data = self.outgoing.read()
        if data:
            self.server.dataReceived(data)

    def from_server(self) -> None:
        self.incoming.write(b"".join(self.sock.sent))
        self.sock.sent.clear()

    def handshake(self) -> None:
        for _ in range(5):
            try:
                self.tls.do_handshake()
                self.to_server()
                assert self.receive() == b""  # (TLS 1.3 session tickets)
                return
            except ssl.SSLWantReadError:
                self.to_server()
                self.from_server()
        raise AssertionError("no handshake")

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.to_server()

    def receive(self) -> bytes:
        self.from_server()
        received = b""
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                return received
            if not chunk:
                return received
            received += chunk


@pytest.fixture
def reactor() -> MemoryReactorClock:
    return MemoryReactorClock()


def connect(reactor, ca, sock: FakeSocket | None = None):
    cafile, tls = ca
    sock = sock or FakeSocket()
    factory = TLSServerFactory(tls.wrap, Factory.forProtocol(Recorder), reactor)
    server = factory.buildProtocol(("127.0.0.1", 50000))
    tcp = tcp_server(reactor, sock, server)
    server.makeConnection(tcp)
    return server, tcp, Peer(cafile, server, sock)


def test_handshake_request_and_batched_response(reactor, ca):
    server, tcp, peer = connect(reactor, ca)
    peer.handshake()
    assert peer.tls.selected_alpn_protocol() == "http/1.1"
    peer.send(REQUEST)
    assert server.wrapped.data == REQUEST
    server.write(b"HTTP/1.1 200 OK\r\n")
    server.writeSequence([b"Content-Length: 5\r\n\r\n", b"hello"])
    assert peer.sock.sent == []  # gathered for the end of the iteration...
    reactor.advance(0)
    assert len(peer.sock.sent) == 1  # ...then encrypted together and sent with one send()
    assert reactor.getWriters() == []  # not via the writability round trip
    assert peer.receive() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def test_writes_before_the_handshake_ends_are_sent_after_it(reactor, ca):
    server, tcp, peer = connect(reactor, ca)
    server.write(b"early")
    reactor.advance(0)
    assert peer.sock.sent == []
    peer.handshake()
    reactor.advance(0)
    assert peer.receive() == b"early"


def test_records_queue_behind_what_the_kernel_did_not_take(reactor, ca):
    server, tcp, peer = connect(reactor, ca)
    peer.handshake()
    peer.sock.room = 10
    server.write(b"x" * 5000)
    reactor.advance(0)
    assert reactor.getWriters() == [tcp]  # the rest waits in Twisted's buffer
    server.write(b"y" * 5000)
    reactor.advance(0)
    peer.sock.room = None
    tcp.doWrite()
    assert peer.receive() == b"x" * 5000 + b"y" * 5000


def test_a_full_tcp_buffer_pauses_the_registered_producer(reactor, ca):
    server, tcp, peer = connect(reactor, ca)
    peer.handshake()

    producer = Producer()
    server.registerProducer(producer, True)
    tcp.bufferSize = 1000
    peer.sock.room = 0
    server.write(b"z" * 4000)
    reactor.advance(0)
    assert producer.paused
    peer.sock.room = None
    tcp.doWrite()
    assert not producer.paused
    server.unregisterProducer()
    assert tcp.producer is None


def test_lose_connection_sends_data_then_close_notify(reactor, ca):
    server, tcp, peer = connect(reactor, ca)
    peer.handshake()
    server.write(b"last words")
    server.loseConnection()
    server.write(b"ignored")
    assert tcp.disconnecting
    assert tcp.doWrite() is main.CONNECTION_DONE  # the reactor sends the buffer, then closes
    peer.from_server()
    assert peer.tls.read(100) == b"last words"
    assert peer.tls.read(100) == b""  # close_notify (without it: SSLWantReadError)


def test_close_notify_from_the_client_ends_the_connection(reactor, ca):
    server, tcp, peer = connect(reactor, ca)
    peer.handshake()
    peer.send(REQUEST)
    try:
        peer.tls.unwrap()
    except ssl.SSLWantReadError:
        pass
    peer.to_server()
    assert tcp.disconnecting
    tcp.connectionLost(Failure(main.CONNECTION_DONE))
    assert server.wrapped.data == REQUEST
    assert server.wrapped.lost.check(ConnectionDone)


def test_the_clients_close_notify_closes_even_with_a_paused_producer(reactor, ca):
    server, tcp, peer = connect(reactor, ca)
    peer.handshake()
    producer = Producer()
    server.registerProducer(producer, True)  # (the HTTP protocol keeps one registered for its life)
    tcp.bufferSize = 1000
    peer.sock.room = 0
    server.write(b"z" * 4000)
    reactor.advance(0)
    assert producer.paused
    try:
        peer.tls.unwrap()
    except ssl.SSLWantReadError:
        pass
    peer.to_server()
    assert tcp.disconnecting and tcp.producer is None
    peer.sock.room = None
    # Twisted resumes a paused producer instead of closing; with none registered, it closes.
    assert tcp.doWrite() is main.CONNECTION_DONE


def test_plain_http_on_the_tls_port_is_closed(reactor, ca):
    server, tcp, peer = connect(reactor, ca)
    server.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert tcp.disconnecting
    assert server.wrapped.data == b""
    server.dataReceived(b"more")  # after the failure: ignored
    assert server.wrapped.data == b""


def test_a_refused_handshake_gets_an_alert_and_a_close(reactor, ca):
    server, tcp, peer = connect(reactor, ca)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("AES128-SHA256")  # no forward secrecy: the gateway offers none such
    peer.tls = context.wrap_bio(peer.incoming, peer.outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        peer.tls.do_handshake()
    peer.to_server()
    assert tcp.disconnecting
    peer.from_server()
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE|handshake failure"):
        peer.tls.do_handshake()  # the alert


def test_pausing_reading_pauses_the_socket(reactor, ca):
    server, tcp, peer = connect(reactor, ca)
    reactor.addReader(tcp)
    server.pauseProducing()
    assert tcp not in reactor.getReaders()
    server.resumeProducing()
    assert tcp in reactor.getReaders()


def test_sni_selects_the_certificate_for_the_name(reactor, tmp_path):
    ca_cert, ca_key = certs.generate_ca()
    pairs = []
    for name in ("first.test", "second.test"):
        cert, key = certs.generate_server_certificate(ca_cert, ca_key, [name])
        (tmp_path / f"{name}.crt").write_bytes(certs.certificate_pem(cert))
        (tmp_path / f"{name}.key").write_bytes(certs.private_key_pem(key))
        pairs.append(CertificateConfig(cert=str(tmp_path / f"{name}.crt"), key=str(tmp_path / f"{name}.key")))
    (tmp_path / "ca.crt").write_bytes(certs.certificate_pem(ca_cert))
    tls = ServerTLS(TLSConfig(certificates=tuple(pairs)), "test.yaml")
    factory = TLSServerFactory(tls.wrap, Factory.forProtocol(Recorder), reactor)
    server = factory.buildProtocol(("127.0.0.1", 50000))
    sock = FakeSocket()
    server.makeConnection(tcp_server(reactor, sock, server))
    peer = Peer(tmp_path / "ca.crt", server, sock, server_hostname="second.test")
    peer.handshake()  # verifies second.test against the certificate served
    assert peer.tls.getpeercert()["subjectAltName"] == (("DNS", "second.test"),)
