"""gateway.core.config: the YAML schema, its defaults and its error messages.

Every user mistake must become one ConfigError naming the file, the key path,
the line, and what was expected; nothing else may escape parse_config.
"""

from __future__ import annotations

import os

import re
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from gateway.core.config import (
    ConfigError,
    GatewayConfig,
    ListenerConfig,
    ProcessConfig,
    RouteConfig,
    ServerConfig,
    format_address,
    load_config,
    parse_address,
    parse_config,
)

REPO = Path(__file__).resolve().parents[2]
SOURCE = "conf/gateway.yaml"

# The example of the issue, verbatim (comments included).
ISSUE_EXAMPLE = """\
listeners:
  - name: public
    port: 8080
    interface: 127.0.0.1        # default 0.0.0.0
upstreams:
  web:
    balance: round_robin        # smooth weighted round robin (nginx's algorithm); also least_conn and ip_hash
    servers:
      - {address: "127.0.0.1:8001", weight: 3}
      - {address: "127.0.0.1:8002"}          # weight defaults to 1
  api:
    servers:
      - {address: "127.0.0.1:9001"}
routes:
  - {path: /api/, upstream: api}
  - {path: /, upstream: web}
processes:                      # optional: commands the gateway starts and keeps running (twisted.runner.procmon)
  web-1: gunicorn --worker-class gthread --threads 4 --bind 127.0.0.1:8001 backends.web:app
access_log: "-"                 # "-" = stdout; a path = file; null = off
"""

# A small valid document in block style; the tests below change one line of it.
BASE = """\
listeners:
  - name: public
    port: 8080
upstreams:
  web:
    servers:
      - address: "127.0.0.1:8001"
        weight: 3
      - address: "127.0.0.1:8002"
routes:
  - path: /
    upstream: web
"""


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """The 1-based line number of the *occurrence*-th line containing *needle*."""
    seen = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} not in the document")


def error_for(text: str, source: str = SOURCE) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source)
    return str(info.value)


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


# -- the happy path --------------------------------------------------------------


def test_issue_example_parses_with_its_values():
    config = parse_config(ISSUE_EXAMPLE, "example.yaml")
    assert isinstance(config, GatewayConfig)
    assert config.source == "example.yaml"
    assert config.listeners == (ListenerConfig(name="public", port=8080, interface="127.0.0.1"),)
    assert list(config.upstreams) == ["web", "api"]
    web = config.upstreams["web"]
    assert web.name == "web"
    assert web.balance == "round_robin"
    assert web.servers == (ServerConfig("127.0.0.1", 8001, 3), ServerConfig("127.0.0.1", 8002, 1))
    assert config.upstreams["api"].servers == (ServerConfig("127.0.0.1", 9001, 1),)
    assert config.routes == (RouteConfig(path="/api/", upstream="api"), RouteConfig(path="/", upstream="web"))
    assert config.processes == (ProcessConfig(
        name="web-1",
        argv=("gunicorn", "--worker-class", "gthread", "--threads", "4", "--bind", "127.0.0.1:8001",
              "backends.web:app")),)
    assert config.access_log == "-"


def test_defaults():
    config = parse_config(
        "listeners: [{port: 8080}]\n"
        "upstreams: {web: {servers: [{address: '10.0.0.1:80'}]}}\n"
        "routes: [{path: /, upstream: web}]\n", SOURCE)
    (listener,) = config.listeners
    assert listener.interface == "0.0.0.0"
    assert listener.port == 8080
    assert listener.name  # a generated name, so that messages can name it
    upstream = config.upstreams["web"]
    assert upstream.balance == "round_robin"
    assert upstream.servers[0].weight == 1
    assert upstream.keepalive_timeout > 0
    assert config.access_log == "-"
    assert config.processes == ()
    route = config.routes[0]
    assert route.host is None
    assert route.strip_prefix is False


@pytest.mark.parametrize("value, expected", [("null", None), ("'-'", "-"), ("/var/log/gw.log", "/var/log/gw.log")])
def test_access_log_values(value, expected):
    assert parse_config(BASE + f"access_log: {value}\n", SOURCE).access_log == expected


def test_workers_default_to_one_and_auto_means_the_usable_cores():
    assert parse_config(BASE, SOURCE).workers == 1
    assert parse_config(BASE + "workers: 4\n", SOURCE).workers == 4
    assert parse_config(BASE + "workers: auto\n", SOURCE).workers == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("policy", ["round_robin", "least_conn", "ip_hash"])
def test_balance_policies_accepted(policy):
    text = replace_once(BASE, "  web:\n", f"  web:\n    balance: {policy}\n")
    assert parse_config(text, SOURCE).upstreams["web"].balance == policy


