"""gateway.core.state: the operators' live changes on top of config.yaml, and the state file format."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from gateway.core.config import ConfigError, ServerConfig, UpstreamConfig
from gateway.core.pool import DRAINING, UP
from gateway.core.state import STATE_VERSION, LiveChanges, ServerChange

SOURCE = "/var/lib/gateway/state.json"


def upstream(*servers: tuple[int, int], name: str = "web") -> UpstreamConfig:
    """An upstream whose servers are 127.0.0.1:<port> with <weight>."""
    return UpstreamConfig(name=name, servers=tuple(ServerConfig("127.0.0.1", port, weight)
                                                  for port, weight in servers))


def effective(changes: LiveChanges, config: UpstreamConfig) -> list[tuple[str, int, str]]:
    return [(server.address, server.weight, state) for server, state in changes.effective_servers(config)]


WEB = upstream((8001, 3), (8002, 1))


# -- record / record_removed ---------------------------------------------------------

def test_no_changes_means_the_config_as_is():
    assert effective(LiveChanges(), WEB) == [("127.0.0.1:8001", 3, UP), ("127.0.0.1:8002", 1, UP)]


def test_record_overrides_a_configured_server_in_place():
    changes = LiveChanges()
    changes.record("web", "127.0.0.1:8001", 5, DRAINING)
    assert effective(changes, WEB) == [("127.0.0.1:8001", 5, DRAINING), ("127.0.0.1:8002", 1, UP)]
    assert changes.upstreams == {"web": {"127.0.0.1:8001": ServerChange(weight=5, state=DRAINING)}}


def test_the_last_record_wins():
    changes = LiveChanges()
    changes.record("web", "127.0.0.1:8002", 4, DRAINING)
    changes.record("web", "127.0.0.1:8002", 2, UP)
    assert effective(changes, WEB) == [("127.0.0.1:8001", 3, UP), ("127.0.0.1:8002", 2, UP)]


def test_added_servers_come_after_the_configured_ones_in_the_order_added():
    changes = LiveChanges()
    changes.record("web", "127.0.0.1:8005", 1, UP)
    changes.record("web", "127.0.0.1:8003", 2, DRAINING)
    changes.record("web", "[::1]:8004", 7, UP)
    assert effective(changes, WEB) == [
        ("127.0.0.1:8001", 3, UP), ("127.0.0.1:8002", 1, UP),
        ("127.0.0.1:8005", 1, UP), ("127.0.0.1:8003", 2, DRAINING), ("[::1]:8004", 7, UP)]
    ipv6 = changes.effective_servers(WEB)[-1][0]
    assert (ipv6.host, ipv6.port) == ("::1", 8004)


def test_removing_a_configured_server_is_remembered():
    changes = LiveChanges()
    changes.record_removed("web", "127.0.0.1:8001", in_config=True)
    assert effective(changes, WEB) == [("127.0.0.1:8002", 1, UP)]
    assert changes.upstreams == {"web": {"127.0.0.1:8001": ServerChange(removed=True)}}


def test_removing_an_added_server_forgets_it_entirely():
    changes = LiveChanges()
    changes.record("web", "127.0.0.1:8003", 2, UP)
    changes.record_removed("web", "127.0.0.1:8003", in_config=False)
    assert effective(changes, WEB) == [("127.0.0.1:8001", 3, UP), ("127.0.0.1:8002", 1, UP)]
    assert changes.upstreams == {}  # no empty upstream left behind


def test_removing_an_unknown_added_server_leaves_nothing_behind():
    changes = LiveChanges()
    changes.record_removed("api", "127.0.0.1:9009", in_config=False)
    assert changes.upstreams == {}


def test_adding_back_a_removed_configured_server_takes_its_config_place():
    changes = LiveChanges()
    changes.record("web", "127.0.0.1:8003", 1, UP)
    changes.record_removed("web", "127.0.0.1:8001", in_config=True)
    changes.record("web", "127.0.0.1:8001", 2, UP)
    assert effective(changes, WEB) == [("127.0.0.1:8001", 2, UP), ("127.0.0.1:8002", 1, UP),
                                       ("127.0.0.1:8003", 1, UP)]


def test_a_removed_marker_for_an_address_no_longer_configured_is_harmless():
    changes = LiveChanges()
    changes.record_removed("web", "127.0.0.1:8009", in_config=True)  # config.yaml dropped it since
    assert effective(changes, WEB) == [("127.0.0.1:8001", 3, UP), ("127.0.0.1:8002", 1, UP)]


def test_changes_are_per_upstream():
    changes = LiveChanges()
    changes.record("api", "127.0.0.1:8001", 9, DRAINING)
    assert effective(changes, WEB) == [("127.0.0.1:8001", 3, UP), ("127.0.0.1:8002", 1, UP)]
    assert effective(changes, upstream((8001, 1), name="api")) == [("127.0.0.1:8001", 9, DRAINING)]


def test_changes_to_an_upstream_with_no_configured_servers():
    changes = LiveChanges()
    changes.record("empty", "127.0.0.1:8003", 1, UP)
    assert effective(changes, upstream(name="empty")) == [("127.0.0.1:8003", 1, UP)]


def test_applying_the_changes_twice_changes_nothing():
    changes = LiveChanges()
    changes.record("web", "127.0.0.1:8001", 5, UP)
    changes.record("web", "127.0.0.1:8003", 1, UP)
    first = changes.effective_servers(WEB)
    again = changes.effective_servers(UpstreamConfig(name="web", servers=tuple(server for server, _ in first)))
    assert again == first


# -- prune ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("recorded", "existing", "stale", "kept"), [
    (["web", "api"], {"web", "api"}, [], ["web", "api"]),
    (["web", "api"], {"web"}, ["api"], ["web"]),
    (["web", "api", "old"], set(), ["web", "api", "old"], []),
    ([], {"web"}, [], []),
])
def test_prune(recorded, existing, stale, kept):
    changes = LiveChanges()
    for name in recorded:
        changes.record(name, "127.0.0.1:8001", 1, UP)
    assert changes.prune(existing) == stale
    assert list(changes.upstreams) == kept


# -- the state file -------------------------------------------------------------------------

def test_to_json_document():
    changes = LiveChanges()
    changes.record("web", "127.0.0.1:8003", 2, UP)
    changes.record("web", "127.0.0.1:8002", 1, DRAINING)
    changes.record_removed("web", "127.0.0.1:8001", in_config=True)
    text = changes.to_json()
    assert text.endswith("\n")
    assert json.loads(text) == {"version": STATE_VERSION, "upstreams": {"web": {
        "127.0.0.1:8001": {"removed": True},
        "127.0.0.1:8002": {"weight": 1, "state": "draining"},
        "127.0.0.1:8003": {"weight": 2, "state": "up"}}}}


def test_empty_round_trip():
    text = LiveChanges().to_json()
    assert json.loads(text) == {"version": STATE_VERSION, "upstreams": {}}
    assert LiveChanges.from_json(text, SOURCE).upstreams == {}


def test_round_trip_keeps_what_matters():
    changes = LiveChanges()
    changes.record("web", "127.0.0.1:8005", 1, UP)
    changes.record("web", "127.0.0.1:8003", 2, DRAINING)
    changes.record_removed("web", "127.0.0.1:8001", in_config=True)
    changes.record("api", "[::1]:9001", 4, UP)
    restored = LiveChanges.from_json(changes.to_json(), SOURCE)
    assert restored.upstreams == changes.upstreams
    assert sorted(effective(restored, WEB)) == sorted(effective(changes, WEB))


def test_added_servers_keep_the_order_added_across_a_round_trip():
    """effective_servers promises "config order then the order added"; a restart must not change it.

    Fails today: to_json() writes the file with sort_keys=True, so after a
    restart the added servers come back sorted by address text (":10000"
    before ":8003"), which changes their order in GET /upstreams and the
    interleaving of smooth weighted round robin.
    """
    changes = LiveChanges()
    changes.record("web", "127.0.0.1:8005", 1, UP)
    changes.record("web", "127.0.0.1:8003", 1, UP)
    changes.record("web", "127.0.0.1:10000", 1, UP)
    added = ["127.0.0.1:8005", "127.0.0.1:8003", "127.0.0.1:10000"]
    assert [address for address, _, _ in effective(changes, WEB)][2:] == added
    restored = LiveChanges.from_json(changes.to_json(), SOURCE)
    assert [address for address, _, _ in effective(restored, WEB)][2:] == added


addresses = st.builds(lambda port: f"127.0.0.1:{port}", st.integers(1, 65535)) | \
    st.builds(lambda port: f"[::1]:{port}", st.integers(1, 65535))
changes_strategy = st.one_of(
    st.builds(ServerChange, weight=st.integers(1, 1000), state=st.sampled_from([UP, DRAINING])),
    st.just(ServerChange(removed=True)))
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-0123456789", min_size=1, max_size=12)


@given(st.dictionaries(names, st.dictionaries(addresses, changes_strategy, min_size=1, max_size=5), max_size=4))
def test_any_changes_survive_a_round_trip(upstreams):
    changes = LiveChanges(upstreams=upstreams)
    assert LiveChanges.from_json(changes.to_json(), SOURCE).upstreams == upstreams


@pytest.mark.parametrize(("text", "expected"), [
    ("", "invalid JSON"),
    ("{", "invalid JSON"),
    ("not json at all", "invalid JSON"),
    ("[]", "not a gateway state file"),
    ('"upstreams"', "not a gateway state file"),
    ('{"upstreams": {}}', "expected version 1"),
    ('{"version": 2, "upstreams": {}}', "expected version 1"),
    ('{"version": "1", "upstreams": {}}', "expected version 1"),
    ('{"version": 1}', "'upstreams' mapping"),
    ('{"version": 1, "upstreams": []}', "'upstreams' mapping"),
    ('{"version": 1, "upstreams": {"web": ["127.0.0.1:8001"]}}', "upstreams.web: expected a mapping of addresses"),
    ('{"version": 1, "upstreams": {"web": {"localhost": {"weight": 1, "state": "up"}}}}',
     "upstreams.web.localhost: not a server address"),
    ('{"version": 1, "upstreams": {"web": {"127.0.0.1:0": {"weight": 1, "state": "up"}}}}',
     "upstreams.web.127.0.0.1:0: not a server address"),
    ('{"version": 1, "upstreams": {"web": {"::1:8001": {"weight": 1, "state": "up"}}}}', "not a server address"),
    ('{"version": 1, "upstreams": {"web": {"127.0.0.1:8001": 3}}}',
     "upstreams.web.127.0.0.1:8001: expected a mapping"),
    ('{"version": 1, "upstreams": {"web": {"127.0.0.1:8001": {"state": "up"}}}}', "upstreams.web.127.0.0.1:8001"),
    ('{"version": 1, "upstreams": {"web": {"127.0.0.1:8001": {"weight": 1}}}}', "upstreams.web.127.0.0.1:8001"),
    ('{"version": 1, "upstreams": {"web": {"127.0.0.1:8001": {"weight": 0, "state": "up"}}}}',
     "integer weight >= 1"),
    ('{"version": 1, "upstreams": {"web": {"127.0.0.1:8001": {"weight": true, "state": "up"}}}}',
     "integer weight >= 1"),
    ('{"version": 1, "upstreams": {"web": {"127.0.0.1:8001": {"weight": 1.5, "state": "up"}}}}',
     "integer weight >= 1"),
    ('{"version": 1, "upstreams": {"web": {"127.0.0.1:8001": {"weight": "2", "state": "up"}}}}',
     "integer weight >= 1"),
    ('{"version": 1, "upstreams": {"web": {"127.0.0.1:8001": {"weight": 1, "state": "down"}}}}',
     "state of up or draining"),
    ('{"version": 1, "upstreams": {"web": {"127.0.0.1:8001": {"removed": false}}}}', "upstreams.web.127.0.0.1:8001"),
])
def test_malformed_state_files_name_the_file(text, expected):
    with pytest.raises(ConfigError) as raised:
        LiveChanges.from_json(text, SOURCE)
    message = str(raised.value)
    assert SOURCE in message, message
    assert expected in message, message
    assert "\n" not in message
