"""SIGTERM: stop accepting, let the requests in flight finish (within shutdown_timeout), then exit.

twistd ends by re-raising the signal that stopped it, so a gateway stopped by
SIGTERM exits with -15 (``subprocess``'s "killed by signal 15") after a clean
shutdown, as ``Main loop terminated`` and ``Server Shut Down`` in its log show.
"""

from __future__ import annotations

import http.client
import json
import re
import shlex
import signal
import socket
import threading
import time
from typing import Any

import pytest

from harness import (
    HOST,
    KeepAliveClient,
    free_port,
    gateway_config,
    http_get,
    parent_pid,
    port_accepts,
    process_alive,
    served_by_name,
    wait_until,
)
from live_helpers import connect_refused, wait_for_exit

#: How twistd exits after a graceful SIGTERM shutdown.
SIGTERM_EXIT = -signal.SIGTERM
SLOW_SECONDS = 2.0
#: Time for a request sent in the background to reach the backend.
SETTLE = 0.5
START_TIMEOUT = 20.0


class Background(threading.Thread):
    """One request in the background: ``status``, ``headers``, ``served_by`` or ``error``; ``finished`` time."""

    def __init__(self, call) -> None:
        super().__init__(daemon=True)
        self._call = call
        self.status: int | None = None
        self.headers: Any = None
        self.served_by: str | None = None
        self.error: BaseException | None = None
        self.finished: float | None = None

    def run(self) -> None:
        try:
            self.status, self.headers, _ = self._call()
            self.served_by = served_by_name(self.headers)
        except (OSError, http.client.HTTPException) as error:
            self.error = error
        finally:
            self.finished = time.monotonic()


def test_sigterm_finishes_the_requests_in_flight_and_refuses_new_connections(backends, gateway) -> None:
    port = free_port()
    instance = gateway(gateway_config(port, web=[backends.web1.address], shutdown_timeout=10))
    kept = KeepAliveClient(port)
    try:
        assert kept.get("/healthz")[0] == 200
        fresh = Background(lambda: http_get(port, f"/sleep?seconds={SLOW_SECONDS}"))
        on_kept = Background(lambda: kept.get(f"/sleep?seconds={SLOW_SECONDS}"))
        fresh.start()
        on_kept.start()
        time.sleep(SETTLE)

        signalled = time.monotonic()
        instance.send_signal(signal.SIGTERM)

        # New connections are refused at once...
        wait_until(lambda: connect_refused(port), timeout=2.0, interval=0.02, message="connections refused")
        refused = time.monotonic() - signalled
        assert refused < 1.0
        assert fresh.is_alive() and on_kept.is_alive(), "the requests in flight ended early"
        assert instance.process.poll() is None, "the gateway exited before its requests finished"

        # ...the requests in flight complete...
        fresh.join(SLOW_SECONDS + 15)
        on_kept.join(SLOW_SECONDS + 15)
        assert (fresh.status, fresh.served_by, fresh.error) == (200, "web-1", None)
        assert (on_kept.status, on_kept.served_by, on_kept.error) == (200, "web-1", None)
        # The keep-alive connection is told it ends with this response.
        assert on_kept.headers.get("Connection", "").lower() == "close"

        # ...and then the gateway exits, well within shutdown_timeout.
        code = wait_for_exit(instance, 15)
        exited = time.monotonic() - signalled
    finally:
        kept.close()
    assert code == SIGTERM_EXIT, instance.output()
    assert exited < 10, exited
    assert exited >= SLOW_SECONDS - SETTLE - 0.1, exited
    stdout = instance.stdout_text()
    assert "Traceback" not in stdout + instance.stderr_text()
    assert "Server Shut Down" in stdout
    assert "aborting a connection" not in stdout


@pytest.mark.parametrize(("second", "logged"), [
    # A reload signal (log rotation, ``systemctl reload``) must not end the drain early.
    (signal.SIGHUP, "SIGHUP ignored: the gateway is shutting down"),
    # Ctrl-C twice, or a supervisor repeating SIGTERM: the drain goes on, without a traceback.
    # (Not SIGINT: a gateway started from a background job inherits SIGINT ignored and
    # Twisted then leaves it alone; sigInt goes through the same check as sigTerm.)
    (signal.SIGTERM, "SIGTERM ignored: already shutting down"),
])
def test_a_signal_during_the_drain_is_logged_and_the_requests_finish(backends, gateway, second: int,
                                                                     logged: str) -> None:
    port = free_port()
    instance = gateway(gateway_config(port, web=[backends.web1.address], shutdown_timeout=10))
    slow = Background(lambda: http_get(port, f"/sleep?seconds={SLOW_SECONDS}"))
    slow.start()
    time.sleep(SETTLE)

    instance.send_signal(signal.SIGTERM)
    wait_until(lambda: connect_refused(port), timeout=2.0, interval=0.02, message="connections refused")
    instance.send_signal(second)
    slow.join(SLOW_SECONDS + 15)
    code = wait_for_exit(instance, 15)

    assert (slow.status, slow.served_by, slow.error) == (200, "web-1", None)
    assert code == SIGTERM_EXIT, f"exit code {code}\n{instance.output()}"
    output = instance.stdout_text() + instance.stderr_text()
    assert logged in output
    assert "Traceback" not in output and "ReactorNotRunning" not in output


