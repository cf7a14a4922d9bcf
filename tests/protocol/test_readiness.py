"""BackendsReady on a MemoryReactorClock: it opens when every backend answers, or at the timeout."""

from __future__ import annotations

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from gateway.readiness import BackendsReady


def _answer(reactor: MemoryReactorClock, index: int) -> None:
    factory = reactor.tcpClients[index][2]
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())


def _refuse(reactor: MemoryReactorClock, index: int) -> None:
    factory = reactor.tcpClients[index][2]
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))


def test_opens_once_every_backend_answers() -> None:
    reactor = MemoryReactorClock()
    ready = BackendsReady(reactor, [("127.0.0.1", 8001), ("127.0.0.1", 8002)], timeout=15)
    fired: list[None] = []
    ready.ready().addCallback(fired.append)
    ready.start()
    assert len(reactor.tcpClients) == 2
    _answer(reactor, 0)
    _refuse(reactor, 1)
    assert fired == []
    reactor.advance(0.1)  # the refused one is tried again
    assert len(reactor.tcpClients) == 3
    _answer(reactor, 2)
    assert fired == [None]
    ready.ready().addCallback(fired.append)  # later callers get it at once
    assert fired == [None, None]


def test_opens_anyway_after_the_timeout() -> None:
    reactor = MemoryReactorClock()
    ready = BackendsReady(reactor, [("127.0.0.1", 8001)], timeout=1, interval=0.5)
    fired: list[None] = []
    ready.ready().addCallback(fired.append)
    ready.start()
    for _ in range(5):
        _refuse(reactor, len(reactor.tcpClients) - 1)
        if fired:
            break
        reactor.advance(0.5)
    assert fired == [None]
    assert len(reactor.tcpClients) <= 4  # bounded: about timeout / interval tries
