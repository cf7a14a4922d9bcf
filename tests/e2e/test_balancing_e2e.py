"""Load balancing through the real gateway: which backend serves each request.

Every backend names itself in ``X-Served-By``, so the tests count who served
what.  The shared backends web-1 and web-2 are two servers of one upstream.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from harness import (
    KeepAliveClient,
    free_port,
    gateway_config,
    http_get,
    served_by_name,
)

#: How long a "slow" request keeps a backend busy in the least_conn tests.
SLOW_SECONDS = 4.0
#: Time given to the gateway to dispatch a slow request before the next one is sent.
SETTLE = 0.5


def weighted_config(port: int, servers: list[tuple[str, int | None]], balance: str = "round_robin") -> dict:
    """``/`` -> upstream ``web`` with these (address, weight) servers; weight None = not given."""
    config = gateway_config(port, web=[address for address, _ in servers], balance=balance)
    for entry, (_, weight) in zip(config["upstreams"]["web"]["servers"], servers):
        if weight is not None:
            entry["weight"] = weight
    return config


def served_sequence(port: int, count: int, path: str = "/healthz") -> list[str]:
    """Who served each of ``count`` sequential requests on one keep-alive connection."""
    names = []
    with KeepAliveClient(port) as client:
        for _ in range(count):
            status, headers, _ = client.get(path)
            assert status == 200
            names.append(served_by_name(headers))
    return names


def test_weights_3_to_1_give_exactly_300_and_100_of_400(backends, gateway) -> None:
    port = free_port()
    gateway(weighted_config(port, [(backends.web1.address, 3), (backends.web2.address, 1)]))

    names = served_sequence(port, 400)

    assert Counter(names) == {"web-1": 300, "web-2": 100}


def test_weighted_picks_are_interleaved_smoothly(backends, gateway) -> None:
    port = free_port()
    gateway(weighted_config(port, [(backends.web1.address, 3), (backends.web2.address, 1)]))

    names = served_sequence(port, 40)

    light = [name == "web-2" for name in names]
    # The light server never gets two picks in a row...
    assert not any(a and b for a, b in zip(light, light[1:])), names
    # ...and every run of 4 consecutive requests is 3 heavy + 1 light.
    for start in range(len(names) - 3):
        assert sum(light[start:start + 4]) == 1, (start, names)
    # The cycle is nginx's smooth one, a a b a, not the naive a a a b.
    assert names[:8] == ["web-1", "web-1", "web-2", "web-1"] * 2, names


def test_smooth_round_robin_spreads_light_servers_between_heavy_picks(backends, gateway) -> None:
    """nginx's example: weights 5:1:1 give a a b a c a a, where naive WRR gives a a a a a b c."""
    port = free_port()
    config = weighted_config(port, [(backends.web1.address, 5), (backends.web2.address, 1),
                                    (backends.api.address, 1)])  # the api app answers /healthz too
    gateway(config)

    names = served_sequence(port, 70)

    assert Counter(names) == {"web-1": 50, "web-2": 10, "api-1": 10}
    assert names[:7] == ["web-1", "web-1", "web-2", "web-1", "api-1", "web-1", "web-1"], names
    # The two light servers are never picked back to back, and the heavy one at most 4 times in a row.
    assert not any(a != "web-1" and b != "web-1" for a, b in zip(names, names[1:])), names
    assert not any(len(set(names[i:i + 5])) == 1 for i in range(len(names) - 4)), names


def test_weight_defaults_to_1_and_servers_alternate(backends, gateway) -> None:
    port = free_port()
    gateway(weighted_config(port, [(backends.web1.address, None), (backends.web2.address, None)]))

    names = served_sequence(port, 40)

    assert Counter(names) == {"web-1": 20, "web-2": 20}
    assert all(a != b for a, b in zip(names, names[1:])), names


def test_balancing_spans_client_connections(backends, gateway) -> None:
    """The balancer's state belongs to the upstream, not to a client connection."""
    port = free_port()
    gateway(weighted_config(port, [(backends.web1.address, 3), (backends.web2.address, 1)]))

    names = []
    for _ in range(40):
        status, headers, _ = http_get(port, "/healthz")  # a fresh connection each time
        assert status == 200
        names.append(served_by_name(headers))

    assert Counter(names) == {"web-1": 30, "web-2": 10}


def _start_slow(pool: ThreadPoolExecutor, port: int):
    future = pool.submit(http_get, port, f"/sleep?seconds={SLOW_SECONDS}", timeout=SLOW_SECONDS + 10)
    time.sleep(SETTLE)  # let the gateway dispatch it before the next request arrives
    assert not future.done(), "the slow request finished too early to be in flight"
    return future


def _slow_result(future) -> str:
    status, headers, _ = future.result(timeout=SLOW_SECONDS + 15)
    assert status == 200
    return served_by_name(headers)


def test_least_conn_sends_requests_to_the_less_busy_server(backends, gateway) -> None:
    port = free_port()
    gateway(weighted_config(port, [(backends.web1.address, None), (backends.web2.address, None)],
                            balance="least_conn"))

    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = _start_slow(pool, port)
        quick = []
        for _ in range(6):
            status, headers, _ = http_get(port, "/healthz")
            assert status == 200
            quick.append(served_by_name(headers))
        busy = _slow_result(slow)

    # Round robin would alternate; least_conn keeps off the server busy with the slow request.
    idle = {"web-1": "web-2", "web-2": "web-1"}[busy]
    assert quick == [idle] * 6, (busy, quick)


def test_least_conn_counts_active_requests_relative_to_weight(backends, gateway) -> None:
    """web-1 (weight 2) with one request in flight is less loaded than web-2 (weight 1) with one."""
    port = free_port()
    gateway(weighted_config(port, [(backends.web1.address, 2), (backends.web2.address, 1)],
                            balance="least_conn"))

    with ThreadPoolExecutor(max_workers=2) as pool:
        first = _start_slow(pool, port)
        second = _start_slow(pool, port)  # goes to the other server: one request in flight on each
        quick = []
        for _ in range(6):
            status, headers, _ = http_get(port, "/healthz")
            assert status == 200
            quick.append(served_by_name(headers))
        slow = sorted([_slow_result(first), _slow_result(second)])

    assert slow == ["web-1", "web-2"]
    # 1/2 < 1/1: the heavier server takes every quick request (a plain count would alternate).
    assert quick == ["web-1"] * 6, quick


def test_ip_hash_keeps_a_client_on_one_server(backends, gateway) -> None:
    port = free_port()
    gateway(weighted_config(port, [(backends.web1.address, None), (backends.web2.address, None)],
                            balance="ip_hash"))

    names = set()
    for _ in range(20):  # fresh connections, all from 127.0.0.1
        status, headers, _ = http_get(port, "/healthz")
        assert status == 200
        names.add(served_by_name(headers))
    names.update(served_sequence(port, 20))  # and a keep-alive connection

    assert len(names) == 1, names  # round robin would have used both


def test_ip_hash_ignores_x_forwarded_for(backends, gateway) -> None:
    """The key is the connection's address: a client cannot pick its server with a header."""
    port = free_port()
    gateway(weighted_config(port, [(backends.web1.address, None), (backends.web2.address, None)],
                            balance="ip_hash"))

    status, headers, _ = http_get(port, "/healthz")
    assert status == 200
    chosen = served_by_name(headers)
    for n in range(1, 21):
        status, headers, _ = http_get(port, "/healthz", headers={"X-Forwarded-For": f"10.0.{n}.{n}"})
        assert status == 200
        assert served_by_name(headers) == chosen, f"X-Forwarded-For: 10.0.{n}.{n}"
