"""The configuration model: a YAML file in, frozen dataclasses out.

Every default and every validation rule of the YAML schema lives here, so
that the rest of the gateway can trust the values it is handed.  A mistake in
the file becomes one :class:`ConfigError` whose message names the file, the
key path, the line (when the YAML library knows it) and what was expected;
nothing here raises anything else for a user's mistake.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import yaml

BALANCE_POLICIES = ("round_robin", "least_conn", "ip_hash")

Path = tuple[Any, ...]


class ConfigError(Exception):
    """A user's mistake in the configuration file, with a readable message."""


@dataclass(frozen=True)
class CertificateConfig:
    cert: str  # PEM certificate (chain) file
    key: str  # PEM private key file


@dataclass(frozen=True)
class TLSConfig:
    certificates: tuple[CertificateConfig, ...]  # the first one is the default (no SNI, no match)
    min_version: str = "1.2"  # "1.2" or "1.3"
    hsts: int | None = None  # Strict-Transport-Security max-age, in seconds
    self_signed: bool = False  # generate absent cert/key files at start-up


@dataclass(frozen=True)
class RedirectConfig:
    """A plain-HTTP listener that sends every request to HTTPS."""

    port: int  # the HTTPS port named in Location (omitted when 443)
    status_other: int = 308  # for methods other than GET and HEAD (which get 301)
    exempt: tuple[str, ...] = ()  # path prefixes routed normally (ACME challenges)


@dataclass(frozen=True)
class ClientTimeouts:
    """Client-side timeouts of a listener, in seconds."""

    header: float = 10.0  # from the first byte of a request (or the connection) to the end of its head
    idle: float = 75.0  # an idle keep-alive connection between requests
    body: float = 60.0  # between two reads of a request body


@dataclass(frozen=True)
class ClientLimits:
    max_header_bytes: int = 16384  # request line + header block (414 / 431 beyond)
    max_headers: int = 100  # header fields per request (431 beyond)
    max_connections: int = 10000  # open client connections on the listener; more are closed at once


@dataclass(frozen=True)
class ListenerConfig:
    name: str
    port: int
    interface: str = "0.0.0.0"
    tls: TLSConfig | None = None
    redirect: RedirectConfig | None = None
    timeouts: ClientTimeouts = ClientTimeouts()
    limits: ClientLimits = ClientLimits()


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    weight: int = 1
    max_fails: int | None = None  # None: the upstream's
    fail_timeout: float | None = None  # None: the upstream's

    @property
    def address(self) -> str:
        """The ``host:port`` form used in the YAML, the logs and the admin API."""
        return format_address(self.host, self.port)


@dataclass(frozen=True)
class HealthCheckConfig:
    """Active health checks: GET *path* on every server each *interval* seconds."""

    path: str = "/healthz"
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2  # consecutive passes that bring a server back
    fall: int = 3  # consecutive failures that take it out
    expect: int = 200  # the status a healthy server answers


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    servers: tuple[ServerConfig, ...]
    balance: str = "round_robin"
    #: Seconds an idle pooled backend connection is kept.  Below Gunicorn's
    #: default keep-alive (2 s) so that the gateway, not the backend, closes it.
    keepalive_timeout: float = 1.5
    #: Idle connections kept per backend server.
    keepalive_connections: int = 128
    connect_timeout: float = 5.0
    read_timeout: float = 60.0  # between two reads of a backend's response
    retries: int | None = None  # extra tries on other servers; None: as many as there are other servers
    retry_timeout: float = 10.0  # no new try once this long has passed since the first
    #: Passive health (nginx's max_fails/fail_timeout): this many failures within
    #: fail_timeout take a server out for fail_timeout.  0 turns it off.
    max_fails: int = 1
    fail_timeout: float = 10.0
    fail_statuses: tuple[int, ...] = ()  # backend statuses that count as failures (e.g. 502, 503, 504)
    health: HealthCheckConfig | None = None


