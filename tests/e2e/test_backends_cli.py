"""``gateway backends list|add|remove|set`` end to end: the real console script against a real gateway.

The gateway (``/`` -> web-1 and web-2, ``/api/`` -> api-1) has its admin API
on a free 127.0.0.1 port; the CLI finds it through ``-c config.yaml`` (or
``--admin URL``).  Output is checked as an operator sees it: a table for
``list``, one line per change, one line on stderr and exit status 1 for
errors, never a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from admin_harness import TOKEN, AdminGateway, Background, admin_setup
from harness import HOST, KeepAliveClient, free_port, http_get, served_by_name, subprocess_env, wait_until

CLI_TIMEOUT = 30.0
SLOW_SECONDS = 2.0
HEADER = ["UPSTREAM", "ADDRESS", "WEIGHT", "STATE", "ACTIVE", "TOTAL", "FAILURES"]


def gateway_command() -> list[str]:
    script = Path(sys.executable).parent / "gateway"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*gateway_command(), "backends", *args], capture_output=True, text=True,
                          timeout=timeout, env=env or subprocess_env(), stdin=subprocess.DEVNULL)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert result.stderr == ""
    return result.stdout


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (exit status 1, nothing on stdout)."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gateway: "), lines[0]
    return lines[0]


def table(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def served(port: int, count: int) -> list[str]:
    with KeepAliveClient(port) as client:
        names = []
        for _ in range(count):
            status, headers, _ = client.get("/healthz")
            assert status == 200
            names.append(served_by_name(headers))
        return names


@pytest.fixture
def admin(backends, gateway, tmp_path) -> AdminGateway:
    return admin_setup(gateway, tmp_path, web=[backends.web1.address, backends.web2.address],
                       api=[backends.api.address])


def config_of(admin: AdminGateway) -> str:
    return str(admin.gateway.config_path)


# -- list ------------------------------------------------------------------------------------

def test_list_prints_an_aligned_table_of_every_server(admin, backends):
    served(admin.port, 4)
    stdout = ok(cli("list", "-c", config_of(admin)))
    rows = table(stdout)
    assert rows[0] == HEADER
    assert rows[1:] == [  # in config order (harness.gateway_config lists api first)
        ["api", backends.api.address, "1", "up", "0", "0", "0"],
        ["web", backends.web1.address, "1", "up", "0", "2", "0"],
        ["web", backends.web2.address, "1", "up", "0", "2", "0"],
    ]
    lines = stdout.splitlines()
    # Aligned: every column starts at the same offset on every line.
    for column in ("ADDRESS", "STATE"):
        offset = lines[0].index(column)
        assert all(line[offset - 2:offset] == "  " and line[offset] != " " for line in lines), stdout


def test_list_one_upstream(admin, backends):
    rows = table(ok(cli("list", "api", "--admin", admin.admin_url)))
    assert rows == [HEADER, ["api", backends.api.address, "1", "up", "0", "0", "0"]]


def test_list_json_is_the_api_document(admin, backends):
    document = json.loads(ok(cli("list", "--json", "--admin", admin.admin_url)))
    assert [upstream["name"] for upstream in document["upstreams"]] == ["api", "web"]
    one = json.loads(ok(cli("list", "web", "--json", "--admin", admin.admin_url)))
    assert one["name"] == "web"
    assert [server["address"] for server in one["servers"]] == [backends.web1.address, backends.web2.address]


def test_admin_url_without_scheme(admin):
    assert table(ok(cli("list", "--admin", f"{HOST}:{admin.admin_port}")))[0] == HEADER


# -- add / set / remove ------------------------------------------------------------------------

def test_add_set_remove_each_print_one_line(admin, backends, backend_factory):
    web3 = backend_factory("web-3").address
    config = config_of(admin)

    stdout = ok(cli("add", "web", web3, "--weight", "2", "-c", config))
    assert stdout == f"upstream web: added {web3} (weight 2, up)\n"
    assert ["web", web3, "2", "up", "0", "0", "0"] in table(ok(cli("list", "-c", config)))
    assert Counter(served(admin.port, 8)) == {"web-1": 2, "web-2": 2, "web-3": 4}

    stdout = ok(cli("set", "web", web3, "--weight", "5", "-c", config))
    assert stdout == f"upstream web: {web3} now weight 5, up\n"

    stdout = ok(cli("set", "web", web3, "--drain", "-c", config))
    assert stdout == f"upstream web: {web3} now weight 5, draining\n"
    assert "web-3" not in served(admin.port, 6)

    stdout = ok(cli("set", "web", web3, "--up", "--weight", "1", "-c", config))
    assert stdout == f"upstream web: {web3} now weight 1, up\n"
    assert "web-3" in served(admin.port, 6)

    stdout = ok(cli("remove", "web", web3, "-c", config))
    assert stdout == f"upstream web: removed {web3}\n"
    assert web3 not in admin.servers()
    assert admin.state()["upstreams"].get("web", {}).get(web3) is None


def test_json_output_of_changes(admin, backend_factory):
    web3 = backend_factory("web-3").address
    added = json.loads(ok(cli("add", "web", web3, "--json", "--admin", admin.admin_url)))
    assert (added["address"], added["weight"], added["state"]) == (web3, 1, "up")
    changed = json.loads(ok(cli("set", "web", web3, "--weight", "3", "--json", "--admin", admin.admin_url)))
    assert changed["weight"] == 3
    removed = json.loads(ok(cli("remove", "web", web3, "--json", "--admin", admin.admin_url)))
    assert removed == {"upstream": "web", "address": web3, "state": "removed"}


def test_remove_during_a_request_in_flight_says_draining(admin, backends):
    slow = Background(lambda: http_get(admin.port, f"/sleep?seconds={SLOW_SECONDS}", timeout=SLOW_SECONDS + 10))
    busy = wait_until(lambda: next((address for address, server in admin.servers().items()
                                    if server["active_requests"] == 1), None), 5.0, message="a busy server")
    stdout = ok(cli("remove", "web", busy, "--admin", admin.admin_url))
    assert stdout.startswith(f"upstream web: draining {busy}: ")
    assert len(stdout.splitlines()) == 1
    listed = [row for row in table(ok(cli("list", "web", "--admin", admin.admin_url))) if row[1] == busy]
    assert listed == [["web", busy, "1", "removing", "1", "1", "0"]]
    assert slow.result(SLOW_SECONDS + 15)[0] == 200
    wait_until(lambda: busy not in admin.servers(), 5.0, message=f"{busy} gone")


def test_remove_wait_returns_once_the_server_is_gone(admin, backends):
    slow = Background(lambda: http_get(admin.port, f"/sleep?seconds={SLOW_SECONDS}", timeout=SLOW_SECONDS + 10))
    busy = wait_until(lambda: next((address for address, server in admin.servers().items()
                                    if server["active_requests"] == 1), None), 5.0, message="a busy server")
    started = time.monotonic()
    stdout = ok(cli("remove", "web", busy, "--wait", "--admin", admin.admin_url))
    assert time.monotonic() - started > SLOW_SECONDS / 4
    assert stdout == f"upstream web: removed {busy}\n"
    assert busy not in admin.servers()
    assert slow.result(SLOW_SECONDS + 15)[0] == 200


def test_proxy_environment_variables_are_ignored(admin):
    env = subprocess_env(http_proxy=f"http://{HOST}:{free_port()}", HTTP_PROXY=f"http://{HOST}:{free_port()}",
                         no_proxy="", NO_PROXY="")
    assert table(ok(cli("list", "--admin", admin.admin_url, env=env)))[0] == HEADER


# -- tokens ------------------------------------------------------------------------------------

def test_config_gives_the_admin_address_and_token(backends, gateway, tmp_path):
    admin = admin_setup(gateway, tmp_path, web=[backends.web1.address], token=TOKEN)
    rows = table(ok(cli("list", "-c", str(admin.gateway.config_path))))
    assert rows == [HEADER, ["web", backends.web1.address, "1", "up", "0", "0", "0"]]
    stdout = ok(cli("set", "web", backends.web1.address, "--weight", "4", "-c", str(admin.gateway.config_path)))
    assert "now weight 4" in stdout


def test_without_the_token_the_cli_gets_401(backends, gateway, tmp_path):
    admin = admin_setup(gateway, tmp_path, web=[backends.web1.address], token=TOKEN)
    line = one_error_line(cli("list", "--admin", admin.admin_url))
    assert "401" in line and "token" in line, line
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token\n", encoding="utf-8")
    line = one_error_line(cli("set", "web", backends.web1.address, "--weight", "9", "--admin", admin.admin_url,
                              "--token-file", str(wrong)))
    assert "401" in line, line


def test_token_file_option(backends, gateway, tmp_path):
    admin = admin_setup(gateway, tmp_path, web=[backends.web1.address], token=TOKEN)
    token_file = tmp_path / "admin.token"
    assert table(ok(cli("list", "--admin", admin.admin_url, "--token-file", str(token_file))))[0] == HEADER


# -- errors ------------------------------------------------------------------------------------

def test_unknown_upstream_is_one_line(admin):
    line = one_error_line(cli("list", "nope", "--admin", admin.admin_url))
    assert line == "gateway: 404 Not Found: no upstream named 'nope'"
    line = one_error_line(cli("add", "nope", f"{HOST}:8009", "--admin", admin.admin_url))
    assert "404" in line and "nope" in line


def test_unknown_server_is_one_line(admin):
    line = one_error_line(cli("set", "web", f"{HOST}:1", "--weight", "2", "--admin", admin.admin_url))
    assert "404" in line and f"{HOST}:1" in line
    line = one_error_line(cli("remove", "web", f"{HOST}:1", "--admin", admin.admin_url))
    assert "404" in line and f"{HOST}:1" in line


def test_duplicate_and_bad_address_are_one_line(admin, backends):
    line = one_error_line(cli("add", "web", backends.web1.address, "--admin", admin.admin_url))
    assert "409" in line and "already" in line
    line = one_error_line(cli("add", "web", "localhost", "--admin", admin.admin_url))
    assert "400" in line and "localhost" in line


def test_unreachable_admin_api_is_one_line():
    url = f"http://{HOST}:{free_port()}"
    line = one_error_line(cli("list", "--admin", url))
    assert line.startswith(f"gateway: cannot reach the admin API at {url}: "), line
    assert "refused" in line.lower()


def test_default_admin_url_comes_from_the_config(tmp_path):
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(f"listeners: [{{port: 8080}}]\nupstreams: {{}}\nroutes: []\n"
                      f"admin: {{listen: \"{HOST}:{port}\"}}\n", encoding="utf-8")
    line = one_error_line(cli("list", "-c", str(config)))
    assert f"http://{HOST}:{port}" in line


def test_a_wildcard_admin_listen_address_is_reached_on_loopback(tmp_path):
    port = free_port()
    (tmp_path / "token").write_text("t\n", encoding="utf-8")
    config = tmp_path / "config.yaml"
    config.write_text(f"listeners: [{{port: 8080}}]\nupstreams: {{}}\nroutes: []\n"
                      f"admin: {{listen: \"0.0.0.0:{port}\", token_file: {tmp_path / 'token'}}}\n", encoding="utf-8")
    line = one_error_line(cli("list", "-c", str(config)))
    assert f"http://127.0.0.1:{port}" in line


def test_bad_config_and_token_files_are_one_line(tmp_path):
    line = one_error_line(cli("list", "-c", str(tmp_path / "missing.yaml")))
    assert "configuration error" in line and "missing.yaml" in line
    config = tmp_path / "config.yaml"
    config.write_text("listeners: [{port: 8080}]\nupstreams: {}\nroutes: []\n"
                      f"admin: {{token_file: {tmp_path / 'absent.token'}}}\n", encoding="utf-8")
    line = one_error_line(cli("list", "-c", str(config)))
    assert "absent.token" in line


def test_set_with_nothing_to_change_is_one_line():
    line = one_error_line(cli("set", "web", f"{HOST}:8001", "--admin", f"http://{HOST}:1"))
    assert "nothing to change" in line


def test_an_admin_url_that_is_not_the_admin_api(admin):
    line = one_error_line(cli("list", "--admin", f"http://{HOST}:{admin.port}"))  # the proxy listener
    assert line.startswith("gateway: "), line


@pytest.mark.parametrize("args", [["add", "web", f"{HOST}:8009", "--weight", "0"],
                                  ["set", "web", f"{HOST}:8009", "--drain", "--up"],
                                  ["frobnicate"]])
def test_usage_errors_exit_2(args):
    result = cli(*args, "--admin", f"http://{HOST}:1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "usage:" in result.stderr
