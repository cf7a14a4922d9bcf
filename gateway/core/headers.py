"""Header rules for the messages the gateway forwards (RFC 9110 section 7.6).

Headers arrive as lists of ``(name, value)`` byte pairs in their original
case and leave as serialized header lines; these functions compare names in
lower case.  The gateway writes the framing headers (Content-Length /
Transfer-Encoding) itself, so they are dropped here along with the
hop-by-hop ones.
"""

from __future__ import annotations

from typing import Iterable

Headers = list[tuple[bytes, bytes]]

#: Headers that describe one connection, never forwarded (plus those named in Connection).
#: "Close" is a reserved name (RFC 9110 section 18.4), listed so that ``Connection: close``
#: names a header already dropped: no second pass over the headers for every such message.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"close",
})

#: Headers the gateway sets itself on requests towards a backend.
_REQUEST_REPLACED = HOP_BY_HOP | {
    b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
}
_RESPONSE_REPLACED = HOP_BY_HOP | {b"content-length"}
#: Connection values that name only headers already dropped (every client's and Gunicorn's).
_NAMES_ONLY_DROPPED = frozenset({b"keep-alive", b"close"})
_FORWARDED_PROTO = {scheme: b"X-Forwarded-Proto: %s\r\n" % scheme.encode("ascii") for scheme in ("http", "https")}


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
    One pass and one ``lower()`` per header: this runs for every request.
    """
    parts: list[bytes] = []  # (pieces joined once at the end: fewer bytes objects than line by line)
    forwarded_for: list[bytes] = []
    listed: set[bytes] | None = None
    for name, value in headers:
        lower = name.lower()
        if lower not in _REQUEST_REPLACED:
            parts += (name, b": ", value, b"\r\n")
        elif lower == b"x-forwarded-for":
            forwarded_for.append(value)
        elif lower == b"connection":
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
    for name, value in headers:
        lower = name.lower()
        if lower not in _RESPONSE_REPLACED:
            parts += (name, b": ", value, b"\r\n")
        elif lower == b"content-length":
            content_length = int(value)
        elif lower == b"transfer-encoding":
            chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        elif lower == b"connection":
            value = value.lower()
            if value not in _NAMES_ONLY_DROPPED:  # (as above)
                listed = _connection_options(value, listed, _RESPONSE_REPLACED)
    if listed:
        parts = _kept_lines(headers, _RESPONSE_REPLACED, listed)
    return b"".join(parts), content_length, chunked


def serialize_headers(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    return b"".join([name + b": " + value + b"\r\n" for name, value in headers])  # (a list: faster than a generator)
