"""Group commit on both databases: batches judge items as if sent one by one, ack after COMMIT.

The writer is the real one (evo_registry.batch) over the real store; to make a batch of several
reports deterministically, the first write of a test is held on an Event while the others queue
up behind it (a wrapper around Store.ingest_batch: the only stand-in here, and it only waits).
Database errors mid-batch are real ones, raised by a trigger the test installs in the database.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from evo_registry.batch import GroupCommit
from evo_registry.db import Database
from evo_registry.errors import HttpError, NotAuthentic, RateLimited
from evo_registry.geo import Location
from evo_registry.store import Accepted, Limits, Outcome, Pending, Store
from tests.registry.conftest import HOME_A, Device, Server, enroll, get_device, send
from tests.registry.pgserver import PgServer
from tests.registry.test_storage import T0, _enrol


def _pending(dev: Device, doc: dict[str, Any] | None = None, minutes: int = 0) -> Pending:
    return Pending(doc or dev.report(), dev.vpnid, HOME_A, Location("BE", "Gent"),
                   T0 + timedelta(minutes=minutes), "https")


class Gate:
    """Hold the writer's first batch until released, and record every batch's size."""

    def __init__(self, write: Callable[[Sequence[Pending], Limits], list[Outcome]]) -> None:
        self.write = write
        self.release = threading.Event()
        self.entered = threading.Event()
        self.sizes: list[int] = []

    def __call__(self, items: Sequence[Pending], limits: Limits) -> list[Outcome]:
        self.entered.set()
        self.release.wait(30)
        self.sizes.append(len(items))
        return self.write(items, limits)


def _submit_all(writer: GroupCommit, gate: Gate, items: list[Pending]) -> list[Any]:
    """Submit the first item, wait until the writer holds it, queue the rest, then release."""
    results: list[Any] = [None] * len(items)

    def go(n: int) -> None:
        try:
            results[n] = writer.submit(items[n])
        except BaseException as exc:
            results[n] = exc

    threads = [threading.Thread(target=go, args=(0,))]
    threads[0].start()
    assert gate.entered.wait(30)
    for n in range(1, len(items)):
        threads.append(threading.Thread(target=go, args=(n,)))
        threads[-1].start()
    # Every waiter is queued when the queue holds them all (the writer is held on the gate).
    for _ in range(3000):
        if len(writer._queue) == len(items) - 1:
            break
        threading.Event().wait(0.01)
    gate.release.set()
    for t in threads:
        t.join(60)
    return results


def test_a_batch_judges_items_in_order(database: Database) -> None:
    store = Store(database)
    a, b, c = Device("EVO-200001"), Device("EVO-200002"), Device("EVO-200003")
    for d in (a, b):
        _enrol(store, d)
    gate = Gate(store.ingest_batch)
    writer = GroupCommit(store, Limits(3, timedelta(hours=1)), write=gate)
    twice = a.report()
    items = [_pending(a, twice), _pending(a, twice, 1), _pending(b), _pending(c),
             _pending(a, minutes=2), _pending(a, minutes=3), _pending(a, minutes=4)]
    results = _submit_all(writer, gate, items)
    assert gate.sizes == [1, len(items) - 1]  # the held one alone, then the rest in one batch
    first, dup, other, unknown, second, third, limited = results
    assert isinstance(first, Accepted) and not first.duplicate
    assert isinstance(dup, Accepted) and dup.duplicate and dup.report_id == first.report_id
    assert isinstance(other, Accepted) and not other.duplicate
    assert isinstance(unknown, NotAuthentic)  # answered like a wrong signature
    assert isinstance(second, Accepted) and isinstance(third, Accepted)
    # Three stored reports of device a in the window: the fourth is refused.
    assert isinstance(limited, RateLimited)
    assert store.counts()["reports"] == 4
    dev, _events, reports, _latest = store.device(a.vpnid)
    assert dev["last_sequence"] == items[5].report["sequence"]
    assert dev["first_seen"] == "2026-11-23T12:00:00.000000Z"
    assert dev["last_seen"] == "2026-11-23T12:03:00.000000Z"
    assert len(reports) == 3


def test_sequence_going_backwards_within_a_batch_is_recorded(database: Database) -> None:
    store = Store(database)
    a = Device("EVO-200011")
    _enrol(store, a)
    later, earlier = a.report(), a.report()
    later["sequence"], earlier["sequence"] = 9, 4
    out = store.ingest_batch([_pending(a, later), _pending(a, earlier, 1)], Limits())
    assert [o.events for o in out if isinstance(o, Accepted)] == [(), ("sequence_backwards",)]
    dev, events, _r, _l = store.device(a.vpnid)
    assert dev["last_sequence"] == 4
    assert [e["kind"] for e in events] == ["sequence_backwards"]


def _poison(db: Database, marker: str) -> None:
    """Install a trigger that fails the INSERT of any report whose body holds ``marker``."""
    with db.transaction() as tx:
        if db.dialect == "postgresql":
            tx.run("CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                   f"IF NEW.body LIKE '%{marker}%' THEN RAISE EXCEPTION 'poisoned'; END IF; "
                   "RETURN NEW; END $$")
            tx.run("CREATE TRIGGER poison BEFORE INSERT ON reports FOR EACH ROW "
                   "EXECUTE FUNCTION poison()")
        else:
            tx.run("CREATE TRIGGER poison BEFORE INSERT ON reports "
                   f"WHEN NEW.body LIKE '%{marker}%' BEGIN SELECT RAISE(ABORT, 'poisoned'); END")


def test_an_error_mid_batch_acks_nobody_then_fails_only_its_item(database: Database) -> None:
    store = Store(database)
    devs = [Device(f"EVO-20002{i}") for i in range(5)]
    for d in devs:
        _enrol(store, d)
    _poison(database, "POISON-MARK")
    acked_before_commit: list[str] = []
    seen_by_others = Database(database.url)

    def write(items: Sequence[Pending], limits: Limits) -> list[Outcome]:
        out = store.ingest_batch(items, limits)
        # After COMMIT and before anyone is woken, another connection sees every stored row.
        for o in out:
            if isinstance(o, Accepted) and not seen_by_others.read(
                    "SELECT 1 AS x FROM reports WHERE report_id = ?", (o.report_id,)):
                acked_before_commit.append(o.report_id)
        return out

    gate = Gate(write)
    writer = GroupCommit(store, Limits(), write=gate)
    items = [_pending(d) for d in devs]
    bad = devs[2].report()
    bad["hardware"]["motherboard"]["vendor"] = "POISON-MARK"
    items[2] = _pending(devs[2], bad)
    results = _submit_all(writer, gate, items)
    # The batch of four failed as a whole (rolled back), then went one by one: only the
    # poisoned report fails, every other one is stored and acknowledged exactly once.
    assert gate.sizes == [1, 4, 1, 1, 1, 1]
    assert isinstance(results[2], Exception) and not isinstance(results[2], HttpError)
    assert all(isinstance(r, Accepted) and not r.duplicate
               for n, r in enumerate(results) if n != 2)
    assert not acked_before_commit
    stored = {r["report_id"] for r in seen_by_others.read("SELECT report_id FROM reports")}
    assert stored == {i.report["report_id"] for n, i in enumerate(items) if n != 2}
    seen_by_others.close()


def test_database_down_mid_batch_acks_nobody(pg_server: PgServer) -> None:
    # PostgreSQL only: a server that cuts the writer's connection mid-transaction.
    db_url = pg_server.create_database()
    db = Database(db_url)
    db.migrate()
    store = Store(db)
    devs = [Device(f"EVO-20003{i}") for i in range(4)]
    for d in devs:
        _enrol(store, d)
    admin = Database(db_url)

    def write(items: Sequence[Pending], limits: Limits) -> list[Outcome]:
        if len(items) > 1:
            # Cut this connection from the server side while its transaction is open.
            with db.transaction() as tx:
                tx.run("INSERT INTO reports (report_id, vpnid, sequence, report_trigger, "
                       "collected_at, received_at, body) VALUES ('x', ?, 0, 'daily', 'x', 'x', "
                       "'{}')", (devs[0].vpnid,))
                pid = tx.one("SELECT pg_backend_pid() AS p")
                assert pid is not None
                admin.read("SELECT pg_terminate_backend(?) AS t", (pid["p"],))
                tx.one("SELECT 1 AS x")
        return store.ingest_batch(items, limits)

    gate = Gate(write)
    writer = GroupCommit(store, Limits(), write=gate)
    items = [_pending(d) for d in devs]
    results = _submit_all(writer, gate, items)
    assert isinstance(results[0], Accepted)
    assert all(isinstance(r, Exception) for r in results[1:]), results
    stored = {r["report_id"] for r in admin.read("SELECT report_id FROM reports")}
    assert stored == {items[0].report["report_id"]}  # nothing of the cut batch, not even 'x'
    # The devices send again (the agent retries): stored once each, the first as duplicate.
    again = [writer.submit(i) for i in items]
    assert [isinstance(a, Accepted) and a.duplicate for a in again] == [True, False, False, False]
    assert len(admin.read("SELECT report_id FROM reports")) == 4
    admin.close()
    db.close()


def test_a_uuid_committed_by_another_device_meanwhile_is_refused_alone(
        pg_server: PgServer) -> None:
    # PostgreSQL only (SQLite's writer holds the database's write lock from its first read):
    # another process stores device c's report with the UUID that device b sends, after our
    # batch read the reports and before our INSERT.  The batch's insert breaks the unique key
    # when the other transaction commits; the batch then goes one report per transaction, and
    # b's alone is refused (409), a's is stored.  (Before, b got "duplicate": an ack of a report
    # that was never stored for b.)
    import psycopg

    db_url = pg_server.create_database()
    db = Database(db_url)
    db.migrate()
    store = Store(db)
    a, b, c = Device("EVO-200061"), Device("EVO-200062"), Device("EVO-200063")
    for d in (a, b, c):
        _enrol(store, d)
    taken = b.report()
    other = psycopg.connect(db_url)  # a transaction of "another process", left open
    other.execute("INSERT INTO reports (report_id, vpnid, sequence, report_trigger, "
                  "collected_at, received_at, body) VALUES (%s, %s, 1, 'daily', 'x', 'x', '{}')",
                  (taken["report_id"], c.vpnid))
    inserting = threading.Event()

    def write(items: Sequence[Pending], limits: Limits) -> list[Outcome]:
        if len(items) > 1:
            inserting.set()  # our INSERT will wait on the other transaction's row
        return store.ingest_batch(items, limits)

    gate = Gate(write)
    writer = GroupCommit(store, Limits(), write=gate)
    # The gate holds a lone first report; a's and b's then queue up and form one batch.
    items = [_pending(a), _pending(a, minutes=1), _pending(b, taken, 1)]
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.extend(_submit_all(writer, gate, items)))
    worker.start()
    assert inserting.wait(30)
    threading.Event().wait(0.5)  # the batch has read, and waits in its INSERT
    other.commit()
    worker.join(60)
    other.close()
    assert gate.sizes[:2] == [1, 2], gate.sizes  # then one by one: [1, 2, 1, 1]
    lone, first, second = results
    assert isinstance(lone, Accepted) and not lone.duplicate, lone
    assert isinstance(first, Accepted) and not first.duplicate, first
    assert isinstance(second, HttpError) and second.status == 409, second
    owners = {r["report_id"]: r["vpnid"] for r in db.read("SELECT report_id, vpnid FROM reports")}
    assert owners == {items[0].report["report_id"]: a.vpnid,
                      items[1].report["report_id"]: a.vpnid, taken["report_id"]: c.vpnid}
    db.close()


def test_concurrent_duplicates_over_http_give_one_row(server: Server) -> None:
    dev = Device("EVO-200041")
    assert enroll(server, dev).status == 201
    body, headers = dev.wire(dev.report())
    headers["X-Forwarded-For"] = HOME_A
    statuses: list[int] = []

    def go() -> None:
        statuses.append(server.request("POST", "/v1/reports", body, headers).status)

    threads = [threading.Thread(target=go) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] * 11 + [201]
    assert server.app.store.counts()["reports"] == 1
    assert server.stored_by_writers() == 12


def test_a_key_changed_by_another_process_is_checked_again(server: Server,
                                                           settings: Any) -> None:
    dev = Device("EVO-200051")
    assert enroll(server, dev).status == 201
    assert send(server, dev).status == 201  # the app now holds the key in its cache
    # Another registry process re-enrols the unit under a new key.
    new = Device("EVO-200051")
    other = Store(Database(settings.database))
    e = new.enrolment()
    from evo_registry.store import Enrolment

    other.enroll(Enrolment(new.vpnid, e["public_key"], e["report"], ("BE",), "230V", T0), T0,
                 override=True)
    other.db.close()
    refused = send(server, dev)  # signed with the old key: refused, nothing stored
    assert refused.status == 401, refused.body
    new.sequence = dev.sequence
    assert send(server, new).status == 201
    assert server.app.store.counts()["reports"] == 2


def test_nul_characters_are_stored_not_a_500(server: Server) -> None:
    # JSON allows "\u0000" and the schema does not forbid it, but PostgreSQL TEXT columns refuse
    # NUL (found while testing group commit: a 500, and the agent retries 5xx for ever).  The
    # report is stored as sent; the columns derived from it get U+FFFD, on both databases.
    dev = Device("EVO-200061")
    dev.template["hardware"]["motherboard"]["serial"] = "MB\x00200061"
    assert enroll(server, dev).status == 201
    doc = dev.report()
    doc["functional"]["netbios_name"] = "EVO\x00LIVING"
    reply = send(server, dev, doc)
    assert reply.status == 201, reply.body
    record = get_device(server, dev.vpnid).json()
    assert record["latest_report"]["functional"]["netbios_name"] == "EVO\x00LIVING"
    assert record["fingerprint"]["status"] == "match"
    row, _events, _reports, _latest = server.app.store.device(dev.vpnid)
    assert row["netbios_name"] == "EVO\ufffdLIVING"
    assert row["cur_motherboard_serial"] == "MB\ufffd200061"
    bad_model = Device("EVO-200062")
    refused = enroll(server, bad_model, model="432\x00EVO")
    assert refused.status == 400
    assert "NUL" in refused.json()["error"]


def test_rate_limit_is_exact_across_processes(settings: Any, clock: Any) -> None:
    # Two registry processes (each its own connections and writer) on one database, a device
    # sending 12 reports at once to both, limit 5 per window: exactly 5 stored, 7 refused.
    from evo_registry.app import Registry
    from evo_registry.geo import Geo

    apps, servers, dbs = [], [], []
    for _ in range(2):
        db = Database(settings.database)
        db.migrate()
        app = Registry(settings, db=db, geo=Geo(None), clock=clock)
        apps.append(app)
        dbs.append(db)
        servers.append(Server(app))
    try:
        dev = Device("EVO-200071")
        assert enroll(servers[0], dev).status == 201
        wires = [dev.wire(dev.report()) for _ in range(12)]
        statuses: list[int] = []

        def go(n: int) -> None:
            body, headers = wires[n]
            headers["X-Forwarded-For"] = HOME_A
            statuses.append(servers[n % 2].request("POST", "/v1/reports", body, headers).status)

        threads = [threading.Thread(target=go, args=(n,)) for n in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(statuses) == [201] * 5 + [429] * 7
        assert apps[0].store.counts()["reports"] == 5
        assert servers[0].stored_by_writers() + servers[1].stored_by_writers() == 12
    finally:
        for srv, app, db in zip(servers, apps, dbs, strict=True):
            srv.close()
            app.close()
            db.close()
