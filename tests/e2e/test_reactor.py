"""The reactor twistd runs the gateway on: ``gateway.reactor.GatewayReactor`` unless ``--reactor`` says otherwise."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from harness import (
    HOST,
    TWISTD,
    KeepAliveClient,
    free_port,
    gateway_config,
    read_text,
    served_by_name,
    spawn,
    stop_process,
    subprocess_env,
    wait_for_port,
    wait_until,
)


def run_twistd(backends, tmp_path: Path, *twistd_options: str):
    port = free_port()
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(gateway_config(port, web=[backends.web1.address, backends.web2.address])),
                           encoding="utf-8")
    argv = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", *twistd_options, "gateway", "-c", str(config_path)]
    process = spawn(argv, tmp_path, "gateway", subprocess_env())
    wait_for_port(HOST, port, 20.0, process)
    return process, port


def serves_both_backends(port: int) -> None:
    with KeepAliveClient(port) as client:
        names = set()
        for _ in range(20):
            status, headers, _ = client.get("/json")
            assert status == 200
            names.add(served_by_name(headers))
    assert names == {"web-1", "web-2"}


@pytest.mark.parametrize(("options", "reactor_class"), [
    ((), "gateway.reactor.GatewayReactor"),
    (("--reactor=poll",), "twisted.internet.pollreactor.PollReactor"),  # the operator's choice is kept
])
def test_twistd_runs_the_gateway_reactor_unless_told_otherwise(backends, tmp_path: Path, options: tuple[str, ...],
                                                              reactor_class: str) -> None:
    process, port = run_twistd(backends, tmp_path, *options)
    try:
        serves_both_backends(port)
        log = wait_until(lambda: (text := read_text(tmp_path / "gateway.stdout")) and "reactor class" in text and text,
                         5.0, message="the reactor line")
        assert f"reactor class: {reactor_class}." in log
    finally:
        stop_process(process)
