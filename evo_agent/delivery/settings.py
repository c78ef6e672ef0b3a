"""What the daemon knows of its configuration, validated by a child (``describe``).

The daemon does not load the config itself: validating it imports the collectors' option tables,
which a child loads and gives back when it exits (``python3 -m evo_agent.delivery describe``
prints the values the daemon needs as one JSON line).
"""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evo_agent.delivery import netlink
from evo_agent.delivery.sources import child_argv, child_env
from evo_agent.errors import ConfigError

LOG = logging.getLogger(__name__)


def describe(python: str, config: str | None) -> Settings:
    """Validate the configuration in a child; raise ConfigError with its reason."""
    proc = subprocess.run(child_argv(python, config, "describe"), capture_output=True, timeout=60,
                          check=False, env=child_env())
    try:
        doc = json.loads(proc.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ConfigError(config, None, "validation failed: "
                          + (err[-1] if err else f"exit {proc.returncode}")) from None
    if not doc.get("ok"):  # the child's message names the file and the key already
        raise ConfigError.relayed(str(doc.get("error")))
    return Settings.from_describe(doc)


@dataclass
class Settings:
    """What the daemon knows of a validated configuration (from the ``describe`` child)."""

    enabled: bool
    state_dir: Path
    control_socket: str
    vpn_interface: str
    vpnid: str
    collector_timeout: float
    total_timeout: float
    sources: list[str] = field(default_factory=list)
    #: (boot, daily) splay, computed by the child (SHA-256 would load libcrypto here)
    splay: tuple[float, float] = (0.0, 0.0)
    #: the hosts of the registry's endpoints (vpn_url, https_url; "" when not configured)
    vpn_host: str = ""
    https_host: str = ""

    @classmethod
    def from_describe(cls, doc: dict[str, Any]) -> Settings:
        """Build from the child's JSON."""
        values = doc["values"]
        return cls(bool(doc["enabled"]), Path(doc["state_dir"]),
                   str(values["agent"]["control_socket"]),
                   str(values["delivery"]["vpn_interface"]), str(doc.get("vpnid") or ""),
                   float(values["collectors"]["timeout"]),
                   float(values["delivery"]["total_timeout"]), list(doc.get("sources", [])),
                   (float(doc["splay"][0]), float(doc["splay"][1])),
                   _host(str(values["delivery"].get("vpn_url", ""))),
                   _host(str(values["delivery"].get("https_url", ""))))

    def network_up(self) -> bool:
        """Return True when the kernel has a route to one of the registry's endpoints."""
        if not self.vpn_host and not self.https_host:
            return True  # nothing to wait for: the attempt itself says what is missing
        try:
            if self.vpn_host and self.vpn_interface and netlink.link_up(self.vpn_interface):
                return netlink.can_reach(self.vpn_host) or bool(
                    self.https_host and netlink.can_reach(self.https_host))
            return bool(self.https_host) and netlink.can_reach(self.https_host)
        except OSError as exc:  # cannot tell: do not hold the report on a netlink hiccup
            LOG.debug("route check failed: %s", exc)
            return True

    def cycle_deadline(self) -> float:
        """Return how long a cycle child may run before it is killed."""
        return self.collector_timeout * 3 + self.total_timeout * 4 + 30


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""
