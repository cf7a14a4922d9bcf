"""gateway.reactor: GatewayReactor's event dispatch and the start-up freeze of the garbage collector.

A GatewayReactor instance is made here but never installed or run: one
``doPoll`` at a time, on a socket pair, or on a real TCP connection accepted
on loopback (whose reads ``doPoll`` handles itself).
"""

from __future__ import annotations

import gc
import socket

import pytest
from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.python import log

from gateway.reactor import GatewayReactor, freeze_startup_objects


class Reader(FileDescriptor):
    """Reads one socket of a pair; what doRead returns or raises is up to the test."""

    def __init__(self, reactor, sock: socket.socket, outcome=None) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.outcome = outcome
        self.received: list[bytes] = []
        self.lost = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self):
        self.received.append(self.sock.recv(100))
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def connectionLost(self, reason) -> None:
        self.lost = reason
        super().connectionLost(reason)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_a_readable_socket_is_read(pair):
    reactor = GatewayReactor()
    reader = Reader(reactor, pair[0])
    reactor.addReader(reader)
    pair[1].sendall(b"ping")
    reactor.doPoll(1.0)
    assert reader.received == [b"ping"]
    assert reader.lost is None
    reactor.removeReader(reader)


def test_what_doread_returns_disconnects(pair):
    reactor = GatewayReactor()
    reader = Reader(reactor, pair[0], outcome=ConnectionDone())
    reactor.addReader(reader)
    pair[1].sendall(b"bye")
    reactor.doPoll(1.0)
    assert reader.lost is not None and reader.lost.check(ConnectionDone)
    assert reader not in reactor.getReaders()


def test_an_exception_in_doread_is_logged_and_disconnects(pair):
    reactor = GatewayReactor()
    reader = Reader(reactor, pair[0], outcome=RuntimeError("boom"))
    reactor.addReader(reader)
    pair[1].sendall(b"x")
    reactor.doPoll(1.0)
    assert reader.lost is not None and reader.lost.check(RuntimeError)
    assert reader not in reactor.getReaders()


def test_freeze_startup_objects_moves_live_objects_out_of_the_collectors_passes():
    before = gc.get_freeze_count()
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()


class Recorder(Protocol):
    """A TCP connection's protocol that records what reaches it (and raises *error* on data, if set)."""

    error: BaseException | None = None

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost = None

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        if self.error is not None:
            raise self.error

    def connectionLost(self, reason=None) -> None:
        self.lost = reason


