"""TLS on a client connection: the standard library's ``ssl.SSLObject`` over memory BIOs.

:class:`TLSServerTransport` is the protocol of the TCP connection and the
transport of the HTTP protocol above it: it decrypts what the socket
delivers, hands the plaintext up, and encrypts what the HTTP protocol writes.

Why not Twisted's ``TLSMemoryBIOProtocol``: it drives pyOpenSSL through cffi,
allocates a zeroed 32 KiB buffer for every read and every check of the send
BIO, and learns that there is nothing more to read from an exception; with
its per-connection write timer and producer wrappers that made TLS cost the
gateway about 28 µs per keep-alive request on top of plain HTTP (against
about 4 µs for nginx).  The same work through ``ssl.SSLObject`` (OpenSSL
behind CPython's C module) measured 2.5 µs against pyOpenSSL's 8.7 µs for
the library calls alone.

What it does, as Twisted's TLS layer does:

- Handshake first: writes made before it completes are held and sent after
  it; a failed handshake sends OpenSSL's alert and closes the connection.
- Writes of one reactor iteration are encrypted together (one ``SSL_write``,
  so small responses become one record) and the records are sent at once
  with :meth:`~gateway.http.sending.BatchedWriter.send_now`, in the iteration's shared batch.
- ``loseConnection`` sends what was written, then ``close_notify``, then
  closes TCP; a peer's ``close_notify`` ends the connection like a TCP EOF.
- Producers are registered with the TCP transport itself: this layer keeps
  no buffer of its own after the handshake (records go straight to the TCP
  transport, whose full buffer pauses the producer), and pausing reading
  pauses the socket.  Plaintext already decrypted from one read is delivered
  whole, as a TCP transport delivers its whole read.
"""

from __future__ import annotations

import ssl
from typing import Any, Callable, Final

from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.http.sending import BatchedWriter, batch_for

log: Final = Logger(namespace="gateway.tls")

#: Plaintext asked of OpenSSL per read: more than a TLS record holds (16 KiB).
_READ_SIZE: Final = 65536


@implementer(ITransport)
class TLSServerTransport(Protocol):
    """Server-side TLS between one TCP connection and the protocol *wrapped*; see the module docstring."""

    transport: Any  # (the TCP transport once connected: Twisted types it as ITransport | None)

    def __init__(self, wrap: Callable[[ssl.MemoryBIO, ssl.MemoryBIO], ssl.SSLObject], wrapped: Any,
                 reactor: Any) -> None:
        self._wrap = wrap  # (incoming, outgoing) -> ssl.SSLObject
        self.wrapped = wrapped
        self._batch = batch_for(reactor)
        self._held: list[bytes] = []  # written since the last flush (or before the handshake ended)
        self._handshake_done = False
        self._closed = False  # no more TLS: closing (close_notify sent), or the connection failed

    # -- the TCP side (Protocol) -------------------------------------------------

    def connectionMade(self) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = self._wrap(self._incoming, self._outgoing)
        self._sender = BatchedWriter(self.transport)  # (its send_now only: the records of a batch leave at once)
        self.wrapped.makeConnection(self)

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        self._incoming.write(data)
        if not self._handshake_done:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                self._send_records()
                return
            except ssl.SSLError as error:
                self._fail(f"TLS handshake failed: {error.reason or error}")
                return
            self._handshake_done = True
            if self._held:
                self._batch.add(self)
        tls = self._tls
        incoming = self._incoming
        deliver = self.wrapped.dataReceived
        while True:
            try:
                plaintext = tls.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break  # the rest of a record is still on its way
            except ssl.SSLError as error:
                self._fail(f"TLS error: {error.reason or error}")
                return
            if not plaintext:  # (a memory BIO has no EOF: empty means close_notify)
                self._close()  # the client sends no more requests: close like on a TCP EOF
                return
            deliver(plaintext)
            if self._closed or (not incoming.pending and not tls.pending()):
                break
        if self._outgoing.pending:
            self._send_records()  # handshake messages, session tickets

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closed = True
        self._held.clear()
        self.wrapped.connectionLost(reason)

    # -- the application side (ITransport) --------------------------------------

    def write(self, data: bytes) -> None:
        if self._closed or not data:
            return
        held = self._held
        if not held and self._handshake_done:
            self._batch.add(self)
        held.append(data)

    def writeSequence(self, data) -> None:
        for item in data:
            self.write(item)

    def flush(self) -> None:
        """Encrypt what was written in this iteration and send it (called by the batch)."""
        held = self._held
        if not held or self._closed or not self._handshake_done:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        try:
            self._tls.write(data)
        except ssl.SSLError as error:
            self._fail(f"TLS error: {error.reason or error}")
            return
        self._send_records()

    def loseConnection(self) -> None:
        if self._closed:
            return
        if self._handshake_done:
            self.flush()
            if not self._closed:
                try:
                    self._tls.unwrap()  # close_notify; the peer's answer is not waited for
                except ssl.SSLError:
                    pass  # SSLWantReadError: it was sent
        self._close()

    def abortConnection(self) -> None:
        self._closed = True
        self._held.clear()
        self.transport.abortConnection()

    def getPeer(self):
        return self.transport.getPeer()

    def getHost(self):
        return self.transport.getHost()

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.transport.setTcpNoDelay(enabled)

    @property
    def disconnecting(self) -> bool:
        return self._closed or self.transport.disconnecting

    def registerProducer(self, producer, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    # -- internals ------------------------------------------------------------------

    def _send_records(self) -> None:
        records = self._outgoing.read()
        if records:
            self._sender.send_now(records)

    def _fail(self, why: str) -> None:
        """A handshake or record the TLS library refused: send its alert, then close."""
        log.debug("{client}: {why}", client=self.transport.getPeer().host, why=why)
        self._close()

    def _close(self) -> None:
        """No more TLS: send what OpenSSL still has (close_notify, an alert), then close TCP."""
        self._closed = True
        self._held.clear()
        self._send_records()
        # (A producer registered by the protocol and paused by a full buffer would hold it open.)
        self.transport.unregisterProducer()
        self.transport.loseConnection()


class TLSServerFactory(Factory):
    """Wraps every connection of *wrapped* (an HTTP factory) in :class:`TLSServerTransport`."""

    noisy = False

    def __init__(self, wrap: Callable[[ssl.MemoryBIO, ssl.MemoryBIO], ssl.SSLObject], wrapped: Any,
                 reactor: Any) -> None:
        self._wrap = wrap
        self.wrapped = wrapped
        self._reactor = reactor

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def logPrefix(self) -> str:
        return f"{self.wrapped.logPrefix()} (TLS)"

    def buildProtocol(self, addr) -> TLSServerTransport | None:
        wrapped = self.wrapped.buildProtocol(addr)
        if wrapped is None:
            return None
        return TLSServerTransport(self._wrap, wrapped, self._reactor)
