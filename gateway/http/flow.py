"""Flow control between the client connection and the backend connection.

Twisted transports pause and resume their producer as their write buffer
fills and drains.  A connection's reading can be paused for more than one
reason at once (the other side's buffer is full, a pipelined request is
waiting its turn), so :class:`ReadGate` counts the reasons and only resumes
reading when none is left.
"""

from __future__ import annotations

from typing import Final

from twisted.internet.interfaces import IPushProducer, ITransport
from zope.interface import implementer

#: The reason a peer's full write buffer gives (via pauseProducing).
BACKPRESSURE: Final = "backpressure"


@implementer(IPushProducer)
class ReadGate:
    """Pauses and resumes reading from one transport, for named reasons."""

    __slots__ = ("_transport", "_reasons", "paused")

    def __init__(self, transport: ITransport) -> None:
        self._transport = transport
        self._reasons: set[str] = set()
        #: Reading is paused, for at least one reason (an attribute: read on every request).
        self.paused = False

    def pause(self, reason: str) -> None:
        if not self._reasons:
            self._transport.pauseProducing()
            self.paused = True
        self._reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self._reasons:
            self._reasons.discard(reason)
            if not self._reasons:
                self.paused = False
                self._transport.resumeProducing()

    def clear(self) -> None:
        """Resume reading whatever the reasons were."""
        if self._reasons:
            self._reasons.clear()
            self.paused = False
            self._transport.resumeProducing()

    # IPushProducer, for the transport on the other side to throttle us.
    def pauseProducing(self) -> None:
        self.pause(BACKPRESSURE)

    def resumeProducing(self) -> None:
        self.resume(BACKPRESSURE)

    def stopProducing(self) -> None:
        """The consumer went away: the exchange that owns both sides handles that."""


@implementer(IPushProducer)
class BackendThrottle:
    """The client connection's producer for its whole life: throttles whichever backend is answering.

    Registered on the client transport once, when the connection opens, rather
    than once per response (registering and unregistering a producer is six
    Python calls through Twisted's transport layers, on every request).  When
    the client's write buffer fills, the backend connection currently attached
    stops being read; a backend attached while the buffer is still full starts
    paused.  It must be unregistered before the client transport is closed:
    Twisted keeps a connection with a registered, paused producer open.
    """

    __slots__ = ("source", "paused")

    def __init__(self) -> None:
        self.source: ReadGate | None = None
        self.paused = False

    def attach(self, source: ReadGate) -> None:
        self.source = source
        if self.paused:
            source.pause(BACKPRESSURE)

    def pauseProducing(self) -> None:
        self.paused = True
        if self.source is not None:
            self.source.pause(BACKPRESSURE)

    def resumeProducing(self) -> None:
        self.paused = False
        if self.source is not None:
            self.source.resume(BACKPRESSURE)

    def stopProducing(self) -> None:
        """The client connection is gone: the exchange using it handles that."""
