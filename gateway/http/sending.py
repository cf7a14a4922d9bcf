"""Writes to plain TCP transports, sent together once per reactor iteration.

Twisted's ``FileDescriptor.write`` appends to a buffer and registers the
socket for writability: the bytes leave on the next reactor iteration, after
an ``epoll_ctl`` to add the write interest, a write event dispatched through
the logging context, and another ``epoll_ctl`` to remove it.  A proxy writes
one small message per request on each side, so that is two extra events and
four system calls per request.

:class:`BatchedWriter` keeps the batching (every write of one iteration
leaves after the iteration's events are handled, so a peer that is woken up
finds several messages waiting) but not the round trip: the first write to an
idle transport schedules one call for the whole iteration, shared by every
transport (on :class:`~gateway.reactor.GatewayReactor`, run once the poll's
events are handled, by ``call_after_events``; on other reactors, a
``callLater(0)``), and that call sends what each transport gathered with one
``send()``.  (Sending at once, as asyncio does, was measured too: no
faster here, with a worse p99, since every send then wakes its peer alone.)

This is the one place that touches Twisted's private transport attributes
(``dataBuffer``, ``_tempDataLen``, ``_aborting``...).  It is used only for
the exact classes :class:`twisted.internet.tcp.Server` and
:class:`twisted.internet.tcp.Client` (on TLS listeners the HTTP protocol's
transport is a :class:`~gateway.http.tls_transport.TLSServerTransport`, which
joins the same batch and sends its records with
:meth:`BatchedWriter.send_now` on its TCP transport's writer).  A gathered
write is sent with the socket's own ``send`` (Twisted's ``writeSomeData``
adds a memoryview and ``untilConcludes``) when the transport's buffer is
empty and it was not aborted: what the reactor would do on its next writable
event.  Anything else, and whatever the kernel did not take, goes through
the ordinary ``transport.write``, which keeps Twisted's buffering, producer
pausing (``pauseProducing`` when its buffer is full) and error handling (a
failed send, on a reset or already closed socket, is left to the reactor,
which reports the lost connection or drops the data of a closed one).

What is read per send is kept small, since it is two sends per proxied
request and each read of a Twisted attribute is a dictionary lookup: the
writer remembers when it handed bytes to ``transport.write`` and looks at
Twisted's buffer only until that is empty again (the buffer cannot fill
otherwise, writes all going through the writer).  A transport found doing
TLS (``startTLS``) when its writer is made is written the ordinary way.
Three states of a Twisted transport that the gateway never creates are not
looked at: ``startTLS`` after the writer is made, a pull producer (its
``resumeProducing`` is driven by Twisted's buffer draining; the gateway's
producers are all push producers) and a half-close (``loseWriteConnection``:
after it the socket refuses the send, and Twisted drops the data).
Sending on a transport that is closing (``loseConnection`` with an empty
buffer) is what Twisted does too: the bytes leave, then it closes.

Ordering: every write to a transport must go through its writer.  Gathered
data is sent even when ``loseConnection`` (or
:meth:`BatchedWriter.lose_connection`) was called in between (the reactor
closes only once the transport's buffer is empty, and the batch runs before
the next poll), though callers flush first where they can; after
``abortConnection`` it is dropped, as Twisted drops its buffer.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Final, Protocol

from twisted.internet import tcp
from twisted.internet.main import CONNECTION_DONE
from twisted.python.failure import Failure

#: The transport classes whose internals this module knows (the exact classes, not subclasses).
_PLAIN_TCP: Final = frozenset({tcp.Server, tcp.Client})
#: Per transport class: whether BatchedWriter may send on it directly (see _STATE).
_SENDS_DIRECTLY: Final[dict[type, bool]] = {}
_STATE: Final = ("dataBuffer", "_tempDataLen", "connected", "disconnecting", "_aborting", "TLS", "socket", "reactor")


class Flushable(Protocol):
    """What joins a batch besides a BatchedWriter: a TLS transport (gateway.http.tls_transport).

    (Typed ``BatchedWriter | Flushable`` in the batch: compiled, flushing a
    BatchedWriter is then a direct C call rather than a method lookup by name.)
    """

    def flush(self) -> None: ...


class _Batch:
    """The writers with data gathered in this reactor iteration."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._pending: list[BatchedWriter | Flushable] = []
        self._scheduled = False
        # GatewayReactor runs it once the poll's events are handled; other reactors at their next timer run.
        self.after_events: Callable[[Callable[[], object]], object] = (
            getattr(reactor, "call_after_events", None) or partial(reactor.callLater, 0))

    def add(self, writer: BatchedWriter | Flushable) -> None:
        self._pending.append(writer)
        if not self._scheduled:
            self._scheduled = True
            self.after_events(self._run)

    def _run(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for writer in pending:
            writer.flush()


_batches: Final[dict[int, _Batch]] = {}


def _sends_directly(transport: Any) -> bool:
    """Whether *transport* is a plain TCP one with the internals this module reads, not doing TLS.

    The class is checked on the first transport of each class only: opening a connection is hot too.
    """
    kind = type(transport)
    direct = _SENDS_DIRECTLY.get(kind)
    if direct is None:
        direct = _SENDS_DIRECTLY[kind] = kind in _PLAIN_TCP and all(hasattr(transport, name) for name in _STATE)
    return direct and not transport.TLS


def batch_for(reactor: Any) -> _Batch:
    """The batch of *reactor*'s current iteration: ``add(writer)`` calls ``writer.flush()`` once at its end."""
    batch = _batches.get(id(reactor))
    if batch is None or batch._reactor is not reactor:
        batch = _batches[id(reactor)] = _Batch(reactor)
    return batch


class BatchedWriter:
    """``write(data)`` for one transport; see the module docstring."""

    __slots__ = ("write", "write_sequence", "_transport", "_held", "_batch", "_socket_send", "_twisted_may_hold")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._held: list[bytes] = []
        self._batch: _Batch | None
        self._socket_send: Callable[[bytes], int] | None
        #: Twisted's buffer may hold bytes: look at it before sending (at first, it may hold earlier writes).
        self._twisted_may_hold = True
        if _sends_directly(transport):
            self._batch = batch_for(transport.reactor)
            self._socket_send = transport.socket.send
            self.write = self._gather
            self.write_sequence = self._gather_sequence
        else:
            self._batch = None
            self._socket_send = None
            self.write = transport.write
            self.write_sequence = transport.writeSequence

    def _gather(self, data: bytes) -> None:
        held = self._held
        if not held:
            batch = self._batch  # (batch.add(self), inline: this runs for every response)
            batch._pending.append(self)
            if not batch._scheduled:
                batch._scheduled = True
                batch.after_events(batch._run)
        held.append(data)

    def _gather_sequence(self, data: list[bytes] | tuple[bytes, ...]) -> None:
        held = self._held
        if not held:
            self._batch.add(self)
        held.extend(data)

    def flush(self) -> None:
        """Send what was gathered now."""
        held = self._held
        if not held:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        self._send(data)  # (a writer that gathers has a transport that sends directly)

    def send_now(self, data: bytes) -> None:
        """Send *data* at once, not gathered (with whatever is held: sent first)."""
        if self._batch is None:
            self._transport.write(data)
            return
        self.flush()
        self._send(data)

    def _send(self, data: bytes) -> None:
        """Send on the socket when the reactor would send next, else ``transport.write`` (module docstring)."""
        t = self._transport
        if t._aborting:
            return  # abortConnection drops unsent data
        if self._twisted_may_hold:
            if t.dataBuffer or t._tempDataLen:
                t.write(data)  # behind what Twisted holds
                return
            self._twisted_may_hold = False
        send = self._socket_send
        assert send is not None  # (a writer that sends directly has its socket's send)
        try:
            sent = send(data)
        except OSError:
            sent = 0  # would block, or an error (or a closed socket) that the reactor's own attempt reports
        if sent == len(data):
            return
        # Part sent (the kernel's buffer is full), or nothing: Twisted takes the rest.
        self._twisted_may_hold = True
        t.write(data[sent:] if sent else data)

    def lose_connection(self) -> None:
        """``transport.loseConnection()``, without a round trip through the reactor when all was sent.

        Twisted closes a transport on its next writable event, once its
        buffer is sent, even an empty one: per closed connection two
        ``epoll_ctl`` calls, an empty ``send()`` and one more event to
        dispatch.  A plain TCP transport stops reading now and, if nothing is
        left to send once the iteration's events are handled (and its batch
        sent), closes then: ``stopWriting`` and ``connectionLost``, as
        Twisted's ``loseConnection`` does at once for a transport whose write
        side is shut.  What was written meanwhile is sent first; if the
        kernel did not take it all, Twisted sends the rest and then closes,
        the transport being "disconnecting", as after its own ``loseConnection``.
        """
        t = self._transport
        if self._batch is None or not t.connected or t.disconnecting:
            t.loseConnection()
            return
        t.stopReading()
        t.disconnecting = True
        self._batch.after_events(self._close_if_sent)

    def _close_if_sent(self) -> None:
        t = self._transport
        if not t.connected or t._aborting:
            return  # lost or aborted meanwhile: Twisted is closing it
        self.flush()  # what was written meanwhile leaves first
        if t.dataBuffer or t._tempDataLen:
            return  # left to Twisted, which is waiting to send it (see above)
        t.stopWriting()
        t.connectionLost(Failure(CONNECTION_DONE))
