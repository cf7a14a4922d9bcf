"""The ``gateway`` command: tools around a running or future gateway.

``gateway check -c FILE`` validates a configuration without starting (like ``nginx -t``).
``gateway certs generate`` makes a local CA and a server certificate (or one
self-signed certificate); ``gateway certs show FILE`` describes a certificate.
``gateway backends list|add|remove|set`` shows and changes the servers of a
running gateway through its admin API (see :mod:`gateway.admin.client`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

from gateway import certs
from gateway.admin.client import DEFAULT_ADMIN_URL, DEFAULT_TIMEOUT, AdminClient, AdminError, admin_url
from gateway.admin.tokens import TokenError, read_token
from gateway.core.config import ConfigError, load_config


def check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"gateway: configuration error: {error}", file=sys.stderr)
        return 1
    servers = sum(len(upstream.servers) for upstream in config.upstreams.values())
    print(f"{args.config}: configuration OK: {len(config.listeners)} listener(s), "
          f"{len(config.upstreams)} upstream(s) with {servers} server(s), {len(config.routes)} route(s), "
          f"{len(config.processes)} process(es), {config.workers} worker(s)")
    return 0


def certs_generate(args: argparse.Namespace) -> int:
    try:
        result = certs.generate_files(args.out, args.host, args.ip, name=args.name, days=args.days,
                                      force=args.force, self_signed=args.self_signed)
    except certs.CertificateError as error:
        print(f"gateway: {error}", file=sys.stderr)
        return 1
    if result.ca_cert_path is not None:
        verb = "created" if result.ca_created else "reused"
        ca_key_path = certs.local_ca_paths(args.out)[1]
        print(f"{verb} local CA {result.ca_cert_path} (key {ca_key_path})")
    kind = "self-signed certificate" if result.ca_cert_path is None else "certificate"
    print(f"wrote {kind} {result.cert_path} (key {result.key_path}) for {result.names}, "
          f"valid until {result.certificate.not_valid_after_utc:%Y-%m-%d}")
    trust = result.ca_cert_path or result.cert_path
    host = result.names.hosts[0] if result.names.hosts else _url_host(result.names.ips[0])
    print(f"clients trust it with, for example: curl --cacert {trust} https://{host}:8443/")
    return 0


def _url_host(ip: object) -> str:
    text = str(ip)
    return f"[{text}]" if ":" in text else text


def certs_show(args: argparse.Namespace) -> int:
    status = 0
    for index, path in enumerate(args.files):
        try:
            text = certs.describe_certificate(path)
        except certs.CertificateError as error:
            print(f"gateway: {error}", file=sys.stderr)
            status = 1
            continue
        print(("\n" if index else "") + text)
    return status



GENERATE_DESCRIPTION = (
    "Create a local certificate authority (OUT/ca.crt, OUT/ca.key) and a server certificate signed by it "
    "(OUT/NAME.crt, OUT/NAME.key). An existing CA in OUT is reused, never replaced. Keys are ECDSA P-256, "
    "written with mode 0600; an existing file is never replaced without --force.")


def add_certs_parser(commands: argparse._SubParsersAction) -> None:
    certs_parser = commands.add_parser("certs", help="generate or inspect TLS certificates")
    actions = certs_parser.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    generate = actions.add_parser("generate", help="create a local CA and a server certificate signed by it",
                                  description=GENERATE_DESCRIPTION)
    generate.add_argument("--out", default="certs", help="directory for the files (default: certs)")
    generate.add_argument("--host", action="append", default=[], metavar="NAME",
                          help="a DNS name for subjectAltName (repeatable; '*.example.com' allowed); "
                               "the first one is the CN")
    generate.add_argument("--ip", action="append", default=[], metavar="ADDR",
                          help="an IP address for subjectAltName (repeatable). "
                               "Default with neither --host nor --ip: localhost, 127.0.0.1, ::1")
    generate.add_argument("--days", type=_at_least_one("days"), default=certs.SERVER_DAYS, metavar="N",
                          help=f"validity of the server certificate (default: {certs.SERVER_DAYS})")
    generate.add_argument("--name", default=certs.DEFAULT_NAME,
                          help="base name of the certificate files: NAME.crt, NAME.key (default: gateway)")
    generate.add_argument("--self-signed", action="store_true",
                          help="write one self-signed certificate instead (no CA)")
    generate.add_argument("--force", action="store_true",
                          help="replace NAME.crt and NAME.key if they exist (the CA is never replaced)")
    generate.set_defaults(run=certs_generate)
    show = actions.add_parser("show", help="describe certificate files")
    show.add_argument("files", nargs="+", metavar="FILE", help="a PEM (or DER) certificate file")
    show.set_defaults(run=certs_show)


# -- gateway backends ---------------------------------------------------------------

#: How long ``backends remove --wait`` waits for the requests in flight by default.
WAIT_TIMEOUT = 300.0


class CommandError(Exception):
    """A one-line error for stderr (the caller exits non-zero)."""


def admin_client(args: argparse.Namespace) -> AdminClient:
    """The client for ``--admin``/``-c``/``--token-file``: URL from --admin, else admin.listen, else the default."""
    url, token_file = None, args.token_file
    if args.config is not None:
        try:
            config = load_config(args.config)
        except ConfigError as error:
            raise CommandError(f"configuration error: {error}") from None
        if config.admin is not None:
            url = admin_url(config.admin.host, config.admin.port)
            if token_file is None and config.admin.token_file is not None:
                token_file = _config_relative(config.admin.token_file, args.config)
    try:
        token = read_token(token_file) if token_file is not None else None
    except TokenError as error:
        raise CommandError(str(error)) from None
    timeout = args.timeout
    if timeout is None:
        timeout = WAIT_TIMEOUT if getattr(args, "wait", False) else DEFAULT_TIMEOUT
    return AdminClient(args.admin or url or DEFAULT_ADMIN_URL, token, timeout)


def _config_relative(path: str, config_path: str) -> str:
    """*path* as the gateway reads it (from its working directory); failing that, next to the config file."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    beside = os.path.join(os.path.dirname(os.path.abspath(config_path)), path)
    return beside if os.path.exists(beside) else path