def test_a_request_longer_than_shutdown_timeout_is_cut_off(backends, gateway) -> None:
    port = free_port()
    instance = gateway(gateway_config(port, web=[backends.web1.address], shutdown_timeout=1))
    slow = Background(lambda: http_get(port, "/sleep?seconds=5", timeout=15))
    slow.start()
    time.sleep(SETTLE)

    signalled = time.monotonic()
    instance.send_signal(signal.SIGTERM)
    code = wait_for_exit(instance, 10)
    exited = time.monotonic() - signalled
    slow.join(10)

    assert code == SIGTERM_EXIT, instance.output()
    assert 0.9 <= exited < 3.0, exited
    # The client sees its connection closed without a (complete) response, long before 5 s.
    assert slow.status is None and slow.error is not None, (slow.status, slow.error)
    assert slow.finished - signalled < 3.0
    assert "shutdown: aborting a connection whose request did not finish in 1" in instance.stdout_text()


def test_idle_keep_alive_connections_are_closed_at_shutdown(backends, gateway) -> None:
    port = free_port()
    instance = gateway(gateway_config(port, web=[backends.web1.address], shutdown_timeout=10))
    used = KeepAliveClient(port)
    unused = socket.create_connection((HOST, port), timeout=5)  # connected, never sent a byte
    try:
        assert used.get("/healthz")[0] == 200
        assert used.conn.sock is not None  # kept open after the response
        time.sleep(0.2)  # the gateway has accepted both connections

        signalled = time.monotonic()
        instance.send_signal(signal.SIGTERM)

        for sock in (used.conn.sock, unused):
            sock.settimeout(5)
            try:
                data = sock.recv(1024)
            except ConnectionResetError:
                data = b""
            assert data == b"", data  # closed by the gateway, not left hanging
        closed = time.monotonic() - signalled
        code = wait_for_exit(instance, 10)
    finally:
        used.close()
        unused.close()
    assert closed < 2.0, closed
    assert code == SIGTERM_EXIT, instance.output()


def test_supervised_processes_stop_only_after_the_requests_in_flight(gateway) -> None:
    backend_port, port = free_port(), free_port()
    # --graceful-timeout 0: were Gunicorn stopped while the request still ran, it would die with it.
    command = (f"gunicorn --worker-class gthread --threads 2 --graceful-timeout 0 --bind {HOST}:{backend_port} "
               f"-e BACKEND_NAME=shut-proc backends.web:app")
    instance = gateway(gateway_config(port, web=[f"{HOST}:{backend_port}"], shutdown_timeout=10,
                                      processes={"shut-proc": command}))

    def served() -> bool:
        try:
            status, headers, _ = http_get(port, "/healthz", timeout=2.0)
        except (OSError, http.client.HTTPException):
            return False
        return status == 200 and served_by_name(headers) == "shut-proc"

    wait_until(served, START_TIMEOUT, interval=0.2, message="the supervised backend answering")
    worker = http_get(port, "/json")[2]
    master = parent_pid(json.loads(worker)["served_by"]["pid"])
    slow = Background(lambda: http_get(port, f"/sleep?seconds={SLOW_SECONDS}"))
    slow.start()
    time.sleep(SETTLE)

    signalled = time.monotonic()
    instance.send_signal(signal.SIGTERM)
    slow.join(SLOW_SECONDS + 15)
    code = wait_for_exit(instance, 20)

    assert (slow.status, slow.served_by, slow.error) == (200, "shut-proc", None)
    assert slow.finished - signalled >= SLOW_SECONDS - SETTLE - 0.1
    assert code == SIGTERM_EXIT, instance.output()
    # The supervised Gunicorn was stopped too (it stops at once on SIGTERM).
    wait_until(lambda: not process_alive(master), 10.0, message="the supervised Gunicorn gone")
    assert not port_accepts(HOST, backend_port)


def test_the_gateway_kills_a_supervised_process_that_ignores_sigterm(gateway) -> None:
    """README: processes are "stopped with SIGTERM (SIGKILL after 5 s) when the gateway stops"."""
    port = free_port()
    script = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "print('stubborn pid', os.getpid(), flush=True); time.sleep(30)")
    command = f"python -c {shlex.quote(script)}"
    instance = gateway(gateway_config(port, web=[f"{HOST}:{free_port()}"], shutdown_timeout=10,
                                      processes={"stubborn": command}))
    stdout = instance.wait_for_output("stubborn pid ", timeout=START_TIMEOUT)
    pid = int(re.search(r"stubborn pid (\d+)", stdout).group(1))
    assert process_alive(pid)

    signalled = time.monotonic()
    instance.send_signal(signal.SIGTERM)
    code = wait_for_exit(instance, 20)
    exited = time.monotonic() - signalled
    # Whether the gateway waited for it or not, the process must not outlive the kill delay.
    alive_after = not wait_until_or_false(lambda: not process_alive(pid), 8.0)

    assert not alive_after, (f"the supervised process {pid} (ignoring SIGTERM) still runs "
                             f"{time.monotonic() - signalled:.1f} s after SIGTERM to the gateway, which "
                             f"exited after {exited:.1f} s with {code}")
    assert code == SIGTERM_EXIT, instance.output()


def wait_until_or_false(condition, timeout: float) -> bool:
    try:
        return bool(wait_until(condition, timeout, interval=0.1))
    except TimeoutError:
        return False
