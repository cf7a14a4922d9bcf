"""The per-event work of :class:`gateway.reactor.GatewayReactor`, compiled with the request path.

``dispatch_events`` is what the reactor does with the events of one poll:
each ready socket goes to its handler, and a plain read on a TCP connection
(the event nearly every request is made of) is handled here: ``recv``, then
the protocol's ``dataReceived``, with Twisted's outcomes for an error, an
end of file or an exception.  It runs once per socket event, so it is in
:data:`gateway.compiled.COMPILED_MODULES`; the reactor class itself is not
(mypyc compiles no class defined under a condition, and it has to be).
"""

from __future__ import annotations

import errno
import sys
from typing import Any, Final

from twisted.internet import tcp
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.python import log

#: epoll's "readable" event (select.EPOLLIN, where select has epoll).
EPOLLIN: Final = 1
#: The connection classes whose reads are handled here: exact classes (not subclasses),
#: and only while they read the way this copies (Connection.doRead).
_TCP_CONNECTIONS: Final = frozenset(kind for kind in (tcp.Server, tcp.Client)
                             if kind.doRead is tcp.Connection.doRead
                             and kind._dataReceived is tcp.Connection._dataReceived)


def dispatch_events(reactor: Any, events: list[tuple[int, int]]) -> None:
    """Hand each of *events* (``(fd, event mask)``, from the reactor's poll) to its selectable."""
    selectables: dict[int, Any] = reactor._selectables  # (typed: get() is then a C call, not a method lookup)
    handle = reactor._doReadOrWrite
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        if event != EPOLLIN or type(selectable) not in _TCP_CONNECTIONS:
            handle(selectable, fd, event)
            continue
        # A read on a TCP connection: what _doReadOrWrite, Connection.doRead and
        # _dataReceived do for it, without their three Python frames.
        why: BaseException | None = None
        try:
            data = selectable.socket.recv(selectable.bufferSize)
        except OSError as error:
            if error.args[0] != errno.EWOULDBLOCK:
                why = CONNECTION_LOST
        else:
            if data:
                try:
                    selectable.protocol.dataReceived(data)
                    continue
                except BaseException:
                    why = sys.exc_info()[1]
                    log.err()
            else:
                why = CONNECTION_DONE
        if why is not None:
            reactor._disconnectSelectable(selectable, why, True)
