"""A small client for the admin API, for ``gateway backends`` and scripts.

Standard library only (``urllib.request`` and ``json``): it runs where the
gateway's console script runs, with no reactor.  Every call returns the
API's decoded JSON or raises :class:`AdminError` with a one-line message;
nothing else escapes for a network or HTTP problem.

Proxy environment variables (``http_proxy``...) are ignored on purpose: the
admin API is on a local or otherwise directly reachable address, and an
operator's proxy settings must not send the bearer token elsewhere.
"""

from __future__ import annotations

import html
import ipaddress
import json
import re
import socket
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

DEFAULT_ADMIN_URL = "http://127.0.0.1:8099"
DEFAULT_TIMEOUT = 10.0


class AdminError(Exception):
    """A failed admin call; *status* is the HTTP status, or None when there was no answer."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def admin_url(host: str, port: int) -> str:
    """The URL a client uses for an admin API listening on host:port.

    A wildcard listen address (``0.0.0.0``, ``::``) is reached on the
    loopback address of the same family.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and ip.is_unspecified:
        host = "127.0.0.1" if ip.version == 4 else "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def normalize_url(url: str) -> str:
    """``127.0.0.1:8099`` -> ``http://127.0.0.1:8099``; no trailing slash."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


class AdminClient:
    """Calls the admin API at *base_url*, with a bearer *token* when given."""

    def __init__(self, base_url: str = DEFAULT_ADMIN_URL, token: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.base_url = normalize_url(base_url)
        self.token = token
        self.timeout = timeout
        # No ProxyHandler settings from the environment (see the module docstring).
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- the API ----------------------------------------------------------------------

    def upstreams(self) -> dict[str, Any]:
        """``GET /upstreams``: ``{"upstreams": [{"name", "balance", "servers": [...]}, ...]}``."""
        return self._call("GET", "/upstreams")[1]

    def upstream(self, name: str) -> dict[str, Any]:
        """``GET /upstreams/{name}``: one upstream."""
        return self._call("GET", f"/upstreams/{_segment(name)}")[1]

    def add_server(self, upstream: str, address: str, weight: int | None = None) -> dict[str, Any]:
        """``POST /upstreams/{name}/servers``: the new server."""
        body: dict[str, Any] = {"address": address}
        if weight is not None:
            body["weight"] = weight
        return self._call("POST", f"/upstreams/{_segment(upstream)}/servers", body)[1]

    def update_server(self, upstream: str, address: str, weight: int | None = None,
                      state: str | None = None) -> dict[str, Any]:
        """``PATCH /upstreams/{name}/servers/{address}``; *state* is ``"drain"`` or ``"up"``."""
        body: dict[str, Any] = {}
        if weight is not None:
            body["weight"] = weight
        if state is not None:
            body["state"] = state
        return self._call("PATCH", self._server_path(upstream, address), body)[1]

    def remove_server(self, upstream: str, address: str, wait: bool = False) -> bool:
        """``DELETE /upstreams/{name}/servers/{address}``: True when it is gone, False while it drains."""
        path = self._server_path(upstream, address) + ("?wait=1" if wait else "")
        status, _ = self._call("DELETE", path)
        return status == 204

    # -- HTTP -------------------------------------------------------------------------

    @staticmethod
    def _server_path(upstream: str, address: str) -> str:
        return f"/upstreams/{_segment(upstream)}/servers/{_segment(address)}"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        url = self.base_url + path
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            raise AdminError(_error_message(error), error.code) from None
        except urllib.error.URLError as error:
            reason = error.reason
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise AdminError(f"no answer from the admin API at {self.base_url} "
                                 f"within {self.timeout:g}s") from None
            raise AdminError(f"cannot reach the admin API at {self.base_url}: {_reason_text(reason)}") from None
        except (socket.timeout, TimeoutError):
            raise AdminError(f"no answer from the admin API at {self.base_url} within {self.timeout:g}s") from None
        except (OSError, ValueError) as error:  # reset connections, malformed URLs, bad status lines
            raise AdminError(f"cannot reach the admin API at {self.base_url}: {_reason_text(error)}") from None
        if not raw.strip():
            return status, None
        try:
            return status, json.loads(raw)
        except ValueError:
            raise AdminError(f"the answer from {url} is not JSON (is {self.base_url} the admin API?)",
                             status) from None


def _segment(text: str) -> str:
    """One path segment, with ``/``, ``:``, ``[`` and ``]`` escaped."""
    return quote(text, safe="")


def _reason_text(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def _plain_text(text: str) -> str:
    """One short line from a non-JSON error body: an HTML page's title, else its first line of text."""
    title = re.search(r"<title>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    if title is not None:
        text = title.group(1)
    text = html.unescape(re.sub(r"<[^>]*>", " ", text))
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return " ".join(first.split())[:200]


def _error_message(error: urllib.error.HTTPError) -> str:
    """``404: no upstream named 'x'`` from the API's ``{"error": ...}``, or the status line."""
    try:
        raw = error.read()
    except OSError:
        raw = b""
    message = None
    try:
        document = json.loads(raw)
        if isinstance(document, dict) and isinstance(document.get("error"), str):
            message = document["error"]
    except ValueError:
        message = _plain_text(raw.decode("utf-8", "replace")) or None
    return f"{error.code} {error.reason}: {message}" if message else f"{error.code} {error.reason}"
