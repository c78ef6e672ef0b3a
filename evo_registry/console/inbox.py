"""The events inbox: what the registry noticed (region, PSU, fingerprint, clone, silence).

Support reads and resolves every event, with a comment kept beside it; a dealer reads the events
of its own units (without the city, like everywhere else).
"""

from __future__ import annotations

import json
from datetime import datetime

from evo_registry.console import audit, devices
from evo_registry.console.accounts import Account
from evo_registry.db import Database, Row, utc_text
from evo_registry.errors import HttpError
from evo_registry.silence import NOT_SEEN
from evo_registry.store import (
    CLONE_SUSPECTED,
    FINGERPRINT_CHANGED,
    FINGERPRINT_MISMATCH,
    OUTSIDE_REGION,
    PSU_MISMATCH,
    SEQUENCE_BACKWARDS,
)
from evo_registry.vpnsync import VPN_UNUSED

KINDS = (OUTSIDE_REGION, PSU_MISMATCH, CLONE_SUSPECTED, FINGERPRINT_MISMATCH,
         FINGERPRINT_CHANGED, SEQUENCE_BACKWARDS, NOT_SEEN, VPN_UNUSED)
INBOX_LIMIT = 200


def events(db: Database, account: Account, *, kind: str = "", resolved: bool = False,
           limit: int = INBOX_LIMIT) -> list[Row]:
    """Return events (open ones, or resolved ones), newest first, of the visible devices."""
    where, params = devices.scope(account)
    state = "e.resolved_at IS NOT NULL" if resolved else "e.resolved_at IS NULL"
    conds = [where, state]
    extra: list[object] = []
    if kind:
        if kind not in KINDS:
            raise HttpError(400, f"kind: one of {', '.join(KINDS)}")
        conds.append("e.kind = ?")
        extra.append(kind)
    rows = db.read(
        "SELECT e.id, e.vpnid, e.kind, e.detail, e.first_at, e.last_at, e.occurrences, "  # noqa: S608
        "e.resolved_at, d.netbios_name, d.model, d.country FROM events e "
        f"JOIN devices d ON d.vpnid = e.vpnid WHERE {' AND '.join(conds)} "
        "ORDER BY e.last_at DESC, e.id DESC LIMIT ?", (*params, *extra, limit))
    out = []
    for r in rows:
        detail = json.loads(r["detail"])
        if account.role == "dealer":
            detail = {k: v for k, v in detail.items() if k not in devices.HIDDEN_FROM_DEALERS}
        out.append({**r, "detail": detail})
    return out


def resolve(db: Database, account: Account, event_id: int, comment: str, *, now: datetime,
            address: str | None) -> str:
    """Close an open event with a comment; return its device's VPNID (HttpError 404/400)."""
    comment = comment.strip()
    if not comment or len(comment) > 2000 or "\x00" in comment:
        raise HttpError(400, "comment: say what was done (1 to 2000 characters)")
    with db.transaction() as tx:
        row = tx.one("SELECT vpnid, kind FROM events WHERE id = ? AND resolved_at IS NULL",
                     (event_id,))
        if row is None:
            raise HttpError(404, "no such open event")
        tx.run("UPDATE events SET resolved_at = ? WHERE id = ?", (utc_text(now), event_id))
        tx.run("INSERT INTO console_event_notes (event_id, at, actor, comment) "
               "VALUES (?, ?, ?, ?)", (event_id, utc_text(now), account.username, comment))
        audit.record(tx, at=now, actor=account.username, role=account.role, action="resolve",
                     target=str(row["vpnid"]), address=address,
                     detail={"event": event_id, "kind": row["kind"], "comment": comment})
    return str(row["vpnid"])
