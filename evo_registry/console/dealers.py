"""Dealers' business: which units are theirs, sales, and the entitlement answer.

Support (or an admin) assigns a unit to a dealer; the dealer then records its sale, from which the
warranty runs.  A dealer records a unit's sale once; correcting a recorded date is for support,
and the trail keeps both dates.  The entitlement answer is given for any VPNID to any role that
may ask: it says no more than the registration form in the customer's hands.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from evo_registry.console import audit, devices
from evo_registry.console.accounts import Account
from evo_registry.console.warranty import Warranty
from evo_registry.db import Database, utc_text
from evo_registry.errors import HttpError


def parse_date(text: str) -> date:
    """Return a date from YYYY-MM-DD, or HttpError 400."""
    try:
        return date.fromisoformat(text.strip())
    except ValueError as exc:
        raise HttpError(400, "date: YYYY-MM-DD is needed") from exc


def assign(db: Database, account: Account, vpnid: str, dealer: str, *, now: datetime,
           address: str | None) -> str | None:
    """Assign a unit to a dealer (support, admin); return the previous dealer, if any."""
    devices.check_vpnid(vpnid)
    with db.transaction() as tx:
        if tx.one("SELECT vpnid FROM devices WHERE vpnid = ?", (vpnid,)) is None:
            raise HttpError(404, "unknown unit")
        if tx.one("SELECT code FROM console_dealers WHERE code = ?", (dealer,)) is None:
            raise HttpError(400, f"no dealer {dealer}")
        old = tx.one("SELECT dealer FROM console_device_dealers WHERE vpnid = ?", (vpnid,))
        if old is None:
            tx.run("INSERT INTO console_device_dealers (vpnid, dealer, assigned_at, assigned_by) "
                   "VALUES (?, ?, ?, ?)", (vpnid, dealer, utc_text(now), account.username))
        else:
            tx.run("UPDATE console_device_dealers SET dealer = ?, assigned_at = ?, "
                   "assigned_by = ? WHERE vpnid = ?",
                   (dealer, utc_text(now), account.username, vpnid))
        previous = None if old is None else str(old["dealer"])
        audit.record(tx, at=now, actor=account.username, role=account.role, action="assign",
                     target=vpnid, address=address, detail={"dealer": dealer,
                                                           "previous": previous})
    return previous


def record_sale(db: Database, account: Account, vpnid: str, sold_on: date, *, now: datetime,
                address: str | None) -> None:
    """Record the sale of a unit the account may see; the warranty runs from ``sold_on``."""
    dev = devices.visible(db, account, vpnid)
    if sold_on > now.date():
        raise HttpError(400, "date: a sale cannot be in the future")
    if sold_on.isoformat() < str(dev["manufactured_at"])[:10]:
        raise HttpError(400, "date: before the unit was manufactured")
    with db.transaction() as tx:
        old = tx.one("SELECT sold_on FROM console_sales WHERE vpnid = ?", (vpnid,))
        if old is not None and account.role == "dealer":
            raise HttpError(409, f"sale already recorded on {old['sold_on']}; "
                                 "432 EVO support can correct it")
        if old is None:
            tx.run("INSERT INTO console_sales (vpnid, sold_on, recorded_at, recorded_by) "
                   "VALUES (?, ?, ?, ?)", (vpnid, sold_on.isoformat(), utc_text(now),
                                           account.username))
        else:
            tx.run("UPDATE console_sales SET sold_on = ?, recorded_at = ?, recorded_by = ? "
                   "WHERE vpnid = ?", (sold_on.isoformat(), utc_text(now), account.username,
                                       vpnid))
        audit.record(tx, at=now, actor=account.username, role=account.role, action="sale",
                     target=vpnid, address=address,
                     detail={"sold_on": sold_on.isoformat(),
                             "previous": None if old is None else old["sold_on"]})


def entitlement(db: Database, vpnid: str, months: int, today: date) -> tuple[str, Warranty | None]:
    """Return the answer for any VPNID: the sentence, and the warranty behind it if known."""
    vpnid = vpnid.strip()
    rows: list[dict[str, Any]] = []
    if devices.VPNID_TEXT.fullmatch(vpnid):
        rows = db.read("SELECT d.manufactured_at, s.sold_on FROM devices d "
                       "LEFT JOIN console_sales s ON s.vpnid = d.vpnid WHERE d.vpnid = ?",
                       (vpnid,))
    if not rows:
        return "unknown unit", None
    w = devices.unit_warranty(rows[0], rows[0]["sold_on"], months, today)
    return w.sentence(), w
