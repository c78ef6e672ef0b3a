"""An owner's objection reaches the registry; nothing is kept longer than it may be; the finder
on a shared public address.  Real registry on 127.0.0.1, SQLite and PostgreSQL."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from evo_registry import retention
from evo_registry.db import Database
from evo_registry.geo import Location
from evo_registry.store import Enrolment, Limits, Store
from tests.registry.conftest import (
    HOME_A,
    HOME_B,
    Clock,
    Device,
    Server,
    enroll,
    get_device,
    send,
)

REPO = Path(__file__).resolve().parents[2]
GONE = "unknown vpnid or signature does not match the key enrolled for it"


def objection(device: Device, sequence: int, objects: bool = True,
              **changes: Any) -> dict[str, Any]:
    doc = {"schema": "evo-objection/1", "vpnid": device.vpnid, "message_id": str(uuid.uuid4()),
           "sequence": sequence, "objects": objects, "issued_at": "2026-11-23T12:00:00Z"}
    doc.update(changes)
    return doc


def post_objection(server: Server, device: Device, doc: Any,
                   signer: Device | None = None) -> Any:
    body = gzip.compress(json.dumps(doc).encode())
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip",
               "X-Evo-Vpnid": device.vpnid,
               "X-Evo-Signature": (signer or device).sign(body)}
    return server.request("POST", "/v1/objection", body, headers)


@pytest.fixture
def device(server: Server) -> Device:
    dev = Device("EVO-800001")
    assert enroll(server, dev).status == 201
    return dev


def test_objection_erases_all_but_the_enrolment_until_opt_in(server: Server, device: Device,
                                                             clock: Clock) -> None:
    assert send(server, device, wan=HOME_B).status == 201  # raises two events, sets WAN + LAN
    before = get_device(server, device.vpnid).json()
    assert before["wan_ip"] == HOME_B and len(before["events"]) == 2
    row = server.app.store.device(device.vpnid)[0]
    assert (row["netbios_name"], row["lan_ip"]) == ("EVO-LIVING", "192.168.1.20")
    assert server.request("GET", "/", headers={"X-Forwarded-For": HOME_B}).body.count(
        b'class="device"') == 1
    reply = post_objection(server, device, objection(device, 10))
    assert reply.status == 200, reply.body
    assert reply.json() == {"status": "objected", "vpnid": device.vpnid, "changed": True}
    doc = get_device(server, device.vpnid).json()
    assert doc["objected"] is True and doc["objected_at"] == "2026-11-23T12:00:00.000000Z"
    for key in ("wan_ip", "wan_source", "wan_seen_at", "country", "city", "first_seen",
                "last_seen", "latest_report"):
        assert doc[key] is None, key
    assert doc["events"] == [] and doc["reports"] == []
    row = server.app.store.device(device.vpnid)[0]
    assert (row["netbios_name"], row["lan_ip"], row["lan_ip_secondary"]) == (None, None, None)
    # The enrolment (what the warranty needs) stays.
    for key in ("enrolled_at", "manufactured_at", "warranty_end", "sales_region", "psu_variant",
                "model"):
        assert doc[key] == before[key], key
    assert doc["fingerprint"]["enrolled"] == before["fingerprint"]["enrolled"]
    assert server.app.store.public_key(device.vpnid) == device.public_key
    # Out of the finder; its reports refused with a clear 4xx, nothing stored.
    assert b'class="device"' not in server.request(
        "GET", "/", headers={"X-Forwarded-For": HOME_B}).body
    clock.advance(hours=1)
    refused = send(server, device, wan=HOME_B)
    assert refused.status == 403
    assert "objected" in refused.json()["error"] and "opt-in" in refused.json()["error"]
    assert server.app.store.counts()["reports"] == 0
    # The same message again (a lost answer), or an older one replayed: acknowledged, no change.
    again = post_objection(server, device, objection(device, 10, False))
    assert again.json() == {"status": "objected", "vpnid": device.vpnid, "changed": False}
    assert send(server, device, wan=HOME_B).status == 403
    # opt-in: the withdrawal, newer; reports are taken again.
    reply = post_objection(server, device, objection(device, 11, False))
    assert reply.json() == {"status": "withdrawn", "vpnid": device.vpnid, "changed": True}
    assert send(server, device, wan=HOME_A).status == 201
    doc = get_device(server, device.vpnid).json()
    assert (doc["objected"], doc["wan_ip"], doc["country"]) == (False, HOME_A, "BE")


def test_bad_objections_are_refused_clearly(server: Server, device: Device) -> None:
    stranger = Device("EVO-800099")
    forged = post_objection(server, device, objection(device, 1), signer=Device(device.vpnid))
    unknown = post_objection(server, stranger, objection(stranger, 1))
    assert (forged.status, forged.json()) == (unknown.status, unknown.json()) == \
        (401, {"error": GONE})
    cases = [(objection(device, 1, extra=1), "unknown ['extra']"),
             (objection(device, -1), "sequence"),
             (objection(device, 1, objects="yes"), "objects"),
             (objection(device, 1, vpnid="EVO-1"), "differs"),
             (objection(device, 1, schema="evo-inventory/1"), "schema"),
             (objection(device, 1, issued_at="yesterday"), "issued_at"),
             ([1, 2], "JSON object")]
    for doc, reason in cases:
        reply = post_objection(server, device, doc)
        assert reply.status == 400 and reason in reply.json()["error"], (doc, reply.body)
    body = gzip.compress(b"{}")
    plain = server.request("POST", "/v1/objection", body, {
        "Content-Type": "text/plain", "Content-Encoding": "gzip",
        "X-Evo-Vpnid": device.vpnid, "X-Evo-Signature": device.sign(body)})
    assert plain.status == 415
    big = os.urandom(5000)
    assert server.request("POST", "/v1/objection", big, {
        "Content-Type": "application/json", "Content-Encoding": "gzip",
        "X-Evo-Vpnid": device.vpnid, "X-Evo-Signature": device.sign(big)}).status == 413
    assert get_device(server, device.vpnid).json()["objected"] is False


def test_retention_erases_functional_data_of_units_not_seen(server: Server, device: Device,
                                                            clock: Clock) -> None:
    kept = Device("EVO-800002")
    assert enroll(server, kept).status == 201
    assert send(server, device, wan=HOME_B).status == 201  # open events, WAN, LAN, name
    clock.advance(days=400)
    assert send(server, kept, wan=HOME_A).status == 201
    gone = retention.prune(server.app.store, clock() + timedelta(days=1), timedelta(days=365))
    assert gone["functional"] == 1 and gone["events"] == 2
    row = server.app.store.device(device.vpnid)[0]
    for key in ("netbios_name", "lan_ip", "wan_ip", "wan_key", "country", "city", "wan_source"):
        assert row[key] is None, key
    assert get_device(server, device.vpnid).json()["events"] == []
    assert row["public_key"] == device.public_key and row["last_seen"] is not None
    other = server.app.store.device(kept.vpnid)[0]
    assert (other["netbios_name"], other["wan_ip"]) == ("EVO-LIVING", HOME_A)
    # Idempotent.
    again = retention.prune(server.app.store, clock() + timedelta(days=1), timedelta(days=365))
    assert again["functional"] == 0 and again["events"] == 0


def test_retention_erases_everything_of_an_objected_unit_but_the_enrolment(
        server: Server, device: Device) -> None:
    assert send(server, device, wan=HOME_B).status == 201
    # Data that reached the row around an objection (written here as a stray writer would).
    with server.app.db.transaction() as tx:
        tx.run("UPDATE devices SET objected_at = ? WHERE vpnid = ?",
               ("2026-11-23T12:00:00.000000Z", device.vpnid))
    gone = retention.prune(server.app.store, datetime(2026, 11, 24, tzinfo=timezone.utc),
                           timedelta(days=730))
    assert gone["objected"] == 1 and gone["reports"] == 1 and gone["events"] == 2
    doc = get_device(server, device.vpnid).json()
    assert (doc["wan_ip"], doc["last_seen"], doc["reports"], doc["events"]) == \
        (None, None, [], [])
    assert doc["sales_region"] == ["BE", "LU", "NL"] and doc["objected"] is True


def _devices_on(server: Server, wan: str, query: str = "") -> bytes:
    return server.request("GET", "/" + query, headers={"X-Forwarded-For": wan}).body


def test_finder_on_a_shared_address_asks_for_the_vpnid(server: Server) -> None:
    units = [Device(f"EVO-81000{n}") for n in range(5)]
    for n, unit in enumerate(units):
        unit.template["functional"]["netbios_name"] = f"HOME-{n}"
        assert enroll(server, unit).status == 201
    # One home, two units on one LAN: listed as before.
    for unit in units[:2]:
        assert send(server, unit, wan=HOME_A).status == 201
    page = _devices_on(server, HOME_A)
    assert page.count(b'class="device"') == 2 and b'name="vpnid"' not in page
    # Two more units from the same address (4 > finder_shared_units = 3): a shared line.
    for unit in units[2:4]:
        assert send(server, unit, wan=HOME_A).status == 201
    page = _devices_on(server, HOME_A)
    assert b'name="vpnid"' in page and b"HOME-" not in page and b"192.168." not in page
    one = _devices_on(server, HOME_A, f"?vpnid={units[2].vpnid.lower()}")
    assert one.count(b'class="device"') == 1 and b"HOME-2" in one
    # A unit that reported from elsewhere is not found from here, whatever VPNID is typed.
    assert send(server, units[4], wan=HOME_B).status == 201
    miss = _devices_on(server, HOME_A, f"?vpnid={units[4].vpnid}")
    assert b"HOME-4" not in miss and b'name="vpnid"' in miss
    reply = server.request("GET", "/", headers={"X-Forwarded-For": HOME_A})
    assert "form-action 'self'" in reply.headers["content-security-policy"]


def test_finder_bounds_wrong_vpnids_per_address(server: Server, clock: Clock) -> None:
    """VPNIDs are made in sequence: a stranger on a shared line gets 10 wrong ones an hour."""
    units = [Device(f"EVO-84000{n}") for n in range(4)]
    for n, unit in enumerate(units):
        unit.template["functional"]["netbios_name"] = f"FLAT-{n}"
        assert enroll(server, unit).status == 201
        assert send(server, unit, wan=HOME_A).status == 201
    for n in range(10):
        miss = server.request("GET", f"/?vpnid=EVO-84010{n}", headers={"X-Forwarded-For": HOME_A})
        assert miss.status == 200 and b"No 432 EVO with VPNID" in miss.body
        if n == 5:  # the right VPNID counts for nothing
            assert b"FLAT-0" in _devices_on(server, HOME_A, f"?vpnid={units[0].vpnid}")
    # then anything typed from that address is refused, right or wrong (else guessing would
    # go on and show its hits), until the oldest wrong one is an hour old
    clock.advance(minutes=30)
    refused = server.request("GET", f"/?vpnid={units[1].vpnid}",
                             headers={"X-Forwarded-For": HOME_A})
    assert refused.status == 429 and b"Too many VPNIDs" in refused.body
    assert b"FLAT-" not in refused.body
    assert int(refused.headers["retry-after"]) == 1800
    # another address is not held up; the page without a VPNID still asks for one
    assert server.request("GET", "/?vpnid=EVO-840199",
                          headers={"X-Forwarded-For": HOME_B}).status == 200
    assert b'name="vpnid"' in _devices_on(server, HOME_A)
    clock.advance(minutes=31)
    back = _devices_on(server, HOME_A, f"?vpnid={units[1].vpnid}")
    assert b"FLAT-1" in back


def test_finder_two_lans_behind_one_address_are_two_homes(server: Server) -> None:
    a, b = Device("EVO-820001"), Device("EVO-820002")
    b.template["functional"]["lan_ip"] = "192.168.0.30"
    for unit in (a, b):
        assert enroll(server, unit).status == 201
        assert send(server, unit, wan=HOME_A).status == 201
    page = _devices_on(server, HOME_A)
    assert b'name="vpnid"' in page and b'class="device"' not in page


def test_pruner_and_vpn_sync_threads_of_serve(tmp_path: Path, db_url: str, geo_db: Path) -> None:
    """`evo-registry serve` prunes and syncs by itself (short intervals configured)."""
    db = Database(db_url)
    db.migrate()
    store = Store(db)
    old, vpn = Device("EVO-830001"), Device("EVO-830002")
    now = datetime.now(timezone.utc)
    long_ago = now - timedelta(days=3)
    for unit in (old, vpn):
        store.enroll(Enrolment(unit.vpnid, unit.public_key, unit.enrolment()["report"],
                               ("BE",), "230V", long_ago), long_ago)
    store.ingest(old.report(), old.vpnid, HOME_A, Location("BE", "Gent"), now=long_ago,
                 path="https", limits=Limits())
    dump = tmp_path / "wg-dump"
    key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
    dump.write_text(f"wg0\t{key}\t(none)\t{HOME_B}:51820\t10.8.0.9/32\t"
                    f"{int(now.timestamp()) - 10}\t1\t1\toff\n")
    peers = tmp_path / "peers"
    peers.write_text(f"{key} {vpn.vpnid}\n")
    cfg = tmp_path / "registry.toml"
    cfg.write_text(f'database = "{db_url}"\nlisten = "127.0.0.1:0"\n'
                   f'geo_database = "{geo_db}"\nretention_days = 1\nprune_interval_s = 1\n'
                   f'wireguard_dump = "{dump}"\nwireguard_peers = "{peers}"\n'
                   "vpn_sync_interval_s = 1\n")
    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "evo_registry.cli", "serve", "--config",
                                 str(cfg)], cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            pruned = store.device(old.vpnid)[0]
            synced = store.device(vpn.vpnid)[0]
            if pruned["netbios_name"] is None and synced["wan_source"] == "vpn":
                break
            time.sleep(0.2)
        assert store.counts()["reports"] == 0, log.read_text()
        assert (pruned["netbios_name"], pruned["lan_ip"], pruned["wan_ip"]) == \
            (None, None, None), log.read_text()
        assert (synced["wan_ip"], synced["country"]) == (HOME_B, "US"), log.read_text()
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        db.close()
