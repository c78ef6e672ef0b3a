"""What the registry keeps, and the rules for changing it: enrolment, reports, events, erasure.

Data minimisation is built into the tables: a device keeps only its latest WAN IP and the
location derived from it (no history of either); reports keep what the device sent, never the
address it came from; history and resolved events are pruned after the retention period.

Every write that depends on the current state of a device runs in one transaction holding that
device's row (see ``evo_registry.db``), so several registry processes can take reports of the
same device at once without double counting; a repeated report UUID is refused by the unique
constraint whatever process saw it first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from evo_registry import rules, wire
from evo_registry.db import (
    Cursor,
    Database,
    Row,
    Step,
    Steps,
    drive,
    parse_utc,
    utc_text,
)
from evo_registry.errors import HttpError, NotAuthentic, Objected, RateLimited, UnknownDevice
from evo_registry.geo import Location
from evo_registry.wire import home_key

LOG = logging.getLogger(__name__)

# Kinds of events (the support page groups by them).
SEQUENCE_BACKWARDS = "sequence_backwards"
OUTSIDE_REGION = "outside_assigned_region"
PSU_MISMATCH = "psu_voltage_mismatch"
FINGERPRINT_CHANGED = "fingerprint_changed"
FINGERPRINT_MISMATCH = "fingerprint_mismatch"
CLONE_SUSPECTED = "clone_suspected"
# Detail keys that hold a derived location: erased with the WAN IP.
_LOCATION_KEYS = ("country", "city")


@dataclass(frozen=True)
class Enrolment:
    """What the manufacturing line sends for one unit."""

    vpnid: str
    public_key: str
    report: Mapping[str, Any]
    sales_region: tuple[str, ...]
    psu_variant: str
    manufactured_at: datetime
    model: str | None = None
    # The dealer the unit is for, when the line knows it (the console's assignment).
    dealer: str | None = None


@dataclass(frozen=True)
class Limits:
    """How much a device may send: ``count`` reports per ``window``, ``stored_per_day``
    characters of report text in 24 hours (a unit whose key was extracted must not fill the
    database at the rate limit)."""

    count: int = 30
    window: timedelta = timedelta(hours=1)
    stored_per_day: int = 1024 * 1024


DAY = timedelta(days=1)


@dataclass(frozen=True)
class Pending:
    """A report whose signature and schema were checked, waiting to be stored."""

    report: Mapping[str, Any]
    vpnid: str
    wan_ip: str | None
    location: Location
    now: datetime
    path: str | None
    # The key the signature was checked with (None: the caller vouches for the report), and
    # what to check it again with if the device was re-enrolled meanwhile.
    key: str | None = None
    signature: str = ""
    body: bytes = b""
    # Came from an address of the VPN (vpn_networks): the unit is seen on the VPN now.
    via_vpn: bool = False


@dataclass(frozen=True)
class Accepted:
    """The outcome of a report: stored (``duplicate`` False) or seen before."""

    report_id: str
    duplicate: bool
    events: tuple[str, ...] = ()


Outcome = Accepted | HttpError


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _record_event(vpnid: str, kind: str, detail: Mapping[str, Any], *, now: str,
                  report_id: str | None) -> Step:
    """Open an event, or update the open one of the same kind (one per device and kind)."""
    return (
        "send",
        "INSERT INTO events (vpnid, kind, detail, first_at, last_at, occurrences, report_id) "
        "VALUES (?, ?, ?, ?, ?, 1, ?) "
        "ON CONFLICT (vpnid, kind) WHERE resolved_at IS NULL DO UPDATE SET "
        "detail = excluded.detail, last_at = excluded.last_at, "
        "occurrences = events.occurrences + 1, report_id = excluded.report_id",
        (vpnid, kind, _json(detail), now, now, report_id),
    )


# The state of a batch's devices from arrays, one element per device (see Store._update_devices).
_UPDATE_DEVICES_ARRAYS = (
    "UPDATE devices AS d SET first_seen = COALESCE(d.first_seen, u.first), "
    "last_seen = CASE WHEN d.last_seen IS NULL OR d.last_seen < u.last THEN u.last "
    "ELSE d.last_seen END, last_sequence = u.seq, last_report_id = u.rid, netbios_name = u.name, "
    "lan_ip = u.lan, lan_ip_secondary = u.lan2, cur_motherboard_serial = u.mb, "
    "wan_ip = CASE WHEN u.has_wan THEN u.wan_ip ELSE d.wan_ip END, "
    "wan_key = CASE WHEN u.has_wan THEN u.wan_key ELSE d.wan_key END, "
    "country = CASE WHEN u.has_wan THEN u.country ELSE d.country END, "
    "city = CASE WHEN u.has_wan THEN u.city ELSE d.city END, "
    "wan_source = CASE WHEN u.has_wan THEN 'https' ELSE d.wan_source END, "
    "wan_seen_at = CASE WHEN u.has_wan THEN u.last ELSE d.wan_seen_at END, "
    "vpn_seen_at = COALESCE(u.vpn, d.vpn_seen_at) "
    "FROM unnest(?b::text[], ?b::text[], ?b::text[], ?b::bigint[], ?b::text[], ?b::text[], "
    "?b::text[], ?b::text[], ?b::text[], ?b::boolean[], ?b::text[], ?b::text[], ?b::text[], "
    "?b::text[], ?b::text[]) "
    "AS u(vpnid, first, last, seq, rid, name, lan, lan2, mb, has_wan, wan_ip, wan_key, country, "
    "city, vpn) WHERE d.vpnid = u.vpnid"
)


def location_events(dev: Row, location: Location) -> list[tuple[str, dict[str, Any]]]:
    """Return the events a unit's location raises: outside its region, mains unsuited to its PSU."""
    out: list[tuple[str, dict[str, Any]]] = []
    region = json.loads(dev["sales_region"])
    if location.country and region and location.country not in region:
        out.append((OUTSIDE_REGION, {"country": location.country, "city": location.city,
                                     "sales_region": region}))
    if location.country and rules.psu_suits(dev["psu_variant"], location.country) is False:
        out.append((PSU_MISMATCH, {"country": location.country,
                                   "mains_v": list(rules.mains_voltages()[location.country]),
                                   "psu_variant": dev["psu_variant"]}))
    return out