@dataclass(frozen=True)
class RouteConfig:
    path: str
    upstream: str
    host: str | None = None
    strip_prefix: bool = False
    max_body_size: int | None = None  # bytes; larger request bodies get 413


@dataclass(frozen=True)
class ProcessConfig:
    name: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class AdminConfig:
    host: str
    port: int
    token_file: str | None = None


@dataclass(frozen=True)
class GatewayConfig:
    source: str
    listeners: tuple[ListenerConfig, ...]
    upstreams: Mapping[str, UpstreamConfig]
    routes: tuple[RouteConfig, ...]
    processes: tuple[ProcessConfig, ...] = ()
    access_log: str | None = "-"
    admin: AdminConfig | None = None
    state_file: str | None = None  # where live changes are persisted (see gateway.core.state)
    shutdown_timeout: float = 10.0  # seconds requests in flight get to finish on SIGTERM
    workers: int = 1  # processes serving traffic; more than one runs a master (see gateway.workers)


MAX_WORKERS = 256


def available_cores() -> int:
    """The cores this process may run on: what ``workers: auto`` means."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float | None:
    """Seconds from 2, 0.5, "500ms", "2s", "1m" or "1h"; None when it is not a duration > 0."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value > 0 else None
    if isinstance(value, str):
        text = value.strip().lower()
        for unit in ("ms", "s", "m", "h"):
            if text.endswith(unit):
                try:
                    number = float(text[: -len(unit)])
                except ValueError:
                    return None
                return number * _DURATION_UNITS[unit] if number > 0 else None
    return None


def parse_address(text: str) -> tuple[str, int]:
    """Split ``host:port`` (or ``[v6]:port``); raise ValueError when malformed."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError("expected host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    elif ":" in host:
        raise ValueError("an IPv6 address must be written in brackets, like [::1]:8000")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError("port must be between 1 and 65535")
    return host, port


def load_config(path: str) -> GatewayConfig:
    """Read and validate the YAML file at *path*."""
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the configuration file: {error.strerror}") from None
    return parse_config(text, path)


def parse_config(text: str, source: str = "<config>") -> GatewayConfig:
    """Validate the YAML document *text*; *source* names it in error messages."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{source}{where}: not valid YAML: {problem}") from None
    lines: dict[Path, int] = {}
    validator = _Validator(source, lines)
    if node is not None:
        _record_lines(node, (), node.start_mark.line + 1, lines, validator)
    return validator.gateway(data)


def _record_lines(node: yaml.Node, path: Path, line: int, lines: dict[Path, int], validator: _Validator) -> None:
    """Note the line of every key path (the key's own line), and refuse duplicate keys.

    PyYAML keeps the last of two equal keys without a word, which would
    silently drop, say, the first of two ``web:`` upstreams.
    """
    lines[path] = line
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key_path = path + (key_node.value,)
                key_line = key_node.start_mark.line + 1
                if key_node.value in seen:
                    lines[key_path] = key_line
                    raise validator.fail(key_path, "duplicate key: this key appears twice in the same mapping")
                seen.add(key_node.value)
                _record_lines(value_node, key_path, key_line, lines, validator)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, path + (index,), item.start_mark.line + 1, lines, validator)


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


