"""What the console reads about devices, always through the reader's scope.

A dealer sees only the units assigned to it: every statement here takes the account and adds the
scope to its WHERE clause, so a unit of another dealer is "not found" exactly like one that does
not exist (the page answers 404 for both).  Dealers never get the WAN IP or the city, not even in
an event's detail.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any

from evo_registry import wire
from evo_registry.console import timeline
from evo_registry.console.accounts import Account
from evo_registry.console.warranty import Warranty, warranty
from evo_registry.db import Database, Row, parse_utc, utc_text
from evo_registry.errors import HttpError
from evo_registry.pages import lan_link

# Reports compared for the timeline (newest ones); a unit reporting daily fills a year and more.
TIMELINE_REPORTS = 500
REPORTS_LISTED = 100
SEARCH_LIMIT = 100
_MAC = re.compile(r"^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$")
# Above every character: the end of a prefix range (SQLite's binary order; PostgreSQL's C
# collation and its code-point order for C.UTF-8).
_TOP = "\U0010ffff"
# What a dealer must never see (the policy gives WAN IP and location to 432 EVO only).
HIDDEN_FROM_DEALERS = ("wan_ip", "wan_key", "city")

_LIST_COLUMNS = ("d.vpnid, d.model, d.netbios_name, d.fp_motherboard_serial, "
                 "d.cur_motherboard_serial, d.fp_mac, d.last_seen, d.first_seen, d.country, "
                 "d.manufactured_at, a.dealer, s.sold_on")
_LIST_FROM = ("devices d LEFT JOIN console_device_dealers a ON a.vpnid = d.vpnid "
              "LEFT JOIN console_sales s ON s.vpnid = d.vpnid")


def scope(account: Account) -> tuple[str, tuple[Any, ...]]:
    """Return the condition (on ``d``) limiting devices to what the account may see."""
    if account.role in ("admin", "support"):
        return "1 = 1", ()
    if account.role == "dealer":
        # EXISTS, not IN (SELECT ...): SQLite drives a query from an IN list (all of the
        # dealer's units, then the search on each: 37 ms for 5,000 units), while a correlated
        # EXISTS is checked on the few rows the search's indexes find (0.3 ms).
        return ("EXISTS (SELECT 1 FROM console_device_dealers x WHERE x.vpnid = d.vpnid "
                "AND x.dealer = ?)", (account.dealer,))
    return "1 = 0", ()


def _redact(account: Account, row: Row) -> Row:
    if account.role == "dealer":
        return {k: v for k, v in row.items() if k not in HIDDEN_FROM_DEALERS}
    return row


def search(db: Database, account: Account, q: str, limit: int = SEARCH_LIMIT) -> list[Row]:
    """Find devices by VPNID (or its beginning), motherboard serial, MAC or NetBIOS name."""
    q = q.strip()[:128]
    where, params = scope(account)
    if not q:
        return [_redact(account, r) for r in db.read(
            f"SELECT {_LIST_COLUMNS} FROM {_LIST_FROM} WHERE {where} "  # noqa: S608
            "ORDER BY d.vpnid LIMIT ?", (*params, limit))]
    match, match_params = matching(q)
    rows = db.read(
        f"SELECT {_LIST_COLUMNS} FROM {_LIST_FROM} WHERE {where} AND {match} "  # noqa: S608
        "ORDER BY d.vpnid LIMIT ?", (*params, *match_params, limit))
    return [_redact(account, r) for r in rows]


def matching(q: str) -> tuple[str, tuple[Any, ...]]:
    """Return the condition (on ``d``) of a search: VPNID or its beginning, motherboard serial
    (enrolled or current), MAC, NetBIOS name or its beginning (any case); each has its index."""
    q = q.strip()[:128]
    mac = q.lower().replace("-", ":") if _MAC.fullmatch(q) else None
    name = q.lower()
    return ("((d.vpnid >= ? AND d.vpnid < ?) OR d.fp_motherboard_serial = ? OR "
            "d.cur_motherboard_serial = ? OR d.fp_mac = ? OR "
            "(lower(d.netbios_name) >= ? AND lower(d.netbios_name) < ?))",
            (q, q + _TOP, q, q, mac, name, name + _TOP))


def stale(db: Database, account: Account, days: int, now: datetime,
          limit: int = 500) -> list[Row]:
    """Return the devices not seen for ``days`` days (never seen ones included), oldest first."""
    where, params = scope(account)
    return [_redact(account, r) for r in db.read(
        f"SELECT {_LIST_COLUMNS} FROM {_LIST_FROM} WHERE {where} AND "  # noqa: S608
        "(d.last_seen < ? OR d.last_seen IS NULL) ORDER BY d.last_seen LIMIT ?",
        (*params, utc_text(now - timedelta(days=days)), limit))]


VPNID_TEXT = wire.VPNID


def check_vpnid(vpnid: str) -> str:
    """Return a VPNID from a URL, or 404 (a malformed one is as unknown as any)."""
    if not wire.VPNID.fullmatch(vpnid):
        raise HttpError(404, "unknown unit")
    return vpnid


def visible(db: Database, account: Account, vpnid: str) -> Row:
    """Return the device row if the account may see it, else HttpError 404."""
    where, params = scope(account)
    rows = db.read(f"SELECT d.* FROM devices d WHERE d.vpnid = ? AND {where}",  # noqa: S608
                   (check_vpnid(vpnid), *params))
    if not rows:
        raise HttpError(404, "unknown unit")
    return _redact(account, rows[0])


def unit_warranty(dev: Mapping[str, Any], sold_on: str | None, months: int,
                  today: date) -> Warranty:
    """Return the warranty of a device row and its recorded sale date (ISO), if any."""
    return warranty(parse_utc(dev["manufactured_at"]).date(),
                    date.fromisoformat(sold_on) if sold_on else None, months, today)


def _event(account: Account, row: Row) -> Row:
    detail = json.loads(row["detail"])
    if account.role == "dealer":
        detail = {k: v for k, v in detail.items() if k not in HIDDEN_FROM_DEALERS}
    return {**row, "detail": detail}


def page(db: Database, account: Account, vpnid: str, months: int, now: datetime) -> dict[str, Any]:
    """Return everything the device page shows to this account (HttpError 404 if hidden)."""
    where, params = scope(account)
    # One round trip on PostgreSQL (pipelined): the page is a dozen reads otherwise.
    with db.transaction(write=False, pipeline=True) as tx:
        found, extra_rows, events, notes, reports = tx.queries([
            (f"SELECT d.* FROM devices d WHERE d.vpnid = ? AND {where}",  # noqa: S608
             (check_vpnid(vpnid), *params)),
            ("SELECT a.dealer, a.assigned_at, a.assigned_by, s.sold_on, "
             "s.recorded_by, c.name AS dealer_name FROM devices d "
             "LEFT JOIN console_device_dealers a ON a.vpnid = d.vpnid "
             "LEFT JOIN console_dealers c ON c.code = a.dealer "
             "LEFT JOIN console_sales s ON s.vpnid = d.vpnid WHERE d.vpnid = ?", (vpnid,)),
            ("SELECT id, kind, detail, first_at, last_at, occurrences, report_id, "
             "resolved_at FROM events WHERE vpnid = ? "
             "ORDER BY last_at DESC, id DESC LIMIT 200", (vpnid,)),
            ("SELECT n.event_id, n.at, n.actor, n.comment FROM console_event_notes n "
             "JOIN events e ON e.id = n.event_id WHERE e.vpnid = ? ORDER BY n.id", (vpnid,)),
            ("SELECT report_id, sequence, report_trigger, collected_at, "
             "received_at, path, body FROM reports WHERE vpnid = ? "
             "ORDER BY received_at DESC, id DESC LIMIT ?", (vpnid, TIMELINE_REPORTS)),
        ])
    if not found:
        raise HttpError(404, "unknown unit")
    dev = _redact(account, found[0])
    extra = extra_rows[0] if extra_rows else {}
    by_event: dict[int, list[Row]] = {}
    for n in notes:
        by_event.setdefault(int(n["event_id"]), []).append(n)
    docs: list[tuple[str, str | None, Any]] = [
        (str(dev["enrolled_at"]), None, json.loads(dev["enrolment_report"]))]
    docs += [(str(r["received_at"]), str(r["report_id"]), json.loads(r["body"]))
             for r in reversed(reports)]
    changes = timeline.timeline(docs)
    latest = docs[-1][2]
    return {
        "dev": dev,
        "regions": json.loads(dev["sales_region"]),
        "assignment": extra,
        "warranty": unit_warranty(dev, extra.get("sold_on"), months, now.date()),
        "events": [{**_event(account, e), "notes": by_event.get(int(e["id"]), [])}
                   for e in events],
        "reports": [{k: v for k, v in r.items() if k != "body"}
                    for r in reports[:REPORTS_LISTED]],
        "timeline": list(reversed(changes)),
        "timeline_partial": len(reports) == TIMELINE_REPORTS,
        "agent_version": latest.get("agent_version"),
        "lan_links": [(ip, link) for ip in (dev["lan_ip"], dev["lan_ip_secondary"])
                      if (link := lan_link(ip)) is not None],
    }


def report_body(db: Database, account: Account, vpnid: str, report_id: str) -> str:
    """Return a stored report of a visible device (HttpError 404 otherwise)."""
    visible(db, account, vpnid)
    rows = db.read("SELECT body FROM reports WHERE vpnid = ? AND report_id = ?",
                   (vpnid, report_id))
    if not rows:
        raise HttpError(404, "no such report")
    return str(rows[0]["body"])