def record_event(vpnid: str, kind: str, detail: Mapping[str, Any], *, now: str,
                 report_id: str | None) -> Step:
    """Open an event, or update the open one of the same kind (for modules beside this one)."""
    return _record_event(vpnid, kind, detail, now=now, report_id=report_id)


def _fp_columns(fp: Mapping[str, str | None]) -> tuple[str | None, ...]:
    return tuple(fp.get(p) for p in rules.PARTS)


def _enrolled_fp(dev: Row) -> dict[str, str | None]:
    return {p: dev[f"fp_{p}"] for p in rules.PARTS}


class Store:
    """The registry's data, over one database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # The device row, locked for the transaction (the suffix is a constant of the dialect).
        self._lock_device = "SELECT * FROM devices WHERE vpnid = ?" + db.for_update  # noqa: S608
        # PostgreSQL gets a batch's lists as array parameters (= ANY, unnest): one statement text
        # whatever the batch size, so psycopg caches its parsing and the server its plan; with a
        # placeholder per value, psycopg re-parsed the insert of every batch (1.3 ms for 16
        # reports, measured) and sent one UPDATE per device, each a turn of the event loop.
        self._arrays = db.dialect == "postgresql"

    # ---- enrolment -------------------------------------------------------------------------
    def enroll(self, e: Enrolment, now: datetime, override: bool = False) -> bool:
        """Enrol a unit; return False when it was enrolled before with this very key.

        Re-enrolling under another key needs ``override`` (else 409).  The same key again is the
        line retrying after a lost answer (the station crashed after our 201): nothing changes.
        """
        fp = rules.fingerprint(e.report)
        stamp = utc_text(now)
        with self.db.transaction() as tx:
            if e.dealer is not None and tx.one("SELECT code FROM console_dealers WHERE code = ?",
                                               (e.dealer,)) is None:
                raise HttpError(400, f"dealer: no dealer {e.dealer}")
            existing = tx.one(self._lock_device, (e.vpnid,))
            values = (e.public_key, stamp, utc_text(e.manufactured_at), e.model,
                      _json(list(e.sales_region)), e.psu_variant, _json(e.report),
                      *_fp_columns(fp))
            if existing is None:
                tx.run(
                    "INSERT INTO devices (public_key, enrolled_at, manufactured_at, model, "
                    "sales_region, psu_variant, enrolment_report, fp_motherboard_serial, fp_mac, "
                    "fp_boot_serial, fp_rip_serial, fp_cpu_model, vpnid) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*values, e.vpnid),
                )
            elif not override and existing["public_key"] == e.public_key:
                return False
            elif not override:
                raise HttpError(409, "already enrolled (send \"override\": true to re-enrol)")
            else:
                LOG.warning("re-enrolling %s (override)", e.vpnid)
                tx.run(
                    "UPDATE devices SET public_key = ?, enrolled_at = ?, manufactured_at = ?, "
                    "model = ?, sales_region = ?, psu_variant = ?, enrolment_report = ?, "
                    "fp_motherboard_serial = ?, fp_mac = ?, fp_boot_serial = ?, "
                    "fp_rip_serial = ?, fp_cpu_model = ? WHERE vpnid = ?",
                    (*values, e.vpnid),
                )
            drive(tx, self._check_clone(e.vpnid, fp.get("motherboard_serial"), now=stamp,
                                        report_id=None))
            if e.dealer is not None:
                # The console's assignment (evo_registry/console): the dealer sees the unit.
                tx.run("INSERT INTO console_device_dealers (vpnid, dealer, assigned_at, "
                       "assigned_by) VALUES (?, ?, ?, 'enrolment') ON CONFLICT (vpnid) DO UPDATE "
                       "SET dealer = excluded.dealer, assigned_at = excluded.assigned_at, "
                       "assigned_by = excluded.assigned_by", (e.vpnid, e.dealer, stamp))
        return True

    KEY_QUERY = "SELECT public_key FROM devices WHERE vpnid = ?"

    def public_key(self, vpnid: str) -> str | None:
        """Return the enrolled public key of a VPNID (base64), or None."""
        rows = self.db.read(self.KEY_QUERY, (vpnid,))
        return str(rows[0]["public_key"]) if rows else None

    def keys_query(self, vpnids: Sequence[str]) -> tuple[str, tuple[Any, ...]]:
        """Return the statement reading the enrolled keys of several VPNIDs at once."""
        if self._arrays:
            return "SELECT vpnid, public_key FROM devices WHERE vpnid = ANY(?)", (list(vpnids),)
        marks = ", ".join("?" * len(vpnids))
        return (f"SELECT vpnid, public_key FROM devices WHERE vpnid IN ({marks})",  # noqa: S608
                tuple(vpnids))

    # ---- reports ---------------------------------------------------------------------------
    def ingest(self, report: Mapping[str, Any], vpnid: str, wan_ip: str | None,
               location: Location, *, now: datetime, path: str | None,
               limits: Limits) -> Accepted:
        """Store a verified report and derive its events; a repeated UUID is a duplicate."""
        outcome = self.ingest_batch([Pending(report, vpnid, wan_ip, location, now, path)],
                                    limits)[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def ingest_batch(self, items: Sequence[Pending], limits: Limits) -> list[Outcome]:
        """Store several verified reports in one transaction; one outcome per item, in order.

        An outcome is ``Accepted`` or the ``HttpError`` of that item alone (unknown device,
        signature under a key changed meanwhile, UUID of another device, rate limit).  Items are
        judged in order, as if sent one after the other: a UUID twice in one batch is stored once,
        and earlier items count towards the rate limit of later ones.  An exception (database
        down, a bug) means nothing of the batch was stored.
        """
        # Pipelined on PostgreSQL: BEGIN, the lock and the reads in one round trip, the writes
        # and COMMIT in another (one more per event raised).
        with self.db.transaction(pipeline=True) as tx:
            return drive(tx, self._ingest_steps(items, limits))

    def _ingest_steps(self, items: Sequence[Pending], limits: Limits) -> Steps[list[Outcome]]:
        """The statements of ``ingest_batch`` (see db.Step), for either driver."""
        vpnids = sorted({i.vpnid for i in items})
        ids = [str(i.report["report_id"]) for i in items]
        since = min(i.now for i in items) - max(limits.window, DAY)
        texts = [_json(i.report) for i in items]
        outcomes: list[Outcome | None] = [None] * len(items)
        # Lock the devices' rows, always in the same order (no deadlock between processes
        # writing overlapping batches).  The reads are a separate statement so that, on
        # PostgreSQL, they see what another process committed while we waited for a lock.
        locked, known = yield ("queries", self._batch_reads(vpnids, ids, since), None)
        devs = {str(d["vpnid"]): d for d in locked}
        seen: dict[str, str] = {}
        recent: dict[str, list[tuple[str, int]]] = {v: [] for v in vpnids}
        for row in known:
            if row["k"] == "d":
                seen[str(row["a"])] = str(row["b"])
            else:
                recent[str(row["a"])].append((str(row["b"]), int(row["c"])))
        todo: list[int] = []
        for n, item in enumerate(items):
            outcomes[n] = self._admit(item, devs.get(item.vpnid), seen, recent, limits,
                                      size=len(texts[n]))
            if outcomes[n] is None:
                seen[ids[n]] = item.vpnid
                recent[item.vpnid].append((utc_text(item.now), len(texts[n])))
                todo.append(n)
        if todo:
            # Sent without waiting: with the events, the devices' update and COMMIT, the second
            # and last round trip of the batch.  A UUID of another device's report, committed by
            # another process between our read and this insert (the rows we lock are not that
            # device's), breaks the unique key and so the whole batch: batch.GroupCommit then
            # stores the batch's reports one per transaction, and that one's read sees it (409).
            rows = [(ids[n], items[n].vpnid, int(items[n].report["sequence"]),
                     str(items[n].report["trigger"]), str(items[n].report["collected_at"]),
                     utc_text(items[n].now), items[n].path, texts[n])
                    for n in todo]
            yield self._insert_reports(rows)
        changes: dict[str, dict[str, Any]] = {}
        for n in todo:
            item = items[n]
            dev = devs[item.vpnid]
            stamp = utc_text(item.now)
            fp = rules.fingerprint(item.report)  # once: it is most of the writer's time
            events = yield from self._derive_events(dev, item.report, item.location,
                                                    now=stamp, report_id=ids[n], reported=fp)
            outcomes[n] = Accepted(ids[n], duplicate=False, events=tuple(events))
            # The next report of this device in the batch compares with this one.
            dev["last_sequence"] = int(item.report["sequence"])
            dev["cur_motherboard_serial"] = fp.get("motherboard_serial")
            self._fold(changes.setdefault(item.vpnid, {}), item, stamp,
                       fp.get("motherboard_serial"))
        yield from self._update_devices(changes, self._arrays)
        done = [o for o in outcomes if o is not None]
        if len(done) != len(items):
            raise AssertionError("an item of the batch got no outcome")
        return done

    def _batch_reads(self, vpnids: Sequence[str], ids: Sequence[str],
                     since: datetime) -> list[tuple[str, Sequence[Any]]]:
        """Return the statements locking a batch's devices and reading their recent reports."""
        lock_sql = ("SELECT vpnid, public_key, sales_region, psu_variant, last_sequence, "  # noqa: S608
                    "cur_motherboard_serial, objected_at, "
                    + ", ".join(f"fp_{p}" for p in rules.PARTS)
                    + " FROM devices WHERE ")
        known_sql = ("SELECT 'd' AS k, report_id AS a, vpnid AS b, 0 AS c FROM reports "
                     "WHERE {ids} UNION ALL SELECT 'r' AS k, vpnid AS a, received_at AS b, "
                     "length(body) AS c FROM reports WHERE {vpnids} AND received_at > ?")
        if self._arrays:
            return [(lock_sql + "vpnid = ANY(?b) ORDER BY vpnid" + self.db.for_update,
                     (list(vpnids),)),
                    (known_sql.format(ids="report_id = ANY(?b)", vpnids="vpnid = ANY(?b)"),
                     (list(ids), list(vpnids), utc_text(since)))]
        marks = ", ".join("?" * len(vpnids))
        id_marks = ", ".join("?" * len(ids))
        return [(lock_sql + f"vpnid IN ({marks}) ORDER BY vpnid" + self.db.for_update, vpnids),
                (known_sql.format(ids=f"report_id IN ({id_marks})", vpnids=f"vpnid IN ({marks})"),
                 (*ids, *vpnids, utc_text(since)))]

    def _insert_reports(self, rows: Sequence[tuple[Any, ...]]) -> Step:
        """Return the statement inserting a batch's reports (its answer is not waited for)."""
        insert = ("INSERT INTO reports (report_id, vpnid, sequence, report_trigger, "
                  "collected_at, received_at, path, body) ")
        if self._arrays:
            return ("send",
                    insert + "SELECT * FROM unnest(?b::text[], ?b::text[], ?b::bigint[], "  # noqa: S608
                    "?b::text[], ?b::text[], ?b::text[], ?b::text[], ?b::text[])",
                    [list(column) for column in zip(*rows, strict=True)])
        return ("send", insert + "VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(rows)),
                [x for row in rows for x in row])

    @staticmethod
    def _admit(item: Pending, dev: Row | None, seen: Mapping[str, str],
               recent: Mapping[str, list[tuple[str, int]]], limits: Limits, *,
               size: int) -> Outcome | None:
        """Return why an item is not stored (an error or a duplicate), or None to store it."""
        if dev is None:
            return NotAuthentic()  # removed since the caller read its key: as if never enrolled
        if dev["objected_at"] is not None:
            return Objected()
        if item.key is not None and dev["public_key"] != item.key:
            # Re-enrolled with another key since the caller checked the signature.
            try:
                wire.verify_signature(str(dev["public_key"]), item.signature, item.body)
            except HttpError as exc:
                return exc
        report_id = str(item.report["report_id"])
        owner = seen.get(report_id)
        if owner is not None:
            if owner != item.vpnid:
                return HttpError(409, "report_id already used by another device")
            return Accepted(report_id, duplicate=True)
        since = utc_text(item.now - limits.window)
        window = [t for t, _size in recent[item.vpnid] if t > since]
        if len(window) >= limits.count:
            oldest = parse_utc(min(window))
            return RateLimited(max(1, int((oldest + limits.window - item.now).total_seconds())
                                   + 1))
        day_start = utc_text(item.now - DAY)
        day = [(t, n) for t, n in recent[item.vpnid] if t > day_start]
        if sum(n for _t, n in day) + size > limits.stored_per_day:
            oldest = parse_utc(min(t for t, _n in day)) if day else item.now
            return RateLimited(max(1, int((oldest + DAY - item.now).total_seconds()) + 1),
                               f"more than {limits.stored_per_day} characters of reports "
                               "in 24 hours")
        return None

    @staticmethod
    def _fold(change: dict[str, Any], item: Pending, stamp: str, serial: str | None) -> None:
        """Merge one stored report into what its device row becomes (the last report wins)."""
        functional = item.report.get("functional") or {}
        name = functional.get("netbios_name")
        change["first"] = min(change.get("first", stamp), stamp)
        change["last"] = max(change.get("last", stamp), stamp)
        change["values"] = (int(item.report["sequence"]), str(item.report["report_id"]),
                            rules.no_nul(name) if isinstance(name, str) else name,
                            functional.get("lan_ip"),
                            functional.get("lan_ip_secondary"), serial)
        # Only the latest WAN IP and its location: each report with a known one overwrites
        # them (an unknown one, from a misconfigured proxy, leaves the last known).
        if item.wan_ip is not None:
            change["wan"] = (item.wan_ip, home_key(item.wan_ip), item.location.country,
                             item.location.city)
        if item.via_vpn:
            change["vpn"] = stamp

    @staticmethod
    def _update_devices(changes: Mapping[str, Mapping[str, Any]],
                        arrays: bool = False) -> Steps[None]:
        """Write the new state of each device that stored reports (one statement per shape)."""
        if arrays and changes:
            # PostgreSQL: every device in one statement, whatever the batch size.
            columns: list[list[Any]] = [[] for _ in range(15)]
            for vpnid, c in sorted(changes.items()):
                wan = c.get("wan") or (None, None, None, None)
                row = (vpnid, c["first"], c["last"], *c["values"], "wan" in c, *wan, c.get("vpn"))
                for column, value in zip(columns, row, strict=True):
                    column.append(value)
            yield ("send", _UPDATE_DEVICES_ARRAYS, columns)
            return
        sql = ("UPDATE devices SET first_seen = COALESCE(first_seen, ?), "
               "last_seen = CASE WHEN last_seen IS NULL OR last_seen < ? THEN ? "
               "ELSE last_seen END, last_sequence = ?, last_report_id = ?, netbios_name = ?, "
               "lan_ip = ?, lan_ip_secondary = ?, cur_motherboard_serial = ?, "
               "vpn_seen_at = COALESCE(?, vpn_seen_at)")
        with_wan, without = [], []
        for vpnid, c in sorted(changes.items()):
            head = (c["first"], c["last"], c["last"], *c["values"], c.get("vpn"))
            if "wan" in c:
                with_wan.append((*head, *c["wan"], c["last"], vpnid))
            else:
                without.append((*head, vpnid))
        if with_wan:
            yield ("many",
                   sql + ", wan_ip = ?, wan_key = ?, country = ?, city = ?, "
                   "wan_source = 'https', wan_seen_at = ? WHERE vpnid = ?",
                   with_wan)
        if without:
            yield ("many", sql + " WHERE vpnid = ?", without)

    def _derive_events(self, dev: Row, report: Mapping[str, Any],
                       location: Location, *, now: str, report_id: str,
                       reported: Mapping[str, str | None] | None = None) -> Steps[list[str]]:
        vpnid = str(dev["vpnid"])
        events: list[str] = []

        def record(kind: str, detail: Mapping[str, Any]) -> Step:
            events.append(kind)
            return _record_event(vpnid, kind, detail, now=now, report_id=report_id)

        sequence = int(report["sequence"])
        last = dev["last_sequence"]
        if last is not None and sequence <= int(last):
            # A restored or copied state directory, or a second unit with this identity.
            yield record(SEQUENCE_BACKWARDS, {"previous": int(last), "received": sequence})

        for kind, detail in location_events(dev, location):
            yield record(kind, detail)

        if reported is None:
            reported = rules.fingerprint(report)
        check = rules.compare_fingerprints(_enrolled_fp(dev), reported)
        if check.status in ("changed", "mismatch"):
            kind = FINGERPRINT_MISMATCH if check.status == "mismatch" else FINGERPRINT_CHANGED
            yield record(kind, {"changed": list(check.changed),
                                "compared": list(check.compared)})
        # A serial already checked needs no new look: the previous report's, or the enrolled
        # one (checked at enrolment); a unit enrolled or reporting later with the same serial
        # raises the event on both at that moment.
        serial = reported.get("motherboard_serial")
        checked = (dev["cur_motherboard_serial"], dev["fp_motherboard_serial"])
        if serial not in checked and (yield from self._check_clone(vpnid, serial, now=now,
                                                                   report_id=report_id)):
            events.append(CLONE_SUSPECTED)
        return events

    def _check_clone(self, vpnid: str, serial: str | None, *, now: str,
                     report_id: str | None) -> Steps[bool]:
        """Flag one motherboard serial under two VPNIDs, on every VPNID concerned."""
        if not serial:
            return False
        rows = yield ("query",
                      "SELECT vpnid FROM devices WHERE (fp_motherboard_serial = ? OR "
                      "cur_motherboard_serial = ?) AND vpnid <> ? ORDER BY vpnid LIMIT 20",
                      (serial, serial, vpnid))
        others = [str(r["vpnid"]) for r in rows]
        if not others:
            return False
        everyone = sorted([vpnid, *others])
        for v in everyone:
            yield _record_event(v, CLONE_SUSPECTED, {"vpnids": everyone}, now=now,
                                report_id=report_id if v == vpnid else None)
        return True

    # ---- reading ---------------------------------------------------------------------------
    def finder(self, wan_ip: str, now: datetime, days: int = 30, limit: int = 50) -> list[Row]:
        """Return the devices whose latest WAN IP is in the visitor's home, seen within ``days``."""
        return self.db.read(*self.finder_query(wan_ip, now, days, limit))

    @staticmethod
    def finder_query(wan_ip: str, now: datetime, days: int = 30,
                     limit: int = 50) -> tuple[str, tuple[Any, ...]]:
        """Return the finder's statement and parameters."""
        return ("SELECT vpnid, netbios_name, model, last_seen, lan_ip, lan_ip_secondary "
                "FROM devices WHERE wan_key = ? AND last_seen >= ? AND objected_at IS NULL "
                "ORDER BY last_seen DESC LIMIT ?",
                (home_key(wan_ip), utc_text(now - timedelta(days=days)), limit))

    def device(self, vpnid: str, history: int = 100) -> tuple[Row, list[Row], list[Row],
                                                               Row | None]:
        """Return a device row, its events, its report history and its latest report."""
        with self.db.transaction(write=False) as tx:
            dev = tx.one("SELECT * FROM devices WHERE vpnid = ?", (vpnid,))
            if dev is None:
                raise UnknownDevice
            events = tx.query("SELECT id, kind, detail, first_at, last_at, occurrences, "
                              "report_id, resolved_at FROM events WHERE vpnid = ? "
                              "ORDER BY last_at DESC, id DESC", (vpnid,))
            reports = tx.query("SELECT report_id, sequence, report_trigger, collected_at, "
                               "received_at, path FROM reports WHERE vpnid = ? "
                               "ORDER BY received_at DESC, id DESC LIMIT ?", (vpnid, history))
            latest = None
            if dev["last_report_id"]:
                latest = tx.one("SELECT body FROM reports WHERE report_id = ?",
                                (dev["last_report_id"],))
        return dev, events, reports, latest

    def open_events(self, limit: int = 1000) -> list[Row]:
        """Return the open events with their device's location, newest first."""
        with self.db.transaction(write=False) as tx:
            return tx.query(
                "SELECT e.id, e.vpnid, e.kind, e.detail, e.first_at, e.last_at, e.occurrences, "
                "d.country, d.last_seen FROM events e JOIN devices d ON d.vpnid = e.vpnid "
                "WHERE e.resolved_at IS NULL ORDER BY e.last_at DESC, e.id DESC LIMIT ?",
                (limit,))

    def resolve_event(self, event_id: int, now: datetime) -> bool:
        """Close an open event; return False when there is no such open event."""
        with self.db.transaction() as tx:
            return tx.run("UPDATE events SET resolved_at = ? WHERE id = ? AND resolved_at IS NULL",
                          (utc_text(now), event_id)) > 0

    # ---- erasure and retention -------------------------------------------------------------
    def erase_personal_data(self, vpnid: str) -> int:
        """Erase the WAN IP and the location derived from it (also from events' details)."""
        with self.db.transaction() as tx:
            if tx.run("UPDATE devices SET wan_ip = NULL, wan_key = NULL, country = NULL, "
                      "city = NULL, wan_source = NULL, wan_seen_at = NULL "
                      "WHERE vpnid = ?", (vpnid,)) == 0:
                raise UnknownDevice
            return self._redact_events(tx, vpnid)

    @staticmethod
    def _redact_events(tx: Cursor, vpnid: str) -> int:
        changed = 0
        for ev in tx.query("SELECT id, detail FROM events WHERE vpnid = ?", (vpnid,)):
            detail = json.loads(ev["detail"])
            if any(k in detail for k in _LOCATION_KEYS):
                for k in _LOCATION_KEYS:
                    detail.pop(k, None)
                detail["location_erased"] = True
                tx.run("UPDATE events SET detail = ? WHERE id = ?", (_json(detail), ev["id"]))
                changed += 1
        return changed

    def prune(self, now: datetime, retention: timedelta) -> dict[str, int]:
        """Delete history older than ``retention``; return how many rows of each kind went."""
        cutoff = utc_text(now - retention)
        with self.db.transaction() as tx:
            reports = tx.run("DELETE FROM reports WHERE received_at < ?", (cutoff,))
            events = tx.run("DELETE FROM events WHERE resolved_at IS NOT NULL AND resolved_at < ?",
                            (cutoff,))
            stale = [str(r["vpnid"]) for r in tx.query(
                "SELECT vpnid FROM devices WHERE last_seen < ? AND "
                "(wan_ip IS NOT NULL OR country IS NOT NULL)", (cutoff,))]
            for vpnid in stale:
                tx.run("UPDATE devices SET wan_ip = NULL, wan_key = NULL, country = NULL, "
                       "city = NULL, wan_source = NULL, wan_seen_at = NULL "
                       "WHERE vpnid = ?", (vpnid,))
                self._redact_events(tx, vpnid)
        return {"reports": reports, "events": events, "wan_ips": len(stale)}

    def counts(self) -> dict[str, int]:
        """Return the number of rows per table (for tests and the health check)."""
        out: dict[str, int] = {}
        with self.db.transaction(write=False) as tx:
            for table in ("devices", "reports", "events"):
                row = tx.one(f"SELECT COUNT(*) AS n FROM {table}")  # noqa: S608 - fixed names
                out[table] = int(row["n"]) if row else 0
        return out


def region_list(codes: Sequence[Any]) -> tuple[str, ...]:
    """Return a sales region as sorted unique codes, or raise HttpError 400."""
    if not codes or not all(rules.valid_country(c) for c in codes):
        raise HttpError(400, "sales_region: a non-empty list of ISO 3166-1 alpha-2 codes "
                             "in upper case")
    return tuple(sorted(set(codes)))
