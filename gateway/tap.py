"""The twistd contract: ``twistd [-n] gateway -c config.yaml``."""

from __future__ import annotations

from twisted.application.service import IService
from twisted.python import usage

from gateway.core.config import ConfigError, GatewayConfig, load_config


class Options(usage.Options):
    synopsis = "-c CONFIG"
    longdesc = ("Run the gateway: a reverse proxy and load balancer configured by a YAML file. "
                "Validate a file without starting with: gateway check -c CONFIG.")
    optParameters = [["config", "c", "gateway.yaml", "Path to the YAML configuration file."]]

    gateway_config: GatewayConfig

    def postOptions(self) -> None:
        try:
            self.gateway_config = load_config(self["config"])
        except ConfigError as error:
            # SystemExit rather than usage.UsageError: twistd would print the whole
            # option help before the one line that matters.
            raise SystemExit(f"gateway: configuration error: {error}") from None


def makeService(options: Options) -> IService:
    from gateway.reactor import freeze_startup_objects, install_if_none

    install_if_none()
    from twisted.internet import reactor

    reactor.callWhenRunning(freeze_startup_objects)  # (twistd starts the services before the reactor)

    from gateway.service import build_service

    try:
        return build_service(options.gateway_config, reactor)
    except ConfigError as error:
        raise SystemExit(f"gateway: configuration error: {error}") from None
