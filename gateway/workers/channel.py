"""Messages between the master and a worker: length-prefixed pickles over a pipe pair.

Both ends are the same program, started by the master, so pickle carries
the frozen configuration dataclasses as they are.  A message is a tuple
whose first item names it.  :meth:`Channel.call` sends a request and
returns a Deferred that fires with the other end's reply; the other end's
handler may answer with a value or a Deferred.  Messages on one channel are
handled in the order they were sent.
"""

from __future__ import annotations

import itertools
import pickle
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ConnectionDone
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

_CALL, _REPLY, _REPLY_FAILED = "call", "reply", "reply-failed"


class ChannelClosed(Exception):
    """The other end went away before it replied."""


class Channel(Int32StringReceiver):
    MAX_LENGTH = 64 * 1024 * 1024  # a configuration with thousands of upstreams still fits

    def __init__(self, handler: Callable[..., Any], on_lost: Callable[[Failure], None] | None = None) -> None:
        self._handler = handler
        self._on_lost = on_lost
        self._ids = itertools.count(1)
        self._waiting: dict[int, Deferred] = {}
        self.open = False

    def connectionMade(self) -> None:
        self.open = True

    def send(self, *message: Any) -> None:
        """Send a message that needs no reply (dropped when the channel is closed)."""
        if self.open:
            self.sendString(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))

    def call(self, *message: Any) -> Deferred:
        """Send a request; the Deferred fires with the reply, or fails with ChannelClosed."""
        if not self.open:
            raise ChannelClosed("the channel is closed")
        call_id = next(self._ids)
        waiting: Deferred = Deferred()
        self._waiting[call_id] = waiting
        self.send(_CALL, call_id, *message)
        return waiting

    def stringReceived(self, data: bytes) -> None:
        message = pickle.loads(data)  # noqa: S301 - from our own process tree only
        kind = message[0]
        if kind == _CALL:
            call_id = message[1]
            answer = maybeDeferred(self._handler, *message[2:])
            answer.addCallbacks(lambda value: self.send(_REPLY, call_id, value),
                                lambda failure: self.send(_REPLY_FAILED, call_id, failure.getErrorMessage()))
        elif kind in (_REPLY, _REPLY_FAILED):
            waiting = self._waiting.pop(message[1], None)
            if waiting is not None:
                if kind == _REPLY:
                    waiting.callback(message[2])
                else:
                    waiting.errback(Failure(RuntimeError(message[2])))
        else:
            self._handler(*message)

    def lengthLimitExceeded(self, length: int) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.open = False
        waiting, self._waiting = self._waiting, {}
        for deferred in waiting.values():
            deferred.errback(Failure(ChannelClosed("the other end went away")))
        if self._on_lost is not None:
            self._on_lost(reason)
