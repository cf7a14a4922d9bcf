"""``workers: N`` end to end: one master process, N worker processes serving traffic on its sockets.

The real ``twistd -n gateway`` runs with ``workers: 2`` in front of the
session's Gunicorn backends (web-1, web-2, api-1, which name themselves in
``X-Served-By``).  Which worker serves a connection is the kernel's choice,
so the tests find out from the admin API: ``GET /workers`` gives each
worker's pid and its request counters, and the difference in
``total_requests`` before and after some requests says which worker served
them.  Requests go out over fresh connections from several threads at once,
which spreads them over both workers (each accepts on a listening socket of
its own, which the kernel picks by a hash of the connection's addresses);
when a test needs a request in flight on *each* worker, it opens keep-alive
connections until it holds one owned by every worker
(``connections_on_every_worker``).

One module-scoped gateway (``fleet``) serves the tests that do not disturb
it, each on an upstream and route of its own (``/weights/``, ``/live/``,
``/drain/``, ``/reloaded/``; ``/`` for the rest).  Killing a worker, SIGTERM
and SIGKILL to the master, a big reload and ``workers: auto`` get a gateway
of their own.  After every gateway,
no worker process it started (the ``worker N started (pid P)`` lines of its
log) may be left running.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from admin_harness import Background
from harness import (
    GATEWAY_START_TIMEOUT,
    HOST,
    BackendSet,
    Gateway,
    KeepAliveClient,
    free_port,
    gateway_config,
    http_get,
    make_certificates,
    parent_pid,
    parse_served_by,
    process_alive,
    request_on,
    run_gateway_expecting_failure,
    start_gateway,
    tls_client_context,
    tls_connect,
    tls_listener,
    wait_until,
)
from live_helpers import (
    RELOADED,
    admin_config,
    admin_request,
    connect_refused,
    reload_config,
    server_path,
    upstream_servers,
    wait_for_admin,
    wait_for_exit,
)

WORKERS = 2
#: How long a "slow" request keeps a backend (and so a worker) busy.
SLOW_SECONDS = 2.0
#: How twistd exits after a graceful SIGTERM shutdown (it re-raises the signal; see test_shutdown.py).
SIGTERM_EXIT = -signal.SIGTERM
#: Concurrent client threads: enough for the kernel to hand connections to both workers.
CLIENT_THREADS = 8
#: Bound on the bursts of keep-alive connections opened while looking for one per worker.
MAX_PROBE_BURSTS = 6
WORKERS_START_TIMEOUT = 15.0
RESTART_TIMEOUT = 10.0
#: A worker whose master is gone (or who was told to stop) must be gone within this.
EXIT_TIMEOUT = 5.0
SHUTDOWN_TIMEOUT = 10
#: Unused upstreams that make a configuration big (about 1.5 MB pickled for each worker).
FILLER_UPSTREAMS = 10000
BIG_RELOAD_TIMEOUT = 30.0
#: A worker that dies sooner than this after it started is restarted after a delay (gateway.workers.master).
QUICK_DEATH = 1.0

WORKER_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


# -- a gateway with workers -------------------------------------------------------------

@dataclass
class Fleet:
    """A running ``workers: N`` gateway and its admin API."""

    gateway: Gateway
    admin_port: int

    @property
    def port(self) -> int:
        return self.gateway.port

    @property
    def master_pid(self) -> int:
        return self.gateway.process.pid

    def table(self) -> dict[str, Any]:
        """``GET /workers``."""
        status, body = admin_request(self.admin_port, "GET", "/workers")
        assert status == 200, (status, body)
        return body

    def rows(self) -> dict[int, dict[str, Any]]:
        """The workers by id."""
        return {row["id"]: row for row in self.table()["workers"]}

    def totals(self) -> dict[int, int]:
        return {number: row["total_requests"] for number, row in self.rows().items()}

    def wait_for_workers(self, count: int = WORKERS, timeout: float = WORKERS_START_TIMEOUT) -> dict[int, dict]:
        def all_up() -> dict[int, dict] | None:
            rows = self.rows()
            return rows if len(rows) == count and all(row["pid"] for row in rows.values()) else None

        try:
            return wait_until(all_up, timeout, interval=0.1, message=f"{count} workers listed by GET /workers")
        except TimeoutError as error:
            raise AssertionError(f"{error}\n{self.gateway.output()}") from None

    def started_pids(self) -> dict[int, int]:
        """Every worker pid the master logged starting, with the worker's id."""
        return {int(pid): int(number) for number, pid in WORKER_STARTED.findall(self.gateway.stdout_text())}


