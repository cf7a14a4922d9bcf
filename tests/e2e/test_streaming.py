"""Large bodies stream through the gateway with flat memory, in both directions.

Each transfer is 1 GiB (about 2 to 4 s each on the 2-core machine this was
written on).  A sampler thread reads the gateway process's VmRSS during the
transfer; the peak may not exceed the level before it by more than
``RSS_GROWTH_LIMIT``.  To make buffering show, the far end stalls for a
couple of seconds at the start of each transfer (the client does not read
the download; the backend does not read the upload), during which a gateway
without backpressure would soak up hundreds of megabytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator

import pytest
from harness import (
    PATTERN,
    connection,
    free_port,
    gateway_config,
    http_get,
    process_rss,
)

GIB = 1024 * 1024 * 1024
MIB = 1024 * 1024
SIZE = 1 * GIB
RSS_GROWTH_LIMIT = 64 * MIB
#: How long the receiving end stalls at the start of each transfer.
STALL = 2.0
TRANSFER_TIMEOUT = 60.0


class RssSampler:
    """Samples a process's RSS every few milliseconds in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.baseline = process_rss(pid)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, process_rss(self.pid))
            except (OSError, RuntimeError):
                return

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def proxy(backends, gateway):
    """A gateway in front of web-1, warmed up with a few small transfers."""
    port = free_port()
    instance = gateway(gateway_config(port, web=[backends.web1.address]))
    for _ in range(3):
        assert http_get(port, "/stream?bytes=10000000")[0] == 200
        assert http_get(port, "/upload", method="POST", body=iter([b"x" * 1000000] * 10))[0] == 200
    return instance


def test_1_gib_download_streams_with_flat_memory(proxy) -> None:
    chunk = 1 * MIB
    # PATTERN repeated, long enough to slice any piece of up to `chunk` bytes from any phase.
    reference = PATTERN * (chunk // len(PATTERN) + 2)
    received = 0
    first_mismatch = None
    started = time.monotonic()
    with RssSampler(proxy.process.pid) as rss:
        conn = connection(proxy.port, timeout=TRANSFER_TIMEOUT)
        try:
            conn.request("GET", f"/stream?bytes={SIZE}&chunk={chunk}")
            response = conn.getresponse()
            assert response.status == 200
            assert response.getheader("Transfer-Encoding") == "chunked"
            time.sleep(STALL)  # a slow client: the backend keeps producing meanwhile
            deadline = time.monotonic() + TRANSFER_TIMEOUT
            while time.monotonic() < deadline:
                piece = response.read(chunk)
                if not piece:
                    break
                phase = received % len(PATTERN)
                if first_mismatch is None and piece != reference[phase:phase + len(piece)]:
                    first_mismatch = received
                received += len(piece)
        finally:
            conn.close()
    elapsed = time.monotonic() - started - STALL
    print(f"1 GiB download: {elapsed:.1f} s after the stall, gateway RSS {rss.baseline / MIB:.0f} MiB "
          f"-> peak {rss.peak / MIB:.0f} MiB")

    assert received == SIZE
    assert first_mismatch is None, f"wrong bytes at offset {first_mismatch}"
    assert rss.growth < RSS_GROWTH_LIMIT, f"gateway RSS grew by {rss.growth / MIB:.0f} MiB"


def _upload_body(total: int, block: bytes, digest) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        piece = block[:total - sent]
        digest.update(piece)
        sent += len(piece)
        yield piece


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_1_gib_upload_streams_with_flat_memory(proxy, framing: str) -> None:
    block = os.urandom(1 * MIB)
    digest = hashlib.sha256()
    headers = {"Content-Length": str(SIZE)} if framing == "content-length" else None
    started = time.monotonic()
    with RssSampler(proxy.process.pid) as rss:
        # ?delay: the backend reads nothing for STALL seconds, while the client sends all it can.
        status, _, body = http_get(proxy.port, f"/upload?delay={STALL}", method="POST", headers=headers,
                                   body=_upload_body(SIZE, block, digest), timeout=TRANSFER_TIMEOUT)
    elapsed = time.monotonic() - started - STALL
    print(f"1 GiB upload ({framing}): {elapsed:.1f} s after the stall, gateway RSS "
          f"{rss.baseline / MIB:.0f} MiB -> peak {rss.peak / MIB:.0f} MiB")

    assert status == 200, body[:300]
    answer = json.loads(body)
    assert (answer["bytes"], answer["sha256"]) == (SIZE, digest.hexdigest())
    assert rss.growth < RSS_GROWTH_LIMIT, f"gateway RSS grew by {rss.growth / MIB:.0f} MiB"
