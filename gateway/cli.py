"""The ``gateway`` command: tools around a running or future gateway.

``gateway check -c FILE`` validates a configuration without starting (like ``nginx -t``).
"""

from __future__ import annotations

import argparse
import sys

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=(
        "Tools for the gateway. The gateway itself runs under twistd: twistd -n gateway -c config.yaml"))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check_parser = commands.add_parser("check", help="validate a configuration file without starting")
    check_parser.add_argument("-c", "--config", required=True, help="path to the YAML configuration file")
    check_parser.set_defaults(run=check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
