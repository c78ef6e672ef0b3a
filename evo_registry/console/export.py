"""Exports (CSV, JSON) of a filtered device list, and the fleet's counts.

Serials are always in an export (they are what a dealer or support matches units by); the country
and city only for 432 EVO staff; the WAN IP never (the device page has it for support).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from evo_registry.console import devices
from evo_registry.console.accounts import Account
from evo_registry.db import Database, Row, utc_text

EXPORT_LIMIT = 100_000
_BASE = ("vpnid", "model", "netbios_name", "motherboard_serial", "current_motherboard_serial",
         "mac", "boot_serial", "rip_serial", "sales_region", "psu_variant", "manufactured_at",
         "enrolled_at", "first_seen", "last_seen", "dealer", "sold_on", "warranty_end")
_STAFF = ("country", "city")


def columns(account: Account) -> tuple[str, ...]:
    """Return the columns an account's exports carry."""
    return _BASE + (_STAFF if account.role in ("admin", "support") else ())


def rows(db: Database, account: Account, q: str, stale_days: int | None, *, months: int,
         now: datetime) -> list[dict[str, Any]]:
    """Return the export rows of the devices matching the search (or not seen for N days)."""
    where, params = devices.scope(account)
    sql = ("SELECT d.vpnid, d.model, d.netbios_name, d.fp_motherboard_serial, "  # noqa: S608
           "d.cur_motherboard_serial, d.fp_mac, d.fp_boot_serial, d.fp_rip_serial, "
           "d.sales_region, d.psu_variant, d.manufactured_at, d.enrolled_at, d.first_seen, "
           "d.last_seen, d.country, d.city, a.dealer, s.sold_on FROM devices d "
           "LEFT JOIN console_device_dealers a ON a.vpnid = d.vpnid "
           "LEFT JOIN console_sales s ON s.vpnid = d.vpnid WHERE " + where)
    extra: list[Any] = []
    if q.strip():
        match, match_params = devices.matching(q)
        sql += " AND " + match
        extra += match_params
    if stale_days is not None:
        sql += " AND (d.last_seen < ? OR d.last_seen IS NULL)"
        extra.append(utc_text(now - timedelta(days=stale_days)))
    out = []
    keep = set(columns(account))
    for r in db.read(sql + " ORDER BY d.vpnid LIMIT ?", (*params, *extra, EXPORT_LIMIT)):
        w = devices.unit_warranty(r, r["sold_on"], months, now.date())
        full = {"vpnid": r["vpnid"], "model": r["model"], "netbios_name": r["netbios_name"],
                "motherboard_serial": r["fp_motherboard_serial"],
                "current_motherboard_serial": r["cur_motherboard_serial"],
                "mac": r["fp_mac"], "boot_serial": r["fp_boot_serial"],
                "rip_serial": r["fp_rip_serial"],
                "sales_region": ",".join(json.loads(r["sales_region"])),
                "psu_variant": r["psu_variant"], "manufactured_at": r["manufactured_at"],
                "enrolled_at": r["enrolled_at"], "first_seen": r["first_seen"],
                "last_seen": r["last_seen"], "dealer": r["dealer"], "sold_on": r["sold_on"],
                "warranty_end": w.end.isoformat(), "country": r["country"], "city": r["city"]}
        out.append({k: v for k, v in full.items() if k in keep})
    return out


def to_csv(header: Sequence[str], data: Sequence[dict[str, Any]]) -> str:
    """Return rows as CSV; a cell starting like a formula is quoted with ' (CSV injection)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for row in data:
        cells = []
        for key in header:
            value = row.get(key)
            text = "" if value is None else str(value)
            if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
                text = "'" + text
            cells.append(text)
        writer.writerow(cells)
    return buf.getvalue()


def to_json(data: Sequence[dict[str, Any]]) -> str:
    """Return rows as a JSON array."""
    return json.dumps(list(data), ensure_ascii=False, indent=1)


def fleet(db: Database, account: Account) -> dict[str, list[Row]]:
    """Return the counts of the fleet view: by model, country, agent version, open events."""
    where, params = devices.scope(account)
    # The agent version is read from each device's latest report, in the database's own JSON.
    version = ("json_extract(r.body, '$.agent_version')" if db.dialect == "sqlite"
               else "(r.body::jsonb ->> 'agent_version')")
    counts = {
        "model": db.read(f"SELECT d.model AS k, COUNT(*) AS n FROM devices d WHERE {where} "  # noqa: S608
                         "GROUP BY d.model ORDER BY n DESC, k", params),
        "agent_version": db.read(
            f"SELECT {version} AS k, COUNT(*) AS n FROM devices d "  # noqa: S608
            f"LEFT JOIN reports r ON r.report_id = d.last_report_id WHERE {where} "
            "GROUP BY 1 ORDER BY n DESC, k", params),
        "open_events": db.read(
            "SELECT e.kind AS k, COUNT(*) AS n FROM events e JOIN devices d "  # noqa: S608
            f"ON d.vpnid = e.vpnid WHERE e.resolved_at IS NULL AND {where} "
            "GROUP BY e.kind ORDER BY n DESC, k", params),
    }
    counts["country"] = db.read(
        f"SELECT d.country AS k, COUNT(*) AS n FROM devices d WHERE {where} "  # noqa: S608
        "GROUP BY d.country ORDER BY n DESC, k", params)
    return counts
