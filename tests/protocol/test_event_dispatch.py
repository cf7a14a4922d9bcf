"""gateway.reactor: GatewayReactor's event dispatch and the start-up freeze of the garbage collector.

A GatewayReactor instance is made here but never installed or run: one
``doPoll`` at a time, on a socket pair.
"""

from __future__ import annotations

import gc
import socket

import pytest
from twisted.internet.abstract import FileDescriptor
from twisted.internet.error import ConnectionDone

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
