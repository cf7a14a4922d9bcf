"""Everything the benchmark starts: upstreams, proxies under test, demo backends.

Every process is started in its own process group (and dies with the
benchmark if the benchmark is killed: ``PR_SET_PDEATHSIG``), is registered in
a :class:`Processes`, and is stopped with its whole group: SIGTERM, then
SIGKILL after a few seconds.  Every server listens on 127.0.0.1 only, on a
port that was free a moment before (other test suites may share the machine,
so no fixed ports).

Pinning: the proxy under test runs on CPU 0 (``taskset -c 0``); the load
generator, the upstreams and the benchmark itself run on CPU 1.
"""

from __future__ import annotations

import ctypes
import http.client
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
PROXY_CPU = "0"
LOAD_CPU = "1"
ALL_CPUS = ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0)))  # before bench.py pins itself
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
BIG_BYTES = 10 * 1024 * 1024  # the download and upload body
DEMO_CONFIG = REPO / "config" / "demo.yaml"


class StartError(RuntimeError):
    """A server did not come up; the message ends with the tail of its log."""


# -- processes ----------------------------------------------------------------

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def die_with_parent() -> None:
    """In the child, before exec: get SIGKILL if the benchmark itself dies (PR_SET_PDEATHSIG = 1)."""
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        """SIGTERM to the whole process group, SIGKILL if some of it is still there after STOP_TIMEOUT."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                break
            if self._wait_group_gone(STOP_TIMEOUT):
                break
        self.popen.poll()

    def _wait_group_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.popen.poll()  # reap the leader, or the group never looks empty
            if not _group_exists(self.popen.pid):
                return True
            time.sleep(0.05)
        return False

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Processes:
    """The registry of started processes; ``stop_all`` ends every one of them."""

    def __init__(self, log_dir: Path, pin: bool):
        self.log_dir = log_dir
        self.pin = pin
        self.running: list[Process] = []

    def start(self, name: str, argv: list[str], cpu: str | None, cwd: Path | None = None,
              env: dict[str, str] | None = None) -> Process:
        prefix = ["taskset", "-c", cpu] if self.pin and cpu is not None else []
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(prefix + argv, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                     start_new_session=True, preexec_fn=die_with_parent)
        process = Process(name, popen, log_path)
        self.running.append(process)
        return process

    def stop(self, process: Process) -> None:
        process.stop()
        if process in self.running:
            self.running.remove(process)

    def stop_all(self) -> None:
        while self.running:
            self.stop(self.running[-1])


# -- ports and readiness --------------------------------------------------------

def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def http_status(port: int, path: str = "/", timeout: float = 2.0) -> int:
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def port_accepts(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1.0).close()
        return True
    except OSError:
        return False


def wait_until_serving(process: Process, port: int, path: str = "/", timeout: float = START_TIMEOUT) -> None:
    """Until GET *path* on *port* answers 200, or raise StartError with the log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise StartError(f"{process.name} exited ({process.popen.returncode}):\n{process.log_tail()}")
        try:
            if http_status(port, path) == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise StartError(f"{process.name} not serving on port {port} after {timeout:.0f} s:\n{process.log_tail()}")


