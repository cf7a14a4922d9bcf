"""``processes:``: backends the gateway starts, restarts when they die, and stops with itself."""

from __future__ import annotations

import http.client
import os
import re
import signal
from pathlib import Path

from harness import (
    HOST,
    free_port,
    gateway_config,
    http_get,
    parent_pid,
    parse_served_by,
    port_accepts,
    process_alive,
    run_gateway_expecting_failure,
    wait_until,
)

START_TIMEOUT = 20.0
RESTART_TIMEOUT = 20.0


def gunicorn_command(name: str, port: int) -> str:
    return (f"gunicorn --worker-class gthread --threads 2 --bind {HOST}:{port} "
            f"-e BACKEND_NAME={name} backends.web:app")


def served(port: int) -> tuple[str, int] | None:
    """(service, worker pid) of a 200 answer through the gateway, or None (not up yet)."""
    try:
        status, headers, _ = http_get(port, "/json", timeout=2.0)
    except (OSError, http.client.HTTPException):
        return None
    if status != 200:
        return None
    service, _, pid = parse_served_by(headers["X-Served-By"])
    return service, pid


def test_gateway_starts_restarts_and_stops_its_processes(gateway) -> None:
    backend_port = free_port()
    port = free_port()
    config = gateway_config(port, web=[f"{HOST}:{backend_port}"],
                            processes={"proc-1": gunicorn_command("proc-1", backend_port)})
    instance = gateway(config)
    gateway_pid = instance.process.pid

    # Started: requests through the gateway reach it.
    service, worker = wait_until(lambda: served(port), START_TIMEOUT, interval=0.2,
                                 message="the supervised backend answering through the gateway")
    assert service == "proc-1"
    master = parent_pid(worker)
    assert parent_pid(master) == gateway_pid  # Gunicorn's master is the gateway's child

    # Its output is in the gateway's log, tagged with the process name.
    def listening_line() -> bool:
        return re.search(rf"\[proc-1\].*Listening at: http://{re.escape(HOST)}:{backend_port}",
                         instance.stdout_text() + instance.stderr_text()) is not None

    wait_until(listening_line, 5.0, message="Gunicorn's output tagged [proc-1] in the gateway log")

    # Killed (master and worker, like a crash of the whole backend): restarted, requests succeed again.
    # (Killing only the master is not enough to see a restart promptly: Gunicorn's orphaned worker
    # keeps the process's output pipes, so the exit is only noticed once it has gone too, and
    # it keeps serving a busy kept-alive connection for up to its graceful timeout, 30 s.)
    os.kill(master, signal.SIGKILL)
    os.kill(worker, signal.SIGKILL)

    def restarted() -> tuple[str, int] | None:
        answer = served(port)
        if answer is None:
            return None
        try:
            new_master = parent_pid(answer[1])
        except (OSError, RuntimeError):
            return None
        return answer if new_master != master and parent_pid(new_master) == gateway_pid else None

    service, new_worker = wait_until(restarted, RESTART_TIMEOUT, interval=0.2,
                                     message="the killed backend restarted by the gateway")
    assert service == "proc-1"
    new_master = parent_pid(new_worker)

    # Stopped with the gateway: nothing of it is left.
    instance.send_signal(signal.SIGTERM)
    instance.process.wait(timeout=20)
    wait_until(lambda: not process_alive(new_master) and not process_alive(new_worker), 10.0,
               message="the supervised Gunicorn processes gone after the gateway stopped")
    assert not port_accepts(HOST, backend_port)


def test_process_that_keeps_dying_is_restarted_with_backoff(backends, gateway) -> None:
    port = free_port()
    config = gateway_config(port, web=[backends.web1.address],
                            processes={"flaky": "sh -c 'echo flaky-started; exit 3'"})
    instance = gateway(config)

    def starts() -> int:
        return len(re.findall(r"\[flaky\].*flaky-started", instance.stdout_text()))

    wait_until(lambda: starts() >= 3, 15.0, interval=0.2, message="three starts of the dying process")
    # The gateway keeps serving meanwhile.
    assert http_get(port, "/healthz")[0] == 200


def test_unknown_command_is_a_configuration_error(tmp_path: Path) -> None:
    port = free_port()
    config = gateway_config(port, web=[f"{HOST}:{free_port()}"],
                            processes={"ghost": "no-such-command-e2e --flag"})
    returncode, stdout, stderr = run_gateway_expecting_failure(config, tmp_path)
    output = stdout + stderr
    assert returncode != 0
    assert "no-such-command-e2e" in output and "processes.ghost" in output, output
    assert "Traceback" not in output, output
