"""Backend failures: timeouts, resets, garbage, passive health, retries, path normalisation.

The backends here misbehave on purpose (tests/e2e/misbehaving.py); a
:class:`~misbehaving.RecordingBackend` plays the healthy server, so each test
can count exactly which requests reached which server.

Round robin over servers of equal weight starts with the first server listed
and then alternates (nginx's smooth weighted round robin); the tests list the
misbehaving server first, but never depend on more than "each server gets
every other request".
"""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from harness import HOST, KeepAliveClient, free_port, http_get, parse_responses, send_raw_until_close, start_gateway
from misbehaving import (
    GarbageBackend,
    HangingBackend,
    RecordingBackend,
    ResetBeforeResponseBackend,
    ResettingBackend,
    SlowBackend,
    full_backlog_listener,
)


def dead_address() -> str:
    """An address where nothing listens: connections are refused."""
    return f"{HOST}:{free_port()}"


def config(port: int, servers: list[str], routes: list[dict[str, Any]] | None = None,
           extra_upstreams: dict[str, Any] | None = None, **upstream: Any) -> dict[str, Any]:
    """One upstream ``main`` over ``servers`` (with ``upstream`` keys), routed at ``/``."""
    upstreams = {"main": {"servers": [{"address": address} for address in servers], **upstream}}
    upstreams.update(extra_upstreams or {})
    return {
        "listeners": [{"name": "public", "port": port, "interface": HOST}],
        "upstreams": upstreams,
        "routes": routes or [{"path": "/", "upstream": "main"}],
        "access_log": "-",
    }


def timed_get(port: int, path: str, **kwargs: Any) -> tuple[int, http.client.HTTPMessage, bytes, float]:
    started = time.monotonic()
    status, headers, body = http_get(port, path, **kwargs)
    return status, headers, body, time.monotonic() - started


def assert_gateway_error(status: int, headers: http.client.HTTPMessage, body: bytes, expected: int) -> None:
    assert status == expected, (status, body)
    assert headers.get_content_type() == "text/plain"
    assert headers.get("X-Recorded") is None
    assert 0 < len(body) < 200, body


# -- timeouts -----------------------------------------------------------------------------------------

def test_hanging_backend_gets_504_and_its_connection_closed_and_the_pool_works_on(gateway) -> None:
    with HangingBackend() as hanging, RecordingBackend() as healthy:
        port = free_port()
        instance = gateway(config(port, [hanging.address, healthy.address], timeouts={"read": 1}))
        status, headers, body, elapsed = timed_get(port, "/hang")
        assert_gateway_error(status, headers, body, 504)
        assert elapsed < 5.0, f"504 after {elapsed:.1f} s with a 1 s read timeout"
        assert hanging.accepted == 1 and b"GET /hang " in hanging.received()
        assert hanging.wait_for_close(0, timeout=5.0), "the gateway kept the hung backend connection"
        assert healthy.accepted == 0  # a request that may have been acted upon is not retried
        # The same pool goes on serving, from the healthy server.
        for index in range(4):
            status, _, body = http_get(port, f"/after-{index}")
            assert (status, body) == (200, f"ok /after-{index}".encode())
        assert hanging.accepted == 1  # passive health took the hung server out (max_fails 1)
        instance.wait_for_output(hanging.address)


def test_read_timeout_is_between_bytes_not_for_the_whole_response(gateway) -> None:
    """A backend that answers a byte every 0.3 s never goes 1 s silent: the response completes."""
    with SlowBackend(byte_interval=0.3, body=b"slowly!") as slow:
        port = free_port()
        gateway(config(port, [slow.address], timeouts={"read": 1}))
        status, _, body, elapsed = timed_get(port, "/trickle")
        assert (status, body) == (200, b"slowly!")
        assert elapsed > 1.0  # the whole response took longer than the read timeout


def test_backend_slower_than_the_read_timeout_gets_504(gateway) -> None:
    with SlowBackend(delay=4.0) as slow:
        port = free_port()
        gateway(config(port, [slow.address], timeouts={"read": 1}))
        status, headers, body, elapsed = timed_get(port, "/late")
        assert_gateway_error(status, headers, body, 504)
        assert elapsed < 3.5, f"504 after {elapsed:.1f} s with a 1 s read timeout"
        assert slow.wait_for_close(0, timeout=5.0)