@pytest.fixture
def accepted():
    """A GatewayReactor listening on loopback, one connected client socket, and the accepted side's protocol."""
    reactor = GatewayReactor()
    protocols: list[Recorder] = []
    port = reactor.listenTCP(0, Factory.forProtocol(lambda: protocols.append(Recorder()) or protocols[-1]),
                             interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    for _ in range(20):
        reactor.doPoll(0.1)  # the listening port accepts
        if protocols:
            break
    assert protocols, "the connection was not accepted"
    (protocol,) = protocols
    assert type(protocol.transport) is tcp.Server  # the class doPoll reads itself
    yield reactor, client, protocol
    client.close()
    port.stopListening()
    if protocol.lost is None:
        protocol.transport.abortConnection()


def poll_until(reactor, done) -> None:
    for _ in range(20):
        reactor.doPoll(0.1)
        if done():
            return


def test_tcp_data_reaches_the_protocol_and_the_peers_close_ends_the_connection(accepted):
    reactor, client, protocol = accepted
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    poll_until(reactor, lambda: protocol.received)
    assert b"".join(protocol.received) == b"GET / HTTP/1.1\r\n\r\n"
    assert protocol.lost is None
    client.close()
    poll_until(reactor, lambda: protocol.lost is not None)
    assert protocol.lost is not None and protocol.lost.check(ConnectionDone)
    assert protocol.transport not in reactor.getReaders()


def test_an_exception_in_datareceived_on_tcp_is_logged_and_disconnects(accepted):
    reactor, client, protocol = accepted
    protocol.error = RuntimeError("boom")
    logged: list[dict] = []
    log.addObserver(logged.append)
    try:
        client.sendall(b"x")
        poll_until(reactor, lambda: protocol.lost is not None)
    finally:
        log.removeObserver(logged.append)
    assert protocol.received == [b"x"]
    assert protocol.lost is not None and protocol.lost.check(RuntimeError)
    assert protocol.transport not in reactor.getReaders()
    assert any(event.get("isError") and "boom" in str(event.get("failure")) for event in logged)


class Notifier(Reader):
    """A reader that records its read in *order*, and asks for *after* to run once the poll's events are handled."""

    def __init__(self, reactor, sock: socket.socket, order: list[str], name: str, after=None) -> None:
        super().__init__(reactor, sock)
        self.order = order
        self.name = name
        self.after = after

    def doRead(self):
        super().doRead()
        self.order.append(f"read {self.name}")
        if self.after is not None:
            self.reactor.call_after_events(self.after)


def test_call_after_events_runs_once_every_event_of_the_poll_is_handled():
    reactor = GatewayReactor()
    order: list[str] = []
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        first = Notifier(reactor, pairs[0][0], order, "a", after=lambda: order.append("after"))
        second = Notifier(reactor, pairs[1][0], order, "b")
        reactor.addReader(first)
        reactor.addReader(second)
        for _, peer in pairs:
            peer.sendall(b"x")
        reactor.doPoll(1.0)
        assert sorted(order[:2]) == ["read a", "read b"] and order[2:] == ["after"]
        assert reactor.getDelayedCalls() == []  # no timer was needed
        reactor.doPoll(0.0)
        assert order[2:] == ["after"]  # once
    finally:
        for pair in pairs:
            for sock in pair:
                sock.close()


def test_call_after_events_outside_event_handling_is_a_zero_delay_timer():
    reactor = GatewayReactor()
    called: list[str] = []
    reactor.call_after_events(lambda: called.append("x"))
    (timer,) = reactor.getDelayedCalls()
    assert timer.getTime() <= reactor.seconds()
    reactor.runUntilCurrent()
    assert called == ["x"]


def test_an_exception_after_events_is_logged_and_the_next_function_still_runs(pair):
    reactor = GatewayReactor()
    order: list[str] = []
    logged: list[dict] = []

    def fail() -> None:
        raise RuntimeError("after boom")

    class TwoAfters(Notifier):
        def doRead(self):
            super().doRead()  # queues fail
            self.reactor.call_after_events(lambda: order.append("second"))

    reader = TwoAfters(reactor, pair[0], order, "a", after=fail)
    reactor.addReader(reader)
    pair[1].sendall(b"x")
    log.addObserver(logged.append)
    try:
        reactor.doPoll(1.0)
    finally:
        log.removeObserver(logged.append)
    assert order == ["read a", "second"]
    assert any(event.get("isError") and "after boom" in str(event.get("failure")) for event in logged)
    assert reader.lost is None  # the connection is not blamed for it


@pytest.mark.parametrize("handler", ["sigTerm", "sigInt"])
def test_a_second_stop_signal_before_the_first_is_acted_on_is_ignored(handler, monkeypatch):
    """Twisted's handler queues stop() for the next iteration: two signals in one must queue one stop."""
    reactor = GatewayReactor()
    queued = []
    monkeypatch.setattr(reactor, "callFromThread", lambda function, *args: queued.append(function))
    getattr(reactor, handler)(15)
    getattr(reactor, handler)(15)
    assert queued == [reactor.stop]
    assert reactor.shutting_down


class TimeReader(Reader):
    """A reader that records the reactor's ``time.now`` when its event is handled, then moves the clock on."""

    def __init__(self, reactor, sock: socket.socket, seen: list[float], clock: list[float]) -> None:
        super().__init__(reactor, sock)
        self.seen = seen
        self.clock = clock

    def doRead(self):
        super().doRead()
        self.seen.append(self.reactor.time.now)
        self.clock[0] += 1.0  # handling the event took a second


def test_now_is_read_once_per_poll_and_again_when_timed_calls_run(monkeypatch):
    reactor = GatewayReactor()
    clock = [100.0]
    monkeypatch.setattr(reactor, "seconds", lambda: clock[0])
    seen: list[float] = []
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        for sock, peer in pairs:
            reactor.addReader(TimeReader(reactor, sock, seen, clock))
            peer.sendall(b"x")
        reactor.doPoll(1.0)
        assert seen == [100.0, 100.0]  # both events of the poll see the time it returned, not 101
        reactor.callLater(0, lambda: seen.append(reactor.time.now))
        clock[0] = 150.0
        reactor.runUntilCurrent()
        assert seen[2:] == [150.0]
        for _, peer in pairs:
            peer.sendall(b"y")
        clock[0] = 160.0
        reactor.doPoll(1.0)
        assert seen[3:] == [160.0, 160.0]
    finally:
        for pair in pairs:
            for sock in pair:
                sock.close()
