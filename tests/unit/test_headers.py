"""gateway.core.headers: what a backend and a client see of the other side's headers."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from gateway.core import headers as headers_module
from gateway.core.headers import (
    HOP_BY_HOP,
    Headers,
    downstream_response_head,
    serialize_headers,
    upstream_request_header_block,
)


def parse(lines: bytes) -> Headers:
    """Serialized header lines back to (name, value) pairs."""
    assert lines == b"" or lines.endswith(b"\r\n")
    return [tuple(line.split(b": ", 1)) for line in lines.split(b"\r\n")[:-1]]


def upstream_request_headers(headers: Headers, client_ip: str, scheme: str, host: bytes | None) -> Headers:
    return parse(upstream_request_header_block(headers, client_ip, scheme, host))


def downstream_response_headers(headers: Headers) -> Headers:
    return parse(downstream_response_head(headers)[0])


def names(headers) -> list[bytes]:
    return [name.lower() for name, _ in headers]


def values(headers, name: bytes) -> list[bytes]:
    return [value for key, value in headers if key.lower() == name]


@pytest.mark.parametrize("headers, tokens", [
    ([], set()),
    ([(b"Connection", b"close")], {b"close"}),
    ([(b"Connection", b"Keep-Alive, Upgrade")], {b"keep-alive", b"upgrade"}),
    ([(b"connection", b" X-Trace ,,  "), (b"CONNECTION", b"close")], {b"x-trace", b"close"}),
    ([(b"Connection", b"")], set()),
    ([(b"Host", b"close")], set()),
])
def test_headers_named_by_connection_are_dropped(headers, tokens):
    """Every option listed in any Connection header names a hop-by-hop header; the rest stay."""
    extra = [(token.title(), b"v") for token in sorted(tokens)] + [(b"X-Kept", b"v")]
    for result in (downstream_response_headers(headers + extra),
                   upstream_request_headers(headers + extra, "10.0.0.1", "http", b"h")):
        assert not tokens & set(names(result))
        assert b"x-kept" in names(result) and b"connection" not in names(result)


REQUEST = [
    (b"Host", b"example.com:8080"),
    (b"User-Agent", b"curl/8.5.0"),
    (b"Connection", b"keep-alive, X-Secret"),
    (b"Keep-Alive", b"timeout=5"),
    (b"X-Secret", b"s3cr3t"),
    (b"Proxy-Connection", b"keep-alive"),
    (b"Proxy-Authorization", b"Basic Zm9vOmJhcg=="),
    (b"TE", b"trailers"),
    (b"Trailer", b"X-Checksum"),
    (b"Upgrade", b"websocket"),
    (b"Transfer-Encoding", b"chunked"),
    (b"Content-Length", b"10"),
    (b"Expect", b"100-continue"),
    (b"Accept", b"*/*"),
    (b"Cookie", b"a=1"),
    (b"Cookie", b"b=2"),
]


def test_upstream_request_headers_full_example():
    result = upstream_request_headers(REQUEST, "10.1.2.3", "http", b"example.com:8080")
    assert result == [
        (b"Host", b"example.com:8080"),
        (b"User-Agent", b"curl/8.5.0"),
        (b"Accept", b"*/*"),
        (b"Cookie", b"a=1"),
        (b"Cookie", b"b=2"),
        (b"X-Forwarded-For", b"10.1.2.3"),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Forwarded-Host", b"example.com:8080"),
    ]


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP | {b"content-length", b"expect"}))
def test_hop_by_hop_and_framing_request_headers_removed(name):
    for spelling in (name, name.upper(), name.title()):
        result = upstream_request_headers([(b"Host", b"h"), (spelling, b"x")], "1.2.3.4", "http", b"h")
        assert name not in names(result)


@pytest.mark.parametrize("connection, dropped", [
    (b"X-A", [b"x-a"]),
    (b"x-a, X-B", [b"x-a", b"x-b"]),
    (b"close,x-b", [b"x-b"]),
])
def test_headers_listed_in_connection_are_removed(connection, dropped):
    headers = [(b"Host", b"h"), (b"Connection", connection), (b"X-A", b"1"), (b"X-B", b"2"), (b"X-C", b"3")]
    result = upstream_request_headers(headers, "1.2.3.4", "http", b"h")
    for name in dropped:
        assert name not in names(result)
    assert b"x-c" in names(result)
    assert b"connection" not in names(result)


@pytest.mark.parametrize("existing, expected", [
    ([], b"10.0.0.9"),
    ([b"203.0.113.7"], b"203.0.113.7, 10.0.0.9"),
    ([b"203.0.113.7, 198.51.100.2"], b"203.0.113.7, 198.51.100.2, 10.0.0.9"),
    ([b"203.0.113.7", b"198.51.100.2"], b"203.0.113.7, 198.51.100.2, 10.0.0.9"),
])
def test_x_forwarded_for_appended(existing, expected):
    headers = [(b"Host", b"h")] + [(b"X-Forwarded-For", value) for value in existing]
    result = upstream_request_headers(headers, "10.0.0.9", "http", b"h")
    assert values(result, b"x-forwarded-for") == [expected]


def test_x_forwarded_for_any_case():
    headers = [(b"x-forwarded-for", b"1.1.1.1"), (b"X-FORWARDED-FOR", b"2.2.2.2")]
    result = upstream_request_headers(headers, "::1", "http", None)
    assert values(result, b"x-forwarded-for") == [b"1.1.1.1, 2.2.2.2, ::1"]


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_client_x_forwarded_proto_and_host_replaced(scheme):
    headers = [(b"Host", b"real.example"), (b"X-Forwarded-Proto", b"https"), (b"x-forwarded-proto", b"ftp"),
               (b"X-Forwarded-Host", b"evil.example")]
    result = upstream_request_headers(headers, "10.0.0.1", scheme, b"real.example")
    assert values(result, b"x-forwarded-proto") == [scheme.encode()]
    assert values(result, b"x-forwarded-host") == [b"real.example"]


def test_no_host_means_no_x_forwarded_host():
    result = upstream_request_headers([(b"Accept", b"*/*")], "10.0.0.1", "http", None)
    assert b"x-forwarded-host" not in names(result)
    assert b"host" not in names(result)


def test_input_headers_not_modified():
    headers = list(REQUEST)
    upstream_request_headers(headers, "10.0.0.1", "http", b"h")
    downstream_response_headers(headers)
    assert headers == REQUEST


def test_downstream_response_headers():
    response = [
        (b"Content-Type", b"text/html"),
        (b"Content-Length", b"512"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"keep-alive, X-Backend-Only"),
        (b"Keep-Alive", b"timeout=2"),
        (b"X-Backend-Only", b"1"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Trailer", b"X-Sum"),
        (b"Upgrade", b"h2c"),
        (b"Proxy-Authenticate", b"Basic"),
        (b"X-Served-By", b"web-1"),
        (b"Date", b"Fri, 27 Nov 2026 20:13:04 GMT"),
    ]
    assert downstream_response_headers(response) == [
        (b"Content-Type", b"text/html"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"X-Served-By", b"web-1"),
        (b"Date", b"Fri, 27 Nov 2026 20:13:04 GMT"),
    ]


def test_downstream_keeps_forwarded_headers_of_the_response():
    """Only request X-Forwarded-* are the gateway's to set."""
    response = [(b"X-Forwarded-For", b"1.2.3.4")]
    assert downstream_response_headers(response) == response


