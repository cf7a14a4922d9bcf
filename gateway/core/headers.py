"""Header rules for the messages the gateway forwards (RFC 9110 section 7.6).

Headers arrive as lists of ``(name, value)`` byte pairs in their original
case and leave as serialized header lines; names are compared in lower
case.  The gateway writes the framing headers (Content-Length /
Transfer-Encoding) itself, so they are dropped here along with the
hop-by-hop ones.

What a name means (kept, dropped, read) is looked up once per name as
received and remembered (:class:`NameKinds`): a site's backends and clients
send the same few dozen names in the same case, and one dictionary lookup on
the name costs less than lower-casing it and looking that up, for every
header of every message.  A name whose length no name of interest has
(``Date``, ``Server``, ``Content-Type``...) is not looked up at all: the
lookup hashes the name, a new bytes object each time.
"""

from __future__ import annotations

from typing import Final, Iterable

Headers = list[tuple[bytes, bytes]]

#: Headers that describe one connection, never forwarded (plus those named in Connection).
#: "Close" is a reserved name (RFC 9110 section 18.4), listed so that ``Connection: close``
#: names a header already dropped: no second pass over the headers for every such message.
HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"close",
})

# What a header name is to the gateway.
_KEPT: Final = 0  # forwarded as it is (a name NameKinds does not know)
_DROPPED: Final = 1  # not forwarded
_CONNECTION: Final = 2  # not forwarded; may name more headers to drop
_CONTENT_LENGTH: Final = 3  # (responses) not forwarded; read for the framing
_TRANSFER_ENCODING: Final = 4  # (responses) likewise
_FORWARDED_FOR: Final = 5  # (requests) not forwarded as it is: the client's address is appended

#: Names the gateway does not forward as they are, in lower case, with what it does with them.
_REQUEST_NAMES: Final = {**dict.fromkeys(HOP_BY_HOP, _DROPPED), b"connection": _CONNECTION,
                         # the gateway sets these itself:
                         b"content-length": _DROPPED, b"expect": _DROPPED, b"x-forwarded-for": _FORWARDED_FOR,
                         b"x-forwarded-proto": _DROPPED, b"x-forwarded-host": _DROPPED}
_RESPONSE_NAMES: Final = {**dict.fromkeys(HOP_BY_HOP, _DROPPED), b"connection": _CONNECTION,
                          b"content-length": _CONTENT_LENGTH, b"transfer-encoding": _TRANSFER_ENCODING}
_REQUEST_REPLACED: Final = frozenset(_REQUEST_NAMES)
_RESPONSE_REPLACED: Final = frozenset(_RESPONSE_NAMES)
#: Connection values that name only headers already dropped (every client's and Gunicorn's).
_NAMES_ONLY_DROPPED: Final = frozenset({b"keep-alive", b"close"})
_FORWARDED_PROTO: Final = {scheme: b"X-Forwarded-Proto: %s\r\n" % scheme.encode("ascii")
                           for scheme in ("http", "https")}
#: Names remembered per NameKinds (beyond it, a name is looked up in lower case every time).
_NAMES_KEPT: Final = 1024


class NameKinds:
    """What each header name, as received, means to one reader of headers (see the module docstring)."""

    __slots__ = ("_lower", "_lengths", "_seen")

    def __init__(self, lower: dict[bytes, int]) -> None:
        self._lower = lower  # lower-case name -> kind, for the names not simply kept (kind 0)
        self._lengths = 0  # bit n set: some name in *lower* is n bytes long
        for known in lower:
            self._lengths |= 1 << len(known)
        self._seen: dict[bytes, int] = {}

    def kind(self, name: bytes) -> int:
        if not (self._lengths >> len(name)) & 1:
            return 0
        kind = self._seen.get(name)
        if kind is None:
            kind = self._lower.get(name.lower(), 0)
            if len(self._seen) < _NAMES_KEPT:
                self._seen[name] = kind
        return kind


_REQUEST_KINDS: Final = NameKinds(_REQUEST_NAMES)
_RESPONSE_KINDS: Final = NameKinds(_RESPONSE_NAMES)


