"""``twistd --pidfile X --logfile Y gateway -c FILE`` (no ``-n``) runs the gateway as a daemon."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from harness import (
    HOST,
    REPO_ROOT,
    TWISTD,
    free_port,
    gateway_config,
    http_get,
    process_alive,
    read_text,
    served_by_name,
    subprocess_env,
    wait_for_port,
    wait_until,
)


def test_daemonized_gateway_serves_logs_and_stops_on_sigterm(backends, tmp_path: Path) -> None:
    port = free_port()
    config_path = tmp_path / "config.yaml"
    access_path = tmp_path / "access.log"
    config = gateway_config(port, web=[backends.web1.address], access_log=str(access_path))
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    pidfile = tmp_path / "gateway.pid"
    logfile = tmp_path / "gateway.log"

    # The command returns once the daemon has forked off.
    result = subprocess.run([sys.executable, "-c", TWISTD, "--pidfile", str(pidfile), "--logfile", str(logfile),
                             "gateway", "-c", str(config_path)], cwd=REPO_ROOT, env=subprocess_env(),
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr

    pid = None
    try:
        pid = int(wait_until(lambda: read_text(pidfile).strip(), 15.0, message="the pidfile").strip())
        assert pid != os.getpid() and process_alive(pid)
        wait_for_port(HOST, port, 15.0)

        status, headers, _ = http_get(port, "/json")
        assert status == 200 and served_by_name(headers) == "web-1"

        log = wait_until(lambda: (text := read_text(logfile)) and "serving http" in text and text, 10.0,
                         message="the startup lines in the log file")
        assert "starting up" in log
        assert "reactor class: gateway.reactor.GatewayReactor" in log
        assert f"listener public serving http on {HOST}:{port}" in log
        wait_until(lambda: '"GET /json HTTP/1.1" 200' in read_text(access_path), 5.0,
                   message="the access-log line")

        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not process_alive(pid), 15.0, message="the daemon gone after SIGTERM")
        wait_until(lambda: not pidfile.exists(), 5.0, message="the pidfile removed")
        assert "Server Shut Down" in read_text(logfile)
    finally:
        if pid is not None and process_alive(pid):
            os.kill(pid, signal.SIGKILL)