def test_route_host_and_strip_prefix():
    text = BASE + "  - {path: /api/, upstream: web, host: API.Example.com, strip_prefix: true}\n"
    route = parse_config(text, SOURCE).routes[1]
    assert route == RouteConfig(path="/api/", upstream="web", host="api.example.com", strip_prefix=True)


def test_an_upstream_without_servers_is_valid():
    """An empty pool is a run-time condition (503), not a configuration error."""
    text = BASE + "  - {path: /none/, upstream: none}\n"
    text = replace_once(text, "routes:\n", "  none:\n    servers: []\nroutes:\n")
    assert parse_config(text, SOURCE).upstreams["none"].servers == ()


@pytest.mark.parametrize("address, host, port", [
    ("127.0.0.1:8003", "127.0.0.1", 8003),
    ("localhost:80", "localhost", 80),
    ("backend.internal:65535", "backend.internal", 65535),
    ("[::1]:8000", "::1", 8000),
    ("[2001:db8::5]:1", "2001:db8::5", 1),
])
def test_server_addresses_accepted(address, host, port):
    assert parse_address(address) == (host, port)
    text = replace_once(BASE, '"127.0.0.1:8002"', f'"{address}"')
    server = parse_config(text, SOURCE).upstreams["web"].servers[1]
    assert (server.host, server.port) == (host, port)
    assert server.address == address


@pytest.mark.parametrize("host, port, text", [("10.0.0.1", 80, "10.0.0.1:80"), ("::1", 8000, "[::1]:8000")])
def test_format_address(host, port, text):
    assert format_address(host, port) == text


def test_demo_config_loads():
    config = load_config(str(REPO / "config" / "demo.yaml"))
    assert [s.weight for s in config.upstreams["web"].servers] == [3, 1]
    assert {route.path: route.upstream for route in config.routes} == {"/api/": "api", "/": "web"}
    assert {p.name for p in config.processes} == {"web-1", "web-2", "api-1"}