def fleet_config(port: int, admin_port: int, backends: BackendSet, **extra: Any) -> dict[str, Any]:
    """``/`` -> web (web-1, web-2); ``/weights/`` (3:1), ``/live/`` and ``/drain/`` on upstreams of their own."""
    web1, web2 = backends.web1.address, backends.web2.address
    config = gateway_config(port, web=[web1, web2], workers=WORKERS, shutdown_timeout=SHUTDOWN_TIMEOUT,
                            **admin_config(admin_port))
    config["upstreams"].update({
        "weights": {"servers": [{"address": web1, "weight": 3}, {"address": web2, "weight": 1}]},
        "live": {"servers": [{"address": web1}, {"address": web2}]},
        "drain": {"servers": [{"address": web2}]},
    })
    config["routes"] = [{"path": f"/{name}/", "upstream": name, "strip_prefix": True}
                        for name in ("weights", "live", "drain")] + config["routes"]
    config.update(extra)
    return config


def start_fleet(start: Callable[[dict[str, Any]], Gateway], backends: BackendSet, count: int = WORKERS,
                **extra: Any) -> Fleet:
    """A gateway from ``fleet_config`` (plus ``extra``), once GET /workers lists ``count`` workers."""
    port, admin_port = free_port(), free_port()
    instance = start(fleet_config(port, admin_port, backends, **extra))
    fleet = Fleet(wait_for_admin(instance, admin_port), admin_port)
    fleet.wait_for_workers(count)
    return fleet


def process_age(pid: int) -> float:
    """Seconds since process ``pid`` started (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        start_ticks = int(stat.read().rpartition(")")[2].split()[19])
    with open("/proc/uptime", encoding="ascii") as uptime:
        now = float(uptime.read().split()[0])
    return now - start_ticks / os.sysconf("SC_CLK_TCK")


def assert_no_workers_left(fleet: Fleet) -> None:
    """The gateway has exited; none of the workers it ever started may still run."""
    assert fleet.gateway.process.poll() is not None, "the master is still running"
    pids = fleet.started_pids()
    assert pids, f"no worker was ever started?\n{fleet.gateway.output()}"
    try:
        wait_until(lambda: not any(process_alive(pid) for pid in pids), EXIT_TIMEOUT, interval=0.05,
                   message="every worker gone")
    except TimeoutError:
        left = {pid: number for pid, number in pids.items() if process_alive(pid)}
        raise AssertionError(f"worker processes left behind (pid: worker): {left}") from None


@pytest.fixture(scope="module")
def fleet(backends: BackendSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One ``workers: 2`` gateway for the tests that leave it serving as before."""
    directory = tmp_path_factory.mktemp("fleet")
    instances: list[Gateway] = []

    def start(config: dict[str, Any]) -> Gateway:
        instances.append(start_gateway(config, directory))
        return instances[-1]

    try:
        running = start_fleet(start, backends)
        yield running
    finally:
        for instance in instances:
            instance.stop()
    assert_no_workers_left(running)


@pytest.fixture
def own_fleet(backends: BackendSet, gateway: Callable[..., Gateway]) -> Iterator[Callable[..., Fleet]]:
    """``own_fleet(count=2, **extra)``: a ``workers: 2`` gateway for this test alone (to kill, stop...)."""
    started: list[Fleet] = []

    def factory(count: int = WORKERS, **extra: Any) -> Fleet:
        started.append(start_fleet(gateway, backends, count, **extra))
        return started[-1]

    yield factory
    for each in started:
        each.gateway.stop()
        assert_no_workers_left(each)


# -- clients ----------------------------------------------------------------------------

def served_name(headers: http.client.HTTPMessage) -> str | None:
    value = headers.get("X-Served-By")
    return parse_served_by(value)[0] if value else None


