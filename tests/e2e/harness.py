"""Plain helpers for the end-to-end tests (the fixtures are in conftest.py).

Real sockets on 127.0.0.1, real processes: the gateway as
``twistd -n gateway -c config.yaml`` and the backends as Gunicorn (gthread
worker) serving ``backends/``.  Every wait here has a timeout, every loop a
bound, and ``stop_process`` ends a process and its whole process group.

Test modules import from here (``from harness import http_get, ...``): the
name is unique, unlike ``conftest``, of which a test run may load several.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"

#: ``python -c`` this to get twistd on the interpreter running the tests
#: (``python -m twisted`` is ``twist``, which has no ``-n`` or ``--pidfile``).
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.exit(run())"

BACKEND_START_TIMEOUT = 15.0
GATEWAY_START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
HTTP_TIMEOUT = 10.0

#: What ``/stream`` and ``/sized`` on the web backend repeat.
PATTERN = b"0123456789abcdef"

Headers = Mapping[str, str] | list[tuple[str, str]] | None


# -- ports and processes ------------------------------------------------------

def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a TCP connection to host:port succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float,
                  process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until host:port accepts TCP connections.

    Raises TimeoutError after ``timeout`` seconds, or RuntimeError as soon as
    ``process`` (if given) has exited.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process {process.pid} exited with {process.returncode} "
                               f"before {host}:{port} accepted connections")
        if port_accepts(host, port):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} did not accept connections within {timeout}s")
        time.sleep(0.05)


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 0.05,
               message: str = "condition") -> Any:
    """Poll ``condition()`` until it returns something truthy; return that. Bounded."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message} not met within {timeout}s")
        time.sleep(interval)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for our subprocesses: the repo importable, output unbuffered."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    env["PYTHONUNBUFFERED"] = "1"
    # The venv's scripts (gunicorn for the gateway's `processes:`) on PATH.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def spawn(args: list[str], log_dir: Path, stem: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``args`` in the repo root, in its own process group, output to files."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{stem}.stdout", "wb") as out, open(log_dir / f"{stem}.stderr", "wb") as err:
        return subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, start_new_session=True)


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT,
                 sig: int = signal.SIGTERM) -> int | None:
    """Send ``sig``, wait up to ``timeout``, then SIGKILL the process group.

    The group is killed in any case once the leader is gone, so that nothing
    it started (Gunicorn workers, gateway-supervised processes) outlives it.
    Returns the leader's exit code.
    """
    if process.poll() is None:
        try:
            process.send_signal(sig)
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    return process.returncode


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


# -- backends -----------------------------------------------------------------

@dataclass
class Backend:
    """A Gunicorn process serving one of the example apps."""

    name: str
    app: str
    port: int
    process: subprocess.Popen[bytes]
    log_dir: Path

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def url(self, path: str = "/") -> str:
        return f"http://{self.address}{path}"

    def log_text(self) -> str:
        return read_text(self.log_dir / f"{self.name}.stderr") + read_text(self.log_dir / f"{self.name}.stdout")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        return stop_process(self.process, timeout)


def start_backend(name: str, log_dir: Path, app: str = "backends.web:app", port: int | None = None,
                  wait: bool = True, extra_args: list[str] | None = None) -> Backend:
    """Start Gunicorn (gthread, 1 worker, 4 threads) with BACKEND_NAME=name."""
    port = port or free_port()
    args = [sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--threads", "4",
            "--workers", "1", "--graceful-timeout", "5", "--bind", f"{HOST}:{port}",
            *(extra_args or []), app]
    process = spawn(args, log_dir, name, subprocess_env(BACKEND_NAME=name))
    backend = Backend(name=name, app=app, port=port, process=process, log_dir=log_dir)
    if wait:
        wait_for_backend(backend)
    return backend


def wait_for_backend(backend: Backend, timeout: float = BACKEND_START_TIMEOUT) -> None:
    try:
        wait_for_port(HOST, backend.port, timeout, backend.process)
    except (RuntimeError, TimeoutError) as error:
        backend.stop()
        pytest.fail(f"backend {backend.name} did not start: {error}\n{backend.log_text()}")


@dataclass
class BackendSet:
    """The session's shared backends: two ``web`` and one ``api``."""

    web1: Backend
    web2: Backend
    api: Backend

    @property
    def web(self) -> list[Backend]:
        return [self.web1, self.web2]


# -- the gateway --------------------------------------------------------------

