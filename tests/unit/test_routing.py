"""gateway.core.routing: segment-aware longest-prefix routing, by Host then path."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from gateway.core.config import RouteConfig
from gateway.core.routing import RouteTable, prefix_matches, strip_route_prefix


def table(*routes: tuple) -> RouteTable:
    return RouteTable([RouteConfig(*route) for route in routes])


def upstream_of(routes: RouteTable, path: str, host: str | None = None) -> str | None:
    route = routes.match(host, path)
    return None if route is None else route.upstream


@pytest.mark.parametrize("prefix", ["/api/", "/api"])
@pytest.mark.parametrize("path, matches", [
    ("/api", True),
    ("/api/", True),
    ("/api/users", True),
    ("/api/users/42/", True),
    ("/api//x", True),
    ("/apix", False),
    ("/apix/users", False),
    ("/ap", False),
    ("/", False),
    ("/v1/api/", False),
    ("/API/", False),  # paths are case-sensitive
])
def test_segment_aware_prefix(prefix, path, matches):
    routes = table((prefix, "api"))
    assert upstream_of(routes, path) == ("api" if matches else None)


@pytest.mark.parametrize("path", ["/", "/x", "/api", "/apix", "/a/b/c?", "//"])
def test_root_matches_everything(path):
    assert upstream_of(table(("/", "web")), path) == "web"


@pytest.mark.parametrize("order", [
    [("/", "web"), ("/api/", "api"), ("/api/v2/", "v2")],
    [("/api/v2/", "v2"), ("/api/", "api"), ("/", "web")],
    [("/api/", "api"), ("/", "web"), ("/api/v2", "v2")],
])
@pytest.mark.parametrize("path, upstream", [
    ("/", "web"),
    ("/index.html", "web"),
    ("/api", "api"),
    ("/api/users", "api"),
    ("/api/v2", "v2"),
    ("/api/v2/users", "v2"),
    ("/api/v2x", "api"),
    ("/apix", "web"),
])
def test_longest_prefix_wins_whatever_the_file_order(order, path, upstream):
    assert upstream_of(table(*order), path) == upstream


def test_equal_prefixes_first_in_file_wins():
    assert upstream_of(table(("/api", "first"), ("/api/", "second")), "/api/x") == "first"
    assert upstream_of(table(("/api/", "first"), ("/api", "second")), "/api/x") == "first"


def test_no_match_is_none():
    routes = table(("/api/", "api"), ("/static", "static"))
    assert routes.match(None, "/") is None
    assert routes.match("example.com", "/other") is None
    assert RouteTable([]).match(None, "/") is None


HOST_ROUTES = [
    ("/", "admin", "admin.example.com"),
    ("/api/", "admin-api", "admin.example.com"),
    ("/api/", "api", None),
    ("/", "web", None),
]


@pytest.mark.parametrize("host, path, upstream", [
    ("admin.example.com", "/", "admin"),
    ("admin.example.com", "/api/users", "admin-api"),
    ("admin.example.com", "/anything", "admin"),
    ("www.example.com", "/", "web"),
    ("www.example.com", "/api/users", "api"),
    (None, "/", "web"),
    (None, "/api/", "api"),
])
def test_host_routes_first_then_host_less(host, path, upstream):
    assert upstream_of(table(*HOST_ROUTES), path, host) == upstream


def test_host_route_wins_over_a_longer_host_less_prefix():
    """Like nginx: the server (Host) is chosen first, then the location in it."""
    routes = table(("/", "admin", "admin.example.com"), ("/api/", "api", None))
    assert upstream_of(routes, "/api/users", "admin.example.com") == "admin"


def test_host_without_a_matching_path_falls_back_to_host_less_routes():
    routes = table(("/admin/", "admin", "example.com"), ("/", "web", None))
    assert upstream_of(routes, "/admin/x", "example.com") == "admin"
    assert upstream_of(routes, "/other", "example.com") == "web"
    assert upstream_of(routes, "/admin/x", "other.example.com") == "web"


def test_host_only_routes_do_not_serve_other_hosts():
    routes = table(("/", "admin", "admin.example.com"))
    assert upstream_of(routes, "/", "admin.example.com") == "admin"
    assert upstream_of(routes, "/", "example.com") is None
    assert upstream_of(routes, "/", None) is None


@pytest.mark.parametrize("prefix, path, stripped", [
    ("/api/", "/api/users", "/users"),
    ("/api/", "/api/users/42", "/users/42"),
    ("/api/", "/api/", "/"),
    ("/api/", "/api", "/"),
    ("/api", "/api/users", "/users"),
    ("/api", "/api", "/"),
    ("/a/b/", "/a/b/c", "/c"),
    ("/", "/users", "/users"),
    ("/", "/", "/"),
])
def test_strip_route_prefix(prefix, path, stripped):
    route = RouteConfig(prefix, "api", strip_prefix=True)
    assert RouteTable([route]).match(None, path) is route
    assert strip_route_prefix(route, path) == stripped


# -- properties -----------------------------------------------------------------------

segments = st.lists(st.sampled_from(["a", "ab", "api", "apix", "b", "v1", ""]), min_size=0, max_size=4)
paths = segments.map(lambda parts: "/" + "/".join(parts))
prefixes = st.tuples(segments, st.booleans()).map(
    lambda item: ("/" + "/".join(item[0]) + ("/" if item[1] and item[0] else "")).replace("//", "/"))


def normalised(prefix: str) -> str:
    return prefix.rstrip("/") or "/"


def is_segment_prefix(prefix: str, path: str) -> bool:
    """Independent oracle: *prefix* (normalised) covers whole leading segments of *path*."""
    p = normalised(prefix)
    if p == "/":
        return True
    return path == p or path.startswith(p + "/")


@given(st.lists(prefixes, min_size=0, max_size=8), paths)
def test_match_is_the_longest_segment_prefix(route_prefixes, path):
    routes = [RouteConfig(prefix, f"u{index}") for index, prefix in enumerate(route_prefixes)]
    match = RouteTable(routes).match(None, path)
    matching = [route for route in routes if is_segment_prefix(route.path, path)]
    if not matching:
        assert match is None
        return
    assert match is not None
    assert is_segment_prefix(match.path, path)
    longest = max(len(normalised(route.path)) for route in matching)
    assert len(normalised(match.path)) == longest
    # ties go to the first in file order
    assert match is next(route for route in matching if len(normalised(route.path)) == longest)


@given(prefixes, paths)
def test_prefix_matches_agrees_with_the_oracle(prefix, path):
    assert prefix_matches(normalised(prefix), path) == is_segment_prefix(prefix, path)


@given(prefixes, paths)
def test_stripped_path_rebuilds_the_original(prefix, path):
    route = RouteConfig(prefix, "u", strip_prefix=True)
    if not is_segment_prefix(prefix, path):
        return
    stripped = strip_route_prefix(route, path)
    assert stripped.startswith("/")
    p = normalised(prefix)
    if p == "/":
        assert stripped == path
    else:
        assert p + stripped == path or (path == p and stripped == "/")
