"""gateway.core.pool: membership changes (add, weights, drain, remove with draining, set_servers)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from gateway.core.config import ServerConfig, UpstreamConfig
from gateway.core.pool import DRAINING, UP, UpstreamPool


def server(port: int, weight: int = 1) -> ServerConfig:
    return ServerConfig("127.0.0.1", port, weight)


def address(port: int) -> str:
    return f"127.0.0.1:{port}"


def pool(*weights: int, balance: str = "round_robin") -> UpstreamPool:
    """Servers 127.0.0.1:8001, :8002... with these weights."""
    servers = tuple(server(8001 + index, weight) for index, weight in enumerate(weights))
    return UpstreamPool(UpstreamConfig(name="web", servers=servers, balance=balance))


def members(upstream: UpstreamPool) -> list[tuple[int, int, str]]:
    return [(each.port, each.weight, each.state) for each in upstream.servers]


def picks(upstream: UpstreamPool, count: int) -> list[int]:
    chosen = []
    for _ in range(count):
        choice = upstream.choose("10.0.0.1")
        chosen.append(None if choice is None else choice.port)
    return chosen


# -- add ----------------------------------------------------------------------------------

def test_add_appends_an_up_server_that_takes_requests():
    upstream = pool(1)
    added = upstream.add(server(8003, 2))
    assert (added.address, added.weight, added.state, added.active, added.total) == (address(8003), 2, UP, 0, 0)
    assert members(upstream) == [(8001, 1, UP), (8003, 2, UP)]
    assert Counter(picks(upstream, 3)) == {8001: 1, 8003: 2}


def test_add_to_an_empty_upstream():
    upstream = pool()
    assert upstream.is_empty
    upstream.add(server(8003))
    assert not upstream.is_empty
    assert picks(upstream, 2) == [8003, 8003]


def test_add_a_draining_server_takes_no_requests():
    upstream = pool(1)
    upstream.add(server(8003, 5), DRAINING)
    assert members(upstream) == [(8001, 1, UP), (8003, 5, DRAINING)]
    assert picks(upstream, 6) == [8001] * 6


def test_add_an_existing_member_is_refused():
    upstream = pool(1, 1)
    with pytest.raises(ValueError, match="already in upstream web"):
        upstream.add(server(8002, 7))
    assert members(upstream) == [(8001, 1, UP), (8002, 1, UP)]


def test_add_takes_back_a_server_that_is_draining_out():
    upstream = pool(1, 1)
    leaving = upstream.servers[1]
    upstream.request_started(leaving)
    assert upstream.remove(address(8002)) == []
    assert leaving.removing
    revived = upstream.add(server(8002, 4))
    assert revived is leaving  # same object: counters and in-flight requests carry on
    assert (revived.removing, revived.weight, revived.state, revived.active, revived.total) == (False, 4, UP, 1, 1)
    assert upstream.request_finished(revived) == []  # no longer leaving when its request ends
    assert members(upstream) == [(8001, 1, UP), (8002, 4, UP)]
    assert Counter(picks(upstream, 5)) == {8001: 1, 8002: 4}


# -- set_weight / set_state ---------------------------------------------------------------

@pytest.mark.parametrize(("weights", "changes", "cycle", "expected"), [
    ((1, 1), {8001: 3}, 4, {8001: 3, 8002: 1}),
    ((3, 1), {8001: 1}, 2, {8001: 1, 8002: 1}),
    ((1, 1, 1), {8002: 5, 8003: 2}, 8, {8001: 1, 8002: 5, 8003: 2}),
    ((2, 2), {8001: 2}, 4, {8001: 2, 8002: 2}),
])
def test_set_weight_changes_the_shares(weights, changes, cycle, expected):
    upstream = pool(*weights)
    picks(upstream, 3)  # the balancer is mid-cycle when the weights change
    for port, weight in changes.items():
        upstream.set_weight(address(port), weight)
    # Smooth WRR settles into the new shares; over whole cycles they are exact.
    picks(upstream, cycle * 3)
    assert Counter(picks(upstream, cycle * 10)) == {port: share * 10 for port, share in expected.items()}


def test_set_weight_from_a_fresh_start_is_exact_at_once():
    upstream = pool(1, 1)
    upstream.set_weight(address(8001), 3)
    assert picks(upstream, 8) == [8001, 8001, 8002, 8001] * 2


def test_drain_excludes_a_server_from_choose():
    upstream = pool(1, 1, 1)
    upstream.set_state(address(8002), DRAINING)
    assert upstream.servers[1].state == DRAINING
    assert 8002 not in picks(upstream, 20)
    assert Counter(picks(upstream, 20)) == {8001: 10, 8003: 10}


def test_draining_keeps_the_server_and_its_requests():
    upstream = pool(1, 1)
    draining = upstream.servers[0]
    upstream.request_started(draining)
    upstream.set_state(address(8001), DRAINING)
    assert upstream.request_finished(draining) == []  # draining is not leaving
    assert members(upstream) == [(8001, 1, DRAINING), (8002, 1, UP)]


def test_up_brings_a_drained_server_back():
    upstream = pool(1, 1)
    upstream.set_state(address(8001), DRAINING)
    assert picks(upstream, 4) == [8002] * 4
    upstream.set_state(address(8001), UP)
    assert Counter(picks(upstream, 4)) == {8001: 2, 8002: 2}


def test_all_drained_is_an_empty_upstream():
    upstream = pool(1, 1)
    for port in (8001, 8002):
        upstream.set_state(address(port), DRAINING)
    assert upstream.is_empty
    assert upstream.choose("10.0.0.1") is None
    upstream.set_state(address(8002), UP)
    assert not upstream.is_empty


@pytest.mark.parametrize("operation", [
    lambda upstream, where: upstream.set_weight(where, 2),
    lambda upstream, where: upstream.set_state(where, DRAINING),
    lambda upstream, where: upstream.remove(where),
], ids=["set_weight", "set_state", "remove"])
@pytest.mark.parametrize("leaving", [False, True], ids=["unknown", "leaving"])
def test_changes_to_a_server_that_is_not_a_member_raise_key_error(operation, leaving):
    upstream = pool(1, 1)
    target = address(8009)
    if leaving:
        upstream.request_started(upstream.servers[1])
        upstream.remove(address(8002))
        target = address(8002)
    with pytest.raises(KeyError):
        operation(upstream, target)


# -- remove ---------------------------------------------------------------------------------

def test_remove_an_idle_server_leaves_at_once():
    upstream = pool(1, 1)
    assert upstream.remove(address(8001)) == [address(8001)]
    assert members(upstream) == [(8002, 1, UP)]
    assert upstream.server(address(8001)) is None
    assert picks(upstream, 3) == [8002] * 3


def test_remove_with_requests_in_flight_drains_then_leaves_with_the_last_one():
    upstream = pool(1, 1)
    busy = upstream.servers[0]
    for _ in range(3):
        upstream.request_started(busy)
    assert upstream.remove(address(8001)) == []
    assert busy.removing and busy.state == DRAINING
    assert upstream.server(address(8001)) is busy  # still listed while it drains
    assert picks(upstream, 4) == [8002] * 4
    assert upstream.request_finished(busy) == []
    assert upstream.request_finished(busy) == []
    assert upstream.request_finished(busy) == [address(8001)]
    assert upstream.server(address(8001)) is None
    assert members(upstream) == [(8002, 1, UP)]


def test_remove_the_only_server_leaves_an_empty_upstream():
    upstream = pool(1)
    upstream.request_started(upstream.servers[0])
    upstream.remove(address(8001))
    assert upstream.is_empty
    assert upstream.choose("10.0.0.1") is None


def test_a_removed_then_re_added_server_starts_a_fresh_cycle():
    upstream = pool(1, 1)
    picks(upstream, 1)
    upstream.remove(address(8001))
    upstream.add(server(8001, 3))
    assert Counter(picks(upstream, 4)) == {8001: 3, 8002: 1}


# -- set_servers ---------------------------------------------------------------------------

@pytest.mark.parametrize(("initial", "desired", "expected", "gone"), [
    # (port, weight) pairs; desired entries may carry a state
    ([(8001, 1), (8002, 1)], [(8001, 1), (8002, 1)], [(8001, 1, UP), (8002, 1, UP)], []),
    ([(8001, 1), (8002, 1)], [(8002, 1)], [(8002, 1, UP)], [8001]),
    ([(8001, 1)], [(8001, 1), (8003, 2)], [(8001, 1, UP), (8003, 2, UP)], []),
    ([(8001, 1), (8002, 1)], [(8002, 5), (8001, 3)], [(8001, 3, UP), (8002, 5, UP)], []),
    ([(8001, 1), (8002, 1)], [(8001, 1, DRAINING), (8002, 1)], [(8001, 1, DRAINING), (8002, 1, UP)], []),
    ([(8001, 1), (8002, 1)], [], [], [8001, 8002]),
    ([], [(8001, 1), (8002, 2)], [(8001, 1, UP), (8002, 2, UP)], []),
    ([(8001, 1), (8002, 1), (8003, 1)], [(8004, 1), (8002, 2)], [(8002, 2, UP), (8004, 1, UP)], [8001, 8003]),
])
def test_set_servers_diff(initial, desired, expected, gone):
    upstream = pool()
    for port, weight in initial:
        upstream.add(server(port, weight))
    wanted = [(server(item[0], item[1]), item[2] if len(item) > 2 else UP) for item in desired]
    assert upstream.set_servers(wanted) == [address(port) for port in gone]
    assert members(upstream) == expected


def test_set_servers_keeps_the_objects_and_counters_of_kept_servers():
    upstream = pool(1, 1)
    first = upstream.servers[0]
    upstream.request_started(first)
    upstream.request_finished(first)
    upstream.set_servers([(server(8001, 4), UP)])
    assert upstream.servers == [first]
    assert (first.weight, first.total) == (4, 1)


def test_set_servers_drains_busy_servers_it_drops():
    upstream = pool(1, 1)
    busy = upstream.servers[1]
    upstream.request_started(busy)
    assert upstream.set_servers([(server(8001), UP)]) == []
    assert busy.removing and busy in upstream.servers
    assert picks(upstream, 3) == [8001] * 3
    assert upstream.request_finished(busy) == [address(8002)]
    assert members(upstream) == [(8001, 1, UP)]


def test_set_servers_takes_back_a_server_that_is_draining_out():
    upstream = pool(1, 1)
    busy = upstream.servers[1]
    upstream.request_started(busy)
    upstream.set_servers([(server(8001), UP)])
    upstream.set_servers([(server(8001), UP), (server(8002, 2), UP)])
    assert not busy.removing
    assert upstream.request_finished(busy) == []
    assert members(upstream) == [(8001, 1, UP), (8002, 2, UP)]


def test_set_servers_leaves_a_draining_out_server_alone_when_still_not_wanted():
    upstream = pool(1, 1)
    busy = upstream.servers[1]
    upstream.request_started(busy)
    upstream.set_servers([(server(8001), UP)])
    assert upstream.set_servers([(server(8001), UP)]) == []  # no second remove, no KeyError
    assert upstream.request_finished(busy) == [address(8002)]


# -- set_balance --------------------------------------------------------------------------

def test_set_balance_switches_the_policy():
    upstream = pool(1, 1)
    busy = upstream.servers[0]
    upstream.request_started(busy)
    upstream.set_balance("least_conn")
    assert upstream.balance == "least_conn"
    assert picks(upstream, 3) == [8002] * 3  # fewest requests in flight


def test_set_balance_to_the_same_policy_keeps_the_cycle():
    upstream = pool(3, 1)
    assert picks(upstream, 2) == [8001, 8001]
    upstream.set_balance("round_robin")
    assert picks(upstream, 2) == [8002, 8001]  # a a | b a, not a restart at a a


def test_set_balance_ip_hash_pins_a_client():
    upstream = pool(1, 1, 1)
    upstream.set_balance("ip_hash")
    first = upstream.choose("192.0.2.7")
    assert all(upstream.choose("192.0.2.7") is first for _ in range(10))


# -- properties -------------------------------------------------------------------------------

ports = st.integers(8001, 8012)
desired_servers = st.dictionaries(ports, st.tuples(st.integers(1, 9), st.sampled_from([UP, DRAINING])), max_size=8)


@given(initial=st.dictionaries(ports, st.integers(1, 9), max_size=8), desired=desired_servers)
def test_set_servers_with_no_requests_in_flight_makes_the_members_equal_desired(initial, desired):
    upstream = pool()
    for port, weight in initial.items():
        upstream.add(server(port, weight))
    wanted = [(server(port, weight), state) for port, (weight, state) in desired.items()]
    gone = upstream.set_servers(wanted)
    assert {(each.port, each.weight, each.state) for each in upstream.servers} == \
        {(port, weight, state) for port, (weight, state) in desired.items()}
    assert sorted(gone) == sorted(address(port) for port in initial if port not in desired)
    assert not any(each.removing for each in upstream.servers)
    up = {port for port, (_, state) in desired.items() if state == UP}
    assert upstream.is_empty == (not up)
    assert set(picks(upstream, 30)) <= (up or {None})


operations = st.lists(st.tuples(st.sampled_from(["start", "finish", "remove", "add", "drain", "up", "weight"]),
                                st.integers(8001, 8004)), max_size=60)


@settings(max_examples=200)
@given(operations)
def test_a_removed_server_leaves_exactly_when_its_last_request_ends(script):
    upstream = pool(1, 1, 1, 1)
    in_flight: dict[int, int] = Counter()
    for operation, port in script:
        current = upstream.server(address(port))
        member = current is not None and not current.removing
        if operation == "start":
            chosen = upstream.choose("k")
            if chosen is not None:
                assert chosen.state == UP and not chosen.removing
                upstream.request_started(chosen)
                in_flight[chosen.port] += 1
        elif operation == "finish" and in_flight[port]:
            in_flight[port] -= 1
            left = upstream.request_finished(current)
            assert left == ([address(port)] if current.removing and in_flight[port] == 0 else [])
        elif operation == "remove" and member:
            left = upstream.remove(address(port))
            assert left == ([] if in_flight[port] else [address(port)])
        elif operation == "add" and not member:
            upstream.add(server(port))
        elif operation in ("drain", "up") and member:
            upstream.set_state(address(port), DRAINING if operation == "drain" else UP)
        elif operation == "weight" and member:
            upstream.set_weight(address(port), port - 8000)
        for each in upstream.servers:
            assert each.active == in_flight[each.port]
            assert not each.removing or each.active > 0  # nobody idles in the leaving state
        assert len({each.address for each in upstream.servers}) == len(upstream.servers)