def test_connect_timeout_skips_to_the_next_server(gateway) -> None:
    """A server whose SYNs go unanswered (full accept queue, loopback only) is given up after
    timeouts.connect and the request goes to the next server."""
    with full_backlog_listener() as blackhole, RecordingBackend() as healthy:
        if blackhole is None:
            pytest.skip("this kernel does not leave connections to a full accept queue hanging")
        port = free_port()
        instance = gateway(config(port, [blackhole, healthy.address], timeouts={"connect": 1}))
        status, _, body, elapsed = timed_get(port, "/via-connect-timeout")
        assert (status, body) == (200, b"ok /via-connect-timeout")
        assert elapsed < 5.0
        instance.wait_for_output(blackhole)  # the failure is logged, naming the server


def test_connect_timeout_with_no_other_server_is_504(gateway) -> None:
    """Like nginx: a backend that could not be reached in time is a gateway timeout, not a bad gateway."""
    with full_backlog_listener() as blackhole:
        if blackhole is None:
            pytest.skip("this kernel does not leave connections to a full accept queue hanging")
        port = free_port()
        gateway(config(port, [blackhole], timeouts={"connect": 1}))
        status, headers, body, elapsed = timed_get(port, "/nowhere")
        assert_gateway_error(status, headers, body, 504)
        assert elapsed < 5.0, f"answered after {elapsed:.1f} s with a 1 s connect timeout"


# -- resets and garbage ----------------------------------------------------------------------------------

def test_reset_before_response_on_get_is_retried_on_the_other_server(gateway) -> None:
    with ResetBeforeResponseBackend() as resetter, RecordingBackend() as healthy:
        port = free_port()
        gateway(config(port, [resetter.address, healthy.address], max_fails=0))
        for index in range(6):
            status, _, body = http_get(port, f"/get-{index}")
            assert (status, body) == (200, f"ok /get-{index}".encode())
        assert len(resetter.seen) >= 2, "the resetting server was never tried"
        assert healthy.targets() == [f"/get-{index}" for index in range(6)]


def test_reset_before_response_on_post_is_a_502_and_not_retried(gateway) -> None:
    """The backend read the POST before failing: it may have acted on it, so it is not sent again."""
    with ResetBeforeResponseBackend() as resetter, RecordingBackend() as healthy:
        port = free_port()
        gateway(config(port, [resetter.address, healthy.address], max_fails=0))
        outcomes = []
        for index in range(6):
            status, headers, body = http_get(port, f"/post-{index}", method="POST", body=b"payload %d" % index)
            outcomes.append(status)
            if status == 502:
                assert_gateway_error(status, headers, body, 502)
            else:
                assert (status, body) == (200, f"ok /post-{index}".encode())
        assert outcomes.count(502) >= 2, outcomes
        seen = [line.split(" ")[1] for line in resetter.seen]
        delivered = healthy.targets()
        assert sorted(seen + delivered) == sorted(f"/post-{index}" for index in range(6)), (seen, delivered)
        assert not set(seen) & set(delivered), "a POST the backend had seen was sent again"
        assert len(seen) == outcomes.count(502)


def test_post_to_a_refusing_server_is_retried_on_the_other(gateway) -> None:
    """A refused connection carried nothing: even a POST may go to the next server."""
    with RecordingBackend() as healthy:
        port = free_port()
        gateway(config(port, [dead_address(), healthy.address], max_fails=0))
        for index in range(6):
            status, _, body = http_get(port, f"/refused-post-{index}", method="POST", body=b"data %d" % index)
            assert (status, body) == (200, f"ok /refused-post-{index}".encode())
        assert [r.body for r in healthy.requests] == [b"data %d" % index for index in range(6)]


