"""gateway.core.balancing: smooth weighted round robin, least connections, ip hash."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given, strategies as st

from gateway.core.balancing import IpHash, LeastConnections, SmoothWeightedRoundRobin, make_balancer


@dataclass(eq=False)
class Server:
    address: str
    weight: int = 1
    active: int = 0


def servers(*weights: int) -> list[Server]:
    return [Server(chr(ord("a") + index), weight) for index, weight in enumerate(weights)]


def picks(balancer, candidates, count: int, key: str = "") -> str:
    return "".join(balancer.choose(candidates, key).address for _ in range(count))


weight_lists = st.lists(st.integers(min_value=1, max_value=10), min_size=1, max_size=6)


# -- smooth weighted round robin ----------------------------------------------------------


@given(weight_lists, st.integers(min_value=1, max_value=3))
def test_swrr_each_server_gets_exactly_its_weight_per_cycle(weights, cycles):
    candidates = servers(*weights)
    balancer = SmoothWeightedRoundRobin()
    total = sum(weights)
    for _ in range(cycles):
        counts = Counter(balancer.choose(candidates).address for _ in range(total))
        assert counts == {server.address: server.weight for server in candidates}


@given(weight_lists)
def test_swrr_is_smooth(weights):
    """After any number n of picks, each server has had about its share n*w/total: the picks
    are interleaved, never bunched up.  (Over weights 1..10 and up to 6 servers the largest
    drift measured exhaustively is 1.1 picks; a bunched schedule such as a a a ... b b b drifts
    by up to half a cycle.)"""
    candidates = servers(*weights)
    balancer = SmoothWeightedRoundRobin()
    total = sum(weights)
    counts = Counter()
    for n in range(1, 2 * total + 1):
        counts[balancer.choose(candidates).address] += 1
        for server in candidates:
            assert abs(counts[server.address] - n * server.weight / total) < 1.5, (weights, n, counts)


@pytest.mark.parametrize("weights, expected", [
    ((3, 1), "aaba" * 4),
    ((5, 1, 1), "aabacaa" * 2),  # nginx's documented example
    ((1, 1), "ab" * 4),
    ((1, 1, 1), "abc" * 3),
    ((2, 1), "aba" * 3),
    ((1, 3), "babb" * 2),
    ((4,), "a" * 5),
])
def test_swrr_exact_sequences(weights, expected):
    assert picks(SmoothWeightedRoundRobin(), servers(*weights), len(expected)) == expected


def test_swrr_three_to_one_over_400_requests():
    candidates = servers(3, 1)
    balancer = SmoothWeightedRoundRobin()
    sequence = picks(balancer, candidates, 400)
    assert Counter(sequence) == {"a": 300, "b": 100}
    assert "bb" not in sequence
    assert "aaaa" not in sequence


def test_swrr_adapts_when_a_candidate_is_left_out():
    """A request that already tried 'a' (the pool passes only the rest) still gets a server."""
    a, b, c = servers(5, 1, 1)
    balancer = SmoothWeightedRoundRobin()
    assert balancer.choose([b, c]).address in {"b", "c"}
    counts = Counter(balancer.choose([a, b, c]).address for _ in range(70))
    # the scores recover: a long run is still close to 5:1:1
    assert abs(counts["a"] - 50) <= 2 and abs(counts["b"] - 10) <= 2 and abs(counts["c"] - 10) <= 2


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=2, max_size=6))
def test_swrr_planned_picks_are_the_scored_ones(weights):
    """Picks among the planned list (read from the worked-out cycle) are the picks the scores give."""
    candidates = servers(*weights)
    planned = SmoothWeightedRoundRobin()
    planned.plan(candidates)
    count = 2 * sum(weights) + 3
    assert picks(planned, candidates, count) == picks(SmoothWeightedRoundRobin(), candidates, count)


def test_swrr_a_cycle_beyond_the_plan_limit_uses_the_scores():
    candidates = servers(SmoothWeightedRoundRobin.PLAN_LIMIT, 1)
    balancer = SmoothWeightedRoundRobin()
    balancer.plan(candidates)
    total = SmoothWeightedRoundRobin.PLAN_LIMIT + 1
    assert Counter(picks(balancer, candidates, 2 * total)) == {"a": 2 * (total - 1), "b": 2}


def test_swrr_weights_are_planned_over_their_gcd():
    candidates = servers(300, 100)
    balancer = SmoothWeightedRoundRobin()
    balancer.plan(candidates)
    assert picks(balancer, candidates, 8) == "aaba" * 2


def test_swrr_other_candidates_between_planned_picks():
    """A retry's candidates (the untried servers) are scored; the planned cycle goes on after it."""
    a, b, c = candidates = servers(5, 1, 1)
    balancer = SmoothWeightedRoundRobin()
    balancer.plan(candidates)
    assert picks(balancer, candidates, 3) == "aab"
    assert balancer.choose([b, c]).address in {"b", "c"}
    assert picks(balancer, candidates, 4 + 7) == "acaa" + "aabacaa"


def test_swrr_a_new_plan_starts_the_cycle_again():
    candidates = servers(3, 1)
    balancer = SmoothWeightedRoundRobin()
    balancer.plan(candidates)
    assert picks(balancer, candidates, 2) == "aa"
    changed = servers(1, 3)
    balancer.plan(changed)
    assert picks(balancer, changed, 4) == "babb"
    assert picks(balancer, candidates, 4) == "aaba"  # (the old list: scored, from its own scores)


