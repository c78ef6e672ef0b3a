"""Units that stopped reporting: a ``not_seen`` event after ``not_seen_days`` of silence.

A unit reports at boot and every 24 hours; weeks without a report mean it is off, broken,
sold on, or cut off (support's inbox lists it, and the webhooks tell the dealers).  One event per
silent unit: it is opened once, not bumped at every turn, and closes itself when the unit reports
again.  Objected units are left out (their silence is the owner's choice).  Run by ``serve``'s
periodic thread (evo_registry.background) at each retention turn.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from evo_registry.db import utc_text
from evo_registry.store import Store

NOT_SEEN = "not_seen"


def watch(store: Store, now: datetime, days: int) -> dict[str, int]:
    """Open a not_seen event for each unit silent ``days`` or more; close those seen since."""
    cutoff = utc_text(now - timedelta(days=days))
    stamp = utc_text(now)
    with store.db.transaction() as tx:
        resolved = tx.run(
            "UPDATE events SET resolved_at = ? WHERE kind = ? AND resolved_at IS NULL AND "
            "vpnid IN (SELECT vpnid FROM devices WHERE last_seen >= ?)",
            (stamp, NOT_SEEN, cutoff))
        opened = tx.run(
            "INSERT INTO events (vpnid, kind, detail, first_at, last_at, occurrences, report_id) "
            "SELECT d.vpnid, ?, ?, ?, ?, 1, NULL FROM devices d "
            "WHERE d.objected_at IS NULL AND d.last_seen IS NOT NULL AND d.last_seen < ? "
            "AND NOT EXISTS (SELECT 1 FROM events e WHERE e.vpnid = d.vpnid AND e.kind = ? "
            "AND e.resolved_at IS NULL)",
            (NOT_SEEN, json.dumps({"days": days}), stamp, stamp, cutoff, NOT_SEEN))
    return {"not_seen": opened, "not_seen_resolved": resolved}
