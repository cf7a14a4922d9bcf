"""Request smuggling: every ambiguous framing is refused, and nothing of it reaches the backend.

Each vector is sent as raw bytes to a gateway whose only upstream is a
:class:`~misbehaving.RecordingBackend`.  The test checks both sides:

- the client's answer: ``400`` (``505`` for HTTP versions) in a ``text/plain``
  body from the gateway, and the connection closed;
- the backend: after the vector, a marker request on a fresh connection is
  the only request, and the only bytes, that arrived.  The gateway answers in
  order on one reactor thread, so anything the vector had made it forward
  would have been written before the marker.

Requests the gateway accepts are checked the other way round: the backend
gets them re-framed by the gateway (exactly one ``Content-Length``, or
``Transfer-Encoding: chunked`` with the gateway's own chunk sizes and no
extensions), parsed here strictly.

One gateway and one recording backend serve the whole module.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import HOST, free_port, http_get, parse_responses, read_until_close, send_raw_until_close, start_gateway
from misbehaving import RecordedRequest, RecordingBackend

_markers = itertools.count()


@pytest.fixture(scope="module")
def recording() -> Iterator[RecordingBackend]:
    with RecordingBackend() as backend:
        yield backend


@pytest.fixture(scope="module")
def port(recording: RecordingBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    listen = free_port()
    config = {
        "listeners": [{"name": "public", "port": listen, "interface": HOST}],
        "upstreams": {"rec": {"servers": [{"address": recording.address}], "max_fails": 0}},
        "routes": [{"path": "/", "upstream": "rec"}],
        "access_log": "-",
    }
    instance = start_gateway(config, Path(tmp_path_factory.mktemp("smuggling-gateway")))
    try:
        yield listen
    finally:
        instance.stop()


@pytest.fixture(autouse=True)
def _no_framing_problems(recording: RecordingBackend) -> Iterator[None]:
    """Whatever a test does, the backend never receives bytes it cannot parse strictly."""
    yield
    assert not recording.problems, f"the backend received ambiguous bytes: {recording.problems}"


# -- helpers ------------------------------------------------------------------------------------

def marker(port: int, recording: RecordingBackend) -> RecordedRequest:
    """A good request on a fresh connection; returns it as the backend recorded it."""
    path = f"/marker-{next(_markers)}"
    status, _, body = http_get(port, path)
    assert (status, body) == (200, b"ok " + path.encode()), (status, body)
    assert recording.wait_for_requests(1)
    found = [request for request in recording.requests if request.target == path]
    assert len(found) == 1, found
    return found[0]


def refused(port: int, recording: RecordingBackend, raw: bytes, statuses: tuple[int, ...] = (400,)) -> int:
    """Send ``raw``; assert one gateway error among ``statuses``, the connection closed, and
    that the backend received nothing but the marker sent afterwards.  Returns the status."""
    before = recording.snapshot()
    data, closed = send_raw_until_close(port, raw, timeout=5.0)
    responses = parse_responses(data)
    assert len(responses) == 1, f"expected one error response, got {data[:500]!r}"
    response = responses[0]
    assert response.status in statuses, data[:500]
    assert (response.header("Content-Type") or "").startswith("text/plain"), data[:500]
    assert response.header("X-Recorded") is None, "the backend answered"
    assert closed, "the connection stayed open after a refused request"
    mark = marker(port, recording)
    new, new_bytes = recording.since(before)
    assert [request.target for request in new] == [mark.target], f"the backend received {new}"
    assert new_bytes == len(mark.raw), (
        f"the backend received {new_bytes - len(mark.raw)} bytes besides the marker: "
        f"{recording.received()[-new_bytes:][:500]!r}")
    return response.status


def accepted(port: int, recording: RecordingBackend, raw: bytes, path: str) -> RecordedRequest:
    """Send ``raw`` (one request for ``path``, with ``Connection: close``); assert the backend's
    200 came back and return the request as the backend received it."""
    before = recording.snapshot()
    data, closed = send_raw_until_close(port, raw, timeout=5.0)
    responses = parse_responses(data)
    assert [(r.status, r.body) for r in responses] == [(200, b"ok " + path.encode())], data[:500]
    new, _ = recording.since(before)
    assert [request.target for request in new] == [path], new
    return new[0]


def assert_reframed_chunked(request: RecordedRequest, body: bytes) -> None:
    """The backend got the body in the gateway's own chunked framing, and nothing else framing it."""
    assert request.framing == "chunked"
    assert request.header_values("Transfer-Encoding") == ["chunked"]
    assert request.header_values("Content-Length") == []
    assert request.body == body
    assert request.chunk_sizes[-1] == 0 and sum(request.chunk_sizes) == len(body)
    assert request.version == "HTTP/1.1"