def run_backends(action):
    """Wrap a ``backends`` action: errors become one line on stderr and exit status 1."""
    def run(args: argparse.Namespace) -> int:
        try:
            return action(admin_client(args), args)
        except (AdminError, CommandError) as error:
            print(f"gateway: {error}", file=sys.stderr)
            return 1
    return run


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=2))


SERVER_COLUMNS = ("UPSTREAM", "ADDRESS", "WEIGHT", "STATE", "ACTIVE", "TOTAL", "FAILURES")


def format_servers(upstreams: list[dict[str, Any]]) -> str:
    """The aligned table of ``backends list``: one row per server (an upstream without servers gets a dash)."""
    rows: list[tuple[str, ...]] = [SERVER_COLUMNS]
    for upstream in upstreams:
        servers = upstream.get("servers") or []
        if not servers:
            rows.append((upstream["name"], "-", "-", "-", "-", "-", "-"))
        for server in servers:
            state = "removing" if server.get("removing") else server["state"]
            rows.append((upstream["name"], server["address"], str(server["weight"]), state,
                         str(server["active_requests"]), str(server["total_requests"]),
                         str(server["recent_failures"])))
    widths = [max(len(row[index]) for row in rows) for index in range(len(SERVER_COLUMNS))]
    numeric = {2, 4, 5, 6}
    lines = []
    for row in rows:
        cells = [cell.rjust(width) if index in numeric else cell.ljust(width)
                 for index, (cell, width) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def backends_list(client: AdminClient, args: argparse.Namespace) -> int:
    if args.upstream is not None:
        document = client.upstream(args.upstream)
        upstreams = [document]
    else:
        document = client.upstreams()
        upstreams = document["upstreams"]
    if args.json:
        _print_json(document)
    else:
        print(format_servers(upstreams))
    return 0


def backends_add(client: AdminClient, args: argparse.Namespace) -> int:
    server = client.add_server(args.upstream, args.address, args.weight)
    if args.json:
        _print_json(server)
    else:
        print(f"upstream {args.upstream}: added {server['address']} (weight {server['weight']}, {server['state']})")
    return 0


def backends_set(client: AdminClient, args: argparse.Namespace) -> int:
    state = "drain" if args.drain else "up" if args.up else None
    if args.weight is None and state is None:
        raise CommandError("backends set: nothing to change: give --weight N, --drain or --up")
    server = client.update_server(args.upstream, args.address, args.weight, state)
    if args.json:
        _print_json(server)
    else:
        print(f"upstream {args.upstream}: {server['address']} now weight {server['weight']}, {server['state']}")
    return 0


def backends_remove(client: AdminClient, args: argparse.Namespace) -> int:
    gone = client.remove_server(args.upstream, args.address, wait=args.wait)
    if args.json:
        _print_json({"upstream": args.upstream, "address": args.address, "state": "removed" if gone else "draining"})
    elif gone:
        print(f"upstream {args.upstream}: removed {args.address}")
    else:
        print(f"upstream {args.upstream}: draining {args.address}: it takes no new requests and leaves "
              "when those in flight finish (--wait waits for that)")
    return 0


def _at_least_one(what: str) -> Callable[[str], int]:
    """An argparse type: a whole number >= 1 (days, a weight)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number of {what} >= 1, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"expected a whole number of {what} >= 1, got {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


BACKENDS_DESCRIPTION = (
    "Show and change the servers of a running gateway through its admin API. The API's address and "
    "token come from --admin and --token-file, else from the admin section of the configuration "
    f"given with -c, else {DEFAULT_ADMIN_URL} without a token.")


def add_backends_parser(commands: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--admin", metavar="URL",
                        help="the admin API, e.g. http://127.0.0.1:8099 (default: admin.listen from -c, "
                             f"else {DEFAULT_ADMIN_URL})")
    common.add_argument("-c", "--config", metavar="FILE",
                        help="the gateway's configuration file: admin.listen and admin.token_file are read from it")
    common.add_argument("--token-file", metavar="FILE",
                        help="a file whose first line is the bearer token (default: admin.token_file from -c)")
    common.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                        help=f"how long to wait for the API (default: {DEFAULT_TIMEOUT:g}; "
                             f"{WAIT_TIMEOUT:g} for remove --wait)")
    common.add_argument("--json", action="store_true", help="print the API's JSON instead of text")
    backends = commands.add_parser("backends", help="list, add, change or remove servers of a running gateway",
                                   description=BACKENDS_DESCRIPTION)
    actions = backends.add_subparsers(dest="backends_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="the servers of every upstream (or one)",
                                 description="The servers of every upstream, or of UPSTREAM: weight, state, "
                                             "requests in flight (ACTIVE), requests since start (TOTAL) and "
                                             "failed connections (FAILURES).")
    listing.add_argument("upstream", nargs="?", metavar="UPSTREAM")
    listing.set_defaults(run=run_backends(backends_list))
    add = actions.add_parser("add", parents=[common], help="add a server to an upstream",
                             description="Add a server to an upstream; it takes requests at once.")
    add.add_argument("upstream", metavar="UPSTREAM")
    add.add_argument("address", metavar="HOST:PORT")
    add.add_argument("--weight", type=_at_least_one("weight"), metavar="N", help="its share of requests (default: 1)")
    add.set_defaults(run=run_backends(backends_add))
    remove = actions.add_parser("remove", parents=[common], help="remove a server (after its requests finish)",
                                description="Remove a server: it takes no new requests, the requests in "
                                            "flight on it finish, then it leaves the upstream.")
    remove.add_argument("upstream", metavar="UPSTREAM")
    remove.add_argument("address", metavar="HOST:PORT")
    remove.add_argument("--wait", action="store_true", help="return only once the server is gone")
    remove.set_defaults(run=run_backends(backends_remove))
    change = actions.add_parser("set", parents=[common], help="change a server's weight, drain it or bring it back",
                                description="Change a server's weight and/or state. A drained server takes no "
                                            "new requests but stays listed; --up brings it back.")
    change.add_argument("upstream", metavar="UPSTREAM")
    change.add_argument("address", metavar="HOST:PORT")
    change.add_argument("--weight", type=_at_least_one("weight"), metavar="N", help="its new share of requests")
    states = change.add_mutually_exclusive_group()
    states.add_argument("--drain", action="store_true", help="take no new requests (requests in flight finish)")
    states.add_argument("--up", action="store_true", help="take requests again")
    change.set_defaults(run=run_backends(backends_set))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=(
        "Tools for the gateway. The gateway itself runs under twistd: twistd -n gateway -c config.yaml"))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check_parser = commands.add_parser("check", help="validate a configuration file without starting")
    check_parser.add_argument("-c", "--config", required=True, help="path to the YAML configuration file")
    check_parser.set_defaults(run=check)
    add_certs_parser(commands)
    add_backends_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
