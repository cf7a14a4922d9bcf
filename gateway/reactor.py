"""The reactor the gateway runs on: Twisted's epoll reactor, without a logging context per event.

``EPollReactor.doPoll`` hands every ready socket to its handler through
``twisted.python.log.callWithLogger``, which builds a fresh legacy logging
context (two dictionary copies, a context-stack push and pop, four Python
calls) so that old-style ``log.msg`` lines written while handling the event
carry the connection's name as their ``[system]``.  With two socket events
per proxied request that was a tenth of the gateway's time under keep-alive
load (py-spy), and the gateway never reads that context: its own log events
(``twisted.logger.Logger``) are labelled by namespace, and the legacy lines
Twisted itself writes while handling an event (an unhandled exception in a
protocol) still appear, with ``[-]`` in place of the connection's name.

:class:`GatewayReactor` changes nothing else; :func:`install_if_none` installs it
unless a reactor is already installed (``twistd --reactor=...`` keeps the
operator's choice).  Only where ``epoll`` exists (Linux); elsewhere Twisted's
default reactor is used.
"""

from __future__ import annotations

import errno
import sys

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # no select.epoll: not Linux
    EPollReactor = None


if EPollReactor is not None:
    class GatewayReactor(EPollReactor):
        """``EPollReactor`` dispatching socket events without a legacy logging context."""

        def doPoll(self, timeout: float | None) -> None:
            try:
                events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
            except OSError as error:
                if error.errno == errno.EINTR:
                    return
                raise
            selectables = self._selectables
            handle = self._doReadOrWrite
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is not None:
                    handle(selectable, fd, event)

        doIteration = doPoll


def install_if_none() -> None:
    """Install :class:`GatewayReactor` as the global reactor unless one is installed already."""
    if "twisted.internet.reactor" in sys.modules or EPollReactor is None:
        return
    from twisted.internet.main import installReactor

    installReactor(GatewayReactor())