def fan_out(port: int, path: str, count: int, threads: int = CLIENT_THREADS) -> list[tuple[int, str | None]]:
    """``count`` GETs, each on a fresh connection, from ``threads`` threads: [(status, served by)]."""
    def one(_: int) -> tuple[int, str | None]:
        status, headers, _ = http_get(port, path)
        return status, served_name(headers)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, range(count), timeout=60))


def served_by_each(fleet: Fleet, before: dict[int, int]) -> dict[int, int]:
    """How many requests each worker served since ``before`` (``Fleet.totals()``)."""
    after = fleet.totals()
    assert set(after) == set(before), (before, after)
    return {number: after[number] - before[number] for number in sorted(after)}


def connections_on_every_worker(fleet: Fleet, path: str) -> dict[int, KeepAliveClient]:
    """A keep-alive connection owned by each worker.

    The kernel picks a connection's worker by a hash of its addresses, so
    they are opened in bursts of CLIENT_THREADS at once, each with a first
    request on ``path``.  Then each
    is asked ``path`` again, one at a time: the worker whose
    ``total_requests`` went up by one owns it.  Connections that add nothing
    new are closed; at most MAX_PROBE_BURSTS bursts.
    """
    def opened(_: int) -> KeepAliveClient:
        client = KeepAliveClient(fleet.port)
        status, headers, _ = client.get(path)
        assert status == 200, (status, headers)
        return client

    owned: dict[int, KeepAliveClient] = {}
    with ThreadPoolExecutor(max_workers=CLIENT_THREADS) as pool:
        for _ in range(MAX_PROBE_BURSTS):
            for client in list(pool.map(opened, range(CLIENT_THREADS), timeout=30)):
                if len(owned) == WORKERS:
                    client.close()
                    continue
                before = fleet.totals()
                status, headers, _ = client.get(path)
                assert status == 200, (status, headers)
                served = served_by_each(fleet, before)
                owners = [number for number, count in served.items() if count]
                assert len(owners) == 1 and served[owners[0]] == 1, served
                if owners[0] in owned:
                    client.close()
                else:
                    owned[owners[0]] = client
            if len(owned) == WORKERS:
                return owned
    for client in owned.values():
        client.close()
    raise AssertionError(f"{MAX_PROBE_BURSTS} bursts of {CLIENT_THREADS} connections went to workers "
                         f"{sorted(owned)} only")


class Timed:
    """``function()`` in a background thread; ``finished`` is when it returned (time.monotonic())."""

    def __init__(self, function: Callable[[], Any]) -> None:
        self.finished: float | None = None

        def run() -> Any:
            try:
                return function()
            finally:
                self.finished = time.monotonic()

        self._call = Background(run)

    def done(self) -> bool:
        return self._call.done()

    def result(self, timeout: float) -> Any:
        return self._call.result(timeout)


def wait_for_active_everywhere(fleet: Fleet, timeout: float = 5.0) -> dict[int, dict]:
    """Until GET /workers shows a request in flight on every worker."""
    def busy() -> dict[int, dict] | None:
        rows = fleet.rows()
        return rows if len(rows) == WORKERS and all(row["active_requests"] >= 1 for row in rows.values()) else None

    return wait_until(busy, timeout, interval=0.05, message="a request in flight on every worker")


def web_total(fleet: Fleet) -> int:
    """``total_requests`` of upstream ``web``'s servers in GET /upstreams (the workers' counts added up)."""
    return sum(server["total_requests"] for server in upstream_servers(fleet.admin_port, "web").values())


# -- the tests ----------------------------------------------------------------------------

