"""The registry's settings: defaults < config file (TOML) < command line.

The file (``/etc/evo-registry/registry.toml`` in production, mode 0640: it holds the tokens):

    database = "postgresql://evo@/evo?host=/run/postgresql"   # default: sqlite:///var/lib/...
    listen = "127.0.0.1:8432"
    geo_database = "/var/lib/GeoIP/GeoLite2-City.mmdb"       # optional
    trusted_proxies = ["127.0.0.1/32", "::1/128"]            # who may set X-Forwarded-For
    vpn_networks = ["10.8.0.0/16"]                           # reports via the VPN come from here
    factory_tokens = ["..."]                                 # the manufacturing line
    support_tokens = ["..."]                                 # support staff
    warranty_months = 24
    retention_days = 730                                     # report history kept two years
    finder_days = 30
    rate_limit_reports = 30                                  # per device and window
    rate_limit_window_s = 3600
    threads = 8                                              # per process, for database reads
    workers = 1                                              # processes (a dead one restarted)
    max_connections = 1000                                   # per process; beyond: 503
    connections_per_client = 32                              # per process and address (v6: /64)
    stored_bytes_per_day = 1048576                           # report text one unit may store a day
    # The VPN server's records of each unit's WAN IP (evo_registry.vpnsync), read by serve every
    # vpn_sync_interval_s and by `evo-registry vpn-sync`:
    openvpn_status = ["/run/openvpn-server/status-evo.log"]  # status-version 2 or 3
    wireguard_dump = "/run/evo-registry/wg-dump"              # the output of `wg show all dump`
    wireguard_peers = "/etc/evo-registry/wireguard-peers"     # lines "<public key> <VPNID>"
    vpn_sync_interval_s = 300
    prune_interval_s = 21600                                 # retention, by serve's pruner
    finder_shared_units = 3         # more units than this from one address: the finder asks
                                    # for the VPNID (a shared line: CGNAT, hotel, campus)
    finder_wrong_vpnids_per_hour = 10  # per address and process; beyond: 429
    console_failed_logins_per_hour = 20  # per address and process; beyond: 429
    not_seen_days = 30              # a unit silent this long gets a not_seen event
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from evo_registry.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Debian 12 has 3.11
    import tomli as tomllib

DEFAULT_DATABASE = "sqlite:///var/lib/evo-registry/registry.db"
_OPTIONAL_PATHS = ("geo_database", "wireguard_dump", "wireguard_peers")


@dataclass
class Settings:
    """Every setting with its default."""

    database: str = DEFAULT_DATABASE
    listen: str = "127.0.0.1:8432"
    geo_database: str | None = None
    trusted_proxies: list[str] = field(default_factory=list)
    vpn_networks: list[str] = field(default_factory=list)
    factory_tokens: list[str] = field(default_factory=list)
    support_tokens: list[str] = field(default_factory=list)
    warranty_months: int = 24
    retention_days: int = 730
    finder_days: int = 30
    rate_limit_reports: int = 30
    rate_limit_window_s: int = 3600
    threads: int = 8
    workers: int = 1
    # uvicorn's limit_concurrency: open connections (and requests) of one process.
    max_connections: int = 1000
    # Open connections of one client address (an IPv6 /64) in one process; trusted proxies are
    # not counted (behind one, every visitor has the proxy's address).
    connections_per_client: int = 32
    # Report text (JSON characters) one unit may store in 24 hours: a daily report is ~4 KB.
    stored_bytes_per_day: int = 1024 * 1024
    openvpn_status: list[str] = field(default_factory=list)
    wireguard_dump: str | None = None
    wireguard_peers: str | None = None
    vpn_sync_interval_s: int = 300
    prune_interval_s: int = 6 * 3600
    finder_shared_units: int = 3
    # Wrong VPNIDs one address may ask the finder for in an hour (per process): VPNIDs are made
    # in sequence, so a stranger on a shared line could otherwise try them all.
    finder_wrong_vpnids_per_hour: int = 10
    # Failed console logins from one address in an hour (per process), whatever the accounts:
    # an account locks after 5 wrong passwords, but one password tried on many accounts would not.
    console_failed_logins_per_hour: int = 20
    # A unit that has not reported for this many days gets a not_seen event (and its alerts).
    not_seen_days: int = 30

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """Return the trusted proxies as networks."""
        return [ipaddress.ip_network(p, strict=False) for p in self.trusted_proxies]

    def vpn(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """Return the VPN's address ranges as networks."""
        return [ipaddress.ip_network(p, strict=False) for p in self.vpn_networks]


def _check(path: str, data: dict[str, Any]) -> Settings:
    s = Settings()
    known = {f.name: f for f in fields(Settings)}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{path}: unknown key '{key}'")
        default = getattr(s, key)
        if isinstance(default, bool) or (isinstance(default, int) and not isinstance(value, int)):
            raise ConfigError(f"{path}: key '{key}': an integer is needed")
        if isinstance(default, int) and (isinstance(value, bool) or value < 1):
            raise ConfigError(f"{path}: key '{key}': a positive integer is needed")
        if isinstance(default, list) and not (
                isinstance(value, list) and all(isinstance(v, str) and v for v in value)):
            raise ConfigError(f"{path}: key '{key}': a list of strings is needed")
        if (isinstance(default, str) or key in _OPTIONAL_PATHS) and not isinstance(value, str):
            raise ConfigError(f"{path}: key '{key}': a string is needed")
        setattr(s, key, value)
    for key, check in (("trusted_proxies", s.networks), ("vpn_networks", s.vpn)):
        try:
            check()
        except ValueError as exc:
            raise ConfigError(f"{path}: key '{key}': {exc}") from exc
    return s


def load(path: str | Path | None) -> Settings:
    """Return the settings of a config file (defaults when ``path`` is None)."""
    if path is None:
        return Settings()
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not TOML: {exc}") from exc
    return _check(str(path), data)


def parse_listen(text: str) -> tuple[str, int]:
    """Return (host, port) of ``HOST:PORT`` or ``[V6]:PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"listen: '{text}' is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)
