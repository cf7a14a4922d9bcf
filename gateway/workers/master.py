"""The master's side of ``workers: N``: start, watch, restart, inform and stop the workers.

:class:`WorkerSet` starts N workers once the backends listen, each with the
listening sockets as inherited file descriptors, and restarts a worker that
dies (logged, with a growing delay when one keeps dying at once).  On stop
it sends every worker SIGTERM, which makes it drain, and waits for all of
them (SIGKILL after ``shutdown_timeout`` + 5 s).

:class:`FleetUpstreams` is the master's :class:`~gateway.live.LiveUpstreams`:
it validates and persists operators' changes as a single process does, then
sends the configuration and the live changes to every worker and answers
once each has applied them.  The master's own pools carry no traffic, so
the counters the admin API shows are the workers' added up, and a removed
server is gone once every worker has finished draining it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from gateway.core.config import GatewayConfig
from gateway.live import LiveUpstreams
from gateway.processes import process_environment
from gateway.readiness import BackendsReady
from gateway.tls_tickets import SharedTicketKeys, new_ticket_keys
from gateway.workers.channel import Channel

log = Logger(namespace="gateway.workers")

#: The worker's pipes: 0 master -> worker, 3 worker -> master (2 is its stderr, relayed).
TO_WORKER, FROM_WORKER = 0, 3
#: The first inherited listening socket's file descriptor in a worker.
FIRST_SOCKET_FD = 10
KILL_GRACE = 5.0  # seconds after shutdown_timeout before a worker that has not exited is killed
QUICK_DEATH = 1.0  # a worker that dies sooner than this after starting is restarted with a delay
MAX_RESTART_DELAY = 30.0

ServerKey = tuple[str, str]  # (upstream name, server address)


class _PipeToWorker:
    """The write side of the channel: the worker's standard input."""

    def __init__(self, process) -> None:
        self._process = process

    def write(self, data: bytes) -> None:
        self._process.writeToChild(TO_WORKER, data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self._process.closeChildFD(TO_WORKER)


class WorkerProcess(ProcessProtocol):
    """One worker as the master sees it."""

    def __init__(self, workers: WorkerSet, number: int, started: float) -> None:
        self.workers = workers
        self.number = number
        self.started = started
        self.pid: int | None = None
        self.channel = Channel(self._message)
        self._stderr = b""

    def connectionMade(self) -> None:
        self.pid = self.transport.pid
        self.channel.makeConnection(_PipeToWorker(self.transport))

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == FROM_WORKER:
            self.channel.dataReceived(data)
        else:  # its stderr: what it printed before its logging started (a crash at import, say)
            *lines, self._stderr = (self._stderr + data).split(b"\n")
            for line in lines:
                self._relay_stderr(line)

    def _relay_stderr(self, line: bytes) -> None:
        if line.strip():
            log.error("worker {worker}: {line}", worker=self.number, line=line.decode("utf-8", "replace"))

    def _message(self, kind: str, *args: Any) -> None:
        if kind == "log":
            level, text = args
            log.emit(LogLevel.lookupByName(level), "worker {worker}: {text}", worker=self.number, text=text)
        elif kind == "gone":
            self.workers.server_gone(self.number, args[0], args[1])

    def processEnded(self, reason: Failure) -> None:
        self._relay_stderr(self._stderr)
        if self.channel.open:
            self.channel.connectionLost(reason)
        self.workers.ended(self, reason)


class WorkerSet(Service):
    """Starts ``config.workers`` workers and keeps that many running until the gateway stops."""

    def __init__(self, reactor, config: GatewayConfig, backends: BackendsReady | None) -> None:
        self._reactor = reactor
        self._count = config.workers
        self._shutdown_timeout = config.shutdown_timeout
        self._backends = backends
        self.sockets: list = []  # the master's SharedSocketServices, in listener order
        self.live: LiveUpstreams | None = None  # the master's FleetUpstreams, set by the service builder
        # Every worker's TLS contexts get these, so that any worker resumes any worker's sessions.
        self.ticket_keys = SharedTicketKeys(new_ticket_keys())
        self._workers: dict[int, WorkerProcess] = {}
        self._restarts: dict[int, int] = {}
        self._quick_deaths: dict[int, int] = {}
        self._pending_starts: dict[int, Any] = {}
        self._draining: dict[ServerKey, set[int]] = {}
        self._departures: dict[ServerKey, list[Deferred]] = {}
        self._all_ended: Deferred | None = None
        self._kill_timer = None
        self.setName("workers")

    # -- life cycle ------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()

        def start_all(_: object = None) -> None:
            for number in range(1, self._count + 1):
                self._start(number)

        if self._backends is not None:
            self._backends.ready().addCallback(start_all)
        else:
            self._reactor.callWhenRunning(start_all)

    def _start(self, number: int) -> None:
        self._pending_starts.pop(number, None)
        if not self.running:
            return
        child_fds: dict[int, Any] = {TO_WORKER: "w", 1: 1, 2: "r", FROM_WORKER: "r"}
        sockets = []
        for index, listener in enumerate(self.sockets):
            fd, family = listener.inheritable(number)
            child_fds[FIRST_SOCKET_FD + index] = fd
            sockets.append((FIRST_SOCKET_FD + index, family))
        worker = WorkerProcess(self, number, self._reactor.seconds())
        self._reactor.spawnProcess(worker, sys.executable, [sys.executable, "-m", "gateway.workers.child"],
                                   env=process_environment(), path=os.getcwd(), childFDs=child_fds)
        self._workers[number] = worker
        worker.channel.send("start", number, self.live.config, self.live.changes, sockets, self.ticket_keys.keys)
        log.info("worker {worker} started (pid {pid})", worker=number, pid=worker.pid)

    def ended(self, worker: WorkerProcess, reason: Failure) -> None:
        """A worker exited: forget what it was draining; restart it unless the gateway is stopping."""
        if self._workers.get(worker.number) is worker:
            del self._workers[worker.number]
        for key in list(self._draining):
            self._settle(key, worker.number)
        how = _exit_description(reason)
        # The gateway is stopping once a stop signal has arrived, before the stop() that Twisted's handler
        # queues has stopped this service: a worker signalled at the same moment (systemd signals the
        # whole control group) may have drained and exited in between, and is not to be restarted.
        if not self.running or getattr(self._reactor, "shutting_down", False):
            log.info("worker {worker} (pid {pid}) stopped ({how})", worker=worker.number, pid=worker.pid, how=how)
            if not self._workers and self._all_ended is not None and not self._all_ended.called:
                self._all_ended.callback(None)
            return
        lived = self._reactor.seconds() - worker.started
        quick = self._quick_deaths[worker.number] = self._quick_deaths.get(worker.number, 0) + 1 \
            if lived < QUICK_DEATH else 0
        delay = min(2.0 ** (quick - 1), MAX_RESTART_DELAY) if quick else 0.0
        self._restarts[worker.number] = self._restarts.get(worker.number, 0) + 1
        log.error("worker {worker} (pid {pid}) exited ({how}); restarting it in {delay} s", worker=worker.number,
                  pid=worker.pid, how=how, delay=delay)
        self._pending_starts[worker.number] = self._reactor.callLater(delay, self._start, worker.number)

    def stopService(self) -> Deferred | None:
        """SIGTERM to every worker (each drains its requests); fires when all have exited."""
        super().stopService()
        for call in self._pending_starts.values():
            call.cancel()
        self._pending_starts.clear()
        if not self._workers:
            return None
        self._all_ended = Deferred()
        for worker in list(self._workers.values()):
            _signal(worker, "TERM")
        self._kill_timer = self._reactor.callLater(self._shutdown_timeout + KILL_GRACE, self._kill_all)

        def stop_timer(result: object) -> object:
            if self._kill_timer.active():
                self._kill_timer.cancel()
            return result

        return self._all_ended.addBoth(stop_timer)

    def _kill_all(self) -> None:
        for worker in list(self._workers.values()):
            log.warn("worker {worker} (pid {pid}) still running {grace} s after the shutdown timeout: killing it",
                     worker=worker.number, pid=worker.pid, grace=KILL_GRACE)
            _signal(worker, "KILL")

    # -- telling the workers -------------------------------------------------------------

    def publish(self, config: GatewayConfig, changes, reload: bool) -> Deferred:
        """Every worker applies *config* and *changes*; fires once all running workers have.

        A *reload* (SIGHUP) also gives the workers new TLS session-ticket keys, as nginx makes new ones.
        """
        if reload:
            self.ticket_keys.keys = new_ticket_keys()
        calls = []
        for number, worker in list(self._workers.items()):
            if not worker.channel.open:
                continue
            applied = worker.channel.call("apply", config, changes, reload, self.ticket_keys.keys)
            applied.addCallback(self._draining_in, number)
            applied.addErrback(lambda failure, n=number: log.warn("worker {worker} did not apply the change: "
                                                                  "{error}", worker=n,
                                                                  error=failure.getErrorMessage()))
            calls.append(applied)
        return DeferredList(calls)

    def ask_all(self, *question: Any) -> Deferred:
        """Every running worker's answer: fires with ``[(worker, answer or None)]``."""
        workers = [worker for worker in self._workers.values() if worker.channel.open]
        answers = [worker.channel.call(*question).addErrback(lambda _: None) for worker in workers]
        return DeferredList(answers).addCallback(
            lambda results: [(worker, answer) for worker, (_, answer) in zip(workers, results)])

    def restarts(self, number: int) -> int:
        return self._restarts.get(number, 0)

    # -- servers draining in the workers ------------------------------------------------------

    def _draining_in(self, removing: list[ServerKey], number: int) -> None:
        """A worker's reply to ``apply``: the servers it is still draining (all others it is not)."""
        still = {tuple(key) for key in removing}
        for key in list(self._draining):
            if key not in still:
                self._settle(key, number)
        for key in still:
            self._draining.setdefault(key, set()).add(number)

    def server_gone(self, number: int, upstream: str, address: str) -> None:
        self._settle((upstream, address), number)

    def _settle(self, key: ServerKey, number: int) -> None:
        workers = self._draining.get(key)
        if workers is None:
            return
        workers.discard(number)
        if not workers:
            del self._draining[key]
            log.info("upstream {name}: server {address} removed from every worker", name=key[0], address=key[1])
            for waiter in self._departures.pop(key, ()):
                waiter.callback(None)

    def is_draining(self, key: ServerKey) -> bool:
        return bool(self._draining.get(key))

    def gone(self, key: ServerKey) -> Deferred:
        """Fires once no worker is draining the server *key* any more."""
        if not self.is_draining(key):
            return succeed(None)
        waiter: Deferred = Deferred()
        self._departures.setdefault(key, []).append(waiter)
        return waiter


class FleetUpstreams(LiveUpstreams):
    """The master's live upstreams: changes are checked and persisted here, then applied by every worker."""

    def __init__(self, reactor, context, config: GatewayConfig, changes, store, workers: WorkerSet) -> None:
        super().__init__(reactor, context, config, changes, store)
        self._workers = workers

    def apply_config(self, config: GatewayConfig, changes=None) -> Deferred:
        super().apply_config(config, changes)
        return self._workers.publish(self.config, self.changes, reload=True)

    def add_server(self, name: str, address: str, weight: int) -> Deferred:
        return super().add_server(name, address, weight).addCallback(self._published)

    def update_server(self, name: str, address: str, weight: int | None, state: str | None) -> Deferred:
        return super().update_server(name, address, weight, state).addCallback(self._published)

    def remove_server(self, name: str, address: str) -> Deferred:
        key = (name, address)
        if self._upstream(name).pool.server(address) is None and self._workers.is_draining(key):
            return succeed((False, self._workers.gone(key)))  # removed before, still draining out
        removed = super().remove_server(name, address)

        def published(_: object) -> tuple[bool, Deferred]:
            gone = self._workers.gone(key)
            return gone.called, gone

        return removed.addCallback(self._published).addCallback(published)

    def _published(self, result: Any) -> Deferred:
        return self._workers.publish(self.config, self.changes, reload=False).addCallback(lambda _: result)

    def _server_gone(self, name: str, address: str) -> None:
        """The master's own pool lets a server go at once (it carries no traffic); the workers' drain counts."""
        self._departures.pop((name, address), None)

    def describe(self, name: str | None = None) -> Deferred:
        """The master's view (servers, weights, states) with the workers' counters and health added up."""
        own = super().describe(name)
        return self._workers.ask_all("describe", name).addCallback(lambda answers: _merged(
            own, [answer for _, answer in answers if answer is not None], name))

    def describe_workers(self) -> Deferred:
        def table(answers: list[tuple[WorkerProcess, Any]]) -> dict[str, Any]:
            rows = []
            for worker, answer in sorted(answers, key=lambda item: item[0].number):
                counters = answer or {}  # None: the worker did not answer (it is going away)
                rows.append({"id": worker.number, "pid": worker.pid, "restarts": self._workers.restarts(worker.number),
                             "active_requests": counters.get("active_requests", 0),
                             "total_requests": counters.get("total_requests", 0)})
            return {"pid": os.getpid(), "workers": rows}

        return self._workers.ask_all("counters").addCallback(table)


_COUNTERS = ("active_requests", "total_requests", "recent_failures", "total_failures")


def _merged(own: dict[str, Any], answers: list[dict[str, Any]], name: str | None) -> dict[str, Any]:
    """*own* with each server's counters summed over the workers' *answers*; ``down`` if any worker has it down."""
    own_upstreams = own["upstreams"] if name is None else [own]
    by_name = {upstream["name"]: upstream for upstream in own_upstreams}
    for answer in answers:
        for upstream in (answer["upstreams"] if name is None else [answer]):
            mine = by_name.get(upstream["name"])
            if mine is None:
                continue
            servers = {server["address"]: server for server in mine["servers"]}
            for theirs in upstream["servers"]:
                server = servers.get(theirs["address"])
                if server is None:  # still draining in that worker: shown until it is gone everywhere
                    server = servers[theirs["address"]] = dict(theirs, **{counter: 0 for counter in _COUNTERS})
                    mine["servers"].append(server)
                for counter in _COUNTERS:
                    server[counter] += theirs[counter]
                if theirs["state"] == "down":
                    server["state"] = "down"
    return own


def _exit_description(reason: Failure) -> str:
    if isinstance(reason.value, ProcessTerminated) and reason.value.signal is not None:
        return f"signal {reason.value.signal}"
    if isinstance(reason.value, (ProcessDone, ProcessTerminated)):
        return f"exit code {reason.value.exitCode}"
    return reason.getErrorMessage()


def _signal(worker: WorkerProcess, name: str) -> None:
    try:
        worker.transport.signalProcess(name)
    except ProcessExitedAlready:
        pass