def test_two_workers_are_children_of_the_master_and_both_serve(fleet: Fleet) -> None:
    table = fleet.table()
    master = fleet.master_pid
    assert table["pid"] == master
    rows = table["workers"]
    assert [row["id"] for row in rows] == [1, 2], rows
    pids = [row["pid"] for row in rows]
    assert len(set(pids)) == WORKERS and master not in pids, (master, pids)
    for row in rows:
        assert row["restarts"] == 0, row
        assert process_alive(row["pid"]) and parent_pid(row["pid"]) == master, row
        cmdline = Path(f"/proc/{row['pid']}/cmdline").read_bytes().split(b"\0")
        assert b"gateway.workers.child" in cmdline, cmdline
    web_before = web_total(fleet)
    before = fleet.totals()

    results = fan_out(fleet.port, "/healthz", 200)

    assert Counter(status for status, _ in results) == {200: 200}
    assert {name for _, name in results} == {"web-1", "web-2"}
    served = served_by_each(fleet, before)
    assert sum(served.values()) == 200 and all(count > 0 for count in served.values()), served
    # GET /upstreams adds the workers' counters up.
    assert web_total(fleet) - web_before == 200


def listening_sockets(port: int) -> set[str]:
    """The inodes of the TCP sockets listening on *port* (Linux /proc/net)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if int(fields[1].rpartition(":")[2], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                    inodes.add(fields[9])
    return inodes


def test_each_worker_accepts_on_a_listening_socket_of_its_own(fleet: Fleet) -> None:
    """One socket per worker (SO_REUSEPORT): the kernel spreads new connections evenly over the workers.

    On one shared socket the worker that woke first took every connection
    waiting (Twisted accepts up to a hundred at once).  Here both workers
    are stopped while 40 connections are opened, then resumed: each finds
    its own share waiting.
    """
    assert len(listening_sockets(fleet.port)) == WORKERS
    pids = [row["pid"] for row in fleet.table()["workers"]]
    before = fleet.totals()
    clients: list[socket.socket] = []
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        clients = [socket.create_connection((HOST, fleet.port), timeout=30) for _ in range(40)]
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    try:
        for client in clients:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        for client in clients:
            response = http.client.HTTPResponse(client)
            response.begin()
            response.read()
            assert response.status == 200
    finally:
        for client in clients:
            client.close()
    served = served_by_each(fleet, before)
    # Binomial(40, 1/2): fewer than 5 on either worker has odds of about 2 in 10 million.
    assert sum(served.values()) == 40 and all(count >= 5 for count in served.values()), served


def test_weights_hold_in_aggregate_over_the_workers(fleet: Fleet, backends: BackendSet) -> None:
    before = fleet.totals()

    results = fan_out(fleet.port, "/weights/healthz", 400)

    assert Counter(status for status, _ in results) == {200: 400}
    names = Counter(name for _, name in results)
    assert set(names) == {"web-1", "web-2"}, names
    # Each worker runs smooth weighted round robin on its own: each is at most one pick off its share.
    assert abs(names["web-1"] - 300) <= 2 * WORKERS and abs(names["web-2"] - 100) <= 2 * WORKERS, names
    served = served_by_each(fleet, before)
    assert sum(served.values()) == 400 and all(count > 0 for count in served.values()), served
    weights = upstream_servers(fleet.admin_port, "weights")
    assert {address: server["weight"] for address, server in weights.items()} == \
        {backends.web1.address: 3, backends.web2.address: 1}


def test_a_live_change_reaches_every_worker(fleet: Fleet, backends: BackendSet) -> None:
    assert Counter(status for status, _ in fan_out(fleet.port, "/live/healthz", 40)) == {200: 40}
    served_by_removed_servers = fleet.totals()
    status, body = admin_request(fleet.admin_port, "POST", "/upstreams/live/servers",
                                 {"address": backends.api.address, "weight": 1})
    assert status == 201, body
    for old in backends.web:
        status, body = admin_request(fleet.admin_port, "DELETE", server_path("live", old.address) + "?wait=1")
        assert status == 204, body
    assert list(upstream_servers(fleet.admin_port, "live")) == [backends.api.address]
    before = fleet.totals()
    # A worker's total counts the requests it received: removing the servers that answered them
    # takes nothing off.
    assert before == served_by_removed_servers

    results = fan_out(fleet.port, "/live/healthz", 100)

    assert Counter(results) == {(200, "api-1"): 100}, Counter(results)
    served = served_by_each(fleet, before)
    assert sum(served.values()) == 100 and all(count > 0 for count in served.values()), served
    assert upstream_servers(fleet.admin_port, "live")[backends.api.address]["total_requests"] == 100


def test_delete_with_wait_answers_once_every_worker_has_drained_the_server(fleet: Fleet,
                                                                              backends: BackendSet) -> None:
    address = backends.web2.address  # the only server of upstream "drain"
    clients = connections_on_every_worker(fleet, "/drain/healthz")
    try:
        # A slow request on each worker, the second one a second later: it ends last.
        slow = {}
        for delay, (number, client) in zip((0.0, 1.0), sorted(clients.items())):
            time.sleep(delay)
            slow[number] = Timed(lambda client=client: client.get(f"/drain/sleep?seconds={SLOW_SECONDS}"))
        wait_for_active_everywhere(fleet)
        assert upstream_servers(fleet.admin_port, "drain")[address]["active_requests"] == WORKERS

        deleting = Timed(lambda: admin_request(fleet.admin_port, "DELETE", server_path("drain", address) + "?wait=1",
                                               timeout=SLOW_SECONDS + 15))
        # The first slow request finishes; the DELETE still waits for the other worker's.
        first = slow[1].result(SLOW_SECONDS + 10)
        assert first[0] == 200 and served_name(first[1]) == "web-2"
        time.sleep(0.3)
        assert not slow[2].done(), "the second slow request finished too early for this test"
        assert not deleting.done(), f"DELETE ?wait=1 answered while a worker still drained: {deleting.result(1)}"

        last = slow[2].result(SLOW_SECONDS + 10)
        status, body = deleting.result(10)
    finally:
        for client in clients.values():
            client.close()
    assert last[0] == 200 and served_name(last[1]) == "web-2"
    assert (status, body) == (204, None)
    # 204 only after the last request on the server was answered (a little slack for thread wake-ups).
    assert deleting.finished >= slow[2].finished - 0.05, (deleting.finished, slow[2].finished)
    assert upstream_servers(fleet.admin_port, "drain") == {}


def reloaded_config(fleet: Fleet, backends: BackendSet, filler_upstreams: int = 0) -> dict[str, Any]:
    """The fleet's configuration plus ``/reloaded/`` -> upstream ``reloaded`` (api-1), and as many
    unused upstreams as asked (to make the configuration big)."""
    config = fleet_config(fleet.port, fleet.admin_port, backends)
    config["upstreams"]["reloaded"] = {"servers": [{"address": backends.api.address}]}
    config["routes"].insert(0, {"path": "/reloaded/", "upstream": "reloaded", "strip_prefix": True})
    for number in range(filler_upstreams):
        config["upstreams"][f"filler-{number}"] = {"servers": [{"address": f"{HOST}:{1024 + number}"}]}
    return config


def sighup_and_catch_reloaded(gateway: Gateway, config: dict[str, Any], timeout: float) -> float:
    """Like live_helpers.reload_config, but returns within a few milliseconds of the log line:
    when (time.monotonic()) the line was seen."""
    gateway.write_config(config)
    with open(gateway.stdout_path, "rb") as stdout:
        stdout.seek(0, 2)
        seen = b""
        gateway.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while RELOADED.encode() not in seen:
            assert time.monotonic() < deadline, f"no {RELOADED!r} after SIGHUP\n{gateway.output()}"
            assert b"configuration rejected" not in seen, gateway.output()
            piece = stdout.read()
            seen += piece
            if not piece:
                time.sleep(0.002)
    return time.monotonic()


def test_sighup_reload_reaches_every_worker(fleet: Fleet, backends: BackendSet) -> None:
    # Before: /reloaded/... falls through to "/" (web), whose app has no such page.
    status, headers, _ = http_get(fleet.port, "/reloaded/healthz")
    assert status == 404 and served_name(headers) in ("web-1", "web-2")

    reload_config(fleet.gateway, reloaded_config(fleet, backends))
    before = fleet.totals()
    results = fan_out(fleet.port, "/reloaded/healthz", 100)

    assert Counter(results) == {(200, "api-1"): 100}, Counter(results)
    served = served_by_each(fleet, before)
    assert sum(served.values()) == 100 and all(count > 0 for count in served.values()), served
    assert "Traceback" not in fleet.gateway.stdout_text() + fleet.gateway.stderr_text()


def test_a_new_number_of_workers_waits_for_a_restart(fleet: Fleet, backends: BackendSet) -> None:
    pids = {number: row["pid"] for number, row in fleet.rows().items()}
    config = reloaded_config(fleet, backends)
    config["workers"] = WORKERS + 1

    stdout = reload_config(fleet.gateway, config)

    assert "SIGHUP: changes to workers take effect at the next restart" in stdout
    assert {number: row["pid"] for number, row in fleet.rows().items()} == pids
    assert Counter(status for status, _ in fan_out(fleet.port, "/healthz", 20)) == {200: 20}


def test_configuration_reloaded_is_logged_once_every_worker_has_the_new_configuration(
        own_fleet: Callable[..., Fleet], backends: BackendSet) -> None:
    """A big configuration takes the workers a moment to receive: "configuration reloaded" must wait for them.

    Requests sent (on fresh connections) as soon as the line is seen must all
    be routed by the new configuration.
    """
    fleet = own_fleet(access_log=None)
    config = reloaded_config(fleet, backends, filler_upstreams=FILLER_UPSTREAMS)
    config["access_log"] = None

    sighup_and_catch_reloaded(fleet.gateway, config, BIG_RELOAD_TIMEOUT)
    results = fan_out(fleet.port, "/reloaded/healthz", 200)

    assert Counter(results) == {(200, "api-1"): 200}, Counter(results)


def test_a_killed_worker_is_restarted_with_the_live_changes(own_fleet: Callable[..., Fleet],
                                                             backends: BackendSet) -> None:
    fleet = own_fleet()
    # A live change made before the worker dies: its replacement must start with it.
    status, body = admin_request(fleet.admin_port, "DELETE", server_path("web", backends.web2.address) + "?wait=1")
    assert status == 204, body
    rows = fleet.rows()
    victim = rows[1]["pid"]
    other = rows[2]["pid"]
    # A worker that dies within its first second is restarted after a back-off delay; this one
    # has been serving for a while, so it is restarted at once.
    time.sleep(max(0.0, QUICK_DEATH + 0.3 - process_age(victim)))

    signal_sent = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: not process_alive(victim), EXIT_TIMEOUT, interval=0.01, message="worker 1 gone")
    # Connections made before its replacement runs: those the kernel puts on worker 1's socket
    # wait there (the master keeps it open) and are served once the new worker 1 accepts.
    meanwhile = Background(lambda: fan_out(fleet.port, "/healthz", 40))

    def restarted() -> dict[int, dict] | None:
        rows = fleet.rows()
        return rows if len(rows) == WORKERS and rows[1]["pid"] not in (None, victim) else None

    rows = wait_until(restarted, RESTART_TIMEOUT, interval=0.1, message="worker 1 restarted")
    assert time.monotonic() - signal_sent < RESTART_TIMEOUT
    assert Counter(meanwhile.result(RESTART_TIMEOUT)) == {(200, "web-1"): 40}
    assert rows[1]["restarts"] == 1 and rows[2]["restarts"] == 0, rows
    assert rows[2]["pid"] == other, rows
    assert not process_alive(victim)
    assert parent_pid(rows[1]["pid"]) == fleet.master_pid
    assert f"worker 1 (pid {victim}) exited (signal 9); restarting it in 0.0 s" in fleet.gateway.stdout_text(), \
        fleet.gateway.output()
    assert fleet.started_pids() == {victim: 1, other: 2, rows[1]["pid"]: 1}

    before = fleet.totals()
    results = fan_out(fleet.port, "/healthz", 100)

    assert Counter(results) == {(200, "web-1"): 100}, Counter(results)
    served = served_by_each(fleet, before)
    assert sum(served.values()) == 100 and all(count > 0 for count in served.values()), served


# -- TLS sessions -----------------------------------------------------------------------------

#: Reconnections in a row, each offering the session of the one before: all on one worker by
#: chance has a probability of 2 ** -(RECONNECTIONS - 1).
RECONNECTIONS = 24


def reconnect(fleet: Fleet, tls_port: int, context: ssl.SSLContext,
              session: ssl.SSLSession | None) -> tuple[list[bool], dict[int, int], ssl.SSLSession]:
    """RECONNECTIONS TLS connections one after another, each offering the previous one's session:
    whether each resumed, the requests each worker served, and the last session."""
    before = fleet.totals()
    resumed = []
    for _ in range(RECONNECTIONS):
        with tls_connect(tls_port, context, session=session) as sock:
            status, _, _ = request_on(sock, "GET", "/healthz", headers={"Host": "localhost"})
            assert status == 200
            resumed.append(sock.session_reused)
            session = sock.session  # read after the response: TLS 1.3's tickets come after the handshake
    return resumed, served_by_each(fleet, before), session


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLS1.2", "TLS1.3"])
def test_any_worker_resumes_a_tls_session_issued_by_any_other(own_fleet: Callable[..., Fleet],
                                                              backends: BackendSet, tmp_path: Path,
                                                              version: ssl.TLSVersion) -> None:
    """The workers share the master's session-ticket keys, also a restarted worker; a reload makes new ones."""
    certificate = make_certificates(tmp_path)
    port, tls_port = free_port(), free_port()
    listeners = [{"name": "public", "port": port, "interface": HOST},
                 tls_listener(tls_port, [certificate], name="secure")]
    fleet = own_fleet(listeners=listeners)
    context = tls_client_context(tmp_path / "ca.crt", minimum=version, maximum=version)

    resumed, served, session = reconnect(fleet, tls_port, context, None)
    assert resumed == [False] + [True] * (RECONNECTIONS - 1), resumed
    assert all(count > 0 for count in served.values()), served

    victim = fleet.rows()[1]["pid"]
    time.sleep(max(0.0, QUICK_DEATH + 0.3 - process_age(victim)))  # restarted at once, not after a back-off
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: fleet.rows().get(1, {}).get("pid") not in (None, victim), RESTART_TIMEOUT, interval=0.1,
               message="worker 1 restarted")
    resumed, served, session = reconnect(fleet, tls_port, context, session)
    assert resumed == [True] * RECONNECTIONS, resumed
    assert all(count > 0 for count in served.values()), served

    reload_config(fleet.gateway, fleet_config(port, fleet.admin_port, backends, listeners=listeners))
    resumed, served, _ = reconnect(fleet, tls_port, context, session)
    assert resumed == [False] + [True] * (RECONNECTIONS - 1), resumed  # new keys: one full handshake
    assert all(count > 0 for count in served.values()), served
    assert "Traceback" not in fleet.gateway.stdout_text() + fleet.gateway.stderr_text()
    assert "cannot be shared" not in fleet.gateway.stdout_text()


