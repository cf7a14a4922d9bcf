"""Limits: request line and header block (414/431), header count, body size (413),
``Expect: 100-continue`` and ``max_connections``.

The gateway's upstreams are :class:`~misbehaving.RecordingBackend` s, so each
test can check what a refused request left at the backend: nothing, or never
a whole request.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import (
    HOST,
    free_port,
    http_get,
    parse_responses,
    process_rss,
    send_raw_until_close,
    start_gateway,
    wait_until,
)
from misbehaving import RecordingBackend

MAX_HEADER_BYTES = 4096
MAX_HEADERS = 20
MAX_BODY = 1000
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def recording() -> Iterator[RecordingBackend]:
    with RecordingBackend() as backend:
        yield backend


def limits_config(port: int, address: str, **limits: int) -> dict:
    return {
        "listeners": [{"name": "public", "port": port, "interface": HOST,
                       "limits": {"max_header_bytes": MAX_HEADER_BYTES, "max_headers": MAX_HEADERS, **limits}}],
        "upstreams": {"rec": {"servers": [{"address": address}], "max_fails": 0}},
        "routes": [{"path": "/small/", "upstream": "rec", "max_body_size": MAX_BODY},
                   {"path": "/", "upstream": "rec"}],
        "access_log": "-",
    }


@pytest.fixture(scope="module")
def gateway_instance(recording: RecordingBackend, tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    instance = start_gateway(limits_config(port, recording.address),
                             Path(tmp_path_factory.mktemp("limits-gateway")))
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def port(gateway_instance) -> int:
    return gateway_instance.port


@pytest.fixture(autouse=True)
def _no_framing_problems(recording: RecordingBackend) -> Iterator[None]:
    yield
    assert not recording.problems, recording.problems


def read_until_close(sock: socket.socket, limit: int = 1 * MiB, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Read until the peer closes (True) or goes quiet for ``timeout`` (False). Bounded."""
    sock.settimeout(timeout)
    data = bytearray()
    while len(data) < limit:
        try:
            piece = sock.recv(65536)
        except (TimeoutError, socket.timeout):
            return bytes(data), False
        except ConnectionResetError:
            return bytes(data), True
        if not piece:
            return bytes(data), True
        data += piece
    return bytes(data), False


def assert_refused(data: bytes, closed: bool, status: int) -> None:
    responses = parse_responses(data)
    assert [r.status for r in responses] == [status], data[:400]
    assert responses[0].header("Content-Type").startswith("text/plain")
    assert responses[0].header("X-Recorded") is None
    assert closed, "the connection stayed open"


def assert_nothing_forwarded(port: int, recording: RecordingBackend, before: tuple[int, int]) -> None:
    """Only a marker request sent now reaches the backend after ``before``."""
    status, _, body = http_get(port, "/limits-marker")
    assert (status, body) == (200, b"ok /limits-marker")
    new, new_bytes = recording.since(before)
    assert [r.target for r in new] == ["/limits-marker"], new
    assert new_bytes == len(new[0].raw)


# -- header limits ---------------------------------------------------------------------------

def test_request_line_longer_than_max_header_bytes_is_414(port: int, recording: RecordingBackend) -> None:
    before = recording.snapshot()
    target = b"/" + b"a" * (MAX_HEADER_BYTES + 100)
    data, closed = send_raw_until_close(port, b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert_refused(data, closed, 414)
    assert_nothing_forwarded(port, recording, before)


def test_very_long_request_line_sent_in_pieces_is_414(port: int, recording: RecordingBackend) -> None:
    """A request-target several times the limit, arriving over several reads, is still 'URI Too Long'."""
    before = recording.snapshot()
    with socket.create_connection((HOST, port), timeout=5.0) as sock:
        sock.sendall(b"GET /" + b"a" * (3 * MAX_HEADER_BYTES))
        time.sleep(0.3)
        try:
            sock.sendall(b"b" * MAX_HEADER_BYTES + b" HTTP/1.1\r\nHost: h\r\n\r\n")
        except OSError:
            pass  # already answered and closed
        data, closed = read_until_close(sock)
    assert_refused(data, closed, 414)
    assert_nothing_forwarded(port, recording, before)


def test_header_block_larger_than_max_header_bytes_is_431(port: int, recording: RecordingBackend) -> None:
    before = recording.snapshot()
    headers = b"".join(b"X-Big-%d: %s\r\n" % (index, b"v" * 500) for index in range(10))  # ~5 KiB, 10 fields
    data, closed = send_raw_until_close(port, b"GET / HTTP/1.1\r\nHost: h\r\n" + headers + b"\r\n")
    assert_refused(data, closed, 431)
    assert_nothing_forwarded(port, recording, before)


def test_more_than_max_headers_fields_is_431(port: int, recording: RecordingBackend) -> None:
    before = recording.snapshot()
    headers = b"".join(b"X-H%d: v\r\n" % index for index in range(MAX_HEADERS + 5))  # small, but too many
    data, closed = send_raw_until_close(port, b"GET / HTTP/1.1\r\nHost: h\r\n" + headers + b"\r\n")
    assert_refused(data, closed, 431)
    assert_nothing_forwarded(port, recording, before)


def test_exactly_max_headers_fields_is_accepted(port: int, recording: RecordingBackend) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % index for index in range(MAX_HEADERS - 2))  # plus Host and Connection
    data, closed = send_raw_until_close(
        port, b"GET /at-the-limit HTTP/1.1\r\nHost: h\r\n" + headers + b"Connection: close\r\n\r\n")
    assert [(r.status, r.body) for r in parse_responses(data)] == [(200, b"ok /at-the-limit")], data[:300]


