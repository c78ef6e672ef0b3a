"""POST /v1/reports and /v1/enroll over real HTTP on loopback, on both databases.

Each rejection gets its 4xx with a reason and stores nothing (row counts checked after each).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.registry.conftest import (
    FACTORY,
    HOME_A,
    HOME_B,
    HOME_D,
    SUPPORT,
    UNKNOWN_WAN,
    Clock,
    Device,
    Server,
    enroll,
    get_device,
    send,
)


@pytest.fixture
def device(server: Server) -> Device:
    dev = Device("EVO-200001")
    reply = enroll(server, dev)
    assert reply.status == 201, reply.body
    assert reply.json() == {"status": "enrolled", "vpnid": dev.vpnid,
                            "registration_form": f"/v1/devices/{dev.vpnid}/registration-form.pdf"}
    return dev


def _stored(server: Server) -> int:
    return server.app.store.counts()["reports"]


def test_report_accepted_then_duplicate_and_seen_times(server: Server, device: Device,
                                                       clock: Clock) -> None:
    doc = device.report()
    first = send(server, device, doc)
    assert first.status == 201, first.body
    assert first.json() == {"status": "accepted", "report_id": doc["report_id"]}
    clock.advance(hours=2)
    # A retry after a lost acknowledgement: acknowledged, not counted twice.
    again = send(server, device, doc, wan=HOME_B)
    assert again.status == 200
    assert again.json() == {"status": "duplicate", "report_id": doc["report_id"]}
    assert _stored(server) == 1
    record = get_device(server, device.vpnid).json()
    assert record["first_seen"] == record["last_seen"] == "2026-11-23T12:00:00.000000Z"
    assert (record["wan_ip"], record["country"], record["city"]) == (HOME_A, "BE", "Gent")
    clock.advance(days=1)
    assert send(server, device, wan=HOME_D).status == 201
    record = get_device(server, device.vpnid).json()
    assert record["first_seen"] == "2026-11-23T12:00:00.000000Z"
    assert record["last_seen"] == "2026-11-24T14:00:00.000000Z"
    assert (record["wan_ip"], record["country"], record["city"]) == (HOME_D, "DE", "Berlin")
    assert [r["sequence"] for r in record["reports"]] == [2, 1]
    assert record["latest_report"]["sequence"] == 2
    assert record["fingerprint"]["status"] == "match"
    assert record["warranty_end"] == "2028-01-15T10:00:00.000000Z"


def test_unknown_address_gives_no_location_not_an_error(server: Server, device: Device) -> None:
    assert send(server, device, wan=UNKNOWN_WAN).status == 201
    record = get_device(server, device.vpnid).json()
    assert (record["wan_ip"], record["country"], record["city"]) == (UNKNOWN_WAN, None, None)


def test_peer_address_without_proxy_header(server: Server, device: Device) -> None:
    assert send(server, device, wan=None).status == 201
    assert get_device(server, device.vpnid).json()["wan_ip"] == "127.0.0.1"


def _reject(server: Server, device: Device, status: int, reason: str, **kw: Any) -> None:
    before = server.app.store.counts()
    reply = send(server, device, **kw)
    assert reply.status == status, reply.body
    assert reason in reply.json()["error"]
    assert server.app.store.counts() == before


def test_forged_signature(server: Server, device: Device) -> None:
    body, headers = device.wire(device.report())
    forger = Device(device.vpnid)  # right VPNID, another key
    headers["X-Evo-Signature"] = forger.sign(body)
    reply = server.request("POST", "/v1/reports", body, headers)
    assert reply.status == 401
    assert "signature does not match" in reply.json()["error"]
    # A body changed after signing.
    body2 = gzip.compress(json.dumps(device.report()).encode())
    headers["X-Evo-Signature"] = device.sign(body)
    assert server.request("POST", "/v1/reports", body2, headers).status == 401
    assert _stored(server) == 0


def test_missing_or_malformed_signature(server: Server, device: Device) -> None:
    _reject(server, device, 401, "X-Evo-Signature header missing",
            headers={"X-Evo-Signature": ""})
    _reject(server, device, 401, "not base64", headers={"X-Evo-Signature": "***"})
    _reject(server, device, 401, "64 bytes",
            headers={"X-Evo-Signature": base64.b64encode(b"x" * 10).decode()})


def test_unknown_vpnid_is_answered_like_a_wrong_signature(server: Server,
                                                           device: Device) -> None:
    # No enumeration: an unknown VPNID and an enrolled one with a wrong signature get the very
    # same answer, so nobody learns from it which VPNIDs exist.
    stranger = Device("EVO-999999")
    unknown = send(server, stranger)
    forger = Device(device.vpnid)  # enrolled VPNID, another key
    forger.template = device.template
    wrong = send(server, forger)
    assert (unknown.status, unknown.body) == (wrong.status, wrong.body)
    assert unknown.status == 401
    assert unknown.json() == {"error": "unknown vpnid or signature does not match the key "
                                       "enrolled for it"}
    assert _stored(server) == 0


def test_replayed_report_with_new_signature_is_a_duplicate(server: Server, device: Device) -> None:
    doc = device.report()
    assert send(server, device, doc).status == 201
    # The same report recompressed (other bytes, valid signature): still the same UUID.
    raw = gzip.compress(json.dumps(doc, indent=2).encode(), compresslevel=1)
    assert send(server, device, doc, raw=raw).json()["status"] == "duplicate"
    assert _stored(server) == 1


def test_report_of_another_vpnid(server: Server, device: Device) -> None:
    other = device.report()
    other["functional"]["vpnid"] = "EVO-200002"
    _reject(server, device, 400, "differs from the X-Evo-Vpnid header", doc=other)


def test_oversized_compressed_body(server: Server, device: Device) -> None:
    raw = os.urandom(64 * 1024 + 1)  # incompressible: over 64 KiB on the wire
    _reject(server, device, 413, "larger than 65536", raw=raw)


def test_bomb_over_one_mebibyte_expanded(server: Server, device: Device) -> None:
    doc = device.report()
    doc["agent_version"] = "x" * 64
    text = json.dumps(doc)
    padded = text[:-1] + "," + '"pad":"' + "a" * (1024 * 1024) + '"}'
    raw = gzip.compress(padded.encode(), 9)
    assert len(raw) < 64 * 1024
    _reject(server, device, 413, "expands to more than 1048576", raw=raw)


@pytest.mark.parametrize(("raw", "reason"), [
    (b"not gzip at all", "not gzip"),
    (zlib.compress(b"{}"), "not gzip"),
    (gzip.compress(b"{}")[:-6], "truncated"),
    (gzip.compress(b"{}") + gzip.compress(b"{}"), "after the end"),
    (gzip.compress(b"\xff\xfe{}"), "not UTF-8"),
    (gzip.compress(b"{\"a\": "), "not JSON"),
    (gzip.compress(b"{\"sequence\": NaN}"), "not JSON"),
    (gzip.compress(b"[]"), "schema"),
    (gzip.compress(b"[" * 100000 + b"]" * 100000), "not JSON"),
])
def test_malformed_bodies(server: Server, device: Device, raw: bytes, reason: str) -> None:
    _reject(server, device, 400, reason, raw=raw)


def test_schema_reason_names_the_field(server: Server, device: Device) -> None:
    doc = device.report()
    doc["hardware"]["mac_address"] = "70-85-C2-AA-BB-01"
    before = _stored(server)
    reply = send(server, device, doc)
    assert reply.status == 400
    assert reply.json()["error"].startswith("schema: hardware/mac_address:")
    doc = device.report()
    doc["functional"]["lan_ip"] = "999.1.1.1"  # formats are checked, not only types
    assert "functional/lan_ip" in send(server, device, doc).json()["error"]
    assert _stored(server) == before


@pytest.mark.parametrize(("headers", "status", "reason"), [
    ({"Content-Type": "text/plain"}, 415, "Content-Type"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "Content-Type"),
    ({"Content-Encoding": "identity"}, 415, "Content-Encoding"),
    ({"X-Evo-Vpnid": ""}, 400, "X-Evo-Vpnid header missing"),
    ({"X-Evo-Vpnid": "../etc"}, 400, "not a vpnid"),
])
def test_wrong_headers(server: Server, device: Device, headers: dict[str, str], status: int,
                       reason: str) -> None:
    _reject(server, device, status, reason, headers=headers)


def test_rate_limit_429_with_retry_after(server: Server, device: Device, clock: Clock) -> None:
    for _ in range(5):  # the test settings allow 5 per hour
        assert send(server, device).status == 201
        clock.advance(minutes=1)
    reply = send(server, device)
    assert reply.status == 429
    assert reply.headers["retry-after"] == str(55 * 60 + 1)
    assert _stored(server) == 5
    clock.advance(minutes=56)
    assert send(server, device).status == 201


def test_methods_and_paths(server: Server) -> None:
    assert server.request("GET", "/v1/reports").status == 405
    assert server.request("GET", "/nothing").status == 404
    assert server.request("GET", "/healthz").json()["status"] == "ok"
    head = server.request("HEAD", "/healthz")
    assert (head.status, head.body) == (200, b"")
    assert int(head.headers["content-length"]) > 0


# ---- enrolment ---------------------------------------------------------------------------------
def _enroll_raw(server: Server, body: Any, token: str = FACTORY) -> Any:
    return server.request("POST", "/v1/enroll", json.dumps(body).encode(),
                          {"Content-Type": "application/json", "Authorization": f"Bearer {token}"})


def test_enrol_needs_factory_token_and_override(server: Server) -> None:
    dev = Device("EVO-200010")
    assert _enroll_raw(server, dev.enrolment(), token=SUPPORT).status == 401
    assert server.request("POST", "/v1/enroll", b"{}",
                          {"Content-Type": "application/json"}).status == 401
    assert _enroll_raw(server, dev.enrolment()).status == 201
    # The same unit and key again (the line retrying after a lost answer): nothing changes.
    again = _enroll_raw(server, dev.enrolment())
    assert again.status == 200
    assert again.json()["status"] == "unchanged"
    # Another key for that VPNID needs the override.
    clash = _enroll_raw(server, Device(dev.vpnid).enrolment())
    assert clash.status == 409
    assert "override" in clash.json()["error"]
    # Re-enrolled with a new key: reports signed with the old key are refused.
    old = dev.key
    dev2 = Device(dev.vpnid)
    assert _enroll_raw(server, dev2.enrolment(override=True)).status == 201
    dev.key = old
    assert send(server, dev).status == 401
    assert send(server, dev2).status == 201


@pytest.mark.parametrize(("change", "reason"), [
    ({"vpnid": "no spaces allowed"}, "vpnid"),
    ({"public_key": "AAAA"}, "32 bytes"),
    ({"public_key": "!!"}, "not base64"),
    ({"sales_region": []}, "sales_region"),
    ({"sales_region": ["be"]}, "sales_region"),
    ({"psu_variant": "lots"}, "psu_variant"),
    ({"manufactured_at": "yesterday"}, "manufactured_at"),
    ({"override": "yes"}, "override"),
    ({"colour": "black"}, "unknown keys: colour"),
    ({"report": {"schema": "evo-inventory/1"}}, "report: schema"),
])
def test_enrol_invalid_bodies(server: Server, change: dict[str, Any], reason: str) -> None:
    dev = Device("EVO-200011")
    reply = _enroll_raw(server, {**dev.enrolment(), **change})
    assert reply.status == 400, reply.body
    assert reason in reply.json()["error"]
    assert server.app.store.counts()["devices"] == 0


def test_enrol_report_must_be_manufacturing_and_same_vpnid(server: Server) -> None:
    dev = Device("EVO-200012")
    body = dev.enrolment()
    body["report"]["trigger"] = "daily"
    assert "manufacturing" in _enroll_raw(server, body).json()["error"]
    body = dev.enrolment()
    body["report"]["functional"]["vpnid"] = "EVO-1"
    assert "differs" in _enroll_raw(server, body).json()["error"]
    assert server.app.store.counts()["devices"] == 0


def test_support_routes_need_the_support_token(server: Server, device: Device) -> None:
    for method, path in (("GET", f"/v1/devices/{device.vpnid}"), ("GET", "/support"),
                         ("DELETE", f"/v1/devices/{device.vpnid}/personal-data")):
        assert server.request(method, path).status == 401
        assert server.request(method, path,
                              headers={"Authorization": f"Bearer {FACTORY}"}).status == 401
    assert get_device(server, "EVO-404").status == 404


def test_database_down_is_503_with_retry_after(tmp_path: Path, clock: Clock) -> None:
    from evo_registry.app import Registry
    from evo_registry.config import Settings

    # A PostgreSQL URL whose socket directory holds no server: every request finds it down.
    app = Registry(Settings(database=f"postgresql://evo@/none?host={tmp_path}"), clock=clock)
    srv = Server(app)
    try:
        dev = Device("EVO-200099")
        reply = send(srv, dev)
        assert reply.status == 503
        assert reply.headers["retry-after"] == "60"
        assert srv.request("GET", "/", headers={"X-Forwarded-For": HOME_A}).status == 503
        assert srv.request("GET", "/healthz").status == 503
    finally:
        srv.close()
        app.db.close()


def test_report_through_the_vpn_keeps_the_last_wan_ip(server: Server, device: Device,
                                                      clock: Clock) -> None:
    from evo_registry.config import Settings

    server.app.vpn = Settings(vpn_networks=["10.8.0.0/16"]).vpn()
    assert send(server, device, wan=HOME_A).status == 201
    clock.advance(hours=5)
    # The VPN concentrator sits behind the same trusted proxy; the peer is a tunnel address.
    assert send(server, device, wan="10.8.3.7", headers={"X-Evo-Path": "vpn"}).status == 201
    record = get_device(server, device.vpnid).json()
    assert (record["wan_ip"], record["country"], record["city"]) == (HOME_A, "BE", "Gent")
    assert record["last_seen"] == "2026-11-23T17:00:00.000000Z"
    assert record["reports"][0]["path"] == "vpn"
