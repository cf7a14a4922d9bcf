"""A mistake in the YAML stops the gateway with one clear message, never a traceback.

The configs are written out as text so that the line each mistake is on is
known.  ``gateway check -c FILE`` validates the same way without starting.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from harness import (
    HOST,
    REPO_ROOT,
    TWISTD,
    free_port,
    port_accepts,
    run_gateway_expecting_failure,
    subprocess_env,
)

#: A valid config; {server_extra}, {second_server}, {route_upstream}, {top_extra} are where mistakes go.
TEMPLATE = """\
listeners:
  - name: public
    port: {port}
    interface: 127.0.0.1
upstreams:
  web:
    balance: round_robin
    servers:
      - address: {address}
        weight: {weight}
{second_server}routes:
  - path: /api/
    upstream: web
  - path: /
    upstream: {route_upstream}
{top_extra}"""

DEFAULTS = {"address": '"127.0.0.1:8001"', "weight": "3", "second_server": "", "route_upstream": "web",
            "top_extra": ""}

# (id, changes to the template, key path, line, words the explanation must contain)
MISTAKES = [
    ("unknown key", {"second_server": '      - address: "127.0.0.1:8002"\n        wieght: 2\n'},
     "upstreams.web.servers[1].wieght", 12, ["unknown key", "weight"]),
    ("unknown top-level key", {"top_extra": "acces_log: '-'\n"}, "acces_log", 16, ["unknown key", "access_log"]),
    ("weight 0", {"weight": "0"}, "upstreams.web.servers[0].weight", 10, ["integer", "1"]),
    ("weight not a number", {"weight": '"x"'}, "upstreams.web.servers[0].weight", 10, ["integer"]),
    ("weight negative", {"weight": "-2"}, "upstreams.web.servers[0].weight", 10, ["integer"]),
    ("address without port", {"address": "localhost"}, "upstreams.web.servers[0].address", 9, ["host:port"]),
    ("address bad port", {"address": '"127.0.0.1:99999"'}, "upstreams.web.servers[0].address", 9, ["port"]),
    ("route to undefined upstream", {"route_upstream": "webb"}, "routes[1].upstream", 15, ["webb"]),
    ("duplicate server", {"second_server": '      - address: "127.0.0.1:8001"\n'},
     "upstreams.web.servers[1].address", 11, ["duplicate", "127.0.0.1:8001"]),
]


def config_text(port: int, **changes: str) -> str:
    return TEMPLATE.format(port=port, **{**DEFAULTS, **changes})


def assert_clear_message(output: str, config_path: Path, key_path: str, line: int, words: list[str]) -> None:
    assert "Traceback" not in output, output
    assert str(config_path) in output, output
    assert key_path in output, output
    assert f"line {line}" in output, output
    for word in words:
        assert word in output, (word, output)


def test_template_is_valid(gateway) -> None:
    """The mistakes below are the only thing wrong with their configs."""
    port = free_port()
    gateway(config_text(port))  # fails the test if the gateway does not start


@pytest.mark.parametrize("changes, key_path, line, words", [m[1:] for m in MISTAKES],
                         ids=[m[0] for m in MISTAKES])
def test_gateway_refuses_to_start(tmp_path: Path, changes: dict, key_path: str, line: int,
                                  words: list[str]) -> None:
    port = free_port()
    returncode, stdout, stderr = run_gateway_expecting_failure(config_text(port, **changes), tmp_path)

    assert returncode != 0
    output = stdout + stderr
    assert_clear_message(output, tmp_path / "rejected" / "config.yaml", key_path, line, words)
    assert not port_accepts(HOST, port)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    port = free_port()
    text = config_text(port).replace("    upstream: web\n", "    upstream: [web\n", 1)
    returncode, stdout, stderr = run_gateway_expecting_failure(text, tmp_path)
    assert returncode != 0
    output = stdout + stderr
    assert "Traceback" not in output, output
    assert str(tmp_path / "rejected" / "config.yaml") in output
    assert "line " in output, output


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "gateway.yaml"
    result = subprocess.run([sys.executable, "-c", TWISTD, "-n", "--pidfile", str(tmp_path / "twistd.pid"),
                             "gateway", "-c", str(missing)], cwd=REPO_ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert str(missing) in output and "Traceback" not in output, output


# -- gateway check -c FILE ------------------------------------------------------------

def gateway_check(config: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "gateway"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]
    return subprocess.run([*command, "check", "-c", str(config)], cwd=REPO_ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=30)


def test_check_accepts_the_demo_config() -> None:
    result = gateway_check(REPO_ROOT / "config" / "demo.yaml")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_does_not_start_anything(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "good.yaml"
    path.write_text(config_text(port), encoding="utf-8")
    result = gateway_check(path)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr
    assert not port_accepts(HOST, port)


@pytest.mark.parametrize("changes, key_path, line, words", [m[1:] for m in MISTAKES[:4]],
                         ids=[m[0] for m in MISTAKES[:4]])
def test_check_rejects_a_bad_file(tmp_path: Path, changes: dict, key_path: str, line: int,
                                  words: list[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(config_text(free_port(), **changes), encoding="utf-8")
    result = gateway_check(path)
    assert result.returncode == 1
    assert "OK" not in result.stdout
    assert_clear_message(result.stdout + result.stderr, path, key_path, line, words)


def test_check_rejects_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = gateway_check(missing)
    assert result.returncode == 1
    assert str(missing) in result.stderr and "Traceback" not in result.stderr