def test_huge_header_value_streamed_slowly_is_cut_without_memory_growth(
        gateway_instance, recording: RecordingBackend) -> None:
    """One header value that never ends: the gateway answers 431 after a bounded amount and closes,
    and its memory does not grow with what the client keeps sending."""
    port = gateway_instance.port
    pid = gateway_instance.process.pid
    rss_before = process_rss(pid)
    peak = rss_before
    sent = 0
    before = recording.snapshot()
    with socket.create_connection((HOST, port), timeout=5.0) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\nX-Huge: ")
        block = b"a" * 4096
        deadline = time.monotonic() + 20.0
        cut = False
        for _ in range(16 * 1024):  # at most 64 MiB
            if time.monotonic() > deadline:
                break
            try:
                sock.sendall(block)
            except OSError:
                cut = True
                break
            sent += len(block)
            if sent % (64 * 1024) == 0:
                peak = max(peak, process_rss(pid))
                time.sleep(0.01)  # slowly: the gateway gets many small reads
                if _readable(sock):  # answered (431) or closed
                    cut = True
                    break
        data, closed = read_until_close(sock)
    peak = max(peak, process_rss(pid))
    growth = (peak - rss_before) / MiB
    assert cut, f"the gateway read {sent} bytes of one header value without answering (RSS +{growth:.1f} MiB)"
    assert sent < 8 * MiB, (f"the gateway took {sent} bytes of one header before cutting it "
                            f"(RSS +{growth:.1f} MiB, answer {data[:120]!r})")
    if data:
        assert [r.status for r in parse_responses(data)] == [431], data[:400]
    assert closed
    assert peak - rss_before < 50 * MiB, f"RSS grew by {(peak - rss_before) / MiB:.1f} MiB"
    assert_nothing_forwarded(port, recording, before)


def test_huge_trailer_value_streamed_is_cut_without_memory_growth(
        gateway_instance, recording: RecordingBackend) -> None:
    """The same in the trailer section of a chunked body: a field that never ends is cut."""
    port = gateway_instance.port
    pid = gateway_instance.process.pid
    rss_before = process_rss(pid)
    peak = rss_before
    sent = 0
    cut = False
    with socket.create_connection((HOST, port), timeout=5.0) as sock:
        sock.sendall(b"POST /trailer-bomb HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n0\r\nX-Huge-Trailer: ")
        block = b"a" * 4096
        deadline = time.monotonic() + 10.0
        for _ in range(16 * 1024):  # at most 64 MiB
            if time.monotonic() > deadline:
                break
            try:
                sock.sendall(block)
            except OSError:
                cut = True
                break
            sent += len(block)
            if sent % (64 * 1024) == 0:
                peak = max(peak, process_rss(pid))
                time.sleep(0.01)
                if _readable(sock):
                    cut = True
                    break
        data, closed = read_until_close(sock)
    peak = max(peak, process_rss(pid))
    growth = (peak - rss_before) / MiB
    assert cut, (f"the gateway read {sent} bytes of one trailer field in 10 s without answering or "
                 f"closing (RSS +{growth:.1f} MiB)")
    assert sent < 8 * MiB, f"the gateway took {sent} bytes of one trailer field (RSS +{growth:.1f} MiB)"
    assert closed
    assert growth < 50, f"RSS grew by {growth:.1f} MiB"
    assert "/trailer-bomb" not in recording.targets()


