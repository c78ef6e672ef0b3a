"""Silent units: a not_seen event after not_seen_days, once, closed by the next report, and
sent to the webhooks like any event (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from evo_registry import silence
from evo_registry.console import alerts
from evo_registry.db import Database, utc_text
from evo_registry.store import Enrolment, Store
from tests.registry.conftest import Device

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


def _unit(store: Store, vpnid: str, last_seen: datetime | None, objected: bool = False) -> None:
    dev = Device(vpnid)
    store.enroll(Enrolment(vpnid, dev.public_key, dev.report(), ("BE",), "230V",
                           NOW - timedelta(days=400)), NOW - timedelta(days=400))
    with store.db.transaction() as tx:
        tx.run("UPDATE devices SET first_seen = ?, last_seen = ?, objected_at = ? "
               "WHERE vpnid = ?",
               (utc_text(NOW - timedelta(days=300)),
                utc_text(last_seen) if last_seen else None,
                utc_text(NOW) if objected else None, vpnid))


def _open(db: Database) -> dict[str, int]:
    rows = db.read("SELECT vpnid, occurrences FROM events WHERE kind = 'not_seen' "
                   "AND resolved_at IS NULL")
    return {str(r["vpnid"]): int(r["occurrences"]) for r in rows}


def test_silent_units_get_one_event_that_closes_at_their_next_report(database: Database) -> None:
    store = Store(database)
    _unit(store, "EVO-400001", NOW - timedelta(days=45))   # silent
    _unit(store, "EVO-400002", NOW - timedelta(days=2))    # reporting
    _unit(store, "EVO-400003", None)                       # never reported: not "silent"
    _unit(store, "EVO-400004", NOW - timedelta(days=90), objected=True)
    assert silence.watch(store, NOW, 30) == {"not_seen": 1, "not_seen_resolved": 0}
    assert _open(database) == {"EVO-400001": 1}
    # the next turns add nothing and bump nothing
    assert silence.watch(store, NOW + timedelta(hours=6), 30)["not_seen"] == 0
    assert _open(database) == {"EVO-400001": 1}
    with database.transaction() as tx:
        tx.run("UPDATE devices SET last_seen = ? WHERE vpnid = ?",
               (utc_text(NOW + timedelta(days=1)), "EVO-400001"))
    assert silence.watch(store, NOW + timedelta(days=1, hours=1), 30) == {
        "not_seen": 0, "not_seen_resolved": 1}
    assert _open(database) == {}


def test_the_event_reaches_the_webhooks(database: Database) -> None:
    store = Store(database)
    sent: list[dict[str, Any]] = []

    def post(_url: str, body: bytes, _headers: dict[str, str]) -> int:
        sent.append(json.loads(body))
        return 200

    alerts.add(database, "https://hooks.example.net/evo", "a-secret-of-24-characters", None, NOW)
    _unit(store, "EVO-400010", NOW - timedelta(days=31))
    silence.watch(store, NOW, 30)
    assert alerts.Dispatcher(database, clock=lambda: NOW, post=post).deliver() == 1
    kinds = [e["kind"] for batch in sent for e in batch["events"]]
    assert kinds == ["not_seen"]
