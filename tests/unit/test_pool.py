"""gateway.core.pool: the live servers of an upstream and their request counts."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, strategies as st

from gateway.core.config import ServerConfig, UpstreamConfig
from gateway.core.pool import UP, ServerState, UpstreamPool


def pool(*weights: int, balance: str = "round_robin") -> UpstreamPool:
    servers = tuple(ServerConfig("127.0.0.1", 8001 + index, weight) for index, weight in enumerate(weights))
    return UpstreamPool(UpstreamConfig(name="web", servers=servers, balance=balance))


def test_servers_mirror_the_config():
    upstream = pool(3, 1)
    assert upstream.name == "web"
    assert upstream.balance == "round_robin"
    assert [(s.host, s.port, s.address, s.weight) for s in upstream.servers] == [
        ("127.0.0.1", 8001, "127.0.0.1:8001", 3), ("127.0.0.1", 8002, "127.0.0.1:8002", 1)]
    for server in upstream.servers:
        assert (server.state, server.active, server.total, server.failures) == (UP, 0, 0, 0)
        assert server.address in repr(server)


def test_ipv6_server_address():
    state = ServerState(ServerConfig("::1", 8000))
    assert state.address == "[::1]:8000"
    assert state.host == "::1"


def test_choose_follows_the_weights():
    upstream = pool(3, 1)
    counts = Counter(upstream.choose("10.0.0.1").port for _ in range(400))
    assert counts == {8001: 300, 8002: 100}


@pytest.mark.parametrize("balance", ["round_robin", "least_conn", "ip_hash"])
def test_choose_skips_tried_servers(balance):
    upstream = pool(1, 1, 1, balance=balance)
    tried = []
    for _ in range(3):
        server = upstream.choose("10.0.0.1", tried)
        assert server is not None and server not in tried
        tried.append(server)
    assert set(tried) == set(upstream.servers)
    assert upstream.choose("10.0.0.1", tried) is None


def test_choose_with_a_heavy_server_tried_goes_to_the_other():
    upstream = pool(100, 1)
    heavy, light = upstream.servers
    for _ in range(10):
        assert upstream.choose("k", [heavy]) is light


def test_empty_upstream():
    upstream = pool()
    assert upstream.is_empty
    assert upstream.choose("10.0.0.1") is None
    assert not pool(1).is_empty


def test_a_fully_tried_pool_is_not_empty():
    upstream = pool(1)
    assert upstream.choose("k", upstream.servers) is None
    assert not upstream.is_empty  # 502 (all tried) and 503 (nothing there) differ


def test_request_counters():
    upstream = pool(1, 1)
    first, second = upstream.servers
    upstream.request_started(first)
    upstream.request_started(first)
    upstream.request_started(second)
    assert (first.active, first.total, second.active, second.total) == (2, 2, 1, 1)
    upstream.request_finished(first)
    assert (first.active, first.total) == (1, 2)
    upstream.record_failure(second, 0.0)
    upstream.record_failure(second, 0.0)
    assert second.failures == 2
    assert first.failures == 0


def test_least_conn_pool_sees_active_counts():
    upstream = pool(1, 1, balance="least_conn")
    first = upstream.choose("k")
    upstream.request_started(first)
    second = upstream.choose("k")
    assert second is not first
    upstream.request_started(second)
    upstream.request_finished(first)
    assert upstream.choose("k") is first


def test_ip_hash_pool_keeps_a_client_on_one_server():
    upstream = pool(1, 1, 1, balance="ip_hash")
    for client in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        assert len({upstream.choose(client) for _ in range(10)}) == 1


@given(st.lists(st.integers(1, 5), min_size=1, max_size=6), st.data())
def test_choose_never_returns_a_tried_server(weights, data):
    upstream = pool(*weights)
    tried = data.draw(st.lists(st.sampled_from(upstream.servers), unique=True))
    chosen = upstream.choose("k", tried)
    if len(tried) == len(upstream.servers):
        assert chosen is None
    else:
        assert chosen in upstream.servers and chosen not in tried


def test_a_response_from_a_server_taken_out_brings_it_back():
    """Passive health took both out (say, while the backends were starting); one answers: it is back."""
    upstream = pool(1, 1)
    first, second = upstream.servers
    assert upstream.record_failure(first, 100.0) and upstream.record_failure(second, 100.0)
    assert first.status == second.status == "down"
    upstream.record_success(first)
    assert first.status == "up" and second.status == "down"
    assert upstream.choose("k", now=101.0) is first  # the other stays out until its fail_timeout ends
