"""The reactor the gateway runs on, and what its garbage collector scans.

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
A plain read on a TCP connection (the event nearly every request is made
of) is handled by the reactor itself (:mod:`gateway.reactor_events`, compiled
with the request path): ``recv``, then the protocol's ``dataReceived``, with
Twisted's outcomes for an error, an end of file or an exception, but without
the three Python frames Twisted's dispatch adds (about 3% of the gateway's
instructions per proxied request, before the request path was compiled).  And what
must happen once an iteration's events are handled (sending the responses
they produced, :mod:`gateway.http.sending`) is called at the end of
``doPoll`` (:meth:`GatewayReactor.call_after_events`) rather than through a
``callLater(0)`` timer made, pushed on the timer heap and popped again on
every iteration.  It also reads the clock once per iteration, into
``time``, for the request path (:mod:`gateway.http.clock`).

:class:`GatewayReactor` also answers a second SIGINT or SIGTERM during the
graceful shutdown, even one that arrives before the first has been acted
on, with one log line (Twisted's handler would call ``stop()`` again and log
a ``ReactorNotRunning`` traceback); it changes nothing else.
:func:`install_if_none` installs it
unless a reactor is already installed (``twistd --reactor=...`` keeps the
operator's choice).  Only where ``epoll`` exists (Linux); elsewhere Twisted's
default reactor is used.

:func:`freeze_startup_objects` runs once the services are up: everything made
at start-up (modules, the configuration, the route table and pools) goes to
the collector's permanent generation, so its full passes only look at what
traffic made.  They had been scanning the whole start-up heap every few
thousand connections: with a new connection per request (each leaves a
reference cycle behind, the protocol and its parser) the p99 latency fell
from about 30 ms to about 11 ms (wrk -c50, ``Connection: close``).
"""

from __future__ import annotations

import errno
import gc
import sys
from typing import Callable

from twisted.logger import Logger
from twisted.python import log

from gateway.http.clock import IterationTime
from gateway.reactor_events import dispatch_events

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # no select.epoll: not Linux
    EPollReactor = None


_log = Logger(namespace="gateway")

if EPollReactor is not None:
    class GatewayReactor(EPollReactor):
        """``EPollReactor`` dispatching socket events without a legacy logging context, reading TCP
        connections itself, with :meth:`call_after_events` (see the module docstring)."""

        def doPoll(self, timeout: float | None) -> None:
            try:
                events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
            except OSError as error:
                if error.errno == errno.EINTR:
                    return
                raise
            self.time.value = self.seconds()
            self._dispatching = True
            try:
                dispatch_events(self, events)
            finally:
                self._dispatching = False
                after, self._after_events = self._after_events, []
                for function in after:
                    try:
                        function()
                    except BaseException:
                        log.err(None, "Unhandled error after handling the events")

        doIteration = doPoll

        def call_after_events(self, function: Callable[[], object]) -> None:
            """Call *function* once the events of this poll are handled, before the next poll.

            Outside event handling (in a timer), ``callLater(0, function)``:
            the same moment, without a timer on every iteration (a
            ``DelayedCall``, its heap insertion and removal: about a tenth of
            the work of an iteration that proxies one request).
            """
            if self._dispatching:
                self._after_events.append(function)
            else:
                self.callLater(0, function)

        def __init__(self) -> None:
            super().__init__()
            self._dispatching = False  # doPoll is handing out events
            self._after_events: list[Callable[[], object]] = []
            #: The time when the last poll returned or timed calls began to run (see gateway.http.clock).
            self.time = IterationTime(self.seconds())
            self.shutting_down = False  # stop() called, or a stop signal's stop() queued

        def runUntilCurrent(self) -> None:
            self.time.value = self.seconds()
            super().runUntilCurrent()

        def stop(self) -> None:
            super().stop()
            self.shutting_down = True

        def sigInt(self, number: int, frame=None) -> None:
            if not self._already_stopping("SIGINT"):
                super().sigInt(number, frame)

        def sigTerm(self, number: int, frame=None) -> None:
            if not self._already_stopping("SIGTERM"):
                super().sigTerm(number, frame)

        def _already_stopping(self, name: str) -> bool:
            """A second stop signal during the drain: say so (Twisted's own handler logs a traceback).

            Twisted's handler only queues ``stop()`` (``callFromThread``), so the
            first signal marks the shutdown at once: a second one arriving before
            the queued call runs (a worker's SIGTERM from its master and from
            systemd, which signals the whole control group) is the same request.
            """
            if self.shutting_down:
                _log.info("{signal} ignored: already shutting down (the requests in flight have until "
                          "shutdown_timeout)", signal=name)
                return True
            self.shutting_down = True
            return False


def install_if_none() -> None:
    """Install :class:`GatewayReactor` as the global reactor unless one is installed already."""
    if "twisted.internet.reactor" in sys.modules or EPollReactor is None:
        return
    from twisted.internet.main import installReactor

    installReactor(GatewayReactor())


def freeze_startup_objects() -> None:
    """Collect, then move every object alive now out of the collector's reach (``gc.freeze``)."""
    gc.collect()
    gc.freeze()
