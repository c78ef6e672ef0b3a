"""One storage interface over SQLite (default, embedded) and PostgreSQL (production).

Both run the same migrations, written once in the SQL the two share; the few words that differ
(the auto-increment key, row locks) are filled in per dialect.  Timestamps are stored as fixed
width UTC text (``2026-11-23T01:40:23.123456Z``) so that text order is time order on both.

Several registry processes may serve one PostgreSQL: nothing here is shared between processes.
Each thread has its own connection; writers that must see a consistent device row lock it
(``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` locks the whole file), and
duplicates are refused by unique constraints, not by a check in memory.
"""

from __future__ import annotations

import contextlib
import logging
import re
import select
import sqlite3
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, TypeVar

from evo_registry.errors import DatabaseError

LOG = logging.getLogger(__name__)

Row = dict[str, Any]

# Migrations: append only, never edit one that has shipped.  {pk} is the auto-increment
# primary key of the dialect.
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "devices, reports, events", [
        """CREATE TABLE devices (
            vpnid TEXT PRIMARY KEY,
            public_key TEXT NOT NULL,
            enrolled_at TEXT NOT NULL,
            manufactured_at TEXT NOT NULL,
            model TEXT,
            sales_region TEXT NOT NULL,
            psu_variant TEXT NOT NULL,
            enrolment_report TEXT NOT NULL,
            fp_motherboard_serial TEXT,
            fp_mac TEXT,
            fp_boot_serial TEXT,
            fp_rip_serial TEXT,
            fp_cpu_model TEXT,
            cur_motherboard_serial TEXT,
            first_seen TEXT,
            last_seen TEXT,
            last_sequence BIGINT,
            last_report_id TEXT,
            netbios_name TEXT,
            lan_ip TEXT,
            lan_ip_secondary TEXT,
            wan_ip TEXT,
            country TEXT,
            city TEXT
        )""",
        "CREATE INDEX devices_wan_ip ON devices (wan_ip, last_seen)",
        "CREATE INDEX devices_fp_mb ON devices (fp_motherboard_serial)",
        "CREATE INDEX devices_cur_mb ON devices (cur_motherboard_serial)",
        """CREATE TABLE reports (
            id {pk},
            report_id TEXT NOT NULL UNIQUE,
            vpnid TEXT NOT NULL REFERENCES devices (vpnid) ON DELETE CASCADE,
            sequence BIGINT NOT NULL,
            report_trigger TEXT NOT NULL,
            collected_at TEXT NOT NULL,
            received_at TEXT NOT NULL,
            path TEXT,
            body TEXT NOT NULL
        )""",
        "CREATE INDEX reports_vpnid_received ON reports (vpnid, received_at)",
        "CREATE INDEX reports_received ON reports (received_at)",
        """CREATE TABLE events (
            id {pk},
            vpnid TEXT NOT NULL REFERENCES devices (vpnid) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            detail TEXT NOT NULL,
            first_at TEXT NOT NULL,
            last_at TEXT NOT NULL,
            occurrences INTEGER NOT NULL DEFAULT 1,
            report_id TEXT,
            resolved_at TEXT
        )""",
        # One open event per device and kind: a daily report from abroad updates it, it does not
        # pile up.  Partial unique indexes exist on both SQLite (>= 3.8) and PostgreSQL.
        "CREATE UNIQUE INDEX events_open ON events (vpnid, kind) WHERE resolved_at IS NULL",
        "CREATE INDEX events_resolved ON events (resolved_at)",
    ]),
    # The finder matches homes, not addresses: behind IPv4 NAT a home is one address, but with
    # IPv6 every device of a home has its own address within the home's prefix.  wan_key is the
    # address (IPv4) or its /64 (IPv6); see evo_registry.wire.home_key.  Rows stored before keep
    # their address as key until their next report.
    (2, "finder key: IPv4 address or IPv6 /64", [
        "ALTER TABLE devices ADD COLUMN wan_key TEXT",
        "UPDATE devices SET wan_key = wan_ip",
        "CREATE INDEX devices_wan_key ON devices (wan_key, last_seen)",
        "DROP INDEX devices_wan_ip",
    ]),
    # The console (evo_registry/console): people, not devices.  Self-contained: only its own
    # tables, plus two indexes on devices for its search (MAC, NetBIOS name without case).
    (3, "console: dealers, accounts, sessions, API tokens, audit, assignments, sales, "
        "webhooks", [
        """CREATE TABLE console_dealers (
            code TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            regions TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE console_accounts (
            id {pk},
            username TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL,
            dealer TEXT REFERENCES console_dealers (code),
            password_hash TEXT NOT NULL,
            disabled INTEGER NOT NULL DEFAULT 0,
            failures INTEGER NOT NULL DEFAULT 0,
            locked_until TEXT,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE console_sessions (
            token_hash TEXT PRIMARY KEY,
            account_id BIGINT NOT NULL REFERENCES console_accounts (id) ON DELETE CASCADE,
            csrf TEXT NOT NULL,
            created_at TEXT NOT NULL,
            last_at TEXT NOT NULL
        )""",
        "CREATE INDEX console_sessions_account ON console_sessions (account_id)",
        """CREATE TABLE console_tokens (
            token_hash TEXT PRIMARY KEY,
            account_id BIGINT NOT NULL REFERENCES console_accounts (id) ON DELETE CASCADE,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE console_audit (
            id {pk},
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            role TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            address TEXT,
            detail TEXT NOT NULL
        )""",
        "CREATE INDEX console_audit_at ON console_audit (at)",
        """CREATE TABLE console_device_dealers (
            vpnid TEXT PRIMARY KEY REFERENCES devices (vpnid) ON DELETE CASCADE,
            dealer TEXT NOT NULL REFERENCES console_dealers (code),
            assigned_at TEXT NOT NULL,
            assigned_by TEXT NOT NULL
        )""",
        "CREATE INDEX console_device_dealers_dealer ON console_device_dealers (dealer, vpnid)",
        """CREATE TABLE console_sales (
            vpnid TEXT PRIMARY KEY REFERENCES devices (vpnid) ON DELETE CASCADE,
            sold_on TEXT NOT NULL,
            recorded_at TEXT NOT NULL,
            recorded_by TEXT NOT NULL
        )""",
        """CREATE TABLE console_event_notes (
            id {pk},
            event_id BIGINT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            comment TEXT NOT NULL
        )""",
        "CREATE INDEX console_event_notes_event ON console_event_notes (event_id)",
        """CREATE TABLE console_webhooks (
            id {pk},
            url TEXT NOT NULL,
            secret TEXT NOT NULL,
            dealer TEXT REFERENCES console_dealers (code),
            created_at TEXT NOT NULL,
            last_event_id BIGINT NOT NULL DEFAULT 0,
            failures INTEGER NOT NULL DEFAULT 0,
            next_try_at TEXT,
            lease_until TEXT,
            last_error TEXT
        )""",
        "CREATE INDEX console_devices_mac ON devices (fp_mac)",
        "CREATE INDEX console_devices_netbios ON devices (lower(netbios_name))",
        "CREATE INDEX console_devices_last_seen ON devices (last_seen)",
        "CREATE INDEX console_events_kind ON events (kind, last_at)",
        "CREATE INDEX console_events_open ON events (last_at) WHERE resolved_at IS NULL",
        # A device's events, open and resolved (the device page).
        "CREATE INDEX console_events_vpnid ON events (vpnid, last_at)",
    ]),
    # Where the latest WAN IP came from (a report over HTTPS, or the VPN server's own records:
    # evo_registry.vpnsync) and when it was seen; when the unit was last seen on the VPN (support
    # over the VPN is free under warranty); the owner's objection (evo_registry.objection):
    # objected_at is set while the unit objects, objection_sequence orders its messages.
    (4, "WAN IP source, last seen on the VPN, objection", [
        "ALTER TABLE devices ADD COLUMN wan_source TEXT",
        "ALTER TABLE devices ADD COLUMN wan_seen_at TEXT",
        "ALTER TABLE devices ADD COLUMN vpn_seen_at TEXT",
        "ALTER TABLE devices ADD COLUMN objected_at TEXT",
        "ALTER TABLE devices ADD COLUMN objection_sequence BIGINT",
        "UPDATE devices SET wan_source = 'https', wan_seen_at = last_seen "
        "WHERE wan_ip IS NOT NULL",
    ]),
]

