"""gateway.http.sending: writes gathered per reactor iteration, sent with one send() per transport.

Real ``twisted.internet.tcp.Server`` transports around a fake socket and a
``MemoryReactorClock``: no sockets, no real time.
"""

from __future__ import annotations

import errno
import inspect

import pytest
from OpenSSL import SSL
from twisted.internet import main, tcp
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from gateway import certs
from gateway.core.config import CertificateConfig, TLSConfig
from gateway.http.sending import BatchedWriter, DirectSendTLSFactory
from gateway.tls import ServerTLS


class FakeSocket:
    """Records what is sent; takes at most *room* bytes per send (None: everything)."""

    def __init__(self, room: int | None = None, error: int | None = None) -> None:
        self.sent: list[bytes] = []
        self.room = room
        self.error = error

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return 99

    def setsockopt(self, *args) -> None:
        pass

    def shutdown(self, how: int) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, data) -> int:
        if self.error is not None:
            raise OSError(self.error, "error")
        data = bytes(data)
        if self.room is not None:
            data = data[:self.room]
            self.room -= len(data)
        self.sent.append(data)
        return len(data)


@implementer(IPushProducer)
class Producer:
    def __init__(self) -> None:
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


def transport(reactor: MemoryReactorClock, sock: FakeSocket) -> tcp.Server:
    server = tcp.Server(sock, Protocol(), ("127.0.0.1", 50000), None, 1, reactor)
    server.connected = 1
    return server


@pytest.fixture
def reactor() -> MemoryReactorClock:
    return MemoryReactorClock()


def test_writes_of_one_iteration_leave_in_one_send(reactor):
    sock = FakeSocket()
    writer = BatchedWriter(transport(reactor, sock))
    writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
    writer.write_sequence((b"5\r\n", b"hello", b"\r\n"))
    assert sock.sent == []
    reactor.advance(0)
    assert sock.sent == [b"HTTP/1.1 200 OK\r\n\r\n5\r\nhello\r\n"]
    assert reactor.getWriters() == []  # no writability registration, no buffered bytes


def test_one_call_for_all_transports(reactor):
    socks = [FakeSocket(), FakeSocket()]
    writers = [BatchedWriter(transport(reactor, sock)) for sock in socks]
    writers[0].write(b"a")
    writers[1].write(b"b")
    writers[0].write(b"c")
    assert len(reactor.getDelayedCalls()) == 1
    reactor.advance(0)
    assert [sock.sent for sock in socks] == [[b"ac"], [b"b"]]
    writers[1].write(b"d")
    reactor.advance(0)
    assert socks[1].sent == [b"b", b"d"]


def test_flush_sends_at_once(reactor):
    sock = FakeSocket()
    writer = BatchedWriter(transport(reactor, sock))
    writer.write(b"x")
    writer.flush()
    assert sock.sent == [b"x"]
    reactor.advance(0)
    assert sock.sent == [b"x"]


def test_what_the_kernel_does_not_take_is_buffered_and_pauses_the_producer(reactor):
    sock = FakeSocket(room=3)
    tr = transport(reactor, sock)
    tr.bufferSize = 4
    producer = Producer()
    tr.registerProducer(producer, True)
    writer = BatchedWriter(tr)
    writer.write(b"abcdefgh")
    reactor.advance(0)
    assert sock.sent == [b"abc"]
    assert reactor.getWriters() == [tr]
    assert producer.paused
    # Later writes queue behind the buffered bytes, in order.
    writer.write(b"ij")
    reactor.advance(0)
    sock.room = 100
    tr.doWrite()
    assert b"".join(sock.sent) == b"abcdefghij"
    assert not producer.paused


def test_buffered_data_goes_first(reactor):
    sock = FakeSocket()
    tr = transport(reactor, sock)
    tr.write(b"first")  # Twisted's own buffer, not yet sent
    writer = BatchedWriter(tr)
    writer.write(b"second")
    reactor.advance(0)
    assert sock.sent == []
    tr.doWrite()
    assert sock.sent == [b"firstsecond"]


def test_send_error_is_left_to_the_reactor(reactor):
    sock = FakeSocket(error=errno.EPIPE)
    tr = transport(reactor, sock)
    writer = BatchedWriter(tr)
    writer.write(b"data")
    reactor.advance(0)
    assert reactor.getWriters() == [tr]
    assert tr.doWrite() is main.CONNECTION_LOST


def test_would_block_buffers(reactor):
    sock = FakeSocket(error=errno.EAGAIN)
    tr = transport(reactor, sock)
    writer = BatchedWriter(tr)
    writer.write(b"data")
    reactor.advance(0)
    assert reactor.getWriters() == [tr]
    sock.error = None
    tr.doWrite()
    assert sock.sent == [b"data"]


def test_abort_drops_gathered_data(reactor):
    sock = FakeSocket()
    tr = transport(reactor, sock)
    writer = BatchedWriter(tr)
    writer.write(b"data")
    tr.abortConnection()
    reactor.advance(0)
    assert sock.sent == []


