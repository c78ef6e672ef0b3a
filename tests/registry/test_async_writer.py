"""The asyncio group-commit writer (PostgreSQL): same guarantees as the thread writer.

The writer is the real one (evo_registry.batch.AsyncGroupCommit) over the real store on a real
PostgreSQL; to make a batch of several reports deterministically, its first write is held on an
asyncio.Event while the others queue up behind it (a wrapper around the real write: the only
stand-in here, and it only waits).  Database errors are real ones: a trigger that fails an
insert, and connections cut by the server (pg_terminate_backend).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from evo_registry.app import Registry
from evo_registry.batch import AsyncGroupCommit
from evo_registry.config import Settings
from evo_registry.db import Database
from evo_registry.geo import Geo
from evo_registry.store import Accepted, Limits, Outcome, Pending, Store
from tests.registry.conftest import (
    FACTORY,
    HOME_A,
    SUPPORT,
    Device,
    Server,
    enroll,
    get_device,
    send,
)
from tests.registry.pgserver import PgServer
from tests.registry.test_group_commit import _pending, _poison
from tests.registry.test_storage import _enrol


class AsyncGate:
    """Hold the writer's first batch until released, and record every batch's size."""

    def __init__(self, write: Callable[[Sequence[Pending]], Awaitable[list[Outcome]]]) -> None:
        self.write = write
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.sizes: list[int] = []

    async def __call__(self, items: Sequence[Pending]) -> list[Outcome]:
        self.entered.set()
        await asyncio.wait_for(self.release.wait(), 30)
        self.sizes.append(len(items))
        return await self.write(items)


async def _submit_all(writer: AsyncGroupCommit, gate: AsyncGate,
                      items: list[Pending]) -> list[Any]:
    """Submit the first item, wait until the writer holds it, queue the rest, then release."""
    futures = [writer.submit(items[0])]
    await asyncio.wait_for(gate.entered.wait(), 30)
    futures += [writer.submit(i) for i in items[1:]]
    gate.release.set()
    return list(await asyncio.gather(*futures, return_exceptions=True))


def _store(pg_server: PgServer, devices: list[Device]) -> tuple[Store, Database]:
    db = Database(pg_server.create_database())
    db.migrate()
    store = Store(db)
    for d in devices:
        _enrol(store, d)
    return store, db


def test_batch_judges_items_in_order_and_acks_after_commit(pg_server: PgServer) -> None:
    devs = [Device(f"EVO-21001{i}") for i in range(3)]
    store, db = _store(pg_server, devs)
    other = Database(db.url)
    acked_before_commit: list[str] = []

    async def main() -> list[Any]:
        writer = AsyncGroupCommit(store, Limits(count=2))

        async def write(items: Sequence[Pending]) -> list[Outcome]:
            out = await writer._write_batch(items)
            # After COMMIT and before any future resolves, another connection sees every row.
            for o in out:
                if isinstance(o, Accepted) and not o.duplicate and not other.read(
                        "SELECT 1 AS x FROM reports WHERE report_id = ?", (o.report_id,)):
                    acked_before_commit.append(o.report_id)
            return out

        gate = AsyncGate(write)
        writer._write = gate
        first = _pending(devs[0])
        repeat = _pending(devs[0], dict(first.report))
        items = [first, _pending(devs[1]), repeat, _pending(devs[0], minutes=1),
                 _pending(devs[0], minutes=2), _pending(devs[2])]
        results = await _submit_all(writer, gate, items)
        assert gate.sizes == [1, 5]
        await writer.close()
        return results

    results = asyncio.run(main())
    assert [type(r).__name__ for r in results] == ["Accepted", "Accepted", "Accepted",
                                                   "Accepted", "RateLimited", "Accepted"]
    assert results[2].duplicate and not results[0].duplicate and not results[3].duplicate
    assert not acked_before_commit
    assert store.counts()["reports"] == 4
    other.close()
    db.close()


def test_an_error_mid_batch_acks_nobody_then_fails_only_its_item(pg_server: PgServer) -> None:
    devs = [Device(f"EVO-21002{i}") for i in range(5)]
    store, db = _store(pg_server, devs)
    _poison(db, "POISON-MARK")
    items = [_pending(d) for d in devs]
    bad = devs[2].report()
    bad["hardware"]["motherboard"]["vendor"] = "POISON-MARK"
    items[2] = _pending(devs[2], bad)

    async def main() -> list[Any]:
        writer = AsyncGroupCommit(store, Limits())
        gate = AsyncGate(writer._write_batch)
        writer._write = gate
        results = await _submit_all(writer, gate, items)
        await writer.close()
        return results

    results = asyncio.run(main())
    # The batch of four failed whole (rolled back), then went one by one: only the poisoned
    # report fails, every other one is stored and acknowledged exactly once.
    assert isinstance(results[2], psycopg.Error)
    assert all(isinstance(r, Accepted) and not r.duplicate
               for n, r in enumerate(results) if n != 2), results
    stored = {r["report_id"] for r in db.read("SELECT report_id FROM reports")}
    assert stored == {i.report["report_id"] for n, i in enumerate(items) if n != 2}
    db.close()


def test_connection_cut_mid_batch_acks_nobody_then_reconnects(pg_server: PgServer) -> None:
    devs = [Device(f"EVO-21003{i}") for i in range(4)]
    store, db = _store(pg_server, devs)
    items = [_pending(d) for d in devs]

    async def main() -> tuple[list[Any], list[Any], bool]:
        writer = AsyncGroupCommit(store, Limits())
        real = writer._write_batch
        cuts: list[int] = []

        async def write(batch: Sequence[Pending]) -> list[Outcome]:
            if len(batch) > 1 and not cuts:
                # Cut the writer's own connection from the server side while its transaction
                # is open: the batch's first statements are sent, then the backend goes.
                conn = writer._conn
                assert conn is not None
                async with conn.transaction():
                    await conn.execute("INSERT INTO reports (report_id, vpnid, sequence, "
                                       "report_trigger, collected_at, received_at, body) VALUES "
                                       "('x', %s, 0, 'daily', 'x', 'x', '{}')", (devs[0].vpnid,))
                    cuts.append(conn.info.backend_pid)
                    db.read("SELECT pg_terminate_backend(?) AS t", (conn.info.backend_pid,))
                    await conn.execute("SELECT 1")
            return await real(batch)

        gate = AsyncGate(write)
        writer._write = gate
        first = await _submit_all(writer, gate, items)
        # The devices send again (the agent retries 503): a new connection, stored once each.
        again = await asyncio.gather(*[writer.submit(i) for i in items], return_exceptions=True)
        reconnected = writer._conn is not None and writer._conn.info.backend_pid not in cuts
        await writer.close()
        return first, list(again), reconnected

    first, again, reconnected = asyncio.run(main())
    assert reconnected  # the retry went over a new connection, not the cut one
    assert isinstance(first[0], Accepted)
    assert all(isinstance(r, psycopg.OperationalError) for r in first[1:]), first
    assert [isinstance(a, Accepted) and a.duplicate for a in again] == [True, False, False, False]
    stored = {r["report_id"] for r in db.read("SELECT report_id FROM reports")}
    assert stored == {i.report["report_id"] for i in items}  # and never 'x'
    db.close()


def test_reports_over_http_use_the_loop_writer_and_survive_a_cut(pg_server: PgServer,
                                                                 geo_db: Path) -> None:
    settings = Settings(database=pg_server.create_database(), geo_database=str(geo_db),
                        trusted_proxies=["127.0.0.1/32"], factory_tokens=[FACTORY],
                        support_tokens=[SUPPORT], report_writer="loop")
    db = Database(settings.database)
    db.migrate()
    app = Registry(settings, db=db, geo=Geo(settings.geo_database))
    srv = Server(app, kind="asyncio")
    try:
        dev = Device("EVO-210041")
        assert enroll(srv, dev).status == 201
        assert send(srv, dev).status == 201
        # Stored by the loop's writer task: no writer thread was ever started.
        assert srv.http is not None and srv.http.writer is not None
        assert srv.http.writer.items == 1 and app.writer.items == 0
        assert not [t for t in threading.enumerate() if t.name == "group-commit"]
        admin = Database(settings.database)
        admin.read("SELECT pg_terminate_backend(pid) AS t FROM pg_stat_activity "
                   "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        admin.close()
        doc = dev.report()
        cut = send(srv, dev, doc)
        assert cut.status == 503, cut.body  # never a 500, never an ack
        assert cut.headers["retry-after"]
        again = send(srv, dev, doc)  # the agent sends the same report again: a new connection
        assert again.status == 201, again.body
        # The support read runs in the thread pool, whose connection was cut too: it answers
        # 503 once on the thread that held it, then reconnects.
        replies = [get_device(srv, dev.vpnid) for _ in range(5)]
        assert {r.status for r in replies} <= {200, 503}
        record = next(r for r in replies if r.status == 200).json()
        assert record["wan_ip"] == HOME_A
        assert record["reports"][0]["report_id"] == doc["report_id"]  # newest first
        assert len(record["reports"]) == 2
    finally:
        srv.close()
        app.close()
        db.close()


def test_the_writer_thread_is_the_default(pg_server: PgServer, geo_db: Path) -> None:
    settings = Settings(database=pg_server.create_database(), geo_database=str(geo_db),
                        trusted_proxies=["127.0.0.1/32"], factory_tokens=[FACTORY])
    db = Database(settings.database)
    db.migrate()
    app = Registry(settings, db=db, geo=Geo(settings.geo_database))
    srv = Server(app, kind="asyncio")
    try:
        dev = Device("EVO-210051")
        assert enroll(srv, dev).status == 201
        assert send(srv, dev).status == 201
        assert srv.http is not None and srv.http.writer is None
        assert app.writer.items == 1
    finally:
        srv.close()
        app.close()
        db.close()
