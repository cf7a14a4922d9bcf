"""Live changes: what operators changed at run time, on top of config.yaml.

config.yaml stays the base.  The state file holds, per upstream and server
address, the operator's last word about that server: its weight and state
(``up`` or ``draining``), or that it was removed.  At start-up and on every
SIGHUP reload the gateway applies config.yaml first and these changes on
top, so a restart or a reload loses nothing an operator did.  A change that
config.yaml later makes itself is harmless to keep: applying it again
changes nothing.  Changes to an upstream that is no longer in config.yaml
are dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gateway.core.config import ConfigError, ServerConfig, UpstreamConfig, parse_address
from gateway.core.pool import DRAINING, UP

STATE_VERSION = 1
LIVE_STATES = (UP, DRAINING)


@dataclass(frozen=True)
class ServerChange:
    """The desired weight and state of one server, or ``removed``."""

    weight: int = 1
    state: str = UP
    removed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"removed": True} if self.removed else {"weight": self.weight, "state": self.state}


@dataclass
class LiveChanges:
    upstreams: dict[str, dict[str, ServerChange]] = field(default_factory=dict)

    def record(self, upstream: str, address: str, weight: int, state: str) -> None:
        """The server at *address* now has this weight and state."""
        self.upstreams.setdefault(upstream, {})[address] = ServerChange(weight=weight, state=state)

    def record_removed(self, upstream: str, address: str, in_config: bool) -> None:
        """The server was removed; only a server that config.yaml lists needs remembering as removed."""
        changes = self.upstreams.setdefault(upstream, {})
        if in_config:
            changes[address] = ServerChange(removed=True)
        else:
            changes.pop(address, None)
        if not changes:
            del self.upstreams[upstream]

    def effective_servers(self, upstream: UpstreamConfig) -> list[tuple[ServerConfig, str]]:
        """The servers of *upstream* after these changes, in config order then in the order added."""
        changes = self.upstreams.get(upstream.name, {})
        result: list[tuple[ServerConfig, str]] = []
        for server in upstream.servers:
            change = changes.get(server.address)
            if change is None:
                result.append((server, UP))
            elif not change.removed:
                result.append((ServerConfig(server.host, server.port, change.weight), change.state))
        configured = {server.address for server in upstream.servers}
        for address, change in changes.items():
            if address not in configured and not change.removed:
                host, port = parse_address(address)
                result.append((ServerConfig(host, port, change.weight), change.state))
        return result

    def prune(self, upstream_names: set[str]) -> list[str]:
        """Forget the changes of upstreams that no longer exist; returns their names."""
        stale = [name for name in self.upstreams if name not in upstream_names]
        for name in stale:
            del self.upstreams[name]
        return stale

    def to_json(self) -> str:
        document = {"version": STATE_VERSION, "upstreams": {
            name: {address: change.to_json() for address, change in changes.items()}
            for name, changes in self.upstreams.items()}}
        return json.dumps(document, indent=2) + "\n"  # insertion order: servers keep the order added

    @classmethod
    def from_json(cls, text: str, source: str) -> LiveChanges:
        """Parse a state file; ConfigError naming *source* when it is not one."""
        try:
            document = json.loads(text)
        except ValueError as error:
            raise ConfigError(f"{source}: not a gateway state file (invalid JSON: {error})") from None
        if not isinstance(document, dict) or document.get("version") != STATE_VERSION \
                or not isinstance(document.get("upstreams"), dict):
            raise ConfigError(f"{source}: not a gateway state file (expected version {STATE_VERSION} "
                              "and an 'upstreams' mapping)")
        live = cls()
        for name, servers in document["upstreams"].items():
            if not isinstance(servers, dict):
                raise ConfigError(f"{source}: upstreams.{name}: expected a mapping of addresses")
            for address, change in servers.items():
                where = f"state file {source}: upstreams.{name}.{address}"
                try:
                    parse_address(address)
                except ValueError as error:
                    raise ConfigError(f"{where}: not a server address ({error})") from None
                live.upstreams.setdefault(name, {})[address] = _parse_change(change, where)
        return live


def _parse_change(change: Any, where: str) -> ServerChange:
    try:
        if not isinstance(change, dict):
            raise ValueError("expected a mapping")
        if change.get("removed") is True:
            return ServerChange(removed=True)
        if "weight" not in change or "state" not in change:
            raise ValueError("expected a weight and a state (or removed: true)")
        weight, state = change["weight"], change["state"]
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1 or state not in LIVE_STATES:
            raise ValueError("expected an integer weight >= 1 and a state of up or draining")
        return ServerChange(weight=weight, state=state)
    except (KeyError, ValueError) as error:
        raise ConfigError(f"{where}: {error}") from None