def test_data_written_before_lose_connection_is_sent_before_the_close(reactor):
    sock = FakeSocket()
    tr = transport(reactor, sock)
    writer = BatchedWriter(tr)
    writer.write(b"data")
    tr.loseConnection()
    reactor.advance(0)
    assert sock.sent == []  # not sent behind the reactor's back of a closing transport...
    assert tr.doWrite() is main.CONNECTION_DONE  # ...but by the reactor, before closing
    assert sock.sent == [b"data"]


def test_pull_producer_keeps_twisteds_path(reactor):
    sock = FakeSocket()
    tr = transport(reactor, sock)

    class Pull:
        def resumeProducing(self) -> None:
            pass

        def stopProducing(self) -> None:
            pass

    tr.registerProducer(Pull(), False)
    writer = BatchedWriter(tr)
    writer.write(b"data")
    reactor.advance(0)
    assert sock.sent == []
    assert reactor.getWriters() == [tr]


def test_tls_transport_keeps_twisteds_path(reactor):
    sock = FakeSocket()
    tr = transport(reactor, sock)
    writer = BatchedWriter(tr)
    tr.TLS = True  # startTLS after the writer was made
    written: list[bytes] = []
    tr.write = written.append  # what the TLS layer would encrypt
    writer.write(b"data")
    reactor.advance(0)
    assert written == [b"data"]
    assert sock.sent == []


def test_other_transports_are_written_directly():
    tr = StringTransport()
    writer = BatchedWriter(tr)
    writer.write(b"a")
    writer.write_sequence((b"b", b"c"))
    writer.flush()
    assert tr.value() == b"abc"


# --- TLS: DirectSendTLSProtocol -------------------------------------------------------------


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory) -> ServerTLS:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = certs.generate_self_signed(["localhost"])
    (folder / "gateway.crt").write_bytes(certs.certificate_pem(cert))
    (folder / "gateway.key").write_bytes(certs.private_key_pem(key))
    return ServerTLS(TLSConfig(certificates=(CertificateConfig(cert=str(folder / "gateway.crt"),
                                                                key=str(folder / "gateway.key")),)), "test.yaml")


class Received(Protocol):
    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


def tls_pair(reactor: MemoryReactorClock, sock: FakeSocket, server_tls: ServerTLS):
    """A server-side TLS connection on a real tcp.Server, and an in-memory pyOpenSSL client."""
    factory = DirectSendTLSFactory(server_tls, False, Factory.forProtocol(Received), clock=reactor)
    tr = transport(reactor, sock)
    tls = factory.buildProtocol(("127.0.0.1", 50000))
    tr.protocol = tls
    tls.makeConnection(tr)
    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client = SSL.Connection(client_context, None)
    client.set_connect_state()
    return tr, tls, client


def shuttle(client: SSL.Connection, tls, sock: FakeSocket) -> None:
    """Carry the client's bytes to the server and what the server sent back to the client."""
    try:
        client.do_handshake()
    except SSL.WantReadError:
        pass
    while True:
        try:
            outgoing = client.bio_read(65536)
        except SSL.WantReadError:
            outgoing = b""
        if outgoing:
            tls.dataReceived(outgoing)
        incoming = b"".join(sock.sent)
        sock.sent.clear()
        if incoming:
            client.bio_write(incoming)
            try:
                client.do_handshake()
            except SSL.WantReadError:
                pass
        if not outgoing and not incoming:
            return


def test_tls_records_leave_without_the_writability_round_trip(reactor, server_tls):
    sock = FakeSocket()
    tr, tls, client = tls_pair(reactor, sock, server_tls)
    shuttle(client, tls, sock)
    assert tls._handshakeDone  # the server's handshake flights were sent straight from the read
    assert reactor.getWriters() == []
    client.send(b"GET / HTTP/1.1\r\n\r\n")
    shuttle(client, tls, sock)
    assert tls.wrappedProtocol.data == b"GET / HTTP/1.1\r\n\r\n"
    tls.write(b"HTTP/1.1 200 OK\r\n")
    tls.write(b"content-length: 0\r\n\r\n")
    assert sock.sent == []  # Twisted's TLS layer gathers the iteration's writes...
    reactor.advance(0)
    assert reactor.getWriters() == []  # ...and the records are sent at once, not on a writable event
    client.bio_write(b"".join(sock.sent))
    assert client.recv(1024) == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


def test_tls_records_queue_behind_buffered_bytes(reactor, server_tls):
    sock = FakeSocket()
    tr, tls, client = tls_pair(reactor, sock, server_tls)
    shuttle(client, tls, sock)
    sock.room = 10  # the kernel takes only 10 bytes
    tls.write(b"x" * 1000)
    reactor.advance(0)
    assert reactor.getWriters() == [tr]  # the rest waits in Twisted's buffer
    tls.write(b"y" * 1000)
    reactor.advance(0)
    sock.room = None
    tr.doWrite()
    client.bio_write(b"".join(sock.sent))
    received = b""
    while len(received) < 2000:
        received += client.recv(4096)
    assert received == b"x" * 1000 + b"y" * 1000


def test_twisted_tls_still_writes_through_flush_send_bio():
    # DirectSendTLSProtocol overrides this private method: it must still be the one that writes.
    source = inspect.getsource(TLSMemoryBIOProtocol._flushSendBIO)
    assert "self.transport.write" in source
