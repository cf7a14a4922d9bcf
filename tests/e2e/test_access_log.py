"""The access log: one nginx-style line per request, plus upstream and timings.

``127.0.0.1 - - [27/Nov/2026:20:13:04 +0000] "GET /api/users HTTP/1.1" 200 512 "-" "curl/8.5.0"
upstream=127.0.0.1:9001 request_time=0.004 upstream_time=0.003`` (one line).
Lines are flushed twice a second, so every check waits (bounded) for them.
"""

from __future__ import annotations

import re
import signal
from datetime import datetime, timedelta, timezone
from pathlib import Path

from harness import (
    HOST,
    KeepAliveClient,
    free_port,
    gateway_config,
    http_get,
    read_text,
    send_raw,
    wait_until,
)

LINE = re.compile(
    r'^(?P<client>\d{1,3}(?:\.\d{1,3}){3}) - - '
    r'\[(?P<time>\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000)\] '
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)" '
    r'upstream=(?P<upstream>\S+) request_time=(?P<request_time>\d+\.\d{3}) '
    r'upstream_time=(?P<upstream_time>\d+\.\d{3}|-)$',
    re.MULTILINE)

#: Anything that looks like an access-log line at all (to check that none are written).
LOOSE = re.compile(r'"(GET|POST|HEAD) /\S* HTTP/1\.[01]"')

UA = "e2e-access-log/1.0"


def access_lines(text: str) -> list[dict[str, str]]:
    return [match.groupdict() for match in LINE.finditer(text)]


def wait_for_lines(read, count: int, timeout: float = 5.0) -> list[dict[str, str]]:
    """Wait until ``read()`` holds at least ``count`` access lines; return them all."""
    def enough():
        lines = access_lines(read())
        return lines if len(lines) >= count else None

    try:
        return wait_until(enough, timeout, message=f"{count} access-log lines")
    except TimeoutError:
        raise AssertionError(f"expected {count} access-log lines in:\n{read()}") from None


def test_one_line_per_request_with_status_bytes_and_upstream(backends, gateway) -> None:
    port = free_port()
    instance = gateway(gateway_config(port, web=[backends.web1.address], api=[backends.api.address]))

    sizes = []
    with KeepAliveClient(port) as client:
        for method, path, headers in [
            ("GET", "/api/users", {"User-Agent": UA}),
            ("GET", "/json?x=1", {"User-Agent": UA, "Referer": "http://ref.example/page"}),
            ("GET", "/status/503", {"User-Agent": UA}),
            ("POST", "/upload", {"User-Agent": UA}),
            ("HEAD", "/sized?bytes=1000", {"User-Agent": UA}),
        ]:
            body = b"x" * 12345 if method == "POST" else None
            status, _, data = client.request(method, path, headers=headers, body=body)
            sizes.append((status, len(data)))

    lines = wait_for_lines(instance.stdout_text, 5)
    assert len(lines) == 5, lines
    first, second, third, fourth, fifth = lines

    assert first["client"] == "127.0.0.1"
    assert first["request"] == "GET /api/users HTTP/1.1"
    assert (int(first["status"]), int(first["bytes"])) == sizes[0] == (200, sizes[0][1])
    assert (first["referer"], first["agent"]) == ("-", UA)
    assert first["upstream"] == backends.api.address

    assert second["request"] == "GET /json?x=1 HTTP/1.1"
    assert second["referer"] == "http://ref.example/page"
    assert (int(second["status"]), int(second["bytes"])) == sizes[1]
    assert second["upstream"] == backends.web1.address

    assert (third["request"], third["status"]) == ("GET /status/503 HTTP/1.1", "503")
    assert int(third["bytes"]) == sizes[2][1] == len(b"status 503\n")
    assert third["upstream"] == backends.web1.address

    assert (fourth["request"], fourth["status"]) == ("POST /upload HTTP/1.1", "200")
    assert int(fourth["bytes"]) == sizes[3][1]

    assert (fifth["request"], fifth["status"], fifth["bytes"]) == ("HEAD /sized?bytes=1000 HTTP/1.1", "200", "0")

    for line in lines:
        assert line["upstream_time"] != "-"
        assert float(line["request_time"]) >= float(line["upstream_time"])
        stamp = datetime.strptime(line["time"], "%d/%b/%Y:%H:%M:%S %z")
        assert abs(datetime.now(timezone.utc) - stamp) < timedelta(minutes=10)


def test_gateway_answers_are_logged_too(backends, gateway) -> None:
    port = free_port()
    dead = f"{HOST}:{free_port()}"
    config = gateway_config(port, api=[backends.api.address])  # "/" has no route
    config["upstreams"]["down"] = {"servers": [{"address": dead}]}
    config["routes"].insert(0, {"path": "/down/", "upstream": "down"})
    instance = gateway(config)

    _, _, not_found = http_get(port, "/nowhere", headers={"User-Agent": UA})
    _, _, bad_gateway = http_get(port, "/down/x", headers={"User-Agent": UA})
    send_raw(port, b"GET /api/healthz HTTP/1.0\r\n\r\n")

    lines = wait_for_lines(instance.stdout_text, 3)
    assert len(lines) == 3, lines
    missing, down, old = lines
    assert (missing["request"], missing["status"], missing["upstream"], missing["upstream_time"]) == (
        "GET /nowhere HTTP/1.1", "404", "-", "-")
    assert int(missing["bytes"]) == len(not_found)
    assert (down["request"], down["status"], down["upstream"]) == ("GET /down/x HTTP/1.1", "502", dead)
    assert int(down["bytes"]) == len(bad_gateway)
    assert (old["request"], old["status"], old["agent"]) == ("GET /api/healthz HTTP/1.0", "200", "-")
    assert (old["bytes"], old["upstream"]) == ("2", backends.api.address)  # "ok"


def test_access_log_to_a_file(backends, gateway, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "logs" / "access.log"  # the directory does not exist yet
    instance = gateway(gateway_config(port, web=[backends.web1.address], access_log=str(log_path)))

    for n in range(3):
        assert http_get(port, f"/json?n={n}", headers={"User-Agent": UA})[0] == 200

    lines = wait_for_lines(lambda: read_text(log_path), 3)
    assert [line["request"] for line in lines] == [f"GET /json?n={n} HTTP/1.1" for n in range(3)]
    assert all(line["upstream"] == backends.web1.address for line in lines)
    assert not LOOSE.search(instance.stdout_text())


def test_access_log_null_writes_nothing(backends, gateway) -> None:
    port = free_port()
    instance = gateway(gateway_config(port, web=[backends.web1.address], access_log=None))

    for n in range(3):
        assert http_get(port, f"/json?n={n}", headers={"User-Agent": UA})[0] == 200
    assert http_get(port, "/status/404")[0] == 404

    # Stop it (lines would be flushed at shutdown) and look at everything it wrote.
    instance.send_signal(signal.SIGTERM)
    instance.process.wait(timeout=15)
    output = instance.stdout_text() + instance.stderr_text()
    assert not LOOSE.search(output), output
    assert UA not in output