def wait_until_accepting(process: Process, port: int, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise StartError(f"{process.name} exited ({process.popen.returncode}):\n{process.log_tail()}")
        if port_accepts(port):
            return
        time.sleep(0.1)
    raise StartError(f"{process.name} not accepting on port {port} after {timeout:.0f} s:\n{process.log_tail()}")


# -- upstreams (the servers behind the proxies) -------------------------------------

@dataclass
class Server:
    name: str
    port: int
    weight: int


@dataclass
class Backends:
    """The servers of one upstream, weights 3:1; ``upload_logs`` lists what nginx logged of /upload."""

    kind: str  # "fast" (static nginx) or "demo" (Gunicorn + Flask)
    servers: list[Server]
    upload_logs: list[Path] = field(default_factory=list)

    @property
    def first(self) -> Server:
        return self.servers[0]


def nginx_upstream_config(workdir: Path, name: str, port: int, big_file: Path, upload_log: Path) -> str:
    """A static server: / is a 5-byte "hello", /big 10 MiB, /upload reads the whole body and answers 200.

    /upload: ``return 200`` alone would answer before reading the body (and
    then discard it), so the body is read the way proxy_pass reads it
    (request buffering, in memory), then dropped; the access log line records
    ``$request_length``, which the benchmark checks after the upload scenario.
    """
    return textwrap.dedent(f"""\
        worker_processes 1;
        daemon off;
        pid {workdir}/nginx.pid;
        error_log {workdir}/error.log warn;
        events {{ worker_connections 16384; }}
        http {{
            access_log off;
            sendfile on;
            keepalive_requests 1000000;
            keepalive_timeout 75s;
            client_body_temp_path {workdir}/client_body;
            proxy_temp_path {workdir}/proxy;
            log_format upload '$request_length $status';
            server {{
                listen {HOST}:{port} backlog=4096;
                add_header X-Upstream {name} always;
                location = / {{ default_type text/plain; return 200 "hello"; }}
                location = /big {{ alias {big_file}; default_type application/octet-stream; }}
                location = /upload {{
                    access_log {upload_log} upload;
                    client_max_body_size 0;
                    client_body_buffer_size 16m;
                    proxy_pass http://{HOST}:{port}/sunk;
                    proxy_pass_request_body off;
                    proxy_set_header Content-Length "";
                }}
                location = /sunk {{ return 200 "ok"; }}
            }}
        }}
        """)


def make_big_file(workdir: Path) -> Path:
    path = workdir / "big.bin"
    with open(path, "wb") as stream:
        block = b"0123456789abcdef" * 4096
        for _ in range(BIG_BYTES // len(block)):
            stream.write(block)
    path.chmod(0o644)
    return path


def nginx_dir(workdir: Path, name: str) -> Path:
    """A prefix directory nginx's workers (``nobody`` when run as root) can use."""
    prefix = workdir / name
    for sub in ("", "client_body", "proxy", "fastcgi_temp", "uwsgi_temp", "scgi_temp"):
        (prefix / sub).mkdir(exist_ok=True)
        (prefix / sub).chmod(0o777)
    return prefix


def nginx_argv(prefix: Path, config: str) -> list[str]:
    (prefix / "nginx.conf").write_text(config)
    return ["nginx", "-p", f"{prefix}/", "-e", f"{prefix}/error.log", "-c", f"{prefix}/nginx.conf"]


def start_fast_upstreams(procs: Processes, workdir: Path, use_nginx: bool) -> Backends:
    """Two static servers on two ports, weights 3:1: nginx, or a tiny Twisted server (smoke without nginx)."""
    big_file = make_big_file(workdir)
    backends = Backends("fast", [])
    for name, weight in (("a", 3), ("b", 1)):
        port = free_port()
        if use_nginx:
            prefix = nginx_dir(workdir, f"upstream-{name}")
            upload_log = prefix / "upload.log"
            argv = nginx_argv(prefix, nginx_upstream_config(prefix, name, port, big_file, upload_log))
            backends.upload_logs.append(upload_log)
        else:
            argv = [sys.executable, str(REPO / "bench" / "tiny_upstream.py"), str(port), name, str(big_file)]
        process = procs.start(f"upstream-{name}", argv, LOAD_CPU, cwd=workdir)
        wait_until_serving(process, port)
        backends.servers.append(Server(f"upstream-{name}", port, weight))
    return backends


def demo_commands() -> list[tuple[str, list[str], int]]:
    """(name, argv, weight) of the `web` backends of config/demo.yaml, as that file starts them."""
    config = yaml.safe_load(DEMO_CONFIG.read_text())
    weights = {server["address"]: server.get("weight", 1) for server in config["upstreams"]["web"]["servers"]}
    commands = []
    for name, command in config["processes"].items():
        argv = shlex.split(command)
        address = argv[argv.index("--bind") + 1]
        if address in weights:
            commands.append((name, argv, weights[address]))
    return commands


def start_demo_backends(procs: Processes) -> Backends:
    """The demo stack's Gunicorn/Flask `web` backends (gthread, 4 threads), on free ports."""
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    backends = Backends("demo", [])
    started = []
    for name, argv, weight in demo_commands():
        port = free_port()
        argv = [str(VENV_BIN / argv[0]) if argv[0] == "gunicorn" else argv[0]] + argv[1:]
        argv[argv.index("--bind") + 1] = f"{HOST}:{port}"
        started.append((procs.start(name, argv, LOAD_CPU, cwd=REPO, env=env), port))
        backends.servers.append(Server(name, port, weight))
    for process, port in started:
        wait_until_serving(process, port)
    return backends


# -- the proxies under test -------------------------------------------------------

@dataclass
class Certs:
    cert: Path
    key: Path
    pem: Path  # certificate and key in one file, for HAProxy


def generate_certs(workdir: Path) -> Certs:
    """ECDSA P-256 certificates from ``gateway certs generate``, shared by every TLS proxy."""
    out = workdir / "certs"
    subprocess.run([str(VENV_BIN / "gateway"), "certs", "generate", "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL, timeout=60)
    certs = Certs(out / "gateway.crt", out / "gateway.key", out / "haproxy.pem")
    certs.pem.write_bytes(certs.cert.read_bytes() + certs.key.read_bytes())
    for path in out.iterdir():
        path.chmod(0o644)  # nginx reads them as root, but keep it simple for non-root runs too
    out.chmod(0o755)
    return certs


@dataclass
class RunningProxy:
    name: str
    process: Process | None  # None for "direct"
    http_port: int
    tls_port: int | None
    max_connections: int  # client connections it can hold open


def haproxy_max_connections(wanted: int) -> int:
    """HAProxy reserves two descriptors per connection and refuses to start beyond the open-files limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, (hard - 500) // 2)


@dataclass(frozen=True)
class Proxy:
    name: str
    label: str
    program: str | None  # the executable it needs, None for our own
    tls: bool = True
    workers: int = 1  # more than one: runs on every CPU (not pinned), in the keep-alive scenarios only

    @property
    def cpus(self) -> str:
        return PROXY_CPU if self.workers == 1 else ALL_CPUS

    def available(self) -> bool:
        return self.program is None or shutil.which(self.program) is not None


PROXIES = {
    "direct": Proxy("direct", "no proxy (wrk straight to the first upstream)", None, tls=False),
    "gateway": Proxy("gateway", "gateway (twistd, 1 process, access_log null)", None),
    "nginx": Proxy("nginx", "nginx, 1 worker, upstream keepalive 32, streaming through 64 KiB proxy buffers, "
                   "TLS 1.2 and 1.3", "nginx"),
    "haproxy": Proxy("haproxy", "HAProxy, nbthread 1, http-reuse always, tune.bufsize 64 KiB", "haproxy"),
    "twisted-web": Proxy("twisted-web", "twisted.web.proxy.ReverseProxyResource (first upstream only)", None),
    "gateway-w2": Proxy("gateway-w2", "gateway with `workers: 2` (a master and 2 worker processes), on both "
                        "CPUs", None, workers=2),
    "nginx-w2": Proxy("nginx-w2", "nginx with `worker_processes 2`, otherwise as above, on both CPUs", "nginx",
                      workers=2),
}


def gateway_config(backends: Backends, http_port: int, tls_port: int, certs: Certs, max_connections: int,
                   workers: int = 1) -> str:
    config = {
        "listeners": [
            {"name": "http", "port": http_port, "interface": HOST, "limits": {"max_connections": max_connections}},
            {"name": "https", "port": tls_port, "interface": HOST, "limits": {"max_connections": max_connections},
             "tls": {"certificates": [{"cert": str(certs.cert), "key": str(certs.key)}]}},
        ],
        "upstreams": {"bench": {"servers": [{"address": f"{HOST}:{s.port}", "weight": s.weight}
                                            for s in backends.servers]}},
        "routes": [{"path": "/", "upstream": "bench"}],
        "access_log": None,
        "shutdown_timeout": 2,
        "workers": workers,
    }
    return yaml.safe_dump(config, sort_keys=False)


def nginx_proxy_config(prefix: Path, backends: Backends, http_port: int, tls_port: int, certs: Certs,
                       max_connections: int, workers: int = 1) -> str:
    """nginx as the reverse proxy: the headers the gateway sets, streaming both ways, no access log.

    keepalive_requests is raised (client side and upstream side) because the
    gateway has no such limit; request and response bodies are streamed
    (``proxy_request_buffering off``, no temporary files), like the gateway,
    through 64 KiB buffers, the size of the gateway's (Twisted's) reads: with
    nginx's default 4 KiB buffers its 10 MiB download rate is about halved.
    """
    servers = "\n".join(f"                server {HOST}:{s.port} weight={s.weight};" for s in backends.servers)
    return textwrap.dedent(f"""\
        worker_processes {workers};
        daemon off;
        pid {prefix}/nginx.pid;
        error_log {prefix}/error.log warn;
        worker_rlimit_nofile {max_connections + 1024};
        events {{ worker_connections {max_connections + 512}; }}
        http {{
            access_log off;
            keepalive_requests 1000000;
            keepalive_timeout 75s;
            client_max_body_size 0;
            client_body_temp_path {prefix}/client_body;
            proxy_temp_path {prefix}/proxy;
            proxy_request_buffering off;
            proxy_max_temp_file_size 0;
            proxy_buffer_size 64k;
            proxy_buffers 8 64k;
            upstream backend {{
{servers}
                keepalive 32;
                keepalive_requests 1000000;
            }}
            server {{
                listen {HOST}:{http_port} backlog=4096;
                listen {HOST}:{tls_port} ssl backlog=4096;
                ssl_protocols TLSv1.2 TLSv1.3;  # nginx 1.22's default has no TLS 1.3
                ssl_certificate {certs.cert};
                ssl_certificate_key {certs.key};
                ssl_session_cache shared:SSL:10m;
                location / {{
                    proxy_pass http://backend;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    proxy_set_header Host $http_host;
                    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
                    proxy_set_header X-Forwarded-Proto $scheme;
                    proxy_set_header X-Forwarded-Host $host;
                }}
            }}
        }}
        """)


def haproxy_config(backends: Backends, http_port: int, tls_port: int, certs: Certs, max_connections: int) -> str:
    """HAProxy with one thread, the headers the gateway sets, 64 KiB buffers (default 16 KiB) like the gateway's."""
    servers = "\n".join(f"    server {s.name} {HOST}:{s.port} weight {s.weight}" for s in backends.servers)
    return textwrap.dedent(f"""\
        global
            nbthread 1
            maxconn {max_connections}
            tune.bufsize 65536
        defaults
            mode http
            option http-keep-alive
            timeout connect 5s
            timeout client 75s
            timeout server 60s
            timeout http-request 10s
            timeout http-keep-alive 75s
        frontend bench
            bind {HOST}:{http_port} backlog 4096
            bind {HOST}:{tls_port} ssl crt {certs.pem} backlog 4096
            option forwardfor
            http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
            http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}
            http-request set-header X-Forwarded-Host %[req.hdr(host)]
            default_backend upstreams
        backend upstreams
            balance roundrobin
            http-reuse always
        """) + servers + "\n"


def proxy_argv(name: str, workdir: Path, backends: Backends, http_port: int, tls_port: int,
               certs: Certs, max_connections: int) -> list[str]:
    """Write the proxy's configuration file and return the command that runs it in the foreground."""
    workers = PROXIES[name].workers
    if name.startswith("gateway"):
        path = workdir / "gateway.yaml"
        path.write_text(gateway_config(backends, http_port, tls_port, certs, max_connections, workers))
        return [str(VENV_BIN / "twistd"), "-n", "--pidfile=", "gateway", "-c", str(path)]
    if name.startswith("nginx"):
        prefix = nginx_dir(workdir, "nginx-proxy")
        return nginx_argv(prefix, nginx_proxy_config(prefix, backends, http_port, tls_port, certs, max_connections,
                                                     workers))
    if name == "haproxy":
        path = workdir / "haproxy.cfg"
        path.write_text(haproxy_config(backends, http_port, tls_port, certs, max_connections))
        return ["haproxy", "-db", "-f", str(path)]
    if name == "twisted-web":
        tls = f"ssl:port={tls_port}:interface={HOST}:privateKey={certs.key}:certKey={certs.cert}"
        return [sys.executable, str(REPO / "bench" / "twisted_web_proxy.py"),
                f"tcp:port={http_port}:interface={HOST}", tls, f"{HOST}:{backends.first.port}"]
    raise ValueError(f"unknown proxy {name!r}")


def start_proxy(procs: Processes, name: str, workdir: Path, backends: Backends, certs: Certs,
                max_connections: int) -> RunningProxy:
    """Start one proxy pinned to the proxy CPU (or every CPU, with workers), in front of *backends*; wait until it proxies."""
    if name == "direct":
        return RunningProxy("direct", None, backends.first.port, None, max_connections)
    if name == "haproxy":
        max_connections = haproxy_max_connections(max_connections)
    proxy_dir = workdir / f"{name}-{backends.kind}"
    proxy_dir.mkdir(exist_ok=True)
    proxy_dir.chmod(0o755)
    http_port, tls_port = free_port(), free_port()
    argv = proxy_argv(name, proxy_dir, backends, http_port, tls_port, certs, max_connections)
    process = procs.start(f"{name}-{backends.kind}", argv, PROXIES[name].cpus, cwd=proxy_dir)
    try:
        wait_until_serving(process, http_port)
        wait_until_accepting(process, tls_port)
    except StartError:
        procs.stop(process)
        raise
    return RunningProxy(name, process, http_port, tls_port, max_connections)
