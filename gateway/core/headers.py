"""Header rules for the messages the gateway forwards (RFC 9110 section 7.6).

Headers travel as lists of ``(name, value)`` byte pairs in their original
case; these functions compare names in lower case.  The gateway writes the
framing headers (Content-Length / Transfer-Encoding) itself, so they are
dropped here along with the hop-by-hop ones.
"""

from __future__ import annotations

from typing import Iterable

Headers = list[tuple[bytes, bytes]]

#: Headers that describe one connection, never forwarded (plus those named in Connection).
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade",
})

#: Headers the gateway sets itself on requests towards a backend.
_REQUEST_REPLACED = HOP_BY_HOP | {
    b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
}
_RESPONSE_REPLACED = HOP_BY_HOP | {b"content-length"}
_FORWARDED_PROTO = {scheme: (b"X-Forwarded-Proto", scheme.encode("ascii")) for scheme in ("http", "https")}


def _end_to_end(headers: Headers, replaced: frozenset[bytes],
                collect: bytes = b"") -> tuple[Headers, list[bytes]]:
    """The headers not in *replaced* nor named by Connection, and the values of header *collect*.

    One pass, one ``lower()`` per header: this runs twice for every request.
    """
    kept: Headers = []
    collected: list[bytes] = []
    listed: set[bytes] | None = None
    for pair in headers:
        lower = pair[0].lower()
        if lower not in replaced:
            kept.append(pair)
        elif lower == b"connection":
            value = pair[1].lower()
            if value != b"keep-alive":  # (which names only itself, already dropped: the common case)
                # Names already dropped need no second pass.
                tokens = {token.strip() for token in value.split(b",")} - replaced - {b""}
                if tokens:
                    listed = tokens if listed is None else listed | tokens
        elif lower == collect:
            collected.append(pair[1])
    if listed:
        kept = [pair for pair in kept if pair[0].lower() not in listed]
    return kept, collected


def upstream_request_headers(headers: Headers, client_ip: str, scheme: str, host: bytes | None) -> Headers:
    """The headers a backend receives: end-to-end ones plus X-Forwarded-*.

    Host is kept as the client sent it.  X-Forwarded-For gets the client's
    address appended (nginx's ``$proxy_add_x_forwarded_for``); X-Forwarded-Proto
    and X-Forwarded-Host are set by the gateway, never taken from the client.
    """
    result, forwarded_for = _end_to_end(headers, _REQUEST_REPLACED, collect=b"x-forwarded-for")
    client = client_ip.encode("ascii")
    result.append((b"X-Forwarded-For", b", ".join(forwarded_for) + b", " + client if forwarded_for else client))
    result.append(_FORWARDED_PROTO.get(scheme) or (b"X-Forwarded-Proto", scheme.encode("ascii")))
    if host is not None:
        result.append((b"X-Forwarded-Host", host))
    return result


def downstream_response_headers(headers: Headers) -> Headers:
    """The end-to-end headers of a backend's response, without its framing."""
    return _end_to_end(headers, _RESPONSE_REPLACED)[0]


def serialize_headers(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    return b"".join([name + b": " + value + b"\r\n" for name, value in headers])  # (a list: faster than a generator)