class _Validator:
    """Walks the parsed YAML, keeping the key path for error messages."""

    def __init__(self, source: str, lines: Mapping[Path, int]) -> None:
        self.source = source
        self.lines = lines

    def fail(self, path: Path, expected: str) -> ConfigError:
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
        line = self.lines.get(path)
        where = f" (line {line})" if line else ""
        return ConfigError(f"{self.source}: {key or 'top level'}{where}: {expected}")

    def mapping(self, value: Any, path: Path, allowed: tuple[str, ...],
                required: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {_type_name(value)}")
        for key in value:
            if key not in allowed:
                raise self.fail(path + (key,), f"unknown key; expected one of: {', '.join(allowed)}")
        for key in required:
            if key not in value:
                raise self.fail(path, f"missing required key '{key}'")
        return value

    def typed(self, value: Any, path: Path, kind: type, what: str) -> Any:
        # bool is a subclass of int: "port: yes" is a mistake, not port 1.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(path, f"expected {what}, got {_type_name(value)} {value!r}")
        return value

    def integer(self, value: Any, path: Path, low: int, high: int | None = None) -> int:
        what = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
        number = self.typed(value, path, int, what)
        if number < low or (high is not None and number > high):
            raise self.fail(path, f"expected {what}, got {number}")
        return number

    def number(self, value: Any, path: Path, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise self.fail(path, f"expected {what}, got {_type_name(value)} {value!r}")
        return float(value)

    def each(self, value: Any, path: Path, item: Callable[[Any, Path], Any]) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list, got {_type_name(value)}")
        return tuple(item(element, path + (index,)) for index, element in enumerate(value))

    # -- the schema ---------------------------------------------------------

    def gateway(self, data: Any) -> GatewayConfig:
        top = self.mapping(data, (), ("listeners", "upstreams", "routes", "processes", "access_log", "admin",
                                      "state_file", "shutdown_timeout", "workers"),
                           required=("listeners", "upstreams", "routes"))
        listeners = self.each(top["listeners"], ("listeners",), self.listener)
        if not listeners:
            raise self.fail(("listeners",), "expected at least one listener")
        self.unique([(listener.name, ("listeners", i, "name")) for i, listener in enumerate(listeners)],
                    "listener name")
        self.unique([((listener.interface, listener.port), ("listeners", i, "port"))
                     for i, listener in enumerate(listeners) if listener.port != 0],
                    "interface and port")
        upstreams_data = self.mapping(top["upstreams"], ("upstreams",), tuple(
            top["upstreams"]) if isinstance(top["upstreams"], dict) else ())
        upstreams = {self.name(name, ("upstreams", name)): self.upstream(name, value, ("upstreams", name))
                     for name, value in upstreams_data.items()}
        routes = self.each(top["routes"], ("routes",), lambda v, p: self.route(v, p, upstreams))
        processes_data = top.get("processes") or {}
        processes_data = self.mapping(processes_data, ("processes",),
                                      tuple(processes_data) if isinstance(processes_data, dict) else ())
        processes = tuple(self.process(name, value, ("processes", name))
                          for name, value in processes_data.items())
        access_log = top.get("access_log", "-")
        if access_log is not None:
            self.typed(access_log, ("access_log",), str, '"-" for standard output, a file path, or null')
        admin = self.admin(top["admin"], ("admin",)) if top.get("admin") is not None else None
        state_file = top.get("state_file")
        if state_file is not None:
            self.typed(state_file, ("state_file",), str, "a file path")
        shutdown_timeout = self.number(top.get("shutdown_timeout", 10), ("shutdown_timeout",),
                                       "a number of seconds > 0")
        workers = top.get("workers", 1)
        if workers == "auto":
            workers = available_cores()
        elif isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
            raise self.fail(("workers",), f'expected an integer from 1 to {MAX_WORKERS} or "auto", '
                            f"got {_type_name(workers)} {workers!r}")
        return GatewayConfig(source=self.source, listeners=listeners, upstreams=upstreams,
                             routes=routes, processes=processes, access_log=access_log, admin=admin,
                             state_file=state_file, shutdown_timeout=shutdown_timeout, workers=workers)

    def admin(self, value: Any, path: Path) -> AdminConfig:
        data = self.mapping(value, path, ("listen", "token_file"))
        listen = self.typed(data.get("listen", "127.0.0.1:8099"), path + ("listen",), str,
                            'an address like "127.0.0.1:8099"')
        try:
            host, port = parse_address(listen)
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError as error:
            raise self.fail(path + ("listen",), f'expected an IP address and port like "127.0.0.1:8099" '
                            f"({error}), got {listen!r}") from None
        token_file = data.get("token_file")
        if token_file is not None:
            self.typed(token_file, path + ("token_file",), str, "a file path")
        elif not loopback:
            raise self.fail(path + ("listen",), f"the admin API may listen on {host}, which is not a loopback "
                            "address, only when admin.token_file is set")
        return AdminConfig(host=host, port=port, token_file=token_file)

    def unique(self, items: list[tuple[Any, Path]], what: str) -> None:
        seen: set[Any] = set()
        for value, path in items:
            if value in seen:
                shown = value if isinstance(value, str) else ":".join(map(str, value))
                raise self.fail(path, f"duplicate {what} {shown}")
            seen.add(value)

    def name(self, value: Any, path: Path) -> str:
        text = self.typed(value, path, str, "a name")
        if not text or any(c.isspace() or c == "/" for c in text):
            raise self.fail(path, f"expected a name without spaces or '/', got {text!r}")
        return text

    def listener(self, value: Any, path: Path) -> ListenerConfig:
        data = self.mapping(value, path, ("name", "port", "interface", "tls", "redirect_https",
                                          "redirect_status_other", "redirect_exempt", "timeouts", "limits"),
                            required=("port",))
        port = self.integer(data["port"], path + ("port",), 0, 65535)
        interface = self.typed(data.get("interface", "0.0.0.0"), path + ("interface",), str,
                               "an IP address such as 127.0.0.1")
        try:
            ipaddress.ip_address(interface)
        except ValueError:
            raise self.fail(path + ("interface",),
                            f"expected an IP address such as 127.0.0.1 or ::, got {interface!r}") from None
        name = self.name(data.get("name", f"listener-{path[-1]}"), path + ("name",))
        tls = self.tls(data["tls"], path + ("tls",)) if "tls" in data else None
        redirect = None
        if "redirect_https" in data:
            if tls is not None:
                raise self.fail(path + ("redirect_https",), "a TLS listener cannot redirect to HTTPS itself; "
                                "put redirect_https on a plain-HTTP listener")
            status_other = data.get("redirect_status_other", 308)
            if status_other not in (301, 302, 307, 308) or isinstance(status_other, bool):
                raise self.fail(path + ("redirect_status_other",), f"expected 301, 302, 307 or 308, got {status_other!r}")
            exempt = self.each(data.get("redirect_exempt", []), path + ("redirect_exempt",), self.path_prefix)
            redirect = RedirectConfig(port=self.integer(data["redirect_https"], path + ("redirect_https",), 1, 65535),
                                      status_other=status_other, exempt=exempt)
        else:
            for key in ("redirect_status_other", "redirect_exempt"):
                if key in data:
                    raise self.fail(path + (key,), "only meaningful together with redirect_https")
        timeouts_data = self.mapping(data.get("timeouts", {}), path + ("timeouts",), ("header", "idle", "body"))
        defaults = ClientTimeouts()
        timeouts = ClientTimeouts(**{key: self.duration(timeouts_data.get(key, getattr(defaults, key)),
                                                        path + ("timeouts", key))
                                     for key in ("header", "idle", "body")})
        limits_data = self.mapping(data.get("limits", {}), path + ("limits",),
                                   ("max_header_bytes", "max_headers", "max_connections"))
        default_limits = ClientLimits()
        limits = ClientLimits(**{key: self.integer(limits_data.get(key, getattr(default_limits, key)),
                                                   path + ("limits", key), 1)
                                 for key in ("max_header_bytes", "max_headers", "max_connections")})
        return ListenerConfig(name=name, port=port, interface=interface, tls=tls, redirect=redirect,
                              timeouts=timeouts, limits=limits)

    def duration(self, value: Any, path: Path) -> float:
        """Seconds, as a number or a string like "500ms", "2s", "1m"."""
        seconds = parse_duration(value)
        if seconds is None:
            raise self.fail(path, f'expected a duration > 0 in seconds (a number, or "500ms", "2s", "1m"), '
                            f"got {_type_name(value)} {value!r}")
        return seconds

    def tls(self, value: Any, path: Path) -> TLSConfig:
        data = self.mapping(value, path, ("certificates", "min_version", "hsts", "self_signed"),
                            required=("certificates",))
        certificates = self.each(data["certificates"], path + ("certificates",), self.certificate)
        if not certificates:
            raise self.fail(path + ("certificates",), "expected at least one {cert, key} pair")
        min_version = data.get("min_version", "1.2")
        if isinstance(min_version, float):
            min_version = f"{min_version:.1f}"  # an unquoted 1.2 in YAML is a number
        if min_version not in ("1.2", "1.3"):
            raise self.fail(path + ("min_version",), f'expected "1.2" or "1.3", got {min_version!r}')
        hsts = data.get("hsts")
        if hsts is not None:
            hsts = self.integer(hsts, path + ("hsts",), 0)
        self_signed = self.typed(data.get("self_signed", False), path + ("self_signed",), bool, "true or false")
        return TLSConfig(certificates=certificates, min_version=min_version, hsts=hsts, self_signed=self_signed)

    def certificate(self, value: Any, path: Path) -> CertificateConfig:
        data = self.mapping(value, path, ("cert", "key"), required=("cert", "key"))
        cert = self.typed(data["cert"], path + ("cert",), str, "a certificate file path")
        key = self.typed(data["key"], path + ("key",), str, "a private key file path")
        return CertificateConfig(cert=cert, key=key)

    def request_target(self, value: Any, path: Path) -> str:
        target = self.typed(value, path, str, "a path starting with /")
        if not target.startswith("/") or any(c.isspace() or not c.isprintable() for c in target):
            raise self.fail(path, f"expected a path starting with / (an optional ?query allowed), got {target!r}")
        return target

    def path_prefix(self, value: Any, path: Path) -> str:
        prefix = self.typed(value, path, str, "a path starting with /")
        if not prefix.startswith("/") or any(c.isspace() for c in prefix) or "?" in prefix:
            raise self.fail(path, f"expected a path starting with / (no spaces or '?'), got {prefix!r}")
        return prefix

    def upstream(self, name: str, value: Any, path: Path) -> UpstreamConfig:
        data = self.mapping(value, path, ("balance", "servers", "keepalive_timeout", "keepalive_connections",
                                          "timeouts", "retries", "retry_timeout", "max_fails", "fail_timeout",
                                          "fail_statuses", "health"), required=("servers",))
        balance = self.typed(data.get("balance", "round_robin"), path + ("balance",), str,
                             "one of " + ", ".join(BALANCE_POLICIES))
        if balance not in BALANCE_POLICIES:
            raise self.fail(path + ("balance",),
                            f"expected one of {', '.join(BALANCE_POLICIES)}, got {balance!r}")
        servers = self.each(data["servers"], path + ("servers",), self.server)
        self.unique([(server.address, path + ("servers", i, "address"))
                     for i, server in enumerate(servers)], "server")
        keepalive_timeout = self.number(data.get("keepalive_timeout", 1.5), path + ("keepalive_timeout",),
                                        "a number of seconds > 0")
        keepalive_connections = self.integer(data.get("keepalive_connections", 128),
                                             path + ("keepalive_connections",), 0)
        timeouts = self.mapping(data.get("timeouts", {}), path + ("timeouts",), ("connect", "read"))
        retries = data.get("retries")
        if retries is not None:
            retries = self.integer(retries, path + ("retries",), 0)
        fail_statuses = self.each(data.get("fail_statuses", []), path + ("fail_statuses",),
                                  lambda v, p: self.integer(v, p, 500, 599))
        health = self.health(data["health"], path + ("health",)) if data.get("health") is not None else None
        return UpstreamConfig(
            name=name, servers=servers, balance=balance, keepalive_timeout=keepalive_timeout,
            keepalive_connections=keepalive_connections,
            connect_timeout=self.duration(timeouts.get("connect", 5), path + ("timeouts", "connect")),
            read_timeout=self.duration(timeouts.get("read", 60), path + ("timeouts", "read")),
            retries=retries, retry_timeout=self.duration(data.get("retry_timeout", 10), path + ("retry_timeout",)),
            max_fails=self.integer(data.get("max_fails", 1), path + ("max_fails",), 0),
            fail_timeout=self.duration(data.get("fail_timeout", 10), path + ("fail_timeout",)),
            fail_statuses=fail_statuses, health=health)

    def health(self, value: Any, path: Path) -> HealthCheckConfig:
        data = self.mapping(value, path, ("path", "interval", "timeout", "rise", "fall", "expect"))
        defaults = HealthCheckConfig()
        return HealthCheckConfig(
            path=self.request_target(data.get("path", defaults.path), path + ("path",)),
            interval=self.duration(data.get("interval", defaults.interval), path + ("interval",)),
            timeout=self.duration(data.get("timeout", defaults.timeout), path + ("timeout",)),
            rise=self.integer(data.get("rise", defaults.rise), path + ("rise",), 1),
            fall=self.integer(data.get("fall", defaults.fall), path + ("fall",), 1),
            expect=self.integer(data.get("expect", defaults.expect), path + ("expect",), 100, 599))

    def server(self, value: Any, path: Path) -> ServerConfig:
        data = self.mapping(value, path, ("address", "weight", "max_fails", "fail_timeout"), required=("address",))
        address = self.typed(data["address"], path + ("address",), str, 'an address like "127.0.0.1:8001"')
        try:
            host, port = parse_address(address)
        except ValueError as error:
            raise self.fail(path + ("address",),
                            f'expected an address like "127.0.0.1:8001" ({error}), got {address!r}') from None
        weight = self.integer(data.get("weight", 1), path + ("weight",), 1)
        max_fails = self.integer(data["max_fails"], path + ("max_fails",), 0) if "max_fails" in data else None
        fail_timeout = self.duration(data["fail_timeout"], path + ("fail_timeout",)) if "fail_timeout" in data else None
        return ServerConfig(host=host, port=port, weight=weight, max_fails=max_fails, fail_timeout=fail_timeout)

    def route(self, value: Any, path: Path, upstreams: Mapping[str, UpstreamConfig]) -> RouteConfig:
        data = self.mapping(value, path, ("path", "upstream", "host", "strip_prefix", "max_body_size"),
                            required=("path", "upstream"))
        prefix = self.path_prefix(data["path"], path + ("path",))
        upstream = self.typed(data["upstream"], path + ("upstream",), str, "an upstream name")
        if upstream not in upstreams:
            known = ", ".join(upstreams) or "none defined"
            raise self.fail(path + ("upstream",),
                            f"unknown upstream {upstream!r}; expected one of the names under 'upstreams' ({known})")
        host = data.get("host")
        if host is not None:
            host = self.typed(host, path + ("host",), str, "a host name").lower()
        strip_prefix = self.typed(data.get("strip_prefix", False), path + ("strip_prefix",), bool,
                                  "true or false")
        max_body_size = data.get("max_body_size")
        if max_body_size is not None:
            max_body_size = self.integer(max_body_size, path + ("max_body_size",), 0)
        return RouteConfig(path=prefix, upstream=upstream, host=host, strip_prefix=strip_prefix,
                           max_body_size=max_body_size)

    def process(self, name: Any, value: Any, path: Path) -> ProcessConfig:
        self.name(name, path)
        command = self.typed(value, path, str, "a command line")
        try:
            argv = tuple(shlex.split(command))
        except ValueError as error:
            raise self.fail(path, f"expected a command line ({error})") from None
        if not argv:
            raise self.fail(path, "expected a command line, got an empty string")
        return ProcessConfig(name=name, argv=argv)