def test_sigterm_drains_every_worker_then_the_master_exits(own_fleet: Callable[..., Fleet]) -> None:
    fleet = own_fleet()
    pids = [row["pid"] for row in fleet.rows().values()]
    clients = connections_on_every_worker(fleet, "/healthz")
    try:
        slow = [Timed(lambda client=client: client.get(f"/sleep?seconds={SLOW_SECONDS}"))
                for client in clients.values()]
        slow.append(Timed(lambda: http_get(fleet.port, f"/sleep?seconds={SLOW_SECONDS}")))  # a fresh connection
        wait_for_active_everywhere(fleet)

        signalled = time.monotonic()
        fleet.gateway.send_signal(signal.SIGTERM)

        # New connections are refused at once, while the slow requests are still in flight.
        wait_until(lambda: connect_refused(fleet.port), timeout=2.0, interval=0.02, message="connections refused")
        assert not any(request.done() for request in slow), "a slow request ended early"
        assert all(process_alive(pid) for pid in pids), "a worker exited before its requests finished"
        assert fleet.gateway.process.poll() is None, "the master exited before its workers drained"

        results = [request.result(SLOW_SECONDS + 15) for request in slow]
        code = wait_for_exit(fleet.gateway, SHUTDOWN_TIMEOUT + 5)
        exited = time.monotonic() - signalled
    finally:
        for client in clients.values():
            client.close()
    assert [(status, served_name(headers) in ("web-1", "web-2")) for status, headers, _ in results] == \
        [(200, True)] * len(results), results
    assert code == SIGTERM_EXIT, f"exit code {code}\n{fleet.gateway.output()}"
    assert exited < SHUTDOWN_TIMEOUT, exited
    assert not any(process_alive(pid) for pid in pids)
    stdout = fleet.gateway.stdout_text()
    for number, pid in enumerate(pids, 1):
        assert f"worker {number} (pid {pid}) stopped (exit code 0)" in stdout, stdout
    assert "Traceback" not in stdout + fleet.gateway.stderr_text()
    assert "restarting" not in stdout