def post(headers: bytes, body: bytes, path: bytes = b"/") -> bytes:
    return b"POST " + path + b" HTTP/1.1\r\nHost: h\r\n" + headers + b"\r\n" + body


CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"
# A request hidden in the body, for a backend that would read the framing the other way.
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"


# -- the vectors --------------------------------------------------------------------------------

REFUSED_400 = [
    # Content-Length and Transfer-Encoding together (CL.TE / TE.CL).
    pytest.param(post(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nG"), id="cl-then-te"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", b"5c\r\nG" + SMUGGLED + b"\r\n0\r\n\r\n"),
                 id="te-then-cl"),
    # Several Content-Lengths.
    pytest.param(post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), id="cl-duplicate-equal"),
    pytest.param(post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"), id="cl-duplicate-different"),
    pytest.param(post(b"Content-Length: 5, 5\r\n", b"hello"), id="cl-list-equal"),
    pytest.param(post(b"Content-Length: 5, 6\r\n", b"hello!"), id="cl-list-different"),
    pytest.param(post(b"Content-Length: +5\r\n", b"hello"), id="cl-plus-sign"),
    pytest.param(post(b"Content-Length: -1\r\n", b"hello"), id="cl-negative"),
    pytest.param(post(b"Content-Length: 99999999999999999999999\r\n", b"hello"), id="cl-overflow"),
    # Transfer-Encoding other than exactly "chunked".
    pytest.param(post(b"Transfer-Encoding: xchunked\r\n", CHUNKED_HELLO), id="te-xchunked"),
    pytest.param(post(b"Transfer-Encoding: chunked, identity\r\n", CHUNKED_HELLO), id="te-chunked-identity"),
    pytest.param(post(b"Transfer-Encoding: identity, chunked\r\n", CHUNKED_HELLO), id="te-identity-chunked"),
    pytest.param(post(b"Transfer-Encoding: chunked\t\r\n", CHUNKED_HELLO), id="te-tab-after"),
    pytest.param(post(b"Transfer-Encoding: Chunked\r\n", CHUNKED_HELLO), id="te-case-Chunked"),
    pytest.param(post(b"Transfer-Encoding: CHUNKED\r\n", CHUNKED_HELLO), id="te-case-CHUNKED"),
    pytest.param(post(b"Transfer-Encoding: chunked\x00\r\n", CHUNKED_HELLO), id="te-nul"),
    pytest.param(post(b"Transfer-Encoding: \x0bchunked\r\n", CHUNKED_HELLO), id="te-vertical-tab"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", CHUNKED_HELLO),
                 id="te-two-headers-chunked-chunked"),
    pytest.param(post(b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n", CHUNKED_HELLO),
                 id="te-two-headers-identity-chunked"),
    pytest.param(post(b"Transfer-Encoding : chunked\r\n", CHUNKED_HELLO), id="te-space-before-colon"),
    pytest.param(post(b"Transfer-Encoding:\r\n chunked\r\n", CHUNKED_HELLO), id="te-obs-fold"),
    pytest.param(b"POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: h\r\n\r\n" + CHUNKED_HELLO,
                 id="te-leading-space-in-name"),
    # Invalid chunk sizes and chunk lines.
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"zz\r\nhello\r\n0\r\n\r\n"), id="chunk-size-non-hex"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
                 id="chunk-size-overflow"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"0x10\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n"),
                 id="chunk-size-0x-prefix"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"-1\r\nhello\r\n0\r\n\r\n"), id="chunk-size-negative"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b" 5\r\nhello\r\n0\r\n\r\n"), id="chunk-size-leading-space"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"5 \r\nhello\r\n0\r\n\r\n"), id="chunk-size-trailing-space"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"5 ;a=b\r\nhello\r\n0\r\n\r\n"), id="chunk-ext-space-before"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"5;a=b\nhello\r\n0\r\n\r\n"), id="chunk-ext-bare-lf"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"5;a\x00b\r\nhello\r\n0\r\n\r\n"), id="chunk-ext-nul"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"5;a\rb\r\nhello\r\n0\r\n\r\n"), id="chunk-ext-bare-cr"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhelloXX\r\n0\r\n\r\n"), id="chunk-data-overlong"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"5\nhello\n0\n\n"), id="chunk-lines-bare-lf"),
    # A framing header in the trailer section.
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\nContent-Length: 99\r\n\r\n"),
                 id="trailer-content-length"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n"),
                 id="trailer-obs-fold"),
    # Bare LF / bare CR where CRLF is required.
    pytest.param(b"GET / HTTP/1.1\nHost: h\r\n\r\n", id="bare-lf-request-line"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: h\nX-A: b\r\n\r\n", id="bare-lf-header-line"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\n\n", id="bare-lf-end-of-head"),
    pytest.param(b"GET / HTTP/1.1\nHost: h\n\n", id="bare-lf-everywhere"),
    pytest.param(b"GET / HTTP/1.1\rHost: h\r\n\r\n", id="bare-cr-request-line"),
    # obs-fold continuation lines.
    pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n", id="obs-fold-space"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n\tb\r\n\r\n", id="obs-fold-tab"),
    pytest.param(b"GET / HTTP/1.1\r\n Host: h\r\n\r\n", id="obs-fold-first-line"),
    # Whitespace before the colon.
    pytest.param(b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", id="space-before-colon"),
    pytest.param(b"GET / HTTP/1.1\r\nHost\t: h\r\n\r\n", id="tab-before-colon"),
    # NUL, CR, LF (and other controls) in header names and values.
    pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\nX-\x00A: b\r\n\r\n", id="nul-in-name"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n", id="nul-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\nX-\rA: b\r\n\r\n", id="cr-in-name"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n", id="cr-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\nX-\nA: b\r\n\r\n", id="lf-in-name"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\nb: c\r\n\r\n", id="lf-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x01b\r\n\r\n", id="ctl-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x7fb\r\n\r\n", id="del-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\n: empty-name\r\n\r\n", id="empty-header-name"),
    # Invalid request-targets.
    pytest.param(b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", id="target-asterisk-for-get"),
    pytest.param(b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n", id="target-absolute-form"),
    pytest.param(b"GET foo HTTP/1.1\r\nHost: h\r\n\r\n", id="target-relative"),
    pytest.param(b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", id="target-with-space"),
    pytest.param(b"GET /a\tb HTTP/1.1\r\nHost: h\r\n\r\n", id="target-with-tab"),
    pytest.param(b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n", id="target-raw-non-ascii"),
    pytest.param(b"GET /a#b HTTP/1.1\r\nHost: h\r\n\r\n", id="target-with-fragment"),
    pytest.param(b"get / HTTP/1.1\r\nHost: h\r\n\r\n", id="method-lower-case"),
    # Host.
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="host-missing-http11"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="host-two-headers"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", id="host-two-equal-headers"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", id="host-with-slash"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", id="host-with-space"),
    # Not HTTP at all; h2 prior knowledge on a plain HTTP/1.1 port.
    pytest.param(b"HELLO\r\n\r\n", id="not-http"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", id="h2-preface"),
]

REFUSED_VERSION = [
    pytest.param(b"GET /\r\n\r\n", (400, 505), id="http-0.9-request-line"),
    pytest.param(b"GET / HTTP/0.9\r\nHost: h\r\n\r\n", (505,), id="http-0.9-version"),
    pytest.param(b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", (505,), id="http-2.0"),
    pytest.param(b"GET / HTTP/1.2\r\nHost: h\r\n\r\n", (505,), id="http-1.2"),
    pytest.param(b"GET / HTTP/3.0\r\nHost: h\r\n\r\n", (505,), id="http-3.0"),
]


@pytest.mark.parametrize("raw", REFUSED_400)
def test_ambiguous_request_is_refused_and_never_forwarded(port: int, recording: RecordingBackend,
                                                         raw: bytes) -> None:
    refused(port, recording, raw, (400,))


@pytest.mark.parametrize(("raw", "statuses"), REFUSED_VERSION)
def test_unsupported_http_version_is_refused_and_never_forwarded(port: int, recording: RecordingBackend,
                                                                raw: bytes, statuses: tuple[int, ...]) -> None:
    refused(port, recording, raw, statuses)


@pytest.mark.parametrize(("raw", "path", "body"), [
    pytest.param(post(b"Transfer-Encoding:\tchunked\r\nConnection: close\r\n", CHUNKED_HELLO, b"/ows"),
                 "/ows", b"hello", id="te-tab-before"),
    pytest.param(post(b"Transfer-Encoding:  chunked\r\nConnection: close\r\n", CHUNKED_HELLO, b"/ows"),
                 "/ows", b"hello", id="te-leading-space"),
    pytest.param(b"GET  /ows HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", "/ows", None,
                 id="request-line-double-space"),
])
def test_unusual_but_unambiguous_request_is_refused_or_safely_reframed(
        port: int, recording: RecordingBackend, raw: bytes, path: str, body: bytes | None) -> None:
    """Leading OWS is not part of a field value (RFC 9110 5.5): ``\\tchunked`` *is* ``chunked``;
    a request-line may be split on whitespace runs (RFC 9112 3).

    Refusing is safe; so is accepting, as long as the backend gets the request
    in the gateway's own framing (it never sees the client's bytes).
    """
    before = recording.snapshot()
    data, closed = send_raw_until_close(port, raw, timeout=5.0)
    responses = parse_responses(data)
    assert len(responses) == 1 and closed, data[:500]
    if responses[0].status == 400:
        mark = marker(port, recording)
        new, _ = recording.since(before)
        assert [request.target for request in new] == [mark.target]
        return
    assert (responses[0].status, responses[0].body) == (200, b"ok " + path.encode()), data[:500]
    new, _ = recording.since(before)
    assert [request.target for request in new] == [path]
    request = new[0]
    assert request.raw.startswith(f"{request.method} {path} HTTP/1.1\r\n".encode())
    if body is not None:
        assert_reframed_chunked(request, body)
    else:
        assert request.framing == "none" and request.header_values("Transfer-Encoding") == []


# -- re-framing of the requests that are accepted ---------------------------------------------

def test_chunked_request_is_reframed_by_the_gateway(port: int, recording: RecordingBackend) -> None:
    body = b"abc" + b"hello" + b"x" * 300
    raw = post(b"Transfer-Encoding: chunked\r\nConnection: close\r\n",
               b"3\r\nabc\r\n5\r\nhello\r\n12c\r\n" + b"x" * 300 + b"\r\n0\r\n\r\n", b"/chunked")
    request = accepted(port, recording, raw, "/chunked")
    assert_reframed_chunked(request, body)
    # The backend's bytes are the gateway's: a head it wrote, then chunks it sized itself.
    head, _, wire_body = request.raw.partition(b"\r\n\r\n")
    assert b"Connection: close" not in head
    assert wire_body.endswith(b"\r\n0\r\n\r\n")


def test_chunk_extensions_are_not_forwarded(port: int, recording: RecordingBackend) -> None:
    raw = post(b"Transfer-Encoding: chunked\r\nConnection: close\r\n",
               b'5;name=value\r\nhello\r\n6;q="a;b"\r\n world\r\n0;last\r\n\r\n', b"/ext")
    request = accepted(port, recording, raw, "/ext")
    assert_reframed_chunked(request, b"hello world")
    assert b";" not in request.raw.partition(b"\r\n\r\n")[2]


def test_trailer_fields_do_not_reach_the_backend_as_headers(port: int, recording: RecordingBackend) -> None:
    raw = post(b"Transfer-Encoding: chunked\r\nConnection: close\r\n",
               b"5\r\nhello\r\n0\r\nX-Trailer: sneaky\r\nX-Other: more\r\n\r\n", b"/trailer")
    request = accepted(port, recording, raw, "/trailer")
    assert_reframed_chunked(request, b"hello")
    assert b"sneaky" not in request.raw and b"X-Other" not in request.raw


def test_content_length_request_arrives_with_exactly_one_content_length(port: int,
                                                                       recording: RecordingBackend) -> None:
    raw = post(b"Content-Length: 11\r\nConnection: close\r\n", b"hello world", b"/cl")
    request = accepted(port, recording, raw, "/cl")
    assert request.framing == "content-length"
    assert request.header_values("Content-Length") == ["11"]
    assert request.header_values("Transfer-Encoding") == []
    assert request.body == b"hello world"
    assert request.raw.endswith(b"\r\n\r\nhello world")


def test_http_1_0_request_body_is_forwarded_as_http_1_1_with_content_length(
        port: int, recording: RecordingBackend) -> None:
    raw = b"POST /ten HTTP/1.0\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
    request = accepted(port, recording, raw, "/ten")
    assert request.version == "HTTP/1.1"
    assert request.header_values("Content-Length") == ["5"] and request.body == b"hello"


def test_http_1_0_with_transfer_encoding_is_not_kept_alive(port: int, recording: RecordingBackend) -> None:
    """RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing; the server must
    close the connection after it (refusing it is fine too).  A request behind it is never read."""
    raw = (b"POST /ten-te HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
           + CHUNKED_HELLO + b"GET /behind-ten-te HTTP/1.0\r\nHost: h\r\n\r\n")
    before = recording.snapshot()
    data, closed = send_raw_until_close(port, raw, timeout=5.0)
    responses = parse_responses(data)
    assert closed
    assert len(responses) == 1 and responses[0].status in (200, 400), data[:500]
    marker(port, recording)
    new, _ = recording.since(before)
    assert "/behind-ten-te" not in [request.target for request in new]
    if responses[0].status == 200:
        assert_reframed_chunked(new[0], b"hello")


# -- pipelining -----------------------------------------------------------------------------------

def test_three_pipelined_requests_are_answered_in_order_each_complete(port: int,
                                                                      recording: RecordingBackend) -> None:
    raw = (b"GET /p1 HTTP/1.1\r\nHost: h\r\n\r\n"
           b"POST /p2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
           b"GET /p3 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    data, closed = send_raw_until_close(port, raw, timeout=5.0)
    responses = parse_responses(data)  # strict: each response complete before the next begins
    assert [(r.status, r.body, r.framing) for r in responses] == [
        (200, b"ok /p1", "content-length"), (200, b"ok /p2", "content-length"), (200, b"ok /p3", "content-length")]
    assert closed
    recorded = [r for r in recording.requests if r.target in ("/p1", "/p2", "/p3")]
    assert [r.target for r in recorded] == ["/p1", "/p2", "/p3"]
    assert recorded[1].body == b"abc"


def test_request_pipelined_behind_a_smuggling_attempt_is_never_forwarded(port: int,
                                                                         recording: RecordingBackend) -> None:
    raw = (post(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nG")
           + b"GET /behind-smuggling HTTP/1.1\r\nHost: h\r\n\r\n")
    refused(port, recording, raw)
    assert "/behind-smuggling" not in recording.targets()
    assert "/smuggled" not in recording.targets()


def test_good_request_before_a_smuggling_attempt_is_answered_and_nothing_after(
        port: int, recording: RecordingBackend) -> None:
    raw = (b"GET /before HTTP/1.1\r\nHost: h\r\n\r\n"
           + post(b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", b"5c\r\nG" + SMUGGLED + b"\r\n0\r\n\r\n")
           + b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n")
    before = recording.snapshot()
    data, closed = send_raw_until_close(port, raw, timeout=5.0)
    responses = parse_responses(data)
    assert [(r.status, r.body if r.status == 200 else None) for r in responses] == [
        (200, b"ok /before"), (400, None)], data[:500]
    assert closed
    mark = marker(port, recording)
    new, _ = recording.since(before)
    assert [request.target for request in new] == ["/before", mark.target]


def test_bad_chunk_size_arriving_later_never_completes_a_request_at_the_backend(
        port: int, recording: RecordingBackend) -> None:
    """The head (and a good first chunk) may already be on their way to the backend when the bad
    chunk size arrives: the backend connection is then cut, so it can never read a whole request."""
    before = recording.snapshot()
    with socket.create_connection((HOST, port), timeout=5.0) as sock:
        sock.sendall(post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n", b"/split"))
        time.sleep(0.5)
        sock.sendall(b"zz\r\n" + SMUGGLED)
        data, closed = read_until_close(sock)
    assert closed
    responses = parse_responses(data)
    assert [r.status for r in responses] in ([400], []), data[:500]
    new, _ = recording.since(before)
    assert "/split" not in [r.target for r in new] and "/smuggled" not in [r.target for r in new]
    # Any backend connection that received part of it was closed.
    for record in recording.connections:
        if b"/split" in record.data:
            assert record.closed_by_peer.wait(5.0), "the backend connection carrying the cut request stayed open"
