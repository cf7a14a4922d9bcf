"""gateway.workers: the master-worker channel, the drain bookkeeping and the merged counters, in memory."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test.iosim import connect, FakeTransport

from gateway.core.config import parse_config
from gateway.workers.channel import Channel, ChannelClosed
from gateway.workers.master import WorkerSet, _merged

CONFIG = """\
listeners: [{port: 0}]
upstreams: {web: {servers: [{address: "127.0.0.1:9001"}]}}
routes: [{path: /, upstream: web}]
workers: 2
"""


class Recorder:
    """A channel handler that records what it got and answers from a table."""

    def __init__(self, answers: dict | None = None) -> None:
        self.got: list[tuple] = []
        self.answers = answers or {}

    def __call__(self, kind, *args):
        self.got.append((kind, *args))
        answer = self.answers.get(kind)
        return answer(*args) if callable(answer) else answer


def channel_pair(master_handler, worker_handler):
    master, worker = Channel(master_handler), Channel(worker_handler)
    pump = connect(master, FakeTransport(master, isServer=False), worker, FakeTransport(worker, isServer=True))
    return master, worker, pump


def test_a_call_gets_the_other_ends_answer_and_plain_messages_arrive_in_order():
    worker_side = Recorder({"describe": lambda name: {"name": name, "servers": []}})
    master, worker, pump = channel_pair(Recorder(), worker_side)
    master.send("start", 1, {"config": True})
    answer = master.call("describe", "web")
    pump.flush()
    assert worker_side.got == [("start", 1, {"config": True}), ("describe", "web")]
    assert answer.result == {"name": "web", "servers": []}


def test_a_deferred_answer_is_sent_when_it_fires():
    later: Deferred = Deferred()
    master, worker, pump = channel_pair(Recorder(), Recorder({"apply": lambda *args: later}))
    answer = master.call("apply", "config", "changes", True)
    pump.flush()
    assert not answer.called
    later.callback([("web", "127.0.0.1:9001")])
    pump.flush()
    assert answer.result == [("web", "127.0.0.1:9001")]


def test_a_failed_handler_fails_the_call_with_its_message():
    def broken(*args):
        raise ValueError("no such upstream")

    master, worker, pump = channel_pair(Recorder(), Recorder({"describe": broken}))
    answer = master.call("describe", "nope")
    pump.flush()
    failures = []
    answer.addErrback(failures.append)
    assert "no such upstream" in failures[0].getErrorMessage()


def test_calls_waiting_when_the_other_end_goes_away_fail_with_channel_closed():
    lost = []
    master = Channel(Recorder(), on_lost=lost.append)
    worker = Channel(Recorder({"describe": lambda name: Deferred()}))  # never answers
    pump = connect(master, FakeTransport(master, isServer=False), worker, FakeTransport(worker, isServer=True))
    answer = master.call("describe", None)
    pump.flush()
    worker.transport.loseConnection()
    pump.flush()
    failures = []
    answer.addErrback(failures.append)
    assert failures and failures[0].check(ChannelClosed)
    assert lost and not master.open
    with pytest.raises(ChannelClosed):
        master.call("describe", None)


def workers() -> WorkerSet:
    return WorkerSet(MemoryReactorClock(), parse_config(CONFIG, "gateway.yaml"), None)


def test_a_server_is_gone_once_every_worker_that_was_draining_it_says_so():
    fleet = workers()
    key = ("web", "127.0.0.1:9001")
    fleet._draining_in([key], 1)
    fleet._draining_in([list(key)], 2)  # pickled tuples may come back as lists
    gone = fleet.gone(key)
    fleet.server_gone(1, *key)
    assert not gone.called
    fleet.server_gone(2, *key)
    assert gone.called and not fleet.is_draining(key)


def test_a_worker_that_reports_nothing_draining_or_exits_no_longer_holds_a_departure():
    fleet = workers()
    key = ("web", "127.0.0.1:9001")
    fleet._draining_in([key], 1)
    fleet._draining_in([key], 2)
    gone = fleet.gone(key)
    fleet._draining_in([], 1)  # its next answer no longer lists the server: drained
    assert not gone.called
    fleet._settle(key, 2)  # what ended() does for every key when worker 2 exits
    assert gone.called
    assert fleet.gone(key).called  # nothing draining: fires at once


class ExitedWorker:
    number, pid, started = 1, 4321, 0.0


@pytest.mark.parametrize("shutting_down", [False, True])
def test_a_worker_that_exits_once_a_stop_signal_has_arrived_is_not_restarted(shutting_down):
    """systemd signals the master and its workers together: a worker may exit before the stop() that
    the master's signal handler queued has stopped the WorkerSet."""
    fleet = workers()
    fleet.startService()
    fleet._reactor.shutting_down = shutting_down  # (what GatewayReactor's stop signal handlers set at once)
    worker = ExitedWorker()
    fleet._workers[1] = worker
    fleet.ended(worker, Failure(ProcessDone(0)))
    assert fleet.restarts(1) == (0 if shutting_down else 1)
    assert bool(fleet._pending_starts) is not shutting_down
    assert 1 not in fleet._workers


def server(address: str, **fields) -> dict:
    values = {"address": address, "weight": 1, "state": "up", "active_requests": 0, "total_requests": 0,
              "recent_failures": 0, "total_failures": 0, "removing": False}
    values.update(fields)
    return values


def test_merged_counters_are_the_workers_sums_and_down_anywhere_shows_down():
    own = {"upstreams": [{"name": "web", "balance": "round_robin",
                          "servers": [server("a:1", weight=3), server("b:1")]}]}
    worker_1 = {"upstreams": [{"name": "web", "balance": "round_robin",
                               "servers": [server("a:1", weight=3, total_requests=30, active_requests=1),
                                           server("b:1", total_requests=10, state="down", total_failures=2)]}]}
    worker_2 = {"upstreams": [{"name": "web", "balance": "round_robin",
                               "servers": [server("a:1", weight=3, total_requests=33),
                                           server("b:1", total_requests=11),
                                           server("c:1", total_requests=5, active_requests=1, removing=True,
                                                  state="draining")]}]}
    merged = _merged(own, [worker_1, worker_2], None)["upstreams"][0]["servers"]
    assert [(s["address"], s["total_requests"], s["active_requests"], s["state"]) for s in merged] == [
        ("a:1", 63, 1, "up"), ("b:1", 21, 0, "down"), ("c:1", 5, 1, "draining")]
    assert merged[1]["total_failures"] == 2 and merged[0]["weight"] == 3 and merged[2]["removing"] is True


def test_merged_for_one_upstream():
    own = {"name": "web", "balance": "round_robin", "servers": [server("a:1")]}
    answer = {"name": "web", "balance": "round_robin", "servers": [server("a:1", total_requests=4)]}
    assert _merged(own, [answer, answer], "web")["servers"][0]["total_requests"] == 8