def test_load_config_reads_a_file(tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_text(BASE, encoding="utf-8")
    config = load_config(str(path))
    assert config.source == str(path)
    assert config.upstreams["web"].servers[0].weight == 3


def test_load_config_missing_file_names_the_path(tmp_path):
    path = tmp_path / "absent" / "gateway.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(path) in str(info.value)
    assert "No such file" in str(info.value)


def test_load_config_error_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(replace_once(BASE, "weight: 3", "weight: 0"), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value).startswith(f"{path}: ")


# -- mistakes: one clear message each -------------------------------------------------

# (name, the document, key path, the line's marker, words that say what is expected)
MISTAKES = [
    ("unknown top-level key", BASE + "bogus: 1\n", "bogus", "bogus:",
     "unknown key; expected one of: listeners, upstreams, routes, processes, access_log"),
    ("unknown listener key", replace_once(BASE, "    port: 8080\n", "    port: 8080\n    backlog: 5\n"),
     "listeners[0].backlog", "backlog:", "unknown key; expected one of: name, port, interface"),
    ("unknown server key", replace_once(BASE, "        weight: 3\n", "        weight: 3\n        wieght: 2\n"),
     "upstreams.web.servers[0].wieght", "wieght:", "unknown key; expected one of: address, weight"),
    ("unknown upstream key", replace_once(BASE, "  web:\n", "  web:\n    balanse: ip_hash\n"),
     "upstreams.web.balanse", "balanse:", "unknown key"),
    ("unknown route key", replace_once(BASE, "    upstream: web\n", "    upstream: web\n    prefix: /x\n"),
     "routes[0].prefix", "prefix:", "unknown key; expected one of: path, upstream, host, strip_prefix"),
    ("port is a string", replace_once(BASE, "port: 8080", 'port: "x"'),
     "listeners[0].port", "port:", "expected an integer from 0 to 65535, got a string 'x'"),
    ("port is a boolean", replace_once(BASE, "port: 8080", "port: true"),
     "listeners[0].port", "port:", "expected an integer from 0 to 65535, got a boolean"),
    ("port too large", replace_once(BASE, "port: 8080", "port: 70000"),
     "listeners[0].port", "port:", "expected an integer from 0 to 65535, got 70000"),
    ("weight 0", replace_once(BASE, "weight: 3", "weight: 0"),
     "upstreams.web.servers[0].weight", "weight:", "expected an integer >= 1, got 0"),
    ("weight -1", replace_once(BASE, "weight: 3", "weight: -1"),
     "upstreams.web.servers[0].weight", "weight:", "expected an integer >= 1, got -1"),
    ("weight 1.5", replace_once(BASE, "weight: 3", "weight: 1.5"),
     "upstreams.web.servers[0].weight", "weight:", "expected an integer >= 1, got a number 1.5"),
    ("weight as a string", replace_once(BASE, "weight: 3", 'weight: "3"'),
     "upstreams.web.servers[0].weight", "weight:", "expected an integer >= 1, got a string '3'"),
    ("weight as a boolean", replace_once(BASE, "weight: 3", "weight: yes"),
     "upstreams.web.servers[0].weight", "weight:", "expected an integer >= 1, got a boolean"),
    ("address without port", replace_once(BASE, '"127.0.0.1:8002"', '"127.0.0.1"'),
     "upstreams.web.servers[1].address", '"127.0.0.1"', 'expected an address like "127.0.0.1:8001"'),
    ("address bare host name", replace_once(BASE, '"127.0.0.1:8002"', '"localhost"'),
     "upstreams.web.servers[1].address", "localhost", 'expected an address like "127.0.0.1:8001"'),
    ("address port 70000", replace_once(BASE, '"127.0.0.1:8002"', '"127.0.0.1:70000"'),
     "upstreams.web.servers[1].address", "70000", "port must be between 1 and 65535"),
    ("address port 0", replace_once(BASE, '"127.0.0.1:8002"', '"127.0.0.1:0"'),
     "upstreams.web.servers[1].address", "127.0.0.1:0", "port must be between 1 and 65535"),
    ("address IPv6 without brackets", replace_once(BASE, '"127.0.0.1:8002"', '"::1:8002"'),
     "upstreams.web.servers[1].address", "::1:8002", "brackets"),
    ("address bracketed non-IPv6", replace_once(BASE, '"127.0.0.1:8002"', '"[nope]:8002"'),
     "upstreams.web.servers[1].address", "[nope]", 'expected an address like "127.0.0.1:8001"'),
    ("address is a number", replace_once(BASE, '"127.0.0.1:8002"', "8002"),
     "upstreams.web.servers[1].address", "8002", 'expected an address like "127.0.0.1:8001"'),
    ("server without address", replace_once(BASE, '      - address: "127.0.0.1:8002"\n', "      - weight: 2\n"),
     "upstreams.web.servers[1]", "weight: 2", "missing required key 'address'"),
    ("duplicate server", replace_once(BASE, '"127.0.0.1:8002"', '"127.0.0.1:8001"'),
     "upstreams.web.servers[1].address", ('"127.0.0.1:8001"', 2), "duplicate server 127.0.0.1:8001"),
    ("duplicate listener name", replace_once(BASE, "upstreams:\n", "  - name: public\n    port: 8081\nupstreams:\n"),
     "listeners[1].name", ("name: public", 2), "duplicate listener name public"),
    ("duplicate listener port", replace_once(BASE, "upstreams:\n", "  - name: second\n    port: 8080\nupstreams:\n"),
     "listeners[1].port", ("port: 8080", 2), "duplicate interface and port 0.0.0.0:8080"),
    ("route to undefined upstream", replace_once(BASE, "upstream: web", "upstream: wbe"),
     "routes[0].upstream", "upstream: wbe", "unknown upstream 'wbe'; expected one of the names under 'upstreams' (web)"),
    ("route path without /", replace_once(BASE, "path: /", "path: api"),
     "routes[0].path", "path: api", "expected a path starting with /"),
    ("unknown balance", replace_once(BASE, "  web:\n", "  web:\n    balance: random\n"),
     "upstreams.web.balance", "balance:", "expected one of round_robin, least_conn, ip_hash, got 'random'"),
    ("listeners not a list", replace_once(BASE, "listeners:\n  - name: public\n    port: 8080\n",
                                          "listeners: {name: public, port: 8080}\n"),
     "listeners", "listeners:", "expected a list, got a mapping"),
    ("no listener", replace_once(BASE, "listeners:\n  - name: public\n    port: 8080\n", "listeners: []\n"),
     "listeners", "listeners:", "expected at least one listener"),
    ("interface not an IP", replace_once(BASE, "    port: 8080\n", "    port: 8080\n    interface: localhost\n"),
     "listeners[0].interface", "interface:", "expected an IP address such as 127.0.0.1"),
    ("strip_prefix not a boolean", replace_once(BASE, "    upstream: web\n", "    upstream: web\n    strip_prefix: 'yes'\n"),
     "routes[0].strip_prefix", "strip_prefix:", "expected true or false"),
    ("access_log a number", BASE + "access_log: 3\n", "access_log", "access_log:",
     'expected "-" for standard output, a file path, or null'),
    ("empty process command", BASE + "processes:\n  web-1: ''\n", "processes.web-1", "web-1:",
     "expected a command line, got an empty string"),
    ("unparseable process command", BASE + "processes:\n  web-1: 'gunicorn \"unterminated'\n", "processes.web-1",
     "web-1:", "expected a command line (No closing quotation)"),
    ("process command a list", BASE + "processes:\n  web-1: [gunicorn, app]\n", "processes.web-1", "web-1:",
     "expected a command line"),
    ("workers 0", BASE + "workers: 0\n", "workers", "workers:",
     'expected an integer from 1 to 256 or "auto", got an integer 0'),
    ("workers a word", BASE + "workers: many\n", "workers", "workers:",
     'expected an integer from 1 to 256 or "auto", got a string \'many\''),
    ("workers a boolean", BASE + "workers: yes\n", "workers", "workers:", "got a boolean True"),
]


@pytest.mark.parametrize("text, key, marker, expected",
                         [pytest.param(*case[1:], id=case[0]) for case in MISTAKES])
def test_mistake_message(text, key, marker, expected):
    message = error_for(text)
    assert message.startswith(f"{SOURCE}: {key} "), message
    needle, occurrence = marker if isinstance(marker, tuple) else (marker, 1)
    assert f"(line {line_of(text, needle, occurrence)})" in message, message
    assert expected in message, message
    assert "Traceback" not in message


def test_unknown_key_with_a_block_value_names_the_key_line():
    """A mistyped section name (``route:`` for ``routes:``) must point at the key's own line,
    not at the line where its (block) value starts."""
    text = BASE + "route:\n  - path: /x\n    upstream: web\n"
    message = error_for(text)
    assert message.startswith(f"{SOURCE}: route "), message
    assert f"(line {line_of(text, 'route:')})" in message, message


@pytest.mark.parametrize("text, key, expected", [
    pytest.param("listeners: [{port: 80}]\nupstreams: {}\n", "top level", "missing required key 'routes'",
                 id="missing routes"),
    pytest.param("- just\n- a list\n", "top level", "expected a mapping, got a list", id="list document"),
    pytest.param("", "top level", "expected a mapping", id="empty file"),
    pytest.param("# nothing but a comment\n", "top level", "expected a mapping", id="comment only"),
])
def test_document_level_mistakes(text, key, expected):
    message = error_for(text)
    assert message.startswith(f"{SOURCE}: {key}"), message
    assert expected in message, message


@pytest.mark.parametrize("text, line, column", [
    pytest.param(BASE + "routes: [\n", 14, 1, id="unclosed flow sequence"),
    pytest.param("listeners: a: b\n", 1, 13, id="mapping value in a scalar"),
    pytest.param(BASE + "  - {path: /x upstream: web\n", 13, 23, id="unclosed flow mapping"),
    pytest.param("listeners:\n\t- port: 80\n", 2, 1, id="tab indentation"),
])
def test_invalid_yaml_names_line_and_column(text, line, column):
    message = error_for(text)
    assert message.startswith(f"{SOURCE} (line {line}, column {column}): not valid YAML: "), message


def test_duplicate_upstream_name_is_refused():
    """Two ``web:`` keys: PyYAML keeps the last silently, so the first definition would vanish."""
    text = replace_once(BASE, "routes:\n", "  web:\n    servers:\n      - address: \"127.0.0.1:9999\"\nroutes:\n")
    message = error_for(text)
    assert "upstreams.web" in message
    assert "duplicate" in message


# -- properties ---------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=10**9))
def test_any_positive_weight_is_accepted(weight):
    text = replace_once(BASE, "weight: 3", f"weight: {weight}")
    assert parse_config(text, SOURCE).upstreams["web"].servers[0].weight == weight


@given(st.integers(max_value=0))
def test_any_weight_below_one_is_refused(weight):
    message = error_for(replace_once(BASE, "weight: 3", f"weight: {weight}"))
    assert f"upstreams.web.servers[0].weight (line 8): expected an integer >= 1, got {weight}" in message


@given(st.text(max_size=200))
def test_arbitrary_text_gives_config_or_error_never_a_crash(text):
    try:
        parse_config(text, SOURCE)
    except ConfigError as error:
        assert str(error).startswith(SOURCE)


@given(st.integers(min_value=1, max_value=65535), st.sampled_from(["127.0.0.1", "example.org", "::1", "fe80::1"]))
def test_address_round_trip(port, host):
    assert parse_address(format_address(host, port)) == (host, port)


def test_message_has_no_python_repr_noise():
    message = error_for(replace_once(BASE, "weight: 3", "weight: 0"))
    assert re.fullmatch(r"conf/gateway\.yaml: upstreams\.web\.servers\[0\]\.weight \(line 8\): "
                        r"expected an integer >= 1, got 0", message), message