_PK = {
    "sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT",
    "postgresql": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
}
# Any number: the key of the advisory lock that serialises migrations between processes.
_MIGRATION_LOCK = 4320432


def utc_text(moment: datetime) -> str:
    """Return the stored form of a timestamp (fixed-width UTC, microseconds)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc(text: str) -> datetime:
    """Return the datetime of a stored timestamp."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


class Cursor(Protocol):
    """What a transaction offers: run one statement, get rows as dicts."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a statement and return all its rows."""

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """Run a statement and return its first row or None."""

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement and return the number of rows it changed."""

    def many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        """Run a statement once per parameter row (pipelined on PostgreSQL: one round trip)."""

    def send(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run a write whose answer is not needed (pipelined: no round trip of its own)."""

    def queries(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Row]]:
        """Run several statements, in order, and return the rows of each.

        In a pipelined transaction (PostgreSQL) they travel in one round trip.
        """


class _Tx:
    """A transaction on one connection; SQL is written with ``?`` placeholders."""

    def __init__(self, raw: Any, dialect: str, pipeline: Any = None) -> None:
        self._raw = raw
        self._pg = dialect == "postgresql"
        # In pipeline mode (psycopg) results exist only after a sync: every read syncs first,
        # which sends what was queued and waits for all of it (one round trip).
        self._pipeline = pipeline

    def _execute(self, sql: str, params: Sequence[Any]) -> Any:
        cur = self._raw.execute(self._sql(sql), tuple(params))
        if self._pipeline is not None:
            self._pipeline.sync()
        return cur

    def _sql(self, sql: str) -> str:
        return _pg_sql(sql) if self._pg else sql

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a statement and return all its rows."""
        cur = self._execute(sql, params)
        if cur.description is None:
            return []
        return list(cur.fetchall())

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """Run a statement and return its first row or None."""
        cur = self._execute(sql, params)
        if cur.description is None:
            return None
        row = cur.fetchone()
        return None if row is None else dict(row)

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement and return the number of rows it changed."""
        return int(self._execute(sql, params).rowcount)

    def queries(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Row]]:
        """Run several statements, in order, and return the rows of each."""
        if not self._pg:
            return [self.query(sql, params) for sql, params in statements]
        # Send them all, then read: in pipeline mode the first fetch sends the lot at once.
        cursors = [self._raw.cursor() for _ in statements]
        for cur, (sql, params) in zip(cursors, statements, strict=True):
            cur.execute(self._sql(sql), tuple(params))
        if self._pipeline is not None:
            self._pipeline.sync()
        out = [list(cur.fetchall()) if cur.description is not None else [] for cur in cursors]
        for cur in cursors:
            cur.close()
        return out

    def send(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run a write without waiting for its answer (pipelined: it goes with the next sync)."""
        self._raw.execute(self._sql(sql), tuple(params))

    def many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        """Run a statement once per parameter row (pipelined on PostgreSQL: one round trip)."""
        if self._pg:
            with self._raw.cursor() as cur:
                cur.executemany(self._sql(sql), [tuple(p) for p in params])
        else:
            self._raw.executemany(sql, [tuple(p) for p in params])


# A transaction's work written as a generator that yields each statement as a Step and is sent
# its result, so that ``drive`` can run it on either dialect's cursor (and, on PostgreSQL, in
# pipeline mode: sends travel together until a result is read).
# Kinds: ("query", sql, params) -> rows; ("queries", [(sql, params), ...], None) -> rows of each;
# ("run", sql, params) -> rows changed; ("many", sql, [params, ...]) -> None;
# ("send", sql, params) -> None: a write whose answer nobody reads (in a pipeline it travels with
# the next read or the COMMIT, and its error, if any, fails the transaction there).
Step = tuple[str, Any, Any]
T = TypeVar("T")
Steps = Generator[Step, Any, T]


def drive(tx: Cursor, steps: Steps[T]) -> T:
    """Run a transaction's steps on a blocking cursor; return what the generator returns."""
    result: Any = None
    while True:
        try:
            kind, sql, params = steps.send(result)
        except StopIteration as stop:
            value: T = stop.value
            return value
        if kind == "query":
            result = tx.query(sql, params)
        elif kind == "queries":
            result = tx.queries(sql)
        elif kind == "run":
            result = tx.run(sql, params)
        elif kind == "send":
            tx.send(sql, params)
            result = None
        elif kind == "many":
            tx.many(sql, params)
            result = None
        else:
            raise ValueError(f"unknown step {kind!r}")


def _pg_sql(sql: str) -> str:
    """Return a statement with psycopg's placeholders: ``?`` -> %s, ``?b`` -> %b (binary).

    Binary for the arrays of a batch: psycopg's text format escapes every quote of every report
    body with a regular expression (0.1 ms per report, measured); the binary one copies them.
    """
    return sql.replace("%", "%%").replace("?b", "%b").replace("?", "%s")


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {col[0]: row[i] for i, col in enumerate(cursor.description)}


def _wal(conn: sqlite3.Connection, patience_s: float = 30.0) -> None:
    """Put a database in WAL mode (once: the mode is kept in the file)."""
    # Switching the journal mode answers "database is locked" at once, without the busy
    # timeout, while another connection holds a lock: seen when several processes open a new
    # database together (tests/registry/test_storage.py, the migration race).  So retry.
    deadline = time.monotonic() + patience_s
    while True:
        try:
            row = conn.execute("PRAGMA journal_mode").fetchone()
            mode = next(iter(row.values())) if isinstance(row, dict) else row[0]
            if str(mode).lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _hung_up(conn: Any) -> bool:
    """Return True when the server has spoken on an idle PostgreSQL connection: it closed it.

    Between transactions the server sends nothing unless it goes away (a restart sends FATAL
    57P01, then EOF; a crash, EOF or a reset).  psycopg learns of it only when the next statement
    fails, and that request would be answered 503 once per pooled connection: one poll of the
    socket (no round trip) finds it first.
    """
    poller = select.poll()  # not select(): a process with 1,000 clients has fds above 1024
    try:
        poller.register(conn.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def _is_closed(conn: Any) -> bool:
    closed = getattr(conn, "closed", False)  # psycopg has it; sqlite3 connections do not
    return bool(closed)


_SQLITE_URL = re.compile(r"^sqlite:(?://)?(?P<path>.*)$")


class Database:
    """A database named by URL: ``sqlite:///path``, a plain path, or ``postgresql://...``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()
        # Every connection opened, whatever its thread, so that close() can close them all.
        self._opened: list[Any] = []
        self._opened_lock = threading.Lock()
        if url.startswith(("postgresql://", "postgres://")):
            self.dialect = "postgresql"
            self.path: Path | None = None
        else:
            self.dialect = "sqlite"
            m = _SQLITE_URL.match(url)
            self.path = Path(m.group("path") if m else url)
            if str(self.path) in ("", ":memory:"):
                # Each thread would see its own empty database: useless for a server.
                raise DatabaseError("an in-memory SQLite database cannot serve several threads; "
                                    "give a file path")
        self.for_update = " FOR UPDATE" if self.dialect == "postgresql" else ""

    def describe(self) -> str:
        """Return the URL without a password, for logs."""
        return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", self.url)

    def _connect(self) -> Any:
        if self.dialect == "postgresql":
            try:
                import psycopg
                from psycopg.rows import dict_row
            except ImportError as exc:
                raise DatabaseError("PostgreSQL needs psycopg: pip install '.[registry]'") from exc
            try:
                return psycopg.connect(self.url, row_factory=dict_row, autocommit=True)
            except psycopg.Error as exc:
                raise DatabaseError(f"cannot connect to {self.describe()}: {exc}") from exc
        if self.path is None:
            raise DatabaseError("no SQLite path")
        if not self.path.parent.is_dir():
            # A fresh install: the database's directory is the registry's to make (mode 0750:
            # the file holds the units' WAN addresses).
            try:
                self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseError(
                    f"cannot create {self.path.parent} for the SQLite database "
                    f"({exc.strerror}): create it, writable by the registry's user") from exc
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot open {self.path}: {exc}") from exc
        conn.row_factory = _dict_row
        # WAL: readers (the finder) do not wait for the writer; processes may share the file.
        _wal(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self.dialect == "postgresql" and (conn.closed or _hung_up(conn)):
            conn.close()
            conn = None
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._opened_lock:
                self._opened = [c for c in self._opened if not _is_closed(c)] + [conn]
        return conn

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one read-only statement outside an explicit transaction (one round trip)."""
        conn = self._conn()
        tx = _Tx(conn, self.dialect)
        if self.dialect == "postgresql":
            import psycopg

            try:
                return tx.query(sql, params)
            except psycopg.OperationalError:
                if conn.closed or conn.broken:
                    self._local.conn = None
                raise
        return tx.query(sql, params)

    @contextmanager
    def transaction(self, write: bool = True, pipeline: bool = False) -> Iterator[Cursor]:
        """Run a block in one transaction: committed on success, rolled back on any error.

        ``pipeline`` (PostgreSQL): statements are sent without waiting for each answer, until a
        result is read; BEGIN travels with the first statements and COMMIT with the last.
        """
        conn = self._conn()
        if self.dialect == "postgresql":
            import psycopg

            try:
                with conn.pipeline() if pipeline else contextlib.nullcontext() as pipe, \
                        conn.transaction():
                    yield _Tx(conn, self.dialect, pipe)
            except psycopg.OperationalError:
                # A broken connection (server restart): drop it so the next request reconnects.
                if conn.closed or conn.broken:
                    self._local.conn = None
                raise
            return
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield _Tx(conn, self.dialect)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close every connection (at shutdown: the threads that used them are done)."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()
        self._local.conn = None

    def migrate(self) -> list[int]:
        """Apply the migrations not yet applied; return their versions."""
        applied: list[int] = []
        with self.transaction() as tx:
            if self.dialect == "postgresql":
                tx.query("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            tx.run("CREATE TABLE IF NOT EXISTS schema_migrations ("
                   "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)")
            done = {int(r["version"]) for r in tx.query("SELECT version FROM schema_migrations")}
            for version, name, statements in MIGRATIONS:
                if version in done:
                    continue
                LOG.info("applying migration %s (%s) to %s", version, name, self.describe())
                for stmt in statements:
                    tx.run(stmt.replace("{pk}", _PK[self.dialect]))
                tx.run("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                       (version, name, utc_text(datetime.now(timezone.utc))))
                applied.append(version)
        return applied

    def schema_version(self) -> int:
        """Return the highest applied migration (0 for an empty database)."""
        with self.transaction(write=False) as tx:
            if self.dialect == "postgresql":
                exists = tx.one("SELECT to_regclass('schema_migrations') IS NOT NULL AS e")
            else:
                exists = tx.one("SELECT COUNT(*) > 0 AS e FROM sqlite_master "
                                "WHERE type = 'table' AND name = 'schema_migrations'")
            if not exists or not exists["e"]:
                return 0
            row = tx.one("SELECT MAX(version) AS v FROM schema_migrations")
        return int(row["v"]) if row and row["v"] is not None else 0
