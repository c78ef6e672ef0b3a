"""The console's pure rules: the hardware timeline, warranty dates, CSV cells."""

from __future__ import annotations

import copy
from datetime import date, datetime, timezone

from evo_registry.console import export, timeline
from evo_registry.console.accounts import Account
from evo_registry.console.warranty import add_months, warranty
from evo_registry.db import Database
from tests.registry.conftest import base_report


def test_timeline_names_replaced_added_and_removed_parts() -> None:
    a = base_report("EVO-1")
    b = copy.deepcopy(a)
    b["hardware"]["rip_drive"] = {"model": "ASUS DRW-24D5MT", "serial": "K9NEW"}
    b["hardware"]["usb_devices"].append({"vendor_id": "0781", "product_id": "5581",
                                         "vendor": "SanDisk", "product": "Ultra"})
    c = copy.deepcopy(b)
    c["hardware"]["boot_drive"] = None
    c["hardware"]["ram"]["modules"] = []
    changes = timeline.timeline([("t0", None, a), ("t1", "r1", b), ("t1b", "r1b", b),
                                 ("t2", "r2", c)])
    assert [(x.at, x.kind, x.slot) for x in changes] == [
        ("t1", "replaced", "rip drive"), ("t1", "added", "USB device"),
        ("t2", "removed", "boot drive"), ("t2", "removed", "RAM module")]
    swap = changes[0]
    assert swap.before == "HL-DT-ST DVDRAM GP57EB40 SN K1EVO-1R"
    assert swap.after == "ASUS DRW-24D5MT SN K9NEW"
    assert changes[1].after == "SanDisk Ultra (0781:5581)"
    assert changes[3].before == "Kingston KVR24S17S8/8 DDR4 SODIMM 8 GiB"
    # Identical reports: nothing; a malformed one (no hardware) is all "removed", no crash.
    assert timeline.timeline([("t0", None, a), ("t1", "x", a)]) == []
    gone = timeline.timeline([("t0", None, a), ("t1", "x", {"hardware": "?"})])
    assert {x.kind for x in gone} == {"removed"}


def test_warranty_runs_from_the_sale_else_from_manufacturing() -> None:
    assert add_months(date(2026, 1, 31), 1) == date(2026, 2, 28)
    assert add_months(date(2024, 2, 29), 24) == date(2026, 2, 28)
    assert add_months(date(2026, 11, 23), 24) == date(2028, 11, 23)
    stock = warranty(date(2026, 1, 15), None, 24, date(2026, 11, 23))
    assert (stock.basis, stock.end, stock.entitled) == ("manufacturing", date(2028, 1, 15), True)
    sold = warranty(date(2026, 1, 15), date(2026, 11, 1), 24, date(2028, 6, 1))
    assert sold.sentence() == "entitled to free support until 2028-11-01"
    assert warranty(date(2020, 1, 1), None, 24, date(2026, 1, 1)).sentence() == "not entitled"
    last_day = warranty(date(2026, 1, 15), None, 24, date(2028, 1, 15))
    assert last_day.entitled


def test_csv_cells_never_start_a_formula() -> None:
    text = export.to_csv(("vpnid", "netbios_name"), [
        {"vpnid": "EVO-1", "netbios_name": "=HYPERLINK(\"http://x\")"},
        {"vpnid": "EVO-2", "netbios_name": None}])
    assert text.splitlines() == ["vpnid,netbios_name", "EVO-1,\"'=HYPERLINK(\"\"http://x\"\")\"",
                                 "EVO-2,"]


def test_an_export_of_a_broad_search_has_no_list_of_matches(db_url: str) -> None:
    """70,000 matches: listed as parameters they would pass PostgreSQL's 65,535."""
    db = Database(db_url)
    db.migrate()
    try:
        with db.transaction() as tx:
            tx.many("INSERT INTO devices (vpnid, public_key, enrolled_at, manufactured_at, "
                    "sales_region, psu_variant, enrolment_report) "
                    "VALUES (?, 'k', '2026-01-01T00:00:00.000000Z', "
                    "'2026-01-01T00:00:00.000000Z', '[\"BE\"]', '230V', '{}')",
                    [(f"EVO-{i:06d}",) for i in range(70_000)])
        support = Account(1, "s", "support", None)
        now = datetime(2026, 11, 23, tzinfo=timezone.utc)
        rows = export.rows(db, support, "EVO-0", None, months=24, now=now)
        assert len(rows) == 70_000
        assert rows[0]["warranty_end"] == "2028-01-01"
    finally:
        db.close()