def test_swrr_forget_resets_a_server():
    a, b = servers(1, 1)
    balancer = SmoothWeightedRoundRobin()
    balancer.choose([a, b])
    balancer.forget("a")
    balancer.forget("unknown")  # no error
    assert balancer.choose([a, b]).address in {"a", "b"}


# -- least connections ------------------------------------------------------------------


@pytest.mark.parametrize("state, expected", [
    ([("a", 1, 0), ("b", 1, 1)], "a"),
    ([("a", 1, 3), ("b", 1, 1), ("c", 1, 2)], "b"),
    ([("a", 1, 1), ("b", 3, 1)], "b"),  # 1/3 < 1/1
    ([("a", 3, 2), ("b", 1, 1)], "a"),  # 2/3 < 1/1
    ([("a", 2, 5), ("b", 1, 3)], "a"),  # 5/2 < 3/1
    ([("a", 10, 9), ("b", 1, 0)], "b"),  # 0 beats anything
])
def test_least_conn_fewest_active_relative_to_weight(state, expected):
    candidates = [Server(address, weight, active) for address, weight, active in state]
    assert LeastConnections().choose(candidates).address == expected


def test_least_conn_ties_go_round_robin():
    candidates = servers(1, 1, 1)
    assert picks(LeastConnections(), candidates, 6) == "abcabc"


def test_least_conn_ties_share_by_weight():
    candidates = servers(3, 1)  # all idle: tied, so weighted round robin among them
    assert Counter(picks(LeastConnections(), candidates, 8)) == {"a": 6, "b": 2}


def test_least_conn_ties_only_among_the_least_loaded():
    a, b, c = servers(1, 1, 1)
    b.active = 2
    assert picks(LeastConnections(), [a, b, c], 4) == "acac"


def test_least_conn_follows_load_as_requests_start():
    candidates = servers(1, 1)
    balancer = LeastConnections()
    for _ in range(6):
        balancer.choose(candidates).active += 1
    assert [server.active for server in candidates] == [3, 3]


@given(st.lists(st.tuples(st.integers(1, 10), st.integers(0, 20)), min_size=1, max_size=6))
def test_least_conn_never_picks_a_more_loaded_server(state):
    candidates = [Server(f"s{index}", weight, active) for index, (weight, active) in enumerate(state)]
    chosen = LeastConnections().choose(candidates)
    best = min(server.active / server.weight for server in candidates)
    assert chosen.active / chosen.weight == pytest.approx(best)


# -- ip hash -----------------------------------------------------------------------------


def test_ip_hash_same_key_same_server():
    candidates = servers(1, 1, 1, 1)
    balancer = IpHash()
    for key in ("10.0.0.1", "10.0.0.2", "192.168.1.77", "::1"):
        assert len(set(picks(balancer, candidates, 20, key))) == 1


def test_ip_hash_ignores_candidate_order():
    candidates = servers(1, 2, 3, 1)
    for index in range(50):
        key = f"10.0.{index}.1"
        assert IpHash().choose(candidates, key) is IpHash().choose(list(reversed(candidates)), key)


def test_ip_hash_spreads_keys():
    candidates = servers(1, 1, 1)
    chosen = {IpHash().choose(candidates, f"10.0.0.{index}").address for index in range(100)}
    assert chosen == {"a", "b", "c"}


addresses = st.lists(st.from_regex(r"10\.0\.[0-9]{1,3}\.[0-9]{1,3}:80", fullmatch=True), min_size=2, max_size=8,
                     unique=True)


@given(addresses, st.lists(st.integers(1, 5), min_size=8, max_size=8), st.text(min_size=1, max_size=40),
       st.data())
def test_ip_hash_removing_another_server_does_not_move_the_key(addrs, weights, key, data):
    candidates = [Server(address, weight) for address, weight in zip(addrs, weights)]
    chosen = IpHash().choose(candidates, key)
    others = [server for server in candidates if server is not chosen]
    removed = data.draw(st.sampled_from(others))
    remaining = [server for server in candidates if server is not removed]
    assert IpHash().choose(remaining, key) is chosen


@given(addresses, st.text(min_size=1, max_size=40))
def test_ip_hash_adding_a_server_moves_keys_only_to_it(addrs, key):
    candidates = [Server(address) for address in addrs]
    before = IpHash().choose(candidates[:-1], key)
    after = IpHash().choose(candidates, key)
    assert after is before or after is candidates[-1]


@pytest.mark.parametrize("weights", [(1, 1), (3, 1), (1, 2, 5), (4, 4, 1, 1)])
def test_ip_hash_distribution_follows_weights(weights):
    candidates = servers(*weights)
    keys = 20000
    counts = Counter(IpHash().choose(candidates, f"client-{index}").address for index in range(keys))
    total = sum(weights)
    for server in candidates:
        share = counts[server.address] / keys
        assert share == pytest.approx(server.weight / total, abs=0.02), (weights, counts)


def test_single_candidate_is_always_chosen():
    (only,) = servers(7)
    for balancer in (SmoothWeightedRoundRobin(), LeastConnections(), IpHash()):
        assert balancer.choose([only], "k") is only


# -- make_balancer ---------------------------------------------------------------------


@pytest.mark.parametrize("policy, kind", [
    ("round_robin", SmoothWeightedRoundRobin),
    ("least_conn", LeastConnections),
    ("ip_hash", IpHash),
])
def test_make_balancer(policy, kind):
    first, second = make_balancer(policy), make_balancer(policy)
    assert type(first) is kind
    assert first is not second  # each upstream keeps its own scores


def test_make_balancer_unknown_policy():
    with pytest.raises(KeyError):
        make_balancer("random")
