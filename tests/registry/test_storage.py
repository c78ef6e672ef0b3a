"""The storage layer on both databases: migrations, constraints, time order, concurrency."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest

from evo_registry.db import MIGRATIONS, Database, parse_utc, utc_text
from evo_registry.errors import DatabaseError, HttpError, RateLimited
from evo_registry.geo import Location
from evo_registry.store import Enrolment, Limits, Store
from tests.registry.conftest import Device

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


def _enrol(store: Store, device: Device, **kw: object) -> bool:
    e = device.enrolment()
    return store.enroll(Enrolment(device.vpnid, e["public_key"], e["report"], ("BE", "NL"), "230V",
                           T0 - timedelta(days=300), "432 EVO Aeon"), T0, **kw)  # type: ignore[arg-type]


def test_migrations_apply_once_and_record_version(db_url: str) -> None:
    db = Database(db_url)
    assert db.schema_version() == 0
    assert db.migrate() == [v for v, _n, _s in MIGRATIONS]
    assert db.migrate() == []
    assert db.schema_version() == MIGRATIONS[-1][0]
    db.close()


def test_migrations_race_between_processes_like_threads(db_url: str) -> None:
    # Two registry processes starting at once on one database: exactly one applies each migration.
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def go() -> None:
        db = Database(db_url)
        try:
            results.append(db.migrate())
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=go) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(len(r) for r in results) == [0, 0, len(MIGRATIONS)]


def test_timestamps_sort_as_text() -> None:
    a = utc_text(datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    b = utc_text(datetime(2026, 1, 2, 3, 4, 5, 1, tzinfo=timezone.utc))
    assert a < b
    assert parse_utc(b) == datetime(2026, 1, 2, 3, 4, 5, 1, tzinfo=timezone.utc)


def test_memory_sqlite_is_refused() -> None:
    with pytest.raises(DatabaseError, match="in-memory"):
        Database("sqlite://:memory:")


def test_enrol_then_reenrol_needs_override(database: Database) -> None:
    store = Store(database)
    dev = Device("EVO-100001")
    assert _enrol(store, dev) is True
    assert _enrol(store, dev) is False  # the same key again: unchanged, no error
    other = Device(dev.vpnid)
    with pytest.raises(HttpError) as info:
        _enrol(store, other)
    assert info.value.status == 409
    _enrol(store, other, override=True)
    assert store.counts()["devices"] == 1


def test_duplicate_report_is_stored_once_and_seen_times_kept(database: Database) -> None:
    store = Store(database)
    dev = Device("EVO-100002")
    _enrol(store, dev)
    doc = dev.report()
    here = Location("BE", "Gent")
    first = store.ingest(doc, dev.vpnid, "192.0.2.10", here, now=T0, path="https",
                         limits=Limits())
    again = store.ingest(doc, dev.vpnid, "192.0.2.10", here, now=T0 + timedelta(hours=1),
                         path="https", limits=Limits())
    assert (first.duplicate, again.duplicate) == (False, True)
    later = store.ingest(dev.report(), dev.vpnid, "192.0.2.11", Location("NL", "Utrecht"),
                         now=T0 + timedelta(days=1), path="vpn", limits=Limits())
    assert not later.duplicate
    row, _events, reports, _latest = store.device(dev.vpnid)
    assert store.counts()["reports"] == 2
    assert row["first_seen"] == utc_text(T0)
    assert row["last_seen"] == utc_text(T0 + timedelta(days=1))
    # Only the latest WAN IP and its location, nowhere a history of them.
    assert (row["wan_ip"], row["country"], row["city"]) == ("192.0.2.11", "NL", "Utrecht")
    assert [r["path"] for r in reports] == ["vpn", "https"]
    assert all("192.0.2" not in str(r) for r in reports)


def test_concurrent_writers_store_a_report_once(database: Database, db_url: str) -> None:
    # The same report arriving at several processes at once (each with its own connection).
    store = Store(database)
    dev = Device("EVO-100003")
    _enrol(store, dev)
    doc = dev.report()
    outcomes: list[bool] = []
    errors: list[BaseException] = []

    def go() -> None:
        db = Database(db_url)
        try:
            res = Store(db).ingest(doc, dev.vpnid, "192.0.2.10", Location("BE", None), now=T0,
                                   path=None, limits=Limits())
            outcomes.append(res.duplicate)
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(outcomes) == [False] + [True] * 5
    assert store.counts()["reports"] == 1


def test_rate_limit_counts_stored_reports_in_the_window(database: Database) -> None:
    store = Store(database)
    dev = Device("EVO-100004")
    _enrol(store, dev)
    limits = Limits(count=3, window=timedelta(hours=1))
    for i in range(3):
        store.ingest(dev.report(), dev.vpnid, None, Location(),
                     now=T0 + timedelta(minutes=i), path=None, limits=limits)
    with pytest.raises(RateLimited) as info:
        store.ingest(dev.report(), dev.vpnid, None, Location(),
                     now=T0 + timedelta(minutes=10), path=None, limits=limits)
    # The oldest of the three leaves the window at T0 + 1 h: 50 minutes from T0 + 10 min.
    assert info.value.retry_after == 50 * 60 + 1
    assert store.counts()["reports"] == 3
    store.ingest(dev.report(), dev.vpnid, None, Location(),
                 now=T0 + timedelta(minutes=61), path=None, limits=limits)
    assert store.counts()["reports"] == 4


def test_prune_removes_old_history_and_stale_wan_ip(database: Database) -> None:
    store = Store(database)
    dev = Device("EVO-100005")
    _enrol(store, dev)
    store.ingest(dev.report(), dev.vpnid, "192.0.2.10", Location("BE", "Gent"),
                 now=T0, path=None, limits=Limits())
    recent = Device("EVO-100006")
    _enrol(store, recent)
    store.ingest(recent.report(), recent.vpnid, "192.0.2.12", Location("BE", "Gent"),
                 now=T0 + timedelta(days=700), path=None, limits=Limits())
    gone = store.prune(T0 + timedelta(days=731), timedelta(days=730))
    assert gone == {"reports": 1, "events": 0, "wan_ips": 1}
    row = store.device(dev.vpnid)[0]
    assert (row["wan_ip"], row["country"], row["city"]) == (None, None, None)
    assert store.device(recent.vpnid)[0]["wan_ip"] == "192.0.2.12"
    assert store.counts()["devices"] == 2  # enrolment (warranty, form) is kept


def test_upgrade_from_version_1_keeps_data(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import evo_registry.db

    monkeypatch.setattr(evo_registry.db, "MIGRATIONS", MIGRATIONS[:1])
    db = Database(db_url)
    assert db.migrate() == [1]
    store = Store(db)
    dev = Device("EVO-100007")
    _enrol(store, dev)
    with db.transaction() as tx:
        tx.run("UPDATE devices SET wan_ip = ?, last_seen = ? WHERE vpnid = ?",
               ("192.0.2.10", utc_text(T0), dev.vpnid))
    monkeypatch.setattr(evo_registry.db, "MIGRATIONS", MIGRATIONS)
    assert db.migrate() == [v for v, _n, _s in MIGRATIONS[1:]]
    assert [r["netbios_name"] for r in store.finder("192.0.2.10", T0)] == [None]
    db.close()
