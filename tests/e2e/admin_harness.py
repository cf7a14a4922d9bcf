"""Helpers for the admin API and ``gateway backends`` tests: a gateway with its admin listener.

``admin_setup`` starts a gateway (``/`` -> web, ``/api/`` -> api) whose admin
API listens on a free 127.0.0.1 port and whose live changes go to
``state.json`` next to its config; ``admin_call`` is one JSON call to it.
Every call has a timeout; traffic only ever goes to 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import HOST, HTTP_TIMEOUT, Gateway, free_port, gateway_config, http_get, wait_for_port

ADMIN_START_TIMEOUT = 10.0
TOKEN = "s3cret-token-for-tests"


@dataclass
class AdminGateway:
    gateway: Gateway
    admin_port: int
    state_path: Path
    token: str | None = None

    @property
    def port(self) -> int:
        return self.gateway.port

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.admin_port}"

    def call(self, method: str, path: str, body: Any = None, token: str | None | bool = True,
             raw: bytes | None = None, timeout: float = HTTP_TIMEOUT) -> tuple[int, Any, Any]:
        """(status, headers, decoded JSON or None); ``token=True`` sends this gateway's token."""
        return admin_call(self.admin_port, method, path, body,
                          self.token if token is True else (token or None), raw, timeout)

    def upstream(self, name: str) -> dict[str, Any]:
        status, _, document = self.call("GET", f"/upstreams/{name}")
        assert status == 200, document
        return document

    def servers(self, name: str = "web") -> dict[str, dict[str, Any]]:
        """The servers of upstream *name* by address."""
        return {server["address"]: server for server in self.upstream(name)["servers"]}

    def state(self) -> dict[str, Any]:
        return json.loads(self.state_path.read_text(encoding="utf-8"))


def admin_call(port: int, method: str, path: str, body: Any = None, token: str | None = None,
               raw: bytes | None = None, timeout: float = HTTP_TIMEOUT) -> tuple[int, Any, Any]:
    headers = {}
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    status, response_headers, payload = http_get(port, path, headers=headers, method=method, body=data,
                                                 timeout=timeout)
    document = json.loads(payload) if payload.strip() else None
    return status, response_headers, document


def admin_setup(gateway: Callable[..., Gateway], directory: Path, web: list[str], api: list[str] | None = None,
                token: str | None = None, admin_listen: str | None = None, **extra: Any) -> AdminGateway:
    """A running gateway with the admin API on a free port (and ``token`` required when given)."""
    port, admin_port = free_port(), free_port()
    state_path = directory / "state.json"
    admin: dict[str, Any] = {"listen": admin_listen or f"{HOST}:{admin_port}"}
    if admin_listen:
        admin_port = int(admin_listen.rpartition(":")[2])
    if token is not None:
        token_path = directory / "admin.token"
        token_path.write_text(token + "\n", encoding="utf-8")
        admin["token_file"] = str(token_path)
    config = gateway_config(port, web=web, api=api, admin=admin, state_file=str(state_path), **extra)
    running = gateway(config)
    wait_for_port(HOST, admin_port, ADMIN_START_TIMEOUT, running.process)
    return AdminGateway(running, admin_port, state_path, token)


class Background:
    """Run ``function()`` in a thread; ``result()`` joins with a timeout and re-raises its exception."""

    def __init__(self, function: Callable[[], Any]) -> None:
        self._function = function
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._function()
        except BaseException as error:  # noqa: BLE001 (handed to the test thread)
            self._error = error

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float) -> Any:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"background call still running after {timeout}s")
        if self._error is not None:
            raise self._error
        return self._value
