"""Routing through the real gateway: which upstream a request goes to.

The ``web`` backends and the ``api`` backend name themselves in
``X-Served-By``; the api backend's catch-all answers (200 under ``/api/``,
404 elsewhere) show in their JSON the path that actually arrived.
"""

from __future__ import annotations

import json

import pytest
from harness import HOST, free_port, gateway_config, http_get, served_by_name


def config_with_routes(port: int, backends, routes: list[dict]) -> dict:
    config = gateway_config(port, web=[backends.web1.address], api=[backends.api.address])
    config["routes"] = routes
    return config


@pytest.fixture
def demo_port(backends, gateway) -> int:
    """A gateway like config/demo.yaml: ``/api/`` -> api, ``/`` -> web."""
    port = free_port()
    gateway(gateway_config(port, web=[backends.web1.address], api=[backends.api.address]))
    return port


@pytest.mark.parametrize("path, upstream", [
    ("/api/", "api-1"),
    ("/api", "api-1"),
    ("/api/users", "api-1"),
    ("/api/orders/42?full=1", "api-1"),
    ("/apix", "web-1"),
    ("/apix/users", "web-1"),
    ("/", "web-1"),
    ("/json", "web-1"),
    ("/APi/users", "web-1"),  # paths are case-sensitive
])
def test_longest_segment_aware_prefix_wins(demo_port: int, path: str, upstream: str) -> None:
    _, headers, _ = http_get(demo_port, path)
    assert served_by_name(headers) == upstream


def test_api_route_forwards_path_and_query_unchanged(demo_port: int) -> None:
    status, _, body = http_get(demo_port, "/api/users")
    assert status == 200 and len(json.loads(body)["users"]) == 3

    status, _, body = http_get(demo_port, "/api/orders/42?full=1&x=%2F")
    assert status == 200
    answer = json.loads(body)
    assert (answer["path"], answer["query_string"]) == ("/api/orders/42", "full=1&x=%2F")


def test_route_order_in_the_file_does_not_matter(backends, gateway) -> None:
    port = free_port()
    gateway(config_with_routes(port, backends, [{"path": "/", "upstream": "web"},
                                                {"path": "/api/", "upstream": "api"}]))
    _, headers, _ = http_get(port, "/api/users")
    assert served_by_name(headers) == "api-1"
    _, headers, _ = http_get(port, "/apix")
    assert served_by_name(headers) == "web-1"


def test_nested_prefix_beats_its_parent(backends, gateway) -> None:
    port = free_port()
    gateway(config_with_routes(port, backends, [{"path": "/api/", "upstream": "api"},
                                                {"path": "/api/legacy", "upstream": "web"},
                                                {"path": "/", "upstream": "web"}]))
    assert served_by_name(http_get(port, "/api/legacy")[1]) == "web-1"
    assert served_by_name(http_get(port, "/api/legacy/x")[1]) == "web-1"
    assert served_by_name(http_get(port, "/api/legacyx")[1]) == "api-1"
    assert served_by_name(http_get(port, "/api/users")[1]) == "api-1"


@pytest.fixture
def host_port(backends, gateway) -> int:
    """``api.example`` -> api for every path; any other host -> web."""
    port = free_port()
    gateway(config_with_routes(port, backends, [{"host": "api.example", "path": "/", "upstream": "api"},
                                                {"path": "/", "upstream": "web"}]))
    return port


@pytest.mark.parametrize("host, upstream", [
    ("api.example", "api-1"),
    ("api.example:8080", "api-1"),
    ("API.Example", "api-1"),
    ("www.example", "web-1"),
    ("www.example:8080", "web-1"),
    ("api.example.org", "web-1"),
    (HOST, "web-1"),
])
def test_host_routes_match_the_host_header_without_port(host_port: int, host: str, upstream: str) -> None:
    status, headers, _ = http_get(host_port, "/healthz", headers={"Host": host})
    assert status == 200
    assert served_by_name(headers) == upstream


def test_host_route_sends_the_host_header_on_unchanged(host_port: int) -> None:
    status, _, body = http_get(host_port, "/api/echo", headers={"Host": "api.example:8080"})
    assert status == 200
    echo = json.loads(body)
    assert echo["served_by"]["service"] == "api-1"
    assert echo["headers"]["host"] == "api.example:8080"


@pytest.fixture
def strip_port(backends, gateway) -> int:
    """``/svc/`` -> api with the prefix removed; everything else -> web."""
    port = free_port()
    gateway(config_with_routes(port, backends, [
        {"path": "/svc/", "upstream": "api", "strip_prefix": True},
        {"path": "/", "upstream": "web"},
    ]))
    return port


@pytest.mark.parametrize("path, arrived, query", [
    ("/svc/orders/42", "/orders/42", ""),
    ("/svc/orders/42?x=1&y=2", "/orders/42", "x=1&y=2"),
    ("/svc", "/", ""),
    ("/svc/", "/", ""),
])
def test_strip_prefix_removes_the_route_prefix(strip_port: int, path: str, arrived: str, query: str) -> None:
    status, headers, body = http_get(strip_port, path)
    # The api backend answers 404 outside /api/, and says which path it received.
    assert status == 404
    assert served_by_name(headers) == "api-1"
    assert json.loads(body)["path"] == arrived
    if query:
        echo = json.loads(http_get(strip_port, "/svc/api/echo?" + query)[2])
        assert (echo["path"], echo["query_string"]) == ("/api/echo", query)


def test_strip_prefix_reaches_the_backend_routes(strip_port: int) -> None:
    status, headers, body = http_get(strip_port, "/svc/api/users")
    assert status == 200 and served_by_name(headers) == "api-1"
    assert len(json.loads(body)["users"]) == 3
    # /svcx is not under /svc/: the web route takes it, unstripped.
    _, headers, _ = http_get(strip_port, "/svcx")
    assert served_by_name(headers) == "web-1"


def test_no_matching_route_is_a_404_from_the_gateway(backends, gateway) -> None:
    port = free_port()
    gateway(gateway_config(port, api=[backends.api.address]))  # only /api/ -> api

    for path in ("/", "/json", "/apix", "/ap"):
        status, headers, body = http_get(port, path)
        assert status == 404, path
        assert headers.get_content_type() == "text/plain"
        assert headers["X-Served-By"] is None  # no backend was involved
        assert 0 < len(body) < 200
    status, headers, _ = http_get(port, "/api/users")
    assert status == 200 and served_by_name(headers) == "api-1"
