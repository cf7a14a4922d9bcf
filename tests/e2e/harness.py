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
import threading
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


def send_raw_until_close(port: int, data: bytes, timeout: float = 5.0, host: str = HOST,
                         max_bytes: int = 16 * 1024 * 1024) -> tuple[bytes, bool]:
    """Like ``send_raw``, also saying whether the server closed the connection
    (True) rather than going quiet for ``timeout`` seconds (False)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_until_close(sock, max_bytes)


def read_until_close(sock: socket.socket, max_bytes: int = 16 * 1024 * 1024) -> tuple[bytes, bool]:
    """What arrives on *sock* until the server closes it (True) or goes quiet for its timeout (False)."""
    received = bytearray()
    while len(received) < max_bytes:
        try:
            piece = sock.recv(65536)
        except TimeoutError:
            return bytes(received), False
        except ConnectionResetError:
            return bytes(received), True
        if not piece:
            return bytes(received), True
        received += piece
    return bytes(received), False


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


# -- raw responses, processes ------------------------------------------------------

@dataclass
class RawResponse:
    """One response parsed from raw bytes (see ``parse_responses``)."""

    status: int
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    framing: str  # "content-length", "chunked", "close" or "none"

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_names(self) -> set[str]:
        return {key.lower() for key, _ in self.headers}


def parse_responses(data: bytes, head_requests: frozenset[int] = frozenset(),
                    limit: int = 100) -> list[RawResponse]:
    """Split raw bytes read from a connection into responses, strictly.

    ``head_requests`` holds the indexes of responses that answer HEAD (no
    body).  A response without Content-Length or chunked coding runs to the
    end of ``data`` (close-delimited).  Interim 1xx responses are kept as
    responses of their own.  Raises AssertionError on anything malformed or
    truncated, so a test fails with the bytes it got.
    """
    responses: list[RawResponse] = []
    rest = data
    while rest and len(responses) < limit:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {head[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        version, _, status_text = lines[0].partition(" ")
        assert version.startswith("HTTP/"), f"bad status line {lines[0]!r}"
        status = int(status_text.split(" ", 1)[0])
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            assert colon, f"bad header line {line!r}"
            headers.append((name.strip(), value.strip()))
        response = RawResponse(status, version, headers, b"", "none")
        names = {name.lower(): value for name, value in headers}
        if 100 <= status < 200 or status in (204, 304) or len(responses) in head_requests:
            pass
        elif names.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size_line, crlf, rest = rest.partition(b"\r\n")
                assert crlf, "truncated chunked body"
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    trailer_end = rest.find(b"\r\n")
                    assert trailer_end == 0, "trailers are not expected"
                    rest = rest[2:]
                    break
                assert len(rest) >= size + 2 and rest[size:size + 2] == b"\r\n", "truncated chunk"
                body += rest[:size]
                rest = rest[size + 2:]
            response.body, response.framing = bytes(body), "chunked"
        elif "content-length" in names:
            length = int(names["content-length"])
            assert len(rest) >= length, f"body truncated: {len(rest)} of {length} bytes"
            response.body, rest = rest[:length], rest[length:]
            response.framing = "content-length"
        else:
            response.body, rest, response.framing = rest, b"", "close"
        responses.append(response)
    return responses


def process_rss(pid: int) -> int:
    """The resident set size of process ``pid``, in bytes (Linux /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def process_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return False


def parent_pid(pid: int) -> int:
    """The parent process id of ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("PPid:"):
                return int(line.split()[1])
    raise RuntimeError(f"no PPid for process {pid}")


def served_by_name(headers: http.client.HTTPMessage) -> str:
    """The service name in a response's ``X-Served-By`` header."""
    return parse_served_by(headers.get("X-Served-By"))[0]


# -- TLS ----------------------------------------------------------------------------
#
# Certificates come from gateway.certs (what `gateway certs generate` runs);
# clients always verify: ssl.create_default_context(cafile=...) keeps
# CERT_REQUIRED and check_hostname on.

def make_certificates(directory: Path, name: str = "gateway", hosts: tuple[str, ...] = (),
                      ips: tuple[str, ...] = (), force: bool = False) -> tuple[Path, Path]:
    """``gateway certs generate --out directory [--name ...] [--host ...] [--ip ...]``:
    (cert, key) paths; the local CA is ``directory/ca.crt`` (created once, then reused).
    No hosts and no ips: localhost, 127.0.0.1 and ::1."""
    from gateway.certs import generate_files

    generated = generate_files(str(directory), hosts, ips, name=name, force=force)
    return Path(generated.cert_path), Path(generated.key_path)


def tls_client_context(cafile: Path, minimum: ssl.TLSVersion | None = None,
                       maximum: ssl.TLSVersion | None = None,
                       alpn: list[str] | None = None) -> ssl.SSLContext:
    """A verifying client context trusting ``cafile`` (hostname checked too)."""
    context = ssl.create_default_context(cafile=str(cafile))
    if minimum is not None:
        context.minimum_version = minimum
    if maximum is not None:
        context.maximum_version = maximum
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def tls_connect(port: int, context: ssl.SSLContext, server_hostname: str | None = "localhost",
                host: str = HOST, timeout: float = HTTP_TIMEOUT,
                session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
    """A TCP connection to host:port with a completed (verified) TLS handshake.

    ``server_hostname`` is both the SNI name and the name verified; an IP
    address there sends no SNI (CPython) and is checked against IP SANs.
    """
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        return context.wrap_socket(raw, server_hostname=server_hostname, session=session)
    except BaseException:
        raw.close()
        raise


def request_on(sock: socket.socket, method: str, path: str, headers: Headers = None,
               body: bytes | None = None,
               timeout: float = HTTP_TIMEOUT) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One HTTP/1.1 request on an already connected (e.g. TLS) socket, left open.

    Send a ``Host`` in ``headers`` to choose it (default: 127.0.0.1).
    """
    conn = http.client.HTTPConnection(HOST, timeout=timeout)
    conn.sock = sock
    return _send(conn, method, path, headers, body)


def certificate_der(path: Path) -> bytes:
    """The DER bytes of the (first) certificate in a PEM file."""
    return ssl.PEM_cert_to_DER_cert(Path(path).read_text(encoding="ascii"))


def tls_listener(port: int, certificates: list[tuple[Path, Path]], name: str = "https",
                 **tls: Any) -> dict[str, Any]:
    """A listener config dict with a ``tls:`` section (extra ``tls`` keys as given)."""
    section: dict[str, Any] = {"certificates": [{"cert": str(cert), "key": str(key)}
                                                for cert, key in certificates]}
    section.update(tls)
    return {"name": name, "port": port, "interface": HOST, "tls": section}


# -- a scripted backend ---------------------------------------------------------------

#: A script for one accepted connection: (its index, the socket).
ConnectionScript = Callable[[int, socket.socket], None]


class ScriptedBackend:
    """Accepts up to ``max_connections`` connections on 127.0.0.1, each run by ``script``."""

    def __init__(self, script: ConnectionScript, max_connections: int = 10, timeout: float = 10.0) -> None:
        self.script = script
        self.max_connections = max_connections
        self.timeout = timeout
        self.accepted = 0
        self.errors: list[BaseException] = []
        self._listener = socket.create_server((HOST, 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def _accept_loop(self) -> None:
        deadline = time.monotonic() + 60
        while not self._stop.is_set() and self.accepted < self.max_connections and time.monotonic() < deadline:
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(self.timeout)
            thread = threading.Thread(target=self._run, args=(self.accepted, sock), daemon=True)
            self.accepted += 1
            self._threads.append(thread)
            thread.start()

    def _run(self, index: int, sock: socket.socket) -> None:
        with sock:
            try:
                self.script(index, sock)
            except (OSError, AssertionError) as error:
                self.errors.append(error)

    def __enter__(self) -> ScriptedBackend:
        self._acceptor.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._listener.close()
        self._acceptor.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)


def read_request_head(sock: socket.socket, buffer: bytearray) -> bytes | None:
    """The next request head (through the blank line) from ``sock``; None at EOF. Bounded."""
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > 65536:
            raise AssertionError("request head too large")
        piece = sock.recv(65536)
        if not piece:
            return None
        buffer += piece
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end])
    del buffer[:end]
    return head


def respond(sock: socket.socket, body: bytes, status: str = "200 OK") -> None:
    sock.sendall(b"HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                 % (status.encode(), len(body), body))


