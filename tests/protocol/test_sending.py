"""gateway.http.sending: writes gathered per reactor iteration, sent with one send() per transport.

Real ``twisted.internet.tcp.Server`` transports around a fake socket and a
``MemoryReactorClock``: no sockets, no real time.
"""

from __future__ import annotations

import errno

import pytest
from twisted.internet import error, main
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from gateway.http.sending import BatchedWriter
from protocol_harness import FakeSocket, Producer, tcp_server as transport


@pytest.fixture
def reactor() -> MemoryReactorClock:
    return MemoryReactorClock()


class LossRecorder(Protocol):
    def __init__(self) -> None:
        self.reasons: list[Failure] = []

    def connectionLost(self, reason: Failure = None) -> None:
        self.reasons.append(reason)


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
    assert sock.sent == [b"data"] and not sock.closed  # sent as the reactor would, before it closes
    assert tr.doWrite() is main.CONNECTION_DONE


def test_direct_sends_resume_once_twisteds_buffer_is_empty(reactor):
    sock = FakeSocket(room=2)
    tr = transport(reactor, sock)
    writer = BatchedWriter(tr)
    writer.write(b"abcd")
    reactor.advance(0)
    assert sock.sent == [b"ab"] and reactor.getWriters() == [tr]
    sock.room = None
    assert tr.doWrite() is None  # the reactor sends the rest...
    assert sock.sent == [b"ab", b"cd"] and reactor.getWriters() == []
    writer.write(b"ef")
    reactor.advance(0)
    assert sock.sent == [b"ab", b"cd", b"ef"] and reactor.getWriters() == []  # ...and the writer sends again


def test_writes_to_a_closed_connection_are_dropped(reactor):
    sock = FakeSocket()
    protocol = LossRecorder()
    tr = transport(reactor, sock, protocol)
    writer = BatchedWriter(tr)
    writer.write(b"first")
    reactor.advance(0)
    tr.connectionLost(Failure(main.CONNECTION_LOST))
    writer.write(b"late")
    reactor.advance(0)
    assert sock.sent == [b"first"] and reactor.getWriters() == []


def test_lose_connection_closes_after_the_iteration_without_a_writable_event(reactor):
    sock = FakeSocket()
    protocol = LossRecorder()
    tr = transport(reactor, sock, protocol)
    tr.startReading()
    writer = BatchedWriter(tr)
    writer.write(b"last answer")
    writer.flush()
    writer.lose_connection()
    assert reactor.getReaders() == [] and reactor.getWriters() == []  # no more reads; no writability round trip
    assert tr.disconnecting and protocol.reasons == []
    reactor.advance(0)
    assert sock.sent == [b"last answer"] and sock.closed
    assert [reason.type for reason in protocol.reasons] == [error.ConnectionDone]


def test_what_is_written_after_lose_connection_is_sent_before_the_close(reactor):
    sock = FakeSocket()
    protocol = LossRecorder()
    tr = transport(reactor, sock, protocol)
    writer = BatchedWriter(tr)
    writer.lose_connection()
    writer.write(b"late")
    reactor.advance(0)
    assert sock.sent == [b"late"] and sock.closed
    assert [reason.type for reason in protocol.reasons] == [error.ConnectionDone]


def test_lose_connection_with_unsent_bytes_keeps_twisteds_path(reactor):
    sock = FakeSocket(room=2)
    tr = transport(reactor, sock, LossRecorder())
    writer = BatchedWriter(tr)
    writer.write(b"abcdef")
    writer.flush()
    writer.lose_connection()
    reactor.advance(0)
    assert reactor.getWriters() == [tr] and not sock.closed
    sock.room = None
    assert tr.doWrite() is main.CONNECTION_DONE
    assert b"".join(sock.sent) == b"abcdef"


def test_tls_transport_keeps_twisteds_path(reactor):
    sock = FakeSocket()
    tr = transport(reactor, sock)
    tr.TLS = True  # (startTLS)
    written: list[bytes] = []
    tr.write = written.append  # what the TLS layer would encrypt
    writer = BatchedWriter(tr)
    writer.write(b"data")
    writer.flush()
    assert written == [b"data"]
    assert sock.sent == []


def test_send_now_sends_what_was_gathered_first(reactor):
    sock = FakeSocket()
    writer = BatchedWriter(transport(reactor, sock))
    writer.write(b"a")
    writer.send_now(b"b")
    assert sock.sent == [b"a", b"b"]
    reactor.advance(0)
    assert sock.sent == [b"a", b"b"]


def test_other_transports_are_written_directly():
    tr = StringTransport()
    writer = BatchedWriter(tr)
    writer.write(b"a")
    writer.write_sequence((b"b", b"c"))
    writer.flush()
    assert tr.value() == b"abc"
