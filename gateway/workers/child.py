"""A worker process of ``workers: N``: ``python -m gateway.workers.child``, started by the master only.

It reads its orders from the master on standard input (file descriptor 0)
and writes to it on file descriptor 3 (see :mod:`gateway.workers.channel`);
the listening sockets arrive as inherited file descriptors.  The first
message, ``start``, carries the configuration, the live changes, those
descriptors and the TLS session-ticket keys (:mod:`gateway.tls_tickets`);
the worker then serves traffic until SIGTERM (drain, then exit) or until
the master goes away (its pipe closes: the same drain).
SIGINT and SIGHUP are the master's business and are ignored here.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet.stdio import StandardIO
from twisted.logger import LogLevel, eventAsText, globalLogBeginner
from twisted.python.failure import Failure

from gateway.core.config import GatewayConfig
from gateway.core.state import LiveChanges
from gateway.reactor import freeze_startup_objects
from gateway.tls_tickets import SharedTicketKeys
from gateway.workers.channel import Channel
from gateway.workers.master import FROM_WORKER, TO_WORKER


class Worker:
    """Carries out the master's messages in this process."""

    def __init__(self, reactor) -> None:
        self._reactor = reactor
        self.channel = Channel(self._message, self._master_gone)
        self._live = None
        self._applier = None
        self._ticket_keys: SharedTicketKeys | None = None

    def log_event(self, event: dict) -> None:
        """A log observer: every event goes to the master, which logs it with this worker's number."""
        level = event.get("log_level", LogLevel.info)
        self.channel.send("log", level.name, eventAsText(event, includeTimestamp=False, includeSystem=False))

    def _message(self, kind: str, *args: Any) -> Any:
        if kind == "start":
            self._start(*args)
        elif kind == "apply":
            return self._apply(*args)
        elif kind == "describe":
            return self._live.describe(*args)
        elif kind == "counters":
            return self._live.counters()
        return None

    def _start(self, number: int, config: GatewayConfig, changes: LiveChanges, sockets: list[tuple[int, int]],
               ticket_keys: bytes) -> None:
        from gateway.service import build_worker_service

        self._ticket_keys = SharedTicketKeys(ticket_keys)
        service, self._live, self._applier = build_worker_service(
            config, changes, self._reactor, sockets, self._ticket_keys,
            lambda name, address: self.channel.send("gone", name, address))
        service.privilegedStartService()
        service.startService()
        self._reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
        freeze_startup_objects()

    def _apply(self, config: GatewayConfig, changes: LiveChanges, reload: bool,
               ticket_keys: bytes) -> list[tuple[str, str]]:
        """A SIGHUP reload (*reload*, with new ticket keys) or an operator's change; answers with the
        servers still draining."""
        if reload:
            self._ticket_keys.keys = ticket_keys
            self._applier.apply(config, changes)
        else:
            self._live.apply_config(self._live.config, changes)
        return self._live.removing()

    def _master_gone(self, reason: Failure) -> None:
        if self._reactor.running:
            self._reactor.stop()  # drains like SIGTERM: no worker outlives its master


def main() -> None:
    from gateway.reactor import install_if_none

    install_if_none()
    from twisted.internet import reactor

    worker = Worker(reactor)
    globalLogBeginner.beginLoggingTo([worker.log_event], redirectStandardIO=False)
    StandardIO(worker.channel, stdin=TO_WORKER, stdout=FROM_WORKER, reactor=reactor)

    def ignore_master_signals() -> None:  # after the reactor installed its own handlers
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    reactor.callWhenRunning(ignore_master_signals)
    reactor.run()
    # Drained and stopped.  Python's shutdown puts SIGTERM's default action back, so a late
    # SIGTERM (the master's, after systemd's to the whole group) would make this clean exit a kill.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == "__main__":
    main()
