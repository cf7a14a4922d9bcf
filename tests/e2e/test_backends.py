"""The example backends on their own, without the gateway.

The gateway tests trust what the backends report (who served a request, how
many bytes went through, what headers arrived), so check that first.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from harness import (
    KeepAliveClient,
    http_get,
    parse_served_by,
    pattern_bytes,
    port_accepts,
)


def test_every_response_says_who_served_it(backends) -> None:
    for backend, path in [(backends.web1, "/"), (backends.web2, "/json"), (backends.web1, "/healthz"),
                          (backends.web1, "/no-such-page"), (backends.api, "/api/users"),
                          (backends.api, "/elsewhere")]:
        _, headers, _ = http_get(backend.port, path)
        service, address, pid = parse_served_by(headers["X-Served-By"])
        assert (service, address) == (backend.name, backend.address), path
        assert pid > 0 and pid != backend.process.pid  # the Gunicorn worker, not the master


def test_json_served_by_matches_the_header(backends) -> None:
    status, headers, body = http_get(backends.web2.port, "/json")
    assert status == 200
    served_by = json.loads(body)["served_by"]
    assert parse_served_by(headers["X-Served-By"]) == (
        served_by["service"], served_by["address"], served_by["pid"])
    assert served_by["address"] == backends.web2.address


def test_index_page_names_the_server(backends) -> None:
    status, headers, body = http_get(backends.web1.port, "/")
    assert status == 200
    assert headers.get_content_type() == "text/html"
    assert backends.web1.address.encode() in body


@pytest.mark.parametrize("size, chunk", [(0, 65536), (1, 65536), (100, 7), (1_000_003, 65536),
                                         (5 * 1024 * 1024, 1000_000)])
def test_stream_sends_exactly_n_bytes_chunked(backends, size: int, chunk: int) -> None:
    status, headers, body = http_get(backends.web1.port, f"/stream?bytes={size}&chunk={chunk}")
    assert status == 200
    assert headers["Transfer-Encoding"] == "chunked"
    assert headers["Content-Length"] is None
    assert len(body) == size
    assert body == pattern_bytes(size)


@pytest.mark.parametrize("size", [0, 17, 3 * 1024 * 1024 + 5])
def test_sized_has_a_content_length(backends, size: int) -> None:
    status, headers, body = http_get(backends.web2.port, f"/sized?bytes={size}")
    assert status == 200
    assert headers["Content-Length"] == str(size)
    assert headers["Transfer-Encoding"] is None
    assert body == pattern_bytes(size)


def test_upload_counts_and_hashes_the_body(backends) -> None:
    data = os.urandom(3 * 1024 * 1024 + 11)
    expected = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    status, _, body = http_get(backends.web1.port, "/upload", method="POST", body=data)
    assert status == 200
    assert {k: v for k, v in json.loads(body).items() if k in expected} == expected

    pieces = (data[i:i + 100_000] for i in range(0, len(data), 100_000))
    status, _, body = http_get(backends.web1.port, "/upload", method="PUT", body=pieces)  # chunked
    assert status == 200
    assert {k: v for k, v in json.loads(body).items() if k in expected} == expected


def test_echo_shows_raw_headers_and_proxyfixed_view(backends) -> None:
    headers = [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https"),
               ("X-Forwarded-Host", "shop.example"), ("X-Custom", "a")]
    status, _, body = http_get(backends.web1.port, "/echo?x=1&y=2", headers=headers,
                               method="PATCH", body=b"hello")
    assert status == 200
    echo = json.loads(body)
    assert (echo["method"], echo["path"], echo["query_string"]) == ("PATCH", "/echo", "x=1&y=2")
    assert echo["headers"]["host"] == backends.web1.address  # raw, not rewritten by ProxyFix
    assert echo["headers"]["x-forwarded-for"] == "203.0.113.7"
    assert echo["headers"]["x-custom"] == "a"
    assert echo["headers"]["content-length"] == "5"
    assert (echo["remote_addr"], echo["scheme"], echo["host"]) == ("203.0.113.7", "https", "shop.example")
    assert echo["url"] == "https://shop.example/echo"
    assert (echo["body_bytes"], echo["body_sha256"]) == (5, hashlib.sha256(b"hello").hexdigest())


def test_echo_shows_the_tcp_peer(backends) -> None:
    with KeepAliveClient(backends.web1.port) as client:
        peers = {json.loads(client.get("/echo")[2])["peer"] for _ in range(3)}
        assert peers == {f"127.0.0.1:{client.local_port}"}  # before ProxyFix, whatever X-Forwarded-For says
    other = json.loads(http_get(backends.web1.port, "/echo", headers={"X-Forwarded-For": "10.1.1.1"})[2])
    assert other["peer"] != peers.pop() and other["peer"].startswith("127.0.0.1:")


def test_sleep_and_upload_delay(backends) -> None:
    status, headers, body = http_get(backends.web2.port, "/sleep?seconds=0.2")
    assert status == 200 and json.loads(body)["slept"] == 0.2
    assert http_get(backends.web2.port, "/sleep?seconds=31")[0] == 400
    status, _, body = http_get(backends.web2.port, "/upload?delay=0.1", method="POST", body=b"abc")
    assert status == 200 and json.loads(body)["bytes"] == 3
    assert http_get(backends.web2.port, "/upload?delay=-1", method="POST", body=b"abc")[0] == 400


def test_status_endpoint(backends) -> None:
    assert http_get(backends.web1.port, "/status/503")[0] == 503
    status, _, body = http_get(backends.web1.port, "/status/204")
    assert (status, body) == (204, b"")


def test_api_routes(backends) -> None:
    port = backends.api.port
    status, _, body = http_get(port, "/api/users")
    assert status == 200 and len(json.loads(body)["users"]) == 3
    assert http_get(port, "/api/healthz")[::2] == (200, b"ok")
    status, _, body = http_get(port, "/api/orders/42?full=1")
    assert status == 200 and json.loads(body)["path"] == "/api/orders/42"
    status, headers, body = http_get(port, "/orders/42")
    assert status == 404 and headers.get_content_type() == "application/json"
    assert json.loads(body)["path"] == "/orders/42"
    status, _, body = http_get(port, "/api/echo")
    assert status == 200 and json.loads(body)["url"] == f"http://{backends.api.address}/api/echo"


def test_keep_alive_client_reuses_its_connection(backends) -> None:
    with KeepAliveClient(backends.web2.port) as client:
        for _ in range(5):
            status, _, body = client.get("/sized?bytes=1000")
            assert status == 200 and len(body) == 1000
        assert client.connections_opened == 1


def test_backend_factory_starts_and_stops_a_private_backend(backend_factory) -> None:
    backend = backend_factory("web-9")
    _, headers, _ = http_get(backend.port, "/healthz")
    assert parse_served_by(headers["X-Served-By"])[:2] == ("web-9", backend.address)
    backend.stop()
    assert not port_accepts("127.0.0.1", backend.port)
    again = backend_factory("web-9b", port=backend.port)  # the same address, back again
    _, headers, _ = http_get(again.port, "/healthz")
    assert parse_served_by(headers["X-Served-By"])[0] == "web-9b"