@pytest.mark.parametrize("headers, wire", [
    ([], b""),
    ([(b"A", b"1")], b"A: 1\r\n"),
    ([(b"A", b"1"), (b"b", b"two words")], b"A: 1\r\nb: two words\r\n"),
])
def test_serialize_headers(headers, wire):
    assert serialize_headers(headers) == wire


token = st.from_regex(rb"[A-Za-z][A-Za-z0-9\-]{0,12}", fullmatch=True)


# (values as llhttp hands them over: never a CR or LF)
@given(st.lists(st.tuples(token, st.binary(max_size=20).filter(lambda v: not {44, 13, 10} & set(v))), max_size=12),
       st.lists(token, max_size=3))
def test_no_hop_by_hop_header_ever_reaches_the_backend(headers, listed):
    headers = headers + [(b"Connection", b", ".join(listed))]
    result = upstream_request_headers(headers, "10.0.0.1", "http", None)
    forbidden = HOP_BY_HOP | {token.lower() for token in listed} | {b"content-length", b"expect"}
    forbidden -= {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
    assert not forbidden & set(names(result))
    assert names(result)[-2:] == [b"x-forwarded-for", b"x-forwarded-proto"]
    # the end-to-end ones are kept in order
    kept = [(n, v) for n, v in headers if n.lower() not in forbidden | {b"x-forwarded-for", b"x-forwarded-proto",
                                                                         b"x-forwarded-host"}]
    assert result[:-2] == kept


@pytest.mark.parametrize("headers, content_length, chunked", [
    ([(b"Content-Length", b"12")], 12, False),
    ([(b"content-length", b"0")], 0, False),
    ([(b"Transfer-Encoding", b"chunked")], None, True),
    ([(b"Transfer-Encoding", b"gzip, Chunked")], None, True),
    ([(b"Transfer-Encoding", b"chunked, gzip")], None, False),
    ([(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"5")], 5, True),
    ([(b"X-Content-Length", b"7"), (b"Transfer-Encodings", b"chunked")], None, False),
    ([], None, False),
])
def test_downstream_response_head_reads_the_framing(headers, content_length, chunked):
    lines, length, is_chunked = downstream_response_head(headers + [(b"Server", b"web-1")])
    assert (length, is_chunked) == (content_length, chunked)
    assert b"Server: web-1\r\n" in lines
    assert not {b"content-length", b"transfer-encoding"} & set(names(parse(lines)))


def test_downstream_response_head_refuses_a_content_length_that_is_not_a_number():
    with pytest.raises(ValueError):
        downstream_response_head([(b"Content-Length", b"abc")])


def test_names_are_recognized_in_any_case_and_the_memory_of_names_is_bounded():
    """Names are remembered as received (bounded); past the bound they are still read in lower case."""
    many = [(b"X-Name-%09d" % index, b"v") for index in range(3000)]  # (16 bytes long, as Proxy-Connection)
    for case in (bytes.lower, bytes.upper, bytes.title):
        response = many + [(case(b"content-length"), b"7"), (case(b"transfer-encoding"), b"chunked"),
                           (case(b"keep-alive"), b"timeout=5"), (case(b"connection"), case(b"x-name-000000001"))]
        lines, content_length, chunked = downstream_response_head(response)
        kept = names(parse(lines))
        assert content_length == 7 and chunked
        assert b"x-name-000000000" in kept and b"x-name-000000001" not in kept and b"x-name-000002999" in kept
        assert not {b"content-length", b"transfer-encoding", b"keep-alive", b"connection"} & set(kept)
        request = upstream_request_headers(many + [(case(b"x-forwarded-for"), b"10.0.0.9"),
                                                   (case(b"expect"), b"100-continue")], "10.0.0.1", "http", None)
        assert values(request, b"x-forwarded-for") == [b"10.0.0.9, 10.0.0.1"]
        assert b"expect" not in names(request) and b"x-name-000002999" in names(request)
    for kinds in (headers_module._REQUEST_KINDS, headers_module._RESPONSE_KINDS):
        assert len(kinds._seen) == headers_module._NAMES_KEPT
