"""Fixtures for the end-to-end tests: real processes, real sockets on 127.0.0.1.

- ``backends`` (session): web-1 and web-2 (``backends.web``) and api-1
  (``backends.api``) under Gunicorn, shared by every test: do not stop them.
- ``backend_factory``: ``backend_factory("web-3", app="backends.web:app")``
  starts a backend the test owns (to kill, restart, slow down...).
- ``gateway``: ``gateway(config)`` starts ``twistd -n gateway -c config.yaml``
  from YAML text or a dict and waits until its listeners accept.

Everything started here is stopped at teardown (SIGTERM, then SIGKILL to the
process group).  The plain helpers (``http_get``, ``KeepAliveClient``,
``gateway_config``, ``run_gateway_expecting_failure``...) live in
``harness.py``; tests import them from there.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

# Make ``import harness`` work whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).parent))

from harness import (  # noqa: E402  (re-exported for convenience)
    GATEWAY_START_TIMEOUT,
    Backend,
    BackendSet,
    Gateway,
    KeepAliveClient,
    free_port,
    gateway_config,
    http_get,
    run_gateway_expecting_failure,
    start_backend,
    start_gateway,
    wait_for_backend,
    wait_for_port,
)

__all__ = ["Backend", "BackendSet", "Gateway", "KeepAliveClient", "free_port", "gateway_config",
           "http_get", "run_gateway_expecting_failure", "wait_for_port"]

E2E_DIR = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end test with real processes and sockets")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendSet]:
    """Shared backends ``.web1``, ``.web2`` (also ``.web``, a list) and ``.api``.

    Started once per session, in parallel (about a second).  Logs are in a
    session temp directory (``backend.log_text()``).
    """
    log_dir = tmp_path_factory.mktemp("backends")
    started: list[Backend] = []
    try:
        for name, app in (("web-1", "backends.web:app"), ("web-2", "backends.web:app"),
                          ("api-1", "backends.api:app")):
            started.append(start_backend(name, log_dir, app, wait=False))
        for backend in started:
            wait_for_backend(backend)
        yield BackendSet(*started)
    finally:
        for backend in started:
            backend.stop()


@pytest.fixture
def backend_factory(tmp_path: Path) -> Iterator[Callable[..., Backend]]:
    """``backend_factory(name, app="backends.web:app", port=None, extra_args=None)``.

    Returns a started Backend that belongs to the test and is stopped after it
    (or earlier by the test itself with ``backend.stop()``).  Passing the
    ``port`` of a stopped backend brings it back at the same address.
    """
    started: list[Backend] = []

    def factory(name: str, app: str = "backends.web:app", port: int | None = None,
                extra_args: list[str] | None = None) -> Backend:
        backend = start_backend(name, tmp_path / "backends", app, port, wait=False,
                                extra_args=extra_args)
        started.append(backend)
        wait_for_backend(backend)
        return backend

    yield factory
    for backend in started:
        backend.stop()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """``gateway(config, port=None, timeout=20)`` -> a running Gateway.

    ``config`` is YAML text or a dict (see ``harness.gateway_config``).  The
    first gateway of a test lives in ``tmp_path`` (config.yaml,
    gateway.stdout, gateway.stderr, twistd.pid), later ones in
    ``tmp_path/gateway-<n>``.  If twistd exits before its listeners accept,
    the test fails showing its output.  All are stopped after the test.
    """
    started: list[Gateway] = []

    def factory(config: str | Mapping[str, Any], port: int | None = None,
                timeout: float = GATEWAY_START_TIMEOUT) -> Gateway:
        directory = tmp_path if not started else tmp_path / f"gateway-{len(started)}"
        instance = start_gateway(config, directory, port, timeout)
        started.append(instance)
        return instance

    yield factory
    for instance in started:
        instance.stop()
