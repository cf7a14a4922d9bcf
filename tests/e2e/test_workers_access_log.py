"""``workers: N`` and the access log: every worker appends its lines to the same file, none lost or torn.

Each worker opens the file with O_APPEND (a worker that truncated it, or
wrote at its own offset, would lose the other's lines) and writes whole
lines only, at most PIPE_BUF bytes per write (a longer line alone).  Long
lines (a 3,000-byte User-Agent) from a burst of clients over new
connections make both workers write at once.
"""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import HOST, free_port, gateway_config, http_get, read_text
from test_access_log import LINE, wait_for_lines

REQUESTS = 600
LONG_AGENT = "e2e-workers/" + "x" * 3000


def workers_table(admin_port: int) -> list[dict]:
    with urllib.request.urlopen(f"http://{HOST}:{admin_port}/workers", timeout=5) as answer:
        return json.load(answer)["workers"]


def test_every_request_of_every_worker_is_one_whole_line(backends, gateway, tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    log_path = tmp_path / "access.log"
    gateway(gateway_config(port, web=[address for address in (backends.web1.address, backends.web2.address)],
                           access_log=str(log_path), workers=2, admin={"listen": f"{HOST}:{admin_port}"}))

    def one(n: int) -> int:  # a new connection each: the kernel spreads them over the workers
        return http_get(port, f"/json?n={n}", headers={"User-Agent": LONG_AGENT})[0]

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(one, range(REQUESTS)))
    assert statuses == [200] * REQUESTS

    lines = wait_for_lines(lambda: read_text(log_path), REQUESTS, timeout=10)
    text = read_text(log_path)
    assert text.count("\n") == REQUESTS  # nothing but the access lines, none torn in two
    assert len(lines) == REQUESTS and all(line["agent"] == LONG_AGENT for line in lines)
    assert sorted(int(line["request"].split("n=")[1].split()[0]) for line in lines) == list(range(REQUESTS))
    assert all(LINE.fullmatch(raw) for raw in text.splitlines())

    table = workers_table(admin_port)
    assert len(table) == 2
    assert all(worker["total_requests"] > 0 for worker in table), table  # both workers wrote to the file
