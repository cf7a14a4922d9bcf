"""Slow clients: slowloris headers, idle keep-alive connections, bodies that stop mid-way.

The listener's client timeouts are set to 1 s (header, idle, body), so each
test proves a timeout fired within a generous bound (a few seconds) and that
other clients were served meanwhile.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import HOST, free_port, http_get, parse_responses, start_gateway, wait_until
from misbehaving import RecordingBackend

TIMEOUT = 1.0
BOUND = 5.0  # "closed within a few seconds" when the timeout is 1 s


@pytest.fixture(scope="module")
def recording() -> Iterator[RecordingBackend]:
    with RecordingBackend() as backend:
        yield backend


@pytest.fixture(scope="module")
def port(recording: RecordingBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    listen = free_port()
    config = {
        "listeners": [{"name": "public", "port": listen, "interface": HOST,
                       "timeouts": {"header": TIMEOUT, "idle": TIMEOUT, "body": TIMEOUT}}],
        "upstreams": {"rec": {"servers": [{"address": recording.address}], "max_fails": 0}},
        # Only /backend/ is proxied: other paths get the gateway's own 404 (no backend involved).
        "routes": [{"path": "/backend/", "upstream": "rec"}],
        "access_log": "-",
    }
    instance = start_gateway(config, Path(tmp_path_factory.mktemp("slow-clients-gateway")))
    try:
        yield listen
    finally:
        instance.stop()


def closed_by_server(sock: socket.socket) -> bool:
    """Without blocking: has the server closed (or reset) this connection? Reads what is pending."""
    for _ in range(100):
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            return True
        except BlockingIOError:
            return False
        if not piece:
            return True
    return False


class Prober:
    """A normal client asking for /backend/probe every 0.1 s in a thread, until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.statuses: list[int | str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 30.0
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                status, _, _ = http_get(self.port, "/backend/probe", timeout=3.0)
                self.statuses.append(status)
            except OSError as error:
                self.statuses.append(type(error).__name__)
            self._stop.wait(0.1)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10.0)


def test_slowloris_headers_are_cut_at_the_header_timeout(port: int) -> None:
    request = b"GET /backend/slow HTTP/1.1\r\nHost: h\r\nX-Slow: " + b"s" * 100 + b"\r\n\r\n"
    received = bytearray()
    with Prober(port) as prober, socket.create_connection((HOST, port), timeout=5.0) as sock:
        started = time.monotonic()
        closed_after: float | None = None
        for index in range(len(request)):  # 1 byte per 0.3 s: the head would need ~40 s
            readable, _, _ = select.select([sock], [], [], 0.3)
            if readable:
                try:
                    piece = sock.recv(65536)
                except ConnectionResetError:
                    piece = b""
                if not piece:
                    closed_after = time.monotonic() - started
                    break
                received += piece
                continue
            try:
                sock.sendall(request[index:index + 1])
            except OSError:
                closed_after = time.monotonic() - started
                break
            if time.monotonic() - started > 3 * BOUND:
                break
    assert closed_after is not None, f"the slowloris connection was still open after {3 * BOUND} s"
    assert closed_after < BOUND, f"closed only after {closed_after:.1f} s with a {TIMEOUT} s header timeout"
    if received:
        assert [r.status for r in parse_responses(bytes(received))] == [408], bytes(received)[:300]
    assert prober.statuses and all(status == 200 for status in prober.statuses), prober.statuses


def test_silent_connections_are_closed_by_the_header_timeout(port: int) -> None:
    """Connections that never send a byte hold nothing for long."""
    socks = [socket.create_connection((HOST, port), timeout=5.0) for _ in range(50)]
    try:
        status, _, _ = http_get(port, "/backend/while-silent")
        assert status == 200
        wait_until(lambda: all(closed_by_server(sock) for sock in socks), timeout=BOUND,
                   message="every silent connection closed")
    finally:
        for sock in socks:
            sock.close()


def test_idle_keep_alive_connections_do_not_block_others_and_are_reaped(port: int) -> None:
    count = 200
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection((HOST, port), timeout=5.0))
        for sock in socks:  # one request each (answered by the gateway itself), then idle
            sock.sendall(b"GET /idle HTTP/1.1\r\nHost: h\r\n\r\n")
        for index, sock in enumerate(socks):
            data = bytearray()
            for _ in range(20):
                piece = sock.recv(65536)
                assert piece, f"connection {index} closed before its response"
                data += piece
                if b"\r\n\r\n" in data and data.endswith(b"\n"):
                    break
            response = parse_responses(bytes(data))
            assert [r.status for r in response] == [404], bytes(data)[:200]
            assert response[0].header("Connection") != "close"  # kept alive: now idle
        held_at = time.monotonic()
        # A new client is served at once, alongside the idle ones.
        status, _, body = http_get(port, "/backend/new-client", timeout=5.0)
        assert (status, body) == (200, b"ok /backend/new-client")
        assert time.monotonic() - held_at < BOUND
        # The idle timeout reaps all of them.
        wait_until(lambda: all(closed_by_server(sock) for sock in socks), timeout=BOUND,
                   message=f"all {count} idle keep-alive connections closed by the {TIMEOUT} s idle timeout")
    finally:
        for sock in socks:
            sock.close()


def test_keep_alive_connection_in_use_is_not_reaped_between_requests(port: int) -> None:
    """The idle timer restarts with each request: a client that keeps asking keeps its connection."""
    with socket.create_connection((HOST, port), timeout=5.0) as sock:
        for index in range(6):  # 6 x 0.5 s: three times the idle timeout in all
            sock.sendall(f"GET /backend/busy-{index} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
            data = bytearray()
            for _ in range(20):
                piece = sock.recv(65536)
                assert piece, f"closed before response {index}"
                data += piece
                try:
                    if len(parse_responses(bytes(data))) == 1:
                        break
                except AssertionError:
                    continue
            assert parse_responses(bytes(data))[0].status == 200
            time.sleep(TIMEOUT / 2)


def test_body_that_stops_mid_way_is_cut_and_its_backend_connection_closed(
        port: int, recording: RecordingBackend) -> None:
    before = recording.snapshot()
    with socket.create_connection((HOST, port), timeout=5.0) as sock:
        sock.sendall(b"POST /backend/stalled HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n" + b"b" * 100)
        started = time.monotonic()
        sock.settimeout(3 * BOUND)
        data = bytearray()
        closed_after = None
        for _ in range(100):
            try:
                piece = sock.recv(65536)
            except ConnectionResetError:
                piece = b""
            except TimeoutError:
                break
            if not piece:
                closed_after = time.monotonic() - started
                break
            data += piece
    assert closed_after is not None and closed_after < BOUND, closed_after
    if data:
        assert [r.status for r in parse_responses(bytes(data))] == [408], bytes(data)[:300]
    # The backend saw the head and part of the body, never a whole request, and the gateway
    # closed that backend connection (it cannot be reused mid-body).
    new, _ = recording.since(before)
    assert "/backend/stalled" not in [r.target for r in new]
    carriers = [record for record in recording.connections
                if b"/backend/stalled" in record.data]
    assert carriers, "the request head never reached the backend"
    for record in carriers:
        assert record.closed_by_peer.wait(BOUND), "the backend connection of the stalled upload stayed open"
