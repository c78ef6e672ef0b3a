"""The WAN IP of units that report through the VPN, from the VPN server's own records.

Through the tunnel the registry sees only the unit's tunnel address, yet the policy's purposes
(location, the dealer's region, the PSU voltage, the owner's finder) need its WAN IP.  The policy
says where it is: "The VPN server stores connection logs, including the WAN IP of the 432 EVO and
VPNID's".  ``evo-registry vpn-sync`` (and ``serve``, every few minutes) reads what the VPN server
knows now and keeps, per unit, only the latest address with its source (``vpn``) and time, as a
report over HTTPS would; the server's logs themselves are not copied.

Two sources, told apart by their content:

- OpenVPN's status file, ``status-version 2`` (comma separated) or ``3`` (tab separated): the
  ``HEADER,CLIENT_LIST,...`` line names the columns; each ``CLIENT_LIST`` row gives the common name
  (the unit's VPNID, the CN of its client certificate) and its real address; the ``TIME`` row says
  when the file was written, which is when the client was last known connected from there.
- WireGuard's ``wg show all dump``: tab separated, an interface line (5 fields) then a line per
  peer (9 fields: interface, public key, preshared key, endpoint, allowed IPs, latest handshake,
  rx, tx, keepalive).  A peer is a public key, not a VPNID: a map of keys to VPNIDs is given
  (``wireguard_peers``: lines ``<public key> <VPNID>``, ``#`` comments).  A peer that never
  completed a handshake (0) or has no endpoint says nothing.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from evo_registry import wire
from evo_registry.config import Settings
from evo_registry.db import Cursor, Database, parse_utc, utc_text
from evo_registry.errors import RegistryError
from evo_registry.geo import Geo
from evo_registry.rules import add_months
from evo_registry.store import Store, location_events, record_event

LOG = logging.getLogger(__name__)

# The event of a unit under warranty that reported only over HTTPS for HTTPS_ONLY_DAYS.
VPN_UNUSED = "vpn_unused"
HTTPS_ONLY_DAYS = 7

_WG_KEY = re.compile(r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")


class VpnSourceError(RegistryError):
    """A VPN server's file cannot be read or is not what it should be (names the file)."""

    exit_code = 65  # EX_DATAERR


@dataclass(frozen=True)
class Sighting:
    """A unit seen connected to the VPN from a WAN address at a moment."""

    vpnid: str
    address: str
    at: datetime


def outer_address(text: str) -> str | None:
    """Return the address of ``ADDR:PORT``, ``[V6]:PORT`` or a bare address.

    OpenVPN 2.6.14 writes an IPv4 client as ``192.0.2.1:44376`` and an IPv6 one without its port
    (``2001:db8:77::1``: tests/data/vpn); WireGuard writes ``[2001:db8::5]:51820``.
    """
    text = text.strip()
    if text.startswith("["):
        host = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        host = text.partition(":")[0]
    else:
        host = text  # a bare address (IPv6 without a port, or IPv4)
    return wire.canonical_ip(host)


def _epoch(text: str, where: str) -> datetime:
    try:
        return datetime.fromtimestamp(int(text), tz=timezone.utc)
    except (ValueError, OverflowError, OSError) as exc:
        raise VpnSourceError(f"{where}: '{text}' is not a time (seconds since 1970)") from exc


