"""The ``gateway`` command: tools around a running or future gateway.

``gateway check -c FILE`` validates a configuration without starting (like ``nginx -t``).
``gateway certs generate`` makes a local CA and a server certificate (or one
self-signed certificate); ``gateway certs show FILE`` describes a certificate.
"""

from __future__ import annotations

import argparse
import sys

from gateway import certs
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
          f"{len(config.processes)} process(es)")
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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of days, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1 day, got {value}")
    return value


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
    generate.add_argument("--days", type=_positive_int, default=certs.SERVER_DAYS, metavar="N",
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=(
        "Tools for the gateway. The gateway itself runs under twistd: twistd -n gateway -c config.yaml"))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check_parser = commands.add_parser("check", help="validate a configuration file without starting")
    check_parser.add_argument("-c", "--config", required=True, help="path to the YAML configuration file")
    check_parser.set_defaults(run=check)
    add_certs_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
