"""Protocol-neutral values for one request and one response.

The HTTP/1.1 server protocol builds a :class:`RequestHead`; everything after
it (routing, balancing, forwarding) works from that value, so an HTTP/2
stream can later drive the same path.
"""

from __future__ import annotations

from typing import Final

from gateway.core.headers import Headers

# How a message body is delimited on the wire.
NO_BODY: Final = 0  # nothing follows the head (HEAD responses, 204, 304, bodiless requests)
FIXED_LENGTH: Final = 1  # Content-Length bytes follow
CHUNKED: Final = 2  # chunked transfer coding
UNTIL_CLOSE: Final = 3  # the body ends when the connection closes (responses only)


#: Host header -> host name, for the first Host values seen (a client sends the same one on every request).
_HOST_NAMES: Final[dict[bytes, str]] = {}
_HOST_NAMES_KEPT: Final = 1024


class RequestHead:
    """One request's head, as the rest of the gateway sees it.

    (A plain class rather than a dataclass: mypyc compiles this ``__init__``,
    not the one ``dataclasses`` would generate, and one is made per request.)
    """

    __slots__ = ("method", "target", "path", "query", "version", "headers", "host", "client_ip", "scheme",
                 "keep_alive", "body", "content_length", "expect_continue")

    def __init__(self, method: bytes, target: bytes, path: str, query: bytes, version: bytes, headers: Headers,
                 host: bytes | None, client_ip: str, scheme: str, keep_alive: bool, body: int,
                 content_length: int | None = None, expect_continue: bool = False) -> None:
        self.method = method
        self.target = target  # the request-target as received (origin-form after normalisation)
        self.path = path  # decoded path without the query, used for routing
        self.query = query  # b"" or b"?..." as received
        self.version = version  # b"1.1" or b"1.0"
        self.headers = headers
        self.host = host  # the Host header as sent (with port, if any)
        self.client_ip = client_ip
        self.scheme = scheme  # "http" or "https": how the client reached us
        self.keep_alive = keep_alive
        self.body = body  # NO_BODY, FIXED_LENGTH or CHUNKED
        self.content_length = content_length
        self.expect_continue = expect_continue  # "Expect: 100-continue" on an HTTP/1.1 request

    def __repr__(self) -> str:
        return f"RequestHead({self.request_line!r}, client {self.client_ip})"

    @property
    def host_name(self) -> str | None:
        """The Host header without its port, in lower case, for routing."""
        host = self.host
        if host is None:
            return None
        name = _HOST_NAMES.get(host)
        if name is None:
            name = host_without_port(host.decode("latin-1"))
            if len(_HOST_NAMES) < _HOST_NAMES_KEPT:
                _HOST_NAMES[host] = name
        return name

    @property
    def request_line(self) -> str:
        return f"{self.method.decode('latin-1')} {self.target.decode('latin-1')} HTTP/{self.version.decode('latin-1')}"

    def header(self, name: bytes) -> bytes | None:
        """The first value of header *name* (lower case), or None."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


def host_without_port(host: str) -> str:
    """``Example.COM:8080`` -> ``example.com``; ``[::1]:80`` -> ``[::1]``."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    return host.partition(":")[0]