def parse_openvpn_status(text: str, name: str = "<status>") -> list[Sighting]:
    """Return the clients of an OpenVPN status file (status-version 2 or 3)."""
    sep = "\t" if "\t" in text.partition("\n")[0] else ","
    columns: list[str] | None = None
    written: datetime | None = None
    rows: list[list[str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.rstrip("\r").split(sep)
        if fields[0] == "TIME" and len(fields) >= 3:
            written = _epoch(fields[2], f"{name}: line {n}")
        elif fields[:2] == ["HEADER", "CLIENT_LIST"]:
            columns = fields[1:]
        elif fields[0] == "CLIENT_LIST":
            rows.append(fields)
    if columns is None:
        raise VpnSourceError(f"{name}: not an OpenVPN status file of status-version 2 or 3 "
                             "(no HEADER,CLIENT_LIST line)")
    try:
        cn, real = columns.index("Common Name"), columns.index("Real Address")
    except ValueError as exc:
        raise VpnSourceError(f"{name}: the CLIENT_LIST header lacks {exc}") from exc
    since = columns.index("Connected Since (time_t)") if "Connected Since (time_t)" in columns \
        else None
    out = []
    for fields in rows:
        if len(fields) <= max(cn, real):
            continue
        vpnid, address = fields[cn], outer_address(fields[real])
        if not wire.VPNID.fullmatch(vpnid) or address is None:
            LOG.debug("%s: client %r from %r skipped", name, vpnid, fields[real])
            continue
        at = written
        if at is None and since is not None and len(fields) > since:
            at = _epoch(fields[since], name)
        if at is None:
            raise VpnSourceError(f"{name}: no TIME line and no connection times")
        out.append(Sighting(vpnid, address, at))
    return out


def parse_wireguard_dump(text: str, peers: Mapping[str, str],
                         name: str = "<wg dump>") -> list[Sighting]:
    """Return the peers of ``wg show all dump`` whose key maps to a VPNID."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split("\t")
        if len(fields) == 5:
            continue  # an interface
        if len(fields) != 9 or not _WG_KEY.match(fields[1]):
            raise VpnSourceError(f"{name}: line {n} is not a line of 'wg show all dump'")
        vpnid = peers.get(fields[1])
        handshake = _epoch(fields[5], f"{name}: line {n}")
        address = outer_address(fields[3]) if fields[3] != "(none)" else None
        if vpnid is None or address is None or handshake.timestamp() == 0:
            continue
        out.append(Sighting(vpnid, address, handshake))
    return out


def parse_peer_map(text: str, name: str = "<peers>") -> dict[str, str]:
    """Return WireGuard public key -> VPNID from lines ``<key> <VPNID>``."""
    peers: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        words = line.partition("#")[0].split()
        if not words:
            continue
        if len(words) != 2 or not _WG_KEY.match(words[0]) or not wire.VPNID.fullmatch(words[1]):
            raise VpnSourceError(f"{name}: line {n}: expected '<WireGuard public key> <VPNID>'")
        peers[words[0]] = words[1]
    return peers


def parse_source(text: str, peers: Mapping[str, str], name: str) -> list[Sighting]:
    """Return the sightings of a status file or a wg dump, whichever ``text`` is."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    if first.split("\t")[0] in ("TITLE", "TIME", "HEADER") or first.startswith(
            ("TITLE,", "TIME,", "HEADER,")):
        return parse_openvpn_status(text, name)
    if not first:
        return []
    if not peers:
        raise VpnSourceError(f"{name}: a WireGuard dump needs the map of peer keys to VPNIDs "
                             "(wireguard_peers)")
    return parse_wireguard_dump(text, peers, name)


def latest(sightings: Iterable[Sighting]) -> list[Sighting]:
    """Return the latest sighting of each unit."""
    best: dict[str, Sighting] = {}
    for s in sightings:
        if s.vpnid not in best or s.at > best[s.vpnid].at:
            best[s.vpnid] = s
    return sorted(best.values(), key=lambda s: s.vpnid)


def apply(store: Store, geo: Geo, sightings: Iterable[Sighting], now: datetime) -> dict[str, int]:
    """Keep each unit's latest address from the VPN; return how many units changed.

    An address newer than the one kept (from a report over HTTPS or an earlier sync) replaces it,
    with its location, and counts for the region and PSU events as a report's would (an event is
    recorded when the address changes, not at every sync).  Every sighting also marks the unit
    seen on the VPN.  Units that objected, and VPNIDs not enrolled, are left alone.
    """
    counts = {"seen": 0, "wan_ips": 0, "events": 0}
    stamp = utc_text(now)
    for s in latest(sightings):
        at = utc_text(min(s.at, now))
        with store.db.transaction() as tx:
            dev = tx.one("SELECT * FROM devices WHERE vpnid = ?"  # noqa: S608 - constant suffix
                         + store.db.for_update, (s.vpnid,))
            if dev is None or dev["objected_at"] is not None:
                continue
            counts["seen"] += 1
            tx.run("UPDATE devices SET vpn_seen_at = ? WHERE vpnid = ? "
                   "AND (vpn_seen_at IS NULL OR vpn_seen_at < ?)", (at, s.vpnid, at))
            if dev["wan_seen_at"] is not None and dev["wan_seen_at"] >= at:
                continue
            location = geo.lookup(s.address)
            key = wire.home_key(s.address)
            tx.run("UPDATE devices SET wan_ip = ?, wan_key = ?, country = ?, city = ?, "
                   "wan_source = 'vpn', wan_seen_at = ? WHERE vpnid = ?",
                   (s.address, key, location.country, location.city, at, s.vpnid))
            counts["wan_ips"] += 1
            if dev["wan_key"] == key and dev["country"] == location.country:
                continue
            for kind, detail in location_events(dev, location):
                _event(tx, s.vpnid, kind, detail, stamp)
                counts["events"] += 1
    return counts


def _event(tx: Cursor, vpnid: str, kind: str, detail: Mapping[str, Any], now: str) -> None:
    _kind, sql, params = record_event(vpnid, kind, detail, now=now, report_id=None)
    tx.run(sql, params)


def watch(store: Store, now: datetime, warranty_months: int,
          days: int = HTTPS_ONLY_DAYS) -> dict[str, int]:
    """Open an event for each unit under warranty that reported for ``days`` only over HTTPS.

    Support over the VPN is free during the warranty and paid when "the VPN is deliberately
    disabled" (the policy); the event tells support, and closes itself once the unit is seen on
    the VPN again.
    """
    since = utc_text(now - timedelta(days=days))
    stamp = utc_text(now)
    opened = 0
    with store.db.transaction() as tx:
        resolved = tx.run(
            "UPDATE events SET resolved_at = ? WHERE kind = ? AND resolved_at IS NULL AND "
            "vpnid IN (SELECT vpnid FROM devices WHERE vpn_seen_at >= ?)",
            (stamp, VPN_UNUSED, since))
        rows = tx.query(
            "SELECT vpnid, manufactured_at, vpn_seen_at, first_seen FROM devices "
            "WHERE objected_at IS NULL AND last_seen >= ? AND first_seen <= ? "
            "AND (vpn_seen_at IS NULL OR vpn_seen_at < ?)", (since, since, since))
        for r in rows:
            if add_months(parse_utc(r["manufactured_at"]), warranty_months) <= now:
                continue
            detail = {"days": days, "last_seen_on_vpn": r["vpn_seen_at"]}
            _event(tx, str(r["vpnid"]), VPN_UNUSED, detail, stamp)
            opened += 1
    return {"vpn_unused": opened, "vpn_unused_resolved": resolved}


def read_sources(paths: Iterable[str], peers_path: str | None) -> list[Sighting]:
    """Return the sightings in the files named (``-``: standard input)."""
    peers: dict[str, str] = {}
    if peers_path:
        peers = parse_peer_map(_read(peers_path), peers_path)
    out: list[Sighting] = []
    for path in paths:
        out += parse_source(_read(path), peers, "<stdin>" if path == "-" else path)
    return out


def _read(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise VpnSourceError(f"{path}: cannot read: {exc.strerror}") from exc


def run(settings: Settings, paths: Iterable[str] | None = None, *,
        store: Store | None = None, geo: Geo | None = None,
        now: datetime | None = None) -> dict[str, int]:
    """Read the VPN server's records (``paths``, else the configured ones) and apply them."""
    now = now or datetime.now(timezone.utc)
    names = list(paths) if paths is not None else [
        *settings.openvpn_status, *([settings.wireguard_dump] if settings.wireguard_dump else [])]
    sightings = read_sources(names, settings.wireguard_peers)
    own_db = store is None
    store = store or Store(Database(settings.database))
    own_geo = geo is None
    geo = geo or Geo(settings.geo_database)
    try:
        counts = apply(store, geo, sightings, now)
        counts.update(watch(store, now, settings.warranty_months))
    finally:
        if own_geo:
            geo.close()
        if own_db:
            store.db.close()
    return counts
