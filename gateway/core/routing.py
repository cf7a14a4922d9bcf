"""Route selection: which upstream serves a request, by Host and path prefix.

Prefixes are matched on whole path segments: ``/api/`` (or ``/api``) matches
``/api``, ``/api/`` and ``/api/users`` but never ``/apix``.  The longest
matching prefix wins.  Routes that name a ``host`` are considered first for
requests to that host (like nginx picks a ``server_name`` before a
``location``); routes without a host serve every other request.
"""

from __future__ import annotations

from typing import Sequence

from gateway.core.config import RouteConfig


def _segment_prefix(prefix: str) -> str:
    """``/api/`` and ``/api`` both become ``/api``; ``/`` stays ``/``."""
    return prefix.rstrip("/") or "/"


def prefix_matches(prefix: str, path: str) -> bool:
    """True when *path* lies under the segment-aware *prefix* (as normalised above)."""
    if prefix == "/":
        return True
    return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/")


class RouteTable:
    """The routes of one configuration, ordered for matching."""

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        def longest_first(route: RouteConfig) -> int:
            return -len(_segment_prefix(route.path))

        ordered = sorted(routes, key=longest_first)  # stable: file order breaks ties
        self._by_host: dict[str, list[tuple[str, RouteConfig]]] = {}
        self._any_host: list[tuple[str, RouteConfig]] = []
        for route in ordered:
            entry = (_segment_prefix(route.path), route)
            if route.host is None:
                self._any_host.append(entry)
            else:
                self._by_host.setdefault(route.host, []).append(entry)
        #: Whether a request's host name matters for matching (without, it need not be worked out).
        self.has_host_routes = bool(self._by_host)

    def match(self, host: str | None, path: str) -> RouteConfig | None:
        """The route for a request to *host* (lower case, no port) and *path* (no query)."""
        if host is not None and self.has_host_routes:
            for prefix, route in self._by_host.get(host, ()):
                if prefix_matches(prefix, path):
                    return route
        for prefix, route in self._any_host:
            if prefix_matches(prefix, path):
                return route
        return None


def strip_route_prefix(route: RouteConfig, path: str) -> str:
    """The path the backend sees for a ``strip_prefix`` route: ``/api/users`` -> ``/users``."""
    prefix = _segment_prefix(route.path)
    if prefix == "/":
        return path
    return path[len(prefix):] or "/"
