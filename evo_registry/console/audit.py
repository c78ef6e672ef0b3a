"""The audit trail: who did what to which device or account, when, and from which address.

Every view of a device page, search, export, resolution, erasure, sale, assignment, login and
account change writes one row, in the same transaction as the change it records where there is
one (a change is never without its row).  Kept for the retention period like report history.
Details hold what was asked and what changed, never a password or a token.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from evo_registry.db import Cursor, Database, Row, utc_text

# The columns an admin reads and exports, in this order.
COLUMNS = ("id", "at", "actor", "role", "action", "target", "address", "detail")


def record(tx: Cursor, *, at: datetime, actor: str, role: str, action: str, target: str,
           address: str | None, detail: Mapping[str, Any] | None = None) -> None:
    """Write one row of the trail inside the caller's transaction."""
    tx.send("INSERT INTO console_audit (at, actor, role, action, target, address, detail) "
           "VALUES (?, ?, ?, ?, ?, ?, ?)",
           (utc_text(at), actor, role, action, target[:200], address,
            json.dumps(dict(detail or {}), sort_keys=True, ensure_ascii=False)))


def query(db: Database, *, actor: str = "", action: str = "", target: str = "",
          limit: int = 200, before: int | None = None) -> list[Row]:
    """Return rows of the trail, newest first, filtered by exact actor, action or target."""
    where: list[str] = ["1 = 1"]
    params: list[Any] = []
    for column, value in (("actor", actor), ("action", action), ("target", target)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    if before is not None:
        where.append("id < ?")
        params.append(before)
    return db.read("SELECT id, at, actor, role, action, target, address, detail "  # noqa: S608
                   f"FROM console_audit WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
                   (*params, limit))


def prune(db: Database, now: datetime, retention: timedelta) -> int:
    """Delete the rows older than ``retention``; return how many went."""
    with db.transaction() as tx:
        return tx.run("DELETE FROM console_audit WHERE at < ?", (utc_text(now - retention),))