def test_reset_mid_response_closes_the_client_connection_and_spares_others(gateway) -> None:
    with ResettingBackend(declared_length=100_000, partial_bytes=1000, delay=0.5) as resetting:
        port = free_port()
        gateway(config(port, [resetting.address], max_fails=0))
        errors: list[BaseException] = []
        other_statuses: list[tuple[int, bytes]] = []
        stop = threading.Event()

        def other_client() -> None:
            try:
                with KeepAliveClient(port, timeout=5.0) as client:
                    for index in range(200):
                        if stop.is_set():
                            break
                        status, _, body = client.get(f"/ok-{index}")
                        other_statuses.append((status, body))
                        time.sleep(0.02)
                    assert client.connections_opened == 1
            except BaseException as error:  # noqa: BLE001 (reported below)
                errors.append(error)

        thread = threading.Thread(target=other_client, daemon=True)
        thread.start()
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=5.0)
            conn.request("GET", "/cut")
            response = conn.getresponse()
            assert response.status == 200
            with pytest.raises(http.client.IncompleteRead) as cut:
                response.read()
            assert len(cut.value.partial) == 1000
            conn.close()
        finally:
            stop.set()
            thread.join(timeout=10.0)
        assert not errors, errors
        assert other_statuses and all(status == 200 for status, _ in other_statuses), other_statuses[:5]
        assert all(body.startswith(b"complete /ok-") for _, body in other_statuses)
        assert resetting.resets == 1


def test_reset_mid_response_on_the_wire(gateway) -> None:
    """The same with raw bytes: a complete head, fewer body bytes than announced, then close."""
    with ResettingBackend(declared_length=50_000, partial_bytes=3000, delay=0.2) as resetting:
        port = free_port()
        gateway(config(port, [resetting.address], max_fails=0))
        data, closed = send_raw_until_close(port, b"GET /cut HTTP/1.1\r\nHost: h\r\n\r\n", timeout=5.0)
        assert closed
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 50000" in head, head
        assert len(body) == 3000