def _add_line(parts: list[bytes], name: bytes, value: bytes) -> None:
    """Add one header line to *parts*, as pieces (a message's head is joined once, at its end)."""
    parts.append(name)
    parts.append(b": ")
    parts.append(value)
    parts.append(b"\r\n")


def _connection_options(value: bytes, listed: set[bytes] | None, replaced: frozenset[bytes]) -> set[bytes] | None:
    """Add the header names a Connection header (*value*, lower case) lists to *listed*.

    Names already dropped need no second pass and are left out.
    """
    tokens = {token.strip() for token in value.split(b",")} - replaced - {b""}
    if not tokens:
        return listed
    return tokens if listed is None else listed | tokens


def _kept_lines(headers: Headers, replaced: frozenset[bytes], listed: set[bytes]) -> list[bytes]:
    """The serialized headers not in *replaced* nor *listed* (the rare second pass, when Connection lists some)."""
    return [name + b": " + value + b"\r\n" for name, value in headers
            if name.lower() not in replaced and name.lower() not in listed]


def upstream_request_header_block(headers: Headers, client_ip: str, scheme: str, host: bytes | None) -> bytes:
    """The header lines a backend receives, serialized: the end-to-end ones plus X-Forwarded-*.

    Host is kept as the client sent it.  X-Forwarded-For gets the client's
    address appended (nginx's ``$proxy_add_x_forwarded_for``); X-Forwarded-Proto
    and X-Forwarded-Host are set by the gateway, never taken from the client.
    One pass, one lookup per header: this runs for every request.
    """
    parts: list[bytes] = []  # (pieces joined once at the end: fewer bytes objects than line by line)
    forwarded_for: list[bytes] = []
    listed: set[bytes] | None = None
    kinds = _REQUEST_KINDS
    for name, value in headers:
        kind = kinds.kind(name)
        if kind == _KEPT:
            _add_line(parts, name, value)
        elif kind == _FORWARDED_FOR:
            forwarded_for.append(value)
        elif kind == _CONNECTION:
            value = value.lower()
            if value not in _NAMES_ONLY_DROPPED:  # (the common case: no second pass)
                listed = _connection_options(value, listed, _REQUEST_REPLACED)
    if listed:
        parts = _kept_lines(headers, _REQUEST_REPLACED, listed)
    client = client_ip.encode("ascii")
    if forwarded_for:
        parts += (b"X-Forwarded-For: ", b", ".join(forwarded_for), b", ", client, b"\r\n")
    else:
        parts += (b"X-Forwarded-For: ", client, b"\r\n")
    parts.append(_FORWARDED_PROTO.get(scheme) or b"X-Forwarded-Proto: " + scheme.encode("ascii") + b"\r\n")
    if host is not None:
        parts += (b"X-Forwarded-Host: ", host, b"\r\n")
    return b"".join(parts)


def downstream_response_head(headers: Headers) -> tuple[bytes, int | None, bool]:
    """One pass over a backend's response headers, for the response the client gets.

    Returns the end-to-end header lines, serialized (without the framing
    headers, which the gateway writes itself), the Content-Length (``int()``
    of the last one: ``ValueError`` if it is not a number) and whether the
    last transfer coding is chunked.
    """
    parts: list[bytes] = []  # (as above)
    content_length: int | None = None
    chunked = False
    listed: set[bytes] | None = None
    kinds = _RESPONSE_KINDS
    for name, value in headers:
        kind = kinds.kind(name)
        if kind == _KEPT:
            _add_line(parts, name, value)
        elif kind == _CONTENT_LENGTH:
            content_length = int(value)
        elif kind == _TRANSFER_ENCODING:
            chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        elif kind == _CONNECTION:
            value = value.lower()
            if value not in _NAMES_ONLY_DROPPED:  # (as above)
                listed = _connection_options(value, listed, _RESPONSE_REPLACED)
    if listed:
        parts = _kept_lines(headers, _RESPONSE_REPLACED, listed)
    return b"".join(parts), content_length, chunked


def serialize_headers(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    return b"".join([name + b": " + value + b"\r\n" for name, value in headers])  # (a list: faster than a generator)
