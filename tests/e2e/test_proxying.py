"""HTTP semantics of the proxy: headers, framing, keep-alive, pipelining, bodies.

``/echo`` on the web backend answers with the request as it arrived (raw
headers, the TCP peer, a hash of the body), so these tests see exactly what
the gateway forwarded.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time

import pytest
from harness import (
    HOST,
    HTTP_TIMEOUT,
    KeepAliveClient,
    ScriptedBackend,
    free_port,
    gateway_config,
    http_get,
    parse_responses,
    pattern_bytes,
    read_request_head,
    respond,
    send_raw,
    send_raw_until_close,
    served_by_name,
)

#: Hop-by-hop request headers a client may send; none of them may reach the backend.
HOP_BY_HOP_REQUEST = [
    ("Connection", "keep-alive, X-Foo, X-Bar"),
    ("X-Foo", "named in Connection"),
    ("X-Bar", "named in Connection too"),
    ("Keep-Alive", "timeout=30, max=100"),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Proxy-Connection", "keep-alive"),
    ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
    ("X-End-To-End", "kept"),
]
HOP_BY_HOP_NAMES = {"connection", "x-foo", "x-bar", "keep-alive", "te", "trailer", "proxy-connection",
                    "proxy-authorization"}


@pytest.fixture
def port(backends, gateway) -> int:
    """A gateway in front of web-1 only (and api-1 under /api/)."""
    port = free_port()
    gateway(gateway_config(port, web=[backends.web1.address], api=[backends.api.address]))
    return port


def echo(port: int, path: str = "/echo", **kwargs) -> dict:
    status, _, body = http_get(port, path, **kwargs)
    assert status == 200, body
    return json.loads(body)


# -- request headers ------------------------------------------------------------------

def test_x_forwarded_for_is_set_to_the_client_address(port: int) -> None:
    assert echo(port)["headers"]["x-forwarded-for"] == "127.0.0.1"


def test_x_forwarded_for_is_appended_to(port: int) -> None:
    seen = echo(port, headers={"X-Forwarded-For": "10.0.0.1"})
    assert seen["headers"]["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert seen["remote_addr"] == "127.0.0.1"  # ProxyFix (one trusted proxy) takes the gateway's entry

    seen = echo(port, headers=[("X-Forwarded-For", "10.0.0.1, 10.0.0.2"), ("X-Forwarded-For", "10.0.0.3")])
    assert seen["headers"]["x-forwarded-for"] == "10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"


def test_x_forwarded_proto_and_host_are_set_by_the_gateway(port: int) -> None:
    seen = echo(port, headers={"Host": "shop.example:8443", "X-Forwarded-Proto": "https",
                               "X-Forwarded-Host": "evil.example"})
    headers = seen["headers"]
    assert headers["host"] == "shop.example:8443"  # passed on unchanged
    assert headers["x-forwarded-proto"] == "http"  # how the client reached the gateway, not what it claimed
    assert headers["x-forwarded-host"] == "shop.example:8443"
    # The backend builds its URLs for the client-facing host and scheme.
    assert seen["url"] == "http://shop.example:8443/echo"


def test_default_host_header_is_passed_on_unchanged(port: int) -> None:
    headers = echo(port)["headers"]
    assert headers["host"] == f"{HOST}:{port}"
    assert headers["x-forwarded-host"] == f"{HOST}:{port}"


def test_end_to_end_headers_and_repeated_headers_pass(port: int) -> None:
    headers = echo(port, headers=[("X-Custom", "one"), ("X-Custom", "two"), ("Accept", "text/plain"),
                                  ("Cookie", "a=1; b=2"), ("User-Agent", "e2e/1.0")])["headers"]
    assert headers["x-custom"] == "one,two"  # Gunicorn joins repeated headers with commas
    assert headers["accept"] == "text/plain"
    assert headers["cookie"] == "a=1; b=2"
    assert headers["user-agent"] == "e2e/1.0"


def test_hop_by_hop_request_headers_are_removed(backends, port: int) -> None:
    # Control: sent straight to the backend, every one of them arrives.
    direct = echo(backends.web1.port, headers=HOP_BY_HOP_REQUEST)["headers"]
    assert HOP_BY_HOP_NAMES <= set(direct)

    through = echo(port, headers=HOP_BY_HOP_REQUEST)["headers"]
    assert not HOP_BY_HOP_NAMES & set(through), through
    assert through["x-end-to-end"] == "kept"


def test_h2c_upgrade_request_is_served_as_plain_http_without_upgrade_headers(port: int) -> None:
    """Upgrade is hop-by-hop: only WebSocket is tunnelled; an h2c upgrade is answered as
    plain HTTP/1.1, its Upgrade (and what Connection lists) not forwarded."""
    request = (f"GET /echo HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade, HTTP2-Settings\r\n"
               "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nX-Keep: 1\r\n\r\n"
               f"GET /echo?n=2 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").encode()
    data = send_raw(port, request, timeout=5.0)
    responses = parse_responses(data)
    assert [r.status for r in responses] == [200, 200], data[:500]
    headers = json.loads(responses[0].body)["headers"]
    assert not {"upgrade", "connection", "http2-settings"} & set(headers), headers
    assert headers["x-keep"] == "1"
    # What followed the upgrade request was read as the next request.
    assert json.loads(responses[1].body)["query_string"] == "n=2"


def test_hop_by_hop_response_headers_are_not_relayed(port: int) -> None:
    with KeepAliveClient(port) as client:
        status, headers, _ = client.get("/json")
        assert status == 200
        assert headers["Keep-Alive"] is None
        assert headers.get_all("Connection") in (None, ["keep-alive"])
        assert served_by_name(headers) == "web-1"


# -- methods, status codes, framing -------------------------------------------------

def test_status_codes_and_bodies_of_the_backend_are_relayed(port: int) -> None:
    status, headers, body = http_get(port, "/status/503")
    assert (status, body) == (503, b"status 503\n")
    assert served_by_name(headers) == "web-1"  # the backend's 503, not the gateway's
    status, _, body = http_get(port, "/status/204")
    assert (status, body) == (204, b"")
    status, _, body = http_get(port, "/status/418")
    assert (status, body) == (418, b"status 418\n")


def test_head_requests_get_headers_without_a_body(port: int) -> None:
    with KeepAliveClient(port) as client:
        status, headers, body = client.request("HEAD", "/sized?bytes=1000")
        assert (status, body) == (200, b"")
        assert headers["Content-Length"] == "1000"
        status, _, body = client.request("HEAD", "/stream?bytes=5000")
        assert (status, body) == (200, b"")
        # Had a body slipped through, the next response would be garbled.
        status, _, body = client.get("/sized?bytes=10")
        assert (status, body) == (200, pattern_bytes(10))
        assert client.connections_opened == 1


def test_head_response_on_the_wire_has_no_body(port: int) -> None:
    request = (f"HEAD /sized?bytes=1000 HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
               f"GET /sized?bytes=7 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").encode()
    responses = parse_responses(send_raw(port, request), head_requests=frozenset({0}))
    assert [r.status for r in responses] == [200, 200]
    assert responses[0].header("Content-Length") == "1000"
    assert responses[1].body == pattern_bytes(7)


@pytest.mark.parametrize("path, size", [("/stream?bytes=100000", 100000), ("/sized?bytes=100000", 100000),
                                        ("/stream?bytes=0", 0)])
def test_http_1_0_client_gets_a_complete_response(port: int, path: str, size: int) -> None:
    data, closed = send_raw_until_close(port, f"GET {path} HTTP/1.0\r\n\r\n".encode(), timeout=5.0)
    assert closed, "an HTTP/1.0 request without keep-alive must end with the server closing"
    responses = parse_responses(data)
    assert len(responses) == 1, data[:300]
    response = responses[0]
    assert response.status == 200
    # No chunked coding for an HTTP/1.0 client: a Content-Length, or the body ends at close.
    assert response.framing in ("content-length", "close"), response.headers
    assert response.body == pattern_bytes(size)
    assert (response.header("Connection") or "").lower() == "close"


def test_http_1_0_request_is_forwarded_as_http_1_1(port: int) -> None:
    data = send_raw(port, b"GET /echo HTTP/1.0\r\nHost: old.example\r\n\r\n", timeout=5.0)
    (response,) = parse_responses(data)
    assert response.status == 200
    seen = json.loads(response.body)
    assert seen["headers"]["host"] == "old.example"
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"


def test_pipelined_requests_are_answered_in_order(port: int) -> None:
    upload = os.urandom(5000)
    request = b"".join([
        f"GET /echo?n=1 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode(),
        f"GET /api/echo?n=2 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode(),
        f"POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(upload)}\r\n\r\n".encode(), upload,
        f"GET /sized?bytes=100 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode(),
        f"GET /echo?n=5 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode(),
    ])
    responses = parse_responses(send_raw(port, request, timeout=5.0))

    assert [r.status for r in responses] == [200] * 5
    first, second, third, fourth, fifth = responses
    assert json.loads(first.body)["query_string"] == "n=1"
    assert json.loads(second.body)["query_string"] == "n=2"
    assert json.loads(second.body)["served_by"]["service"] == "api-1"
    assert json.loads(third.body)["sha256"] == hashlib.sha256(upload).hexdigest()
    assert fourth.body == pattern_bytes(100)
    assert json.loads(fifth.body)["query_string"] == "n=5"


def test_pipelined_request_to_no_route_keeps_its_place(backends, gateway) -> None:
    port = free_port()
    gateway(gateway_config(port, api=[backends.api.address]))  # "/" has no route
    request = (f"GET /api/echo?n=1 HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
               f"GET /nowhere HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
               f"GET /api/echo?n=3 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").encode()
    responses = parse_responses(send_raw(port, request, timeout=5.0))
    assert [r.status for r in responses] == [200, 404, 200]
    assert json.loads(responses[2].body)["query_string"] == "n=3"


# -- connections ------------------------------------------------------------------------

def test_client_keep_alive_connection_is_reused(port: int) -> None:
    with KeepAliveClient(port) as client:
        for path in ["/json", "/api/users", "/sized?bytes=70000", "/stream?bytes=70000", "/nowhere",
                     "/status/404", "/echo"] * 2:
            status, _, _ = client.get(path)
            assert status in (200, 404), path
        status, _, body = client.request("POST", "/upload", body=b"x" * 1000)
        assert status == 200 and json.loads(body)["bytes"] == 1000
        assert client.connections_opened == 1


def test_http_1_0_keep_alive_is_honoured(port: int) -> None:
    request = (b"GET /sized?bytes=10 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
               b"GET /sized?bytes=20 HTTP/1.0\r\n\r\n")
    responses = parse_responses(send_raw(port, request, timeout=5.0))
    assert [r.body for r in responses] == [pattern_bytes(10), pattern_bytes(20)]


def test_upstream_connections_are_reused(port: int) -> None:
    """Sequential requests, even from different client connections, share one backend connection."""
    peers = []
    with KeepAliveClient(port) as client:
        for _ in range(5):
            status, _, body = client.get("/echo")
            assert status == 200
            peers.append(json.loads(body)["peer"])
    for _ in range(5):
        peers.append(echo(port)["peer"])  # a new client connection each time

    assert peers[0].startswith("127.0.0.1:")
    assert peers == [peers[0]] * 10, peers


def test_upstream_connection_reuse_after_request_bodies(port: int) -> None:
    peers = [echo(port, method="POST", body=b"a" * 10000)["peer"],
             echo(port, method="PUT", body=iter([b"b" * 5000, b"c" * 5000]))["peer"],
             echo(port)["peer"]]
    assert len(set(peers)) == 1, peers


# -- bodies -----------------------------------------------------------------------------

def test_request_body_with_content_length_arrives_intact(port: int) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    status, _, body = http_get(port, "/upload", method="POST", body=data)
    assert status == 200
    answer = json.loads(body)
    assert (answer["bytes"], answer["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())


def test_chunked_request_body_arrives_intact(port: int) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    pieces = (data[i:i + 65000] for i in range(0, len(data), 65000))
    seen = echo(port, method="POST", body=pieces)
    assert (seen["body_bytes"], seen["body_sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert seen["headers"].get("transfer-encoding") == "chunked"  # re-framed, still chunked


def test_chunked_response_arrives_intact(port: int) -> None:
    size = 5 * 1024 * 1024 + 3
    status, headers, body = http_get(port, f"/stream?bytes={size}&chunk=10000")
    assert status == 200
    assert headers["Transfer-Encoding"] == "chunked"
    assert hashlib.sha256(body).digest() == hashlib.sha256(pattern_bytes(size)).digest()


def test_sized_response_keeps_its_content_length(port: int) -> None:
    size = 2 * 1024 * 1024 + 1
    status, headers, body = http_get(port, f"/sized?bytes={size}")
    assert status == 200
    assert headers["Content-Length"] == str(size)
    assert body == pattern_bytes(size)


def _recv_until(sock: socket.socket, marker: bytes, limit: int = 1 << 20) -> bytes:
    data = b""
    while marker not in data and len(data) < limit:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    return data


def test_expect_100_continue_upload(port: int) -> None:
    data = os.urandom(256 * 1024)
    with socket.create_connection((HOST, port), timeout=HTTP_TIMEOUT) as sock:
        sock.sendall(f"POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(data)}\r\n"
                     "Expect: 100-continue\r\nConnection: close\r\n\r\n".encode())
        # The body is held back until the gateway says to go on (recv times out otherwise).
        interim = _recv_until(sock, b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
        sock.sendall(data)
        rest = interim[interim.index(b"\r\n\r\n") + 4:]
        while len(rest) < 1 << 20:
            piece = sock.recv(65536)
            if not piece:
                break
            rest += piece
    responses = parse_responses(rest)
    assert [r.status for r in responses] == [200], rest[:300]
    answer = json.loads(responses[0].body)
    assert (answer["bytes"], answer["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())



def test_connection_close_from_the_client_closes_after_the_response(port: int) -> None:
    data, closed = send_raw_until_close(
        port, f"GET /json HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    assert closed
    (response,) = parse_responses(data)
    assert response.status == 200
    assert (response.header("Connection") or "").lower() == "close"


def test_request_body_to_a_missing_route_is_skipped_and_the_connection_kept(backends, gateway) -> None:
    port = free_port()
    gateway(gateway_config(port, api=[backends.api.address]))  # "/" has no route
    with KeepAliveClient(port) as client:
        status, _, _ = client.request("POST", "/nowhere", body=os.urandom(300_000))
        assert status == 404
        status, _, _ = client.request("PUT", "/nowhere", body=iter([b"x" * 70_000] * 3))
        assert status == 404
        status, _, body = client.request("POST", "/api/echo", body=b"after")
        assert status == 200 and json.loads(body)["body_bytes"] == 5
        assert client.connections_opened == 1


def test_backend_answering_before_reading_the_body(gateway) -> None:
    """A backend may answer (413, 401...) without reading a large request body.

    The backend here reads the request head only, waits a second (the body
    fills the socket buffers towards it, so the gateway stops reading from the
    client: backpressure), answers 413 and reads nothing more.  The client
    gets the 413; after it, the gateway must either read and drop the rest of
    the body and keep serving that connection, or close it, but never leave
    the client stuck with the connection open and unread.
    """
    body_size = 32 * 1024 * 1024  # more than the loopback socket buffers hold

    def script(index: int, sock: socket.socket) -> None:
        buffer = bytearray()
        if read_request_head(sock, buffer) is None:
            return
        time.sleep(1.0)
        respond(sock, b"too large", status="413 Content Too Large")
        time.sleep(8.0)  # neither reads nor closes for a while

    with ScriptedBackend(script) as backend:
        port = free_port()
        gateway(gateway_config(port, web=[backend.address]))
        with socket.create_connection((HOST, port), timeout=5.0) as sock:
            outcome: list[str] = []

            def send_body() -> None:
                try:
                    sock.sendall(f"POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {body_size}\r\n\r\n"
                                 .encode())
                    block = b"z" * (1024 * 1024)
                    for _ in range(body_size // len(block)):
                        sock.sendall(block)
                    outcome.append("sent")
                except TimeoutError:
                    outcome.append("stuck")
                except OSError:
                    outcome.append("closed")

            sender = threading.Thread(target=send_body, daemon=True)
            sender.start()
            data = b""
            while b"too large" not in data and len(data) < 65536:
                piece = sock.recv(65536)
                if not piece:
                    break
                data += piece
            assert parse_responses(data)[0].status == 413, data[:300]
            sender.join(timeout=15.0)
            assert outcome in (["sent"], ["closed"]), (
                f"after the 413 the client could neither finish its body nor see the connection closed: {outcome}")
            if outcome == ["sent"]:
                # Kept open: the rest of the body was read and dropped; the connection still works
                # (the backend is busy, so the answer is the gateway's, or a 413 from a new connection).
                sock.sendall(f"GET /again HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
                rest = b""
                while len(rest) < 65536:
                    piece = sock.recv(65536)
                    if not piece:
                        break
                    rest += piece
                assert parse_responses(rest), rest[:300]


@pytest.mark.parametrize("request_bytes", [
    # Both Content-Length and Transfer-Encoding: the classic request-smuggling ambiguity.
    b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /sized?bytes=1 HTTP/1.1\r\nHost: h\r\n\r\n",
    # Two different Content-Lengths.
    b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    # HTTP/1.1 without Host.
    b"GET /echo HTTP/1.1\r\n\r\n",
    # Two Host headers.
    b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    # Not HTTP at all.
    b"HELLO\r\n\r\n",
], ids=["cl-and-te", "two-content-lengths", "no-host", "two-hosts", "garbage"])
def test_ambiguous_or_malformed_requests_are_refused_with_400(port: int, request_bytes: bytes) -> None:
    data, closed = send_raw_until_close(port, request_bytes)
    assert closed
    responses = parse_responses(data)
    assert [r.status for r in responses] == [400], data[:300]
    assert responses[0].header("X-Served-By") is None  # nothing reached a backend


def test_expect_100_continue_to_a_missing_route_is_refused_without_the_body(backends, gateway) -> None:
    port = free_port()
    gateway(gateway_config(port, api=[backends.api.address]))  # "/" has no route
    request = (f"POST /nowhere HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1000000\r\n"
               "Expect: 100-continue\r\n\r\n").encode()
    data, closed = send_raw_until_close(port, request)  # the body is never sent
    responses = parse_responses(data)
    assert [r.status for r in responses] == [404], data[:300]
    assert closed  # the body that may still come cannot be told from a next request


def test_client_leaving_mid_download_does_not_hurt_the_gateway(port: int) -> None:
    for _ in range(3):
        with socket.create_connection((HOST, port), timeout=HTTP_TIMEOUT) as sock:
            sock.sendall(f"GET /stream?bytes={200 * 1024 * 1024} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            received = 0
            while received < 1024 * 1024:
                piece = sock.recv(65536)
                assert piece
                received += len(piece)
    # The backend connections of the abandoned downloads are not handed to the next request.
    for _ in range(5):
        status, _, body = http_get(port, "/sized?bytes=1000")
        assert (status, body) == (200, pattern_bytes(1000))


def test_close_delimited_backend_response_is_reframed(gateway) -> None:
    """A backend response with neither Content-Length nor chunked coding ends when the backend closes;
    the gateway re-frames it for the client (chunked for HTTP/1.1) and does not reuse that connection."""
    body = os.urandom(300_000)

    def script(index: int, sock: socket.socket) -> None:
        if read_request_head(sock, bytearray()) is not None:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nX-Conn: %d\r\n\r\n" % index)
            sock.sendall(body)

    with ScriptedBackend(script) as backend:
        port = free_port()
        gateway(gateway_config(port, web=[backend.address]))
        with KeepAliveClient(port) as client:
            for expected_conn in ("0", "1"):
                status, headers, received = client.get("/close-delimited")
                assert status == 200
                assert headers["Transfer-Encoding"] == "chunked"
                assert headers["X-Conn"] == expected_conn  # a new backend connection each time
                assert received == body
            assert client.connections_opened == 1  # the client's connection stays usable


def test_backend_connection_close_is_respected(gateway) -> None:
    """A response with ``Connection: close`` ends that backend connection, even if the backend is slow to close it."""
    def script(index: int, sock: socket.socket) -> None:
        buffer = bytearray()
        if read_request_head(sock, buffer) is None:
            return
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nfirst")
        # Keep the socket open a moment: a request arriving on it now would be a reuse.
        if read_request_head(sock, buffer) is not None:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nreused!")

    with ScriptedBackend(script, timeout=1.0) as backend:
        port = free_port()
        gateway(gateway_config(port, web=[backend.address]))
        for _ in range(3):
            status, _, body = http_get(port, "/")
            assert (status, body) == (200, b"first")
        assert backend.accepted == 3