def test_sigterm_to_the_master_and_every_worker_at_once_stops_them_cleanly(own_fleet: Callable[..., Fleet]) -> None:
    """What systemd does (KillMode=control-group): every worker then gets SIGTERM from it and from its master."""
    fleet = own_fleet()
    pids = [row["pid"] for row in fleet.rows().values()]

    for pid in (*pids, fleet.master_pid):
        os.kill(pid, signal.SIGTERM)
    code = wait_for_exit(fleet.gateway, SHUTDOWN_TIMEOUT + 5)

    assert code == SIGTERM_EXIT, f"exit code {code}\n{fleet.gateway.output()}"
    stdout = fleet.gateway.stdout_text()
    for number, pid in enumerate(pids, 1):
        assert f"worker {number} (pid {pid}) stopped (exit code 0)" in stdout, stdout
    assert "ReactorNotRunning" not in stdout + fleet.gateway.stderr_text()
    assert "restarting" not in stdout


def test_workers_exit_when_their_master_is_killed(own_fleet: Callable[..., Fleet]) -> None:
    fleet = own_fleet()
    pids = [row["pid"] for row in fleet.rows().values()]
    assert http_get(fleet.port, "/healthz")[0] == 200

    os.kill(fleet.master_pid, signal.SIGKILL)  # the master only, not its process group
    fleet.gateway.process.wait(timeout=5)

    try:
        wait_until(lambda: not any(process_alive(pid) for pid in pids), EXIT_TIMEOUT, interval=0.05,
                   message="the orphaned workers exiting")
    except TimeoutError:
        left = [pid for pid in pids if process_alive(pid)]
        raise AssertionError(f"workers {left} outlived their master\n{fleet.gateway.output()}") from None
    # Nobody is left holding the listening socket.
    assert connect_refused(fleet.port)