def gateway_config(port: int, web: list[str] | None = None, api: list[str] | None = None,
                   balance: str = "round_robin", **extra: Any) -> dict[str, Any]:
    """A config dict like config/demo.yaml: ``/api/`` -> api, ``/`` -> web.

    ``web``/``api`` are lists of ``"host:port"`` addresses; either may be
    omitted.  ``extra`` top-level keys are added (or override) as given.
    """
    upstreams: dict[str, Any] = {}
    routes: list[dict[str, Any]] = []
    if api:
        upstreams["api"] = {"servers": [{"address": address} for address in api]}
        routes.append({"path": "/api/", "upstream": "api"})
    if web:
        upstreams["web"] = {"balance": balance, "servers": [{"address": address} for address in web]}
        routes.append({"path": "/", "upstream": "web"})
    config: dict[str, Any] = {
        "listeners": [{"name": "public", "port": port, "interface": HOST}],
        "upstreams": upstreams,
        "routes": routes,
        "access_log": "-",
    }
    config.update(extra)
    return config


def config_text(config: str | Mapping[str, Any]) -> str:
    return config if isinstance(config, str) else yaml.safe_dump(dict(config), sort_keys=False)


def listener_ports(config: str | Mapping[str, Any]) -> list[int]:
    """The ports of the config's listeners, in order (nothing if unreadable)."""
    try:
        data = yaml.safe_load(config) if isinstance(config, str) else config
        return [int(listener["port"]) for listener in data["listeners"]]
    except (yaml.YAMLError, TypeError, KeyError, ValueError):
        return []


def twistd_args(config_path: Path, pidfile: Path) -> list[str]:
    return [sys.executable, "-c", TWISTD, "-n", "--pidfile", str(pidfile),
            "gateway", "-c", str(config_path)]


@dataclass
class Gateway:
    """A running ``twistd -n gateway`` and the files around it."""

    port: int
    ports: list[int]
    process: subprocess.Popen[bytes]
    directory: Path
    config_path: Path
    stdout_path: Path = field(init=False)
    stderr_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.stdout_path = self.directory / "gateway.stdout"
        self.stderr_path = self.directory / "gateway.stderr"

    def url(self, path: str = "/") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def stdout_text(self) -> str:
        return read_text(self.stdout_path)

    def stderr_text(self) -> str:
        return read_text(self.stderr_path)

    def output(self) -> str:
        """stdout and stderr, for failure messages."""
        return f"--- stdout ---\n{self.stdout_text()}\n--- stderr ---\n{self.stderr_text()}"

    def wait_for_output(self, text: str, timeout: float = 5.0) -> str:
        """Wait until ``text`` appears on stdout (e.g. an access-log line); return stdout."""
        def found() -> str | None:
            stdout = self.stdout_text()
            return stdout if text in stdout else None

        return wait_until(found, timeout, message=f"{text!r} on gateway stdout")

    def write_config(self, config: str | Mapping[str, Any]) -> None:
        """Replace the config file (follow with ``send_signal(signal.SIGHUP)`` to reload)."""
        self.config_path.write_text(config_text(config), encoding="utf-8")

    def send_signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        return stop_process(self.process, timeout)


def start_gateway(config: str | Mapping[str, Any], directory: Path, port: int | None = None,
                  timeout: float = GATEWAY_START_TIMEOUT) -> Gateway:
    """Write ``directory/config.yaml``, start twistd, wait for every listener port."""
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "config.yaml"
    config_path.write_text(config_text(config), encoding="utf-8")
    ports = listener_ports(config)
    if port is None:
        if not ports:
            raise ValueError("no listener port in the config: pass port=")
        port = ports[0]
    process = spawn(twistd_args(config_path, directory / "twistd.pid"), directory, "gateway",
                    subprocess_env())
    gateway = Gateway(port=port, ports=ports or [port], process=process,
                      directory=directory, config_path=config_path)
    try:
        for each in dict.fromkeys([port, *ports]):
            wait_for_port(HOST, each, timeout, process)
    except (RuntimeError, TimeoutError) as error:
        gateway.stop()
        pytest.fail(f"gateway did not start: {error}\n{gateway.output()}", pytrace=False)
    return gateway