def _readable(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


# -- body size ----------------------------------------------------------------------------------

def test_content_length_over_max_body_size_is_413_before_the_body_is_read(
        port: int, recording: RecordingBackend) -> None:
    before = recording.snapshot()
    with socket.create_connection((HOST, port), timeout=5.0) as sock:
        # Only the head: the 413 must come without the gateway waiting for (or reading) the body.
        sock.sendall(b"POST /small/upload HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n")
        data, closed = read_until_close(sock)
    assert_refused(data, closed, 413)
    assert recording.since(before) == ([], 0)
    assert_nothing_forwarded(port, recording, before)


def test_content_length_at_max_body_size_is_forwarded(port: int, recording: RecordingBackend) -> None:
    status, _, body = http_get(port, "/small/exact", method="POST", body=b"z" * MAX_BODY)
    assert (status, body) == (200, b"ok /small/exact")
    request = [r for r in recording.requests if r.target == "/small/exact"][-1]
    assert request.body == b"z" * MAX_BODY


def test_chunked_body_over_max_body_size_is_cut_and_never_completes_at_the_backend(
        port: int, recording: RecordingBackend) -> None:
    before = recording.snapshot()
    with socket.create_connection((HOST, port), timeout=5.0) as sock:
        sock.sendall(b"POST /small/chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        sent = 0
        for _ in range(20):  # 20 x 500 bytes: ten times the limit
            try:
                sock.sendall(b"1f4\r\n" + b"c" * 500 + b"\r\n")
            except OSError:
                break
            sent += 500
            time.sleep(0.02)
        try:
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass
        data, closed = read_until_close(sock)
    responses = parse_responses(data)
    assert [r.status for r in responses] in ([413], []), data[:400]
    assert closed
    new, _ = recording.since(before)
    assert "/small/chunked" not in [r.target for r in new], "the backend got the whole oversized body"
    for record in recording.connections:
        if b"/small/chunked" in record.data:
            assert record.closed_by_peer.wait(5.0), "the backend connection of the cut upload stayed open"
            body_part = bytes(record.data).split(b"/small/chunked", 1)[1].partition(b"\r\n\r\n")[2]
            # (the slack: a few hex chunk sizes the gateway wrote)
            assert body_part.count(b"c") <= MAX_BODY + 20, "more than max_body_size bytes were forwarded"


def test_expect_100_continue_gets_100_before_the_body_is_sent(port: int, recording: RecordingBackend) -> None:
    with socket.create_connection((HOST, port), timeout=5.0) as sock:
        sock.sendall(b"POST /small/expect HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n"
                     b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        interim = bytearray()
        sock.settimeout(5.0)
        while b"\r\n\r\n" not in interim and len(interim) < 4096:
            piece = sock.recv(4096)
            assert piece, "closed before 100 Continue"
            interim += piece
        assert bytes(interim).startswith(b"HTTP/1.1 100 Continue\r\n"), interim
        assert not [r for r in recording.requests if r.target == "/small/expect"]
        sock.sendall(b"0123456789")
        rest, closed = read_until_close(sock)
    head_end = interim.index(b"\r\n\r\n") + 4
    responses = parse_responses(bytes(interim[head_end:]) + rest)
    assert [(r.status, r.body) for r in responses] == [(200, b"ok /small/expect")]
    request = [r for r in recording.requests if r.target == "/small/expect"][-1]
    assert request.body == b"0123456789"
    assert request.header("Expect") is None  # the gateway answered it; the backend is not asked again


def test_expect_100_continue_over_max_body_size_is_413_without_100(port: int,
                                                                   recording: RecordingBackend) -> None:
    before = recording.snapshot()
    with socket.create_connection((HOST, port), timeout=5.0) as sock:
        sock.sendall(b"POST /small/expect-big HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        data, closed = read_until_close(sock)
    assert not data.startswith(b"HTTP/1.1 100"), data[:200]
    assert_refused(data, closed, 413)
    assert_nothing_forwarded(port, recording, before)


# -- max_connections -------------------------------------------------------------------------------

def _request_on(sock: socket.socket, path: str) -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    data = bytearray()
    for _ in range(100):
        if data.count(b"\r\n\r\n") and parse_complete(bytes(data)):
            break
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    return bytes(data)


def parse_complete(data: bytes) -> bool:
    try:
        return len(parse_responses(data)) == 1
    except AssertionError:
        return False


def test_max_connections_closes_extra_connections_at_once(gateway, recording: RecordingBackend) -> None:
    port = free_port()
    gateway(limits_config(port, recording.address, max_connections=5))
    first: list[socket.socket] = []
    extra: list[socket.socket] = []
    try:
        for index in range(5):
            sock = socket.create_connection((HOST, port), timeout=5.0)
            first.append(sock)
            assert parse_responses(_request_on(sock, f"/conn-{index}"))[0].status == 200
        refused_at_connect = 0
        for _ in range(5):
            try:
                extra.append(socket.create_connection((HOST, port), timeout=5.0))
            except ConnectionResetError:
                # Python's connect-with-timeout reads SO_ERROR after the handshake: the gateway's
                # reset can already be there.  Closed at once, all the same.
                refused_at_connect += 1
        for sock in extra:
            data, closed = read_until_close(sock, timeout=3.0)
            assert closed, "a connection over max_connections was kept open"
            assert data == b"", data[:200]
        assert len(extra) + refused_at_connect == 5
        for index, sock in enumerate(first):  # the first five still work, on the same connections
            response = parse_responses(_request_on(sock, f"/again-{index}"))[0]
            assert (response.status, response.body) == (200, f"ok /again-{index}".encode())
    finally:
        for sock in first + extra:
            sock.close()
    # Once the first five are gone, new connections are served again.
    status, _, body = wait_until(lambda: _try_get(port), timeout=5.0, message="a new connection served")
    assert (status, body) == (200, b"ok /after")


def _try_get(port: int):
    try:
        return http_get(port, "/after", timeout=2.0)
    except (OSError, ConnectionError):
        return None