@pytest.mark.parametrize("payload", [
    pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02 not http\r\n\r\n", id="not-http"),
    pytest.param(b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n", id="bad-status-code"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\nhello", id="bad-content-length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
                 id="two-content-lengths"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                 id="content-length-and-chunked"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-A: a\nX-B: b\r\nContent-Length: 0\r\n\r\n", id="bare-lf"),
])
def test_garbage_response_is_a_502(gateway, payload: bytes) -> None:
    with GarbageBackend(payload=payload) as garbage:
        port = free_port()
        gateway(config(port, [garbage.address]))
        status, headers, body = http_get(port, "/garbage")
        assert_gateway_error(status, headers, body, 502)


# -- passive health ----------------------------------------------------------------------------------------

def test_failing_server_is_skipped_for_fail_timeout_then_tried_again(gateway) -> None:
    """max_fails 1, fail_timeout 2: after one failure the server gets no connection attempt
    (counted by accept()) for 2 s, then it is tried again."""
    with ResetBeforeResponseBackend(read_request=False) as closing, RecordingBackend() as healthy:
        port = free_port()
        gateway(config(port, [closing.address, healthy.address], max_fails=1, fail_timeout=2))
        status, _, _ = http_get(port, "/first")  # goes to `closing`, fails, retried on `healthy`
        failed_at = time.monotonic()
        assert status == 200
        assert closing.accepted == 1
        while time.monotonic() - failed_at < 1.5:  # well inside fail_timeout
            status, _, _ = http_get(port, "/during")
            assert status == 200
            assert closing.accepted == 1, "a server marked down got a connection attempt"
        time.sleep(max(0.0, failed_at + 2.5 - time.monotonic()))
        for _ in range(4):  # round robin reaches it within two requests
            status, _, _ = http_get(port, "/after")
            assert status == 200
            if closing.accepted > 1:
                break
        assert closing.accepted == 2, "the server was not tried again after fail_timeout"


def test_without_passive_health_a_failing_server_keeps_being_tried(gateway) -> None:
    with ResetBeforeResponseBackend(read_request=False) as closing, RecordingBackend() as healthy:
        port = free_port()
        gateway(config(port, [closing.address, healthy.address], max_fails=0))
        for _ in range(6):
            assert http_get(port, "/again")[0] == 200
        assert closing.accepted >= 3


def test_fail_statuses_count_a_backend_503_as_a_failure(gateway) -> None:
    with RecordingBackend(status="503 Service Unavailable") as sick, RecordingBackend() as healthy:
        port = free_port()
        gateway(config(port, [sick.address, healthy.address], max_fails=1, fail_timeout=10,
                       fail_statuses=[503]))
        statuses = [http_get(port, f"/fs-{index}")[0] for index in range(8)]
        assert statuses == [503] + [200] * 7, statuses  # the 503 is relayed, then the server is out
        assert len(sick.requests) == 1
        assert len(healthy.requests) == 7


def test_a_backend_503_is_not_a_failure_without_fail_statuses(gateway) -> None:
    with RecordingBackend(status="503 Service Unavailable") as sick, RecordingBackend() as healthy:
        port = free_port()
        gateway(config(port, [sick.address, healthy.address], max_fails=1, fail_timeout=10))
        statuses = [http_get(port, f"/nofs-{index}")[0] for index in range(8)]
        assert statuses.count(503) == 4 and statuses.count(200) == 4, statuses


# -- retries ----------------------------------------------------------------------------------------------------

def test_retries_0_means_no_retry(gateway) -> None:
    with RecordingBackend() as healthy:
        port = free_port()
        gateway(config(port, [dead_address(), healthy.address], retries=0, max_fails=0))
        outcomes = []
        for index in range(6):
            status, headers, body = http_get(port, f"/r0-{index}")
            outcomes.append(status)
            if status == 502:
                assert_gateway_error(status, headers, body, 502)
        assert outcomes.count(502) == 3 and outcomes.count(200) == 3, outcomes
        assert len(healthy.requests) == 3


def test_default_retries_reach_the_live_server(gateway) -> None:
    with RecordingBackend() as healthy:
        port = free_port()
        gateway(config(port, [dead_address(), healthy.address], max_fails=0))
        assert [http_get(port, f"/rd-{index}")[0] for index in range(6)] == [200] * 6


# -- path normalisation ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def routing_gateway(tmp_path_factory: pytest.TempPathFactory):
    """/api/ -> the `api` recording backend, / -> the `web` one (one gateway for the module)."""
    with RecordingBackend() as api, RecordingBackend() as web:
        port = free_port()
        instance = start_gateway(
            config(port, [web.address], routes=[{"path": "/api/", "upstream": "api"},
                                                {"path": "/", "upstream": "main"}],
                   extra_upstreams={"api": {"servers": [{"address": api.address}]}}),
            Path(tmp_path_factory.mktemp("routing-gateway")))
        try:
            yield port, api, web
        finally:
            instance.stop()


@pytest.fixture
def routed(routing_gateway):
    """(port, new targets at api, new targets at web): the targets each backend got during the test."""
    port, api, web = routing_gateway
    api_before, web_before = len(api.targets()), len(web.targets())
    return port, lambda: api.targets()[api_before:], lambda: web.targets()[web_before:]


@pytest.mark.parametrize(("target", "backend", "forwarded"), [
    pytest.param("/api/x", "api", "/api/x", id="plain"),
    pytest.param("/web/../api/x", "api", "/api/x", id="dot-dot-into-api"),
    pytest.param("/%61pi/x", "api", "/api/x", id="escaped-unreserved"),
    pytest.param("/%61%70%69/x?q=%61", "api", "/api/x?q=%61", id="escaped-unreserved-query-kept"),
    pytest.param("/./api/./x", "api", "/api/x", id="dot-segments"),
    pytest.param("/api/../web/x", "web", "/web/x", id="dot-dot-out-of-api"),
    pytest.param("/api%2Fx", "web", "/api%2Fx", id="escaped-slash-not-decoded"),
])
def test_routing_uses_the_normalised_path(routed, target: str, backend: str, forwarded: str) -> None:
    port, api_targets, web_targets = routed
    data, _ = send_raw_until_close(port, f"GET {target} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
    responses = parse_responses(data)
    assert [r.status for r in responses] == [200], data[:300]
    chosen, other = (api_targets, web_targets) if backend == "api" else (web_targets, api_targets)
    assert chosen() == [forwarded]
    assert other() == []


@pytest.mark.parametrize("target", [
    pytest.param("/../x", id="dot-dot-above-root"),
    pytest.param("/api/../../x", id="dot-dot-above-root-deeper"),
    pytest.param("/%2e%2e/x", id="escaped-dot-dot-above-root"),
    pytest.param("/a%zz", id="bad-escape"),
])
def test_path_leaving_the_root_is_400(routed, target: str) -> None:
    port, api_targets, web_targets = routed
    data, closed = send_raw_until_close(port, f"GET {target} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    assert [r.status for r in parse_responses(data)] == [400], data[:300]
    assert closed
    status, _, _ = http_get(port, "/api/marker")  # answered after anything the bad request could have caused
    assert status == 200
    assert api_targets() == ["/api/marker"] and web_targets() == []
