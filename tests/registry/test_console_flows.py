"""The console's work flows over HTTP (real uvicorn, SQLite and PostgreSQL): assignment, sales,
events, erasure, exports, fleet, administration, and bad input answered with a 4xx page."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from evo_registry.config import Settings
from evo_registry.console import accounts
from evo_registry.db import Database
from tests.registry.conftest import Device, Server, enroll
from tests.registry.consoleenv import (
    CITY_CANARY,
    WAN_CANARY,
    Clock,
    World,
    csrf_of,
    login,
    served,
)

CARL = "carl-password-123"


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Iterator[World]:
    with served(db_url, tmp_path) as w:
        yield w


def _post(s: object, world: World, path: str, page: str, **data: str) -> object:
    token = csrf_of(s, world.url + page)  # type: ignore[arg-type]
    return s.post(world.url + path, data={"csrf": token, **data}, timeout=30)  # type: ignore[attr-defined]


def test_assignment_and_sales(world: World) -> None:
    support = login(world, "sam.support")
    dealer = login(world, "bert.dealer")
    assert dealer.get(f"{world.url}/devices/EVO-100003", timeout=30).status_code == 404
    r = _post(support, world, "/devices/EVO-100003/assign", "/devices/EVO-100003",
              dealer="DLR-B")
    assert r.status_code == 200 and "DLR-B (Klang Berlin)" in r.text
    assert dealer.get(f"{world.url}/devices/EVO-100003", timeout=30).status_code == 200
    r = _post(dealer, world, "/sales", "/sales", vpnid="EVO-100003", sold_on="2026-11-02")
    assert r.status_code == 200 and "until 2028-11-02" in r.text
    again = _post(dealer, world, "/sales", "/sales", vpnid="EVO-100003", sold_on="2026-11-03")
    assert again.status_code == 409 and "already recorded on 2026-11-02" in again.text
    for bad, why in (("2026-12-01", "future"), ("2025-01-01", "before the unit"),
                     ("1 Nov", "YYYY-MM-DD")):
        r = _post(dealer, world, "/sales", "/sales", vpnid="EVO-100003", sold_on=bad)
        assert r.status_code == 400 and why in r.text
    fixed = _post(support, world, "/sales", "/sales", vpnid="EVO-100003", sold_on="2026-11-03")
    assert fixed.status_code == 200 and "until 2028-11-03" in fixed.text
    sales = world.db.read("SELECT detail FROM console_audit WHERE action = 'sale' ORDER BY id")
    assert [json.loads(r["detail"]) for r in sales] == [
        {"sold_on": "2026-11-02", "previous": None},
        {"sold_on": "2026-11-03", "previous": "2026-11-02"}]


def test_events_resolved_with_a_comment(world: World) -> None:
    support = login(world, "sam.support")
    inbox = support.get(f"{world.url}/events", params={"kind": "outside_assigned_region"},
                        timeout=30)
    assert inbox.text.count('<tr class="event">') == 2  # EVO-100001 in JP, EVO-100002 in DE
    event = world.db.read("SELECT id FROM events WHERE kind = 'outside_assigned_region' "
                          "AND vpnid = 'EVO-100001'")[0]["id"]
    r = _post(support, world, f"/events/{event}/resolve", "/events",
              comment="owner moved to Osaka <b>ok</b>", back="/devices/EVO-100001")
    assert r.url.endswith("/console/devices/EVO-100001")
    assert "sam.support: owner moved to Osaka &lt;b&gt;ok&lt;/b&gt;" in r.text
    assert support.get(f"{world.url}/events", params={"kind": "outside_assigned_region"},
                       timeout=30).text.count('<tr class="event">') == 1
    done = support.get(f"{world.url}/events", params={"state": "resolved"}, timeout=30)
    assert "EVO-100001" in done.text
    twice = _post(support, world, f"/events/{event}/resolve", "/events", comment="again")
    assert twice.status_code == 404
    empty = _post(support, world, "/events/1/resolve", "/events", comment=" ")
    assert empty.status_code == 400
    assert support.get(f"{world.url}/events", params={"kind": "nope"},
                       timeout=30).status_code == 400


def test_erasure_exports_and_fleet(world: World) -> None:
    support = login(world, "sam.support")
    rows = list(csv.DictReader(io.StringIO(
        support.get(f"{world.url}/devices/export.csv", timeout=30).text)))
    assert [r["vpnid"] for r in rows] == ["EVO-100001", "EVO-100002", "EVO-100003"]
    assert rows[0]["city"] == CITY_CANARY and rows[0]["rip_serial"] == "K1OLDRIP"
    assert "wan_ip" not in rows[0]
    stale = support.get(f"{world.url}/devices/export.json", params={"days": "20"},
                        timeout=30).json()
    assert [r["vpnid"] for r in stale] == ["EVO-100001", "EVO-100002"]
    fleet = support.get(f"{world.url}/fleet", timeout=30).text
    assert "Fleet: 3 unit(s)" in fleet and "0.1.0" in fleet and "outside_assigned_region" in fleet
    r = _post(support, world, "/devices/EVO-100001/erase", "/devices/EVO-100001")
    assert r.status_code == 200
    assert WAN_CANARY not in r.text and CITY_CANARY not in r.text
    assert world.db.read("SELECT wan_ip FROM devices WHERE vpnid = 'EVO-100001'")[0][
        "wan_ip"] is None
    exports = [r["target"] for r in world.db.read(
        "SELECT target FROM console_audit WHERE action IN ('export', 'erase') ORDER BY id")]
    assert exports == ["devices.csv", "devices.json", "EVO-100001"]


def test_admin_accounts_dealers_and_audit_export(world: World) -> None:
    admin = login(world, "ada.admin")
    r = _post(admin, world, "/admin/dealers", "/admin/dealers", code="dlr-c", name="Son Lyon",
              regions="fr, mc")
    assert r.status_code == 200 and "DLR-C" in r.text and "FR,MC" in r.text
    assert _post(admin, world, "/admin/dealers", "/admin/dealers", code="DLR-C", name="x",
                 regions="FR").status_code == 409
    assert _post(admin, world, "/admin/dealers/DLR-C/regions", "/admin/dealers",
                 regions="FR,BE").status_code == 200
    assert _post(admin, world, "/admin/dealers/DLR-C/regions", "/admin/dealers",
                 regions="France").status_code == 400
    r = _post(admin, world, "/admin/accounts", "/admin/accounts", username="carl",
              role="dealer", dealer="DLR-C", password=CARL)
    assert r.status_code == 200 and "carl" in r.text
    assert _post(admin, world, "/admin/accounts", "/admin/accounts", username="x", role="root",
                 dealer="", password=CARL).status_code == 400
    carl = login(world, "carl", CARL)
    assert carl.get(f"{world.url}/admin/accounts", timeout=30).status_code == 403
    trail = admin.get(f"{world.url}/admin/audit.json", params={"actor": "ada.admin"},
                      timeout=30).json()
    assert [t["action"] for t in trail] == ["account_add", "dealer_regions", "dealer_add",
                                            "login"]
    assert trail[0]["target"] == "carl" and trail[0]["address"] == "127.0.0.1"
    text = admin.get(f"{world.url}/admin/audit.csv", params={"target": "DLR-C"},
                     timeout=30).text
    assert text.splitlines()[0] == "id,at,actor,role,action,target,address,detail"
    assert len(text.splitlines()) == 3
    assert admin.get(f"{world.url}/admin/audit.xml", timeout=30).status_code == 404
    assert admin.get(f"{world.url}/devices/stale", params={"days": "x"},
                     timeout=30).status_code == 400
    assert admin.get(f"{world.url}/devices/not%20a%20vpnid", timeout=30).status_code == 404


def test_the_forms_of_a_batch_as_one_pdf(world: World, tmp_path: Path) -> None:
    import shutil
    import subprocess

    factory = login(world, "fay.factory")
    r = factory.get(f"{world.url}/forms.pdf", params={"enrolled_on": "2026-10-14"}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    pdf = tmp_path / "batch.pdf"
    pdf.write_bytes(r.content)
    if shutil.which("pdftotext") is None:
        pytest.skip("poppler-utils absent: apt-get install poppler-utils")
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True)
    assert "Pages:           3" in info.stdout
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout
    pages = [sorted(set(re.findall(r"EVO-10000\d", p))) for p in text.split("\f")[:3]]
    assert pages == [["EVO-100001"], ["EVO-100002"], ["EVO-100003"]]
    two = factory.get(f"{world.url}/forms.pdf", params={"vpnids": "EVO-100002, EVO-100001"},
                      timeout=30)
    assert two.status_code == 200 and two.content.startswith(b"%PDF")
    for params, status in (({"vpnids": "EVO-100001,EVO-999999"}, 404),
                           ({"enrolled_on": "2026-10-15"}, 404),
                           ({"vpnids": "not a vpnid"}, 400)):
        assert factory.get(f"{world.url}/forms.pdf", params=params,
                           timeout=30).status_code == status
    dealer = login(world, "dana.dealer")
    assert dealer.get(f"{world.url}/forms.pdf", params={"enrolled_on": "2026-10-14"},
                      timeout=30).status_code == 403
    # The factory reads no device data: search and device pages are not for its role.
    assert factory.get(f"{world.url}/devices/EVO-100001", timeout=30).status_code == 403
    trail = world.db.read("SELECT target FROM console_audit WHERE action = 'forms'")
    assert [t["target"] for t in trail] == ["enrolled on 2026-10-14", "2 units"]


def test_enrolment_can_assign_the_dealer(server: Server, settings: Settings) -> None:
    db = Database(settings.database)
    try:
        with db.transaction() as tx:
            accounts.add_dealer(tx, "DLR-A", "Hifi Gent", ["BE"], Clock().now)
        ok, unknown, bad = Device("EVO-200001"), Device("EVO-200002"), Device("EVO-200003")
        assert enroll(server, ok, dealer="DLR-A").status == 201
        r = enroll(server, unknown, dealer="DLR-X")
        assert (r.status, r.json()) == (400, {"error": "dealer: no dealer DLR-X"})
        r = enroll(server, bad, dealer="dlr a")
        assert r.status == 400 and r.json()["error"].startswith("dealer:")
        assert db.read("SELECT vpnid, dealer, assigned_by FROM console_device_dealers") == [
            {"vpnid": "EVO-200001", "dealer": "DLR-A", "assigned_by": "enrolment"}]
        assert [r["vpnid"] for r in db.read("SELECT vpnid FROM devices")] == ["EVO-200001"]
    finally:
        db.close()
