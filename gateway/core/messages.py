"""Protocol-neutral values for one request and one response.

The HTTP/1.1 server protocol builds a :class:`RequestHead`; everything after
it (routing, balancing, forwarding) works from that value, so an HTTP/2
stream can later drive the same path.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.headers import Headers

# How a message body is delimited on the wire.
NO_BODY = 0  # nothing follows the head (HEAD responses, 204, 304, bodiless requests)
FIXED_LENGTH = 1  # Content-Length bytes follow
CHUNKED = 2  # chunked transfer coding
UNTIL_CLOSE = 3  # the body ends when the connection closes (responses only)


#: Host header -> host name, for the first Host values seen (a client sends the same one on every request).
_HOST_NAMES: dict[bytes, str] = {}
_HOST_NAMES_KEPT = 1024


@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes  # the request-target as received (origin-form after normalisation)
    path: str  # decoded path without the query, used for routing
    query: bytes  # b"" or b"?..." as received
    version: bytes  # b"1.1" or b"1.0"
    headers: Headers
    host: bytes | None  # the Host header as sent (with port, if any)
    client_ip: str
    scheme: str  # "http" or "https": how the client reached us
    keep_alive: bool
    body: int  # NO_BODY, FIXED_LENGTH or CHUNKED
    content_length: int | None = None
    expect_continue: bool = False  # "Expect: 100-continue" on an HTTP/1.1 request

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