def test_workers_auto_starts_one_worker_per_available_core(own_fleet: Callable[..., Fleet]) -> None:
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one core: workers: auto runs a single process")
    fleet = own_fleet(count=cores, workers="auto")

    rows = fleet.rows()

    assert sorted(rows) == list(range(1, cores + 1))
    assert all(parent_pid(row["pid"]) == fleet.master_pid for row in rows.values())
    assert Counter(status for status, _ in fan_out(fleet.port, "/healthz", 20)) == {200: 20}


def test_a_single_process_gateway_lists_no_workers(backends: BackendSet,
                                                   gateway: Callable[..., Gateway]) -> None:
    port, admin_port = free_port(), free_port()
    instance = wait_for_admin(gateway(gateway_config(port, web=[backends.web1.address],
                                                     **admin_config(admin_port))), admin_port)

    status, body = admin_request(admin_port, "GET", "/workers")

    assert (status, body) == (200, {"pid": instance.process.pid, "workers": []})
    assert http_get(port, "/healthz")[0] == 200
    assert not WORKER_STARTED.search(instance.stdout_text()), instance.output()


@pytest.mark.parametrize("value", [0, "many"])
def test_an_invalid_workers_value_is_refused_at_start(tmp_path: Path, value: Any) -> None:
    port = free_port()
    returncode, stdout, stderr = run_gateway_expecting_failure(
        gateway_config(port, web=[f"{HOST}:{free_port()}"], workers=value), tmp_path, timeout=GATEWAY_START_TIMEOUT)

    output = stdout + stderr
    assert returncode != 0
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert str(tmp_path / "rejected" / "config.yaml") in lines[0] and "workers" in lines[0], lines[0]
    assert repr(value) in lines[0], lines[0]
    assert connect_refused(port)