def run_gateway_expecting_failure(config: str | Mapping[str, Any], tmp_path: Path,
                                  timeout: float = GATEWAY_START_TIMEOUT) -> tuple[int, str, str]:
    """Run twistd with a config it should reject: (returncode, stdout, stderr).

    Fails the test if the gateway is still running after ``timeout`` seconds.
    """
    directory = tmp_path / "rejected"
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "config.yaml"
    config_path.write_text(config_text(config), encoding="utf-8")
    process = subprocess.Popen(twistd_args(config_path, directory / "twistd.pid"), cwd=REPO_ROOT,
                               env=subprocess_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(process, timeout=2.0)
        stdout, stderr = process.communicate(timeout=STOP_TIMEOUT)
        pytest.fail(f"gateway accepted a config it should reject and ran for {timeout}s\n"
                    f"--- stdout ---\n{stdout.decode(errors='replace')}\n"
                    f"--- stderr ---\n{stderr.decode(errors='replace')}", pytrace=False)
    return process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")


# -- HTTP clients ---------------------------------------------------------------

def _header_items(headers: Headers) -> list[tuple[str, str]]:
    if headers is None:
        return []
    return list(headers.items()) if isinstance(headers, Mapping) else list(headers)


def _send(conn: http.client.HTTPConnection, method: str, path: str, headers: Headers,
          body: bytes | Iterator[bytes] | None) -> tuple[int, http.client.HTTPMessage, bytes]:
    items = _header_items(headers)
    names = {name.lower() for name, _ in items}
    conn.putrequest(method, path, skip_host="host" in names,
                    skip_accept_encoding="accept-encoding" in names)
    for name, value in items:
        conn.putheader(name, value)
    if isinstance(body, (bytes, bytearray)):
        if "content-length" not in names and "transfer-encoding" not in names:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
    elif body is None:
        conn.endheaders()
    else:  # an iterable of bytes: sent chunked unless the caller framed it
        chunked = "content-length" not in names
        if chunked and "transfer-encoding" not in names:
            conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for piece in body:
            if chunked:
                if piece:
                    conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                conn.send(piece)
        if chunked:
            conn.send(b"0\r\n\r\n")
    response = conn.getresponse()
    data = response.read()
    return response.status, response.headers, data


def connection(port: int, host: str = HOST, timeout: float = HTTP_TIMEOUT,
               ssl_context: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
    if ssl_context is not None:
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl_context)
    return http.client.HTTPConnection(host, port, timeout=timeout)


def http_get(port: int, path: str, headers: Headers = None, method: str = "GET",
             body: bytes | Iterator[bytes] | None = None, host: str = HOST,
             timeout: float = HTTP_TIMEOUT,
             ssl_context: ssl.SSLContext | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on a fresh connection: (status, headers, body).

    ``headers`` is a dict or a list of pairs (for repeated names); a ``Host``
    header given there replaces the default one.  ``body`` may be bytes (sent
    with Content-Length) or an iterator of bytes (sent chunked).  The returned
    headers are an ``HTTPMessage``: case-insensitive ``get``, and ``get_all``.
    """
    conn = connection(port, host, timeout, ssl_context)
    try:
        return _send(conn, method, path, headers, body)
    finally:
        conn.close()


class KeepAliveClient:
    """One HTTP/1.1 connection reused for many requests.

    ``connections_opened`` counts how many TCP connections were needed (1 as
    long as the server kept the connection alive); ``local_port`` is the
    client port of the current connection.
    """

    def __init__(self, port: int, host: str = HOST, timeout: float = HTTP_TIMEOUT,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.conn = connection(port, host, timeout, ssl_context)
        self.connections_opened = 0
        self.local_port: int | None = None

    def request(self, method: str, path: str, headers: Headers = None,
                body: bytes | Iterator[bytes] | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
        if self.conn.sock is None:
            self.conn.connect()
            self.connections_opened += 1
            self.local_port = self.conn.sock.getsockname()[1]
        return _send(self.conn, method, path, headers, body)

    def get(self, path: str, headers: Headers = None) -> tuple[int, http.client.HTTPMessage, bytes]:
        return self.request("GET", path, headers)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> KeepAliveClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def send_raw(port: int, data: bytes, timeout: float = 5.0, host: str = HOST,
             max_bytes: int = 16 * 1024 * 1024) -> bytes:
    """Send raw bytes, then read until the server closes, ``timeout`` passes
    without data, or ``max_bytes`` arrived.  For malformed-request tests."""
    received = bytearray()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        while len(received) < max_bytes:
            try:
                piece = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not piece:
                break
            received += piece
    return bytes(received)


# -- expectations ---------------------------------------------------------------

def pattern_bytes(total: int) -> bytes:
    """What ``/stream?bytes=total`` and ``/sized?bytes=total`` return."""
    return (PATTERN * (total // len(PATTERN) + 1))[:total]


def parse_served_by(value: str | None) -> tuple[str, str, int]:
    """``"web-1 127.0.0.1:8001 pid=42"`` -> ("web-1", "127.0.0.1:8001", 42)."""
    assert value, "no X-Served-By header"
    service, address, pid = value.split(" ")
    assert pid.startswith("pid="), value
    return service, address, int(pid[4:])
