"""Events derived from reports: region, PSU voltage, fingerprint, clones, sequence."""

from __future__ import annotations

from typing import Any

import pytest

from evo_registry import rules
from tests.registry.conftest import (
    HOME_A,
    HOME_B,
    HOME_C,
    HOME_D,
    SUPPORT,
    Clock,
    Device,
    Server,
    enroll,
    get_device,
    send,
)


def _open(server: Server, vpnid: str) -> dict[str, dict[str, Any]]:
    events = get_device(server, vpnid).json()["events"]
    return {e["kind"]: e for e in events if e["resolved_at"] is None}


@pytest.fixture
def device(server: Server) -> Device:
    dev = Device("EVO-300001")
    assert enroll(server, dev).status == 201  # region BE NL LU, 230 V
    return dev


def test_inside_region_no_events(server: Server, device: Device) -> None:
    assert send(server, device, wan=HOME_A).status == 201
    assert _open(server, device.vpnid) == {}


def test_outside_region_and_psu_mismatch(server: Server, device: Device, clock: Clock) -> None:
    # A 230 V unit sold for the Benelux reporting from the USA: grey export, and 120 V mains.
    assert send(server, device, wan=HOME_B).status == 201
    events = _open(server, device.vpnid)
    assert set(events) == {"outside_assigned_region", "psu_voltage_mismatch"}
    assert events["outside_assigned_region"]["detail"]["country"] == "US"
    assert events["psu_voltage_mismatch"]["detail"] == {"country": "US", "mains_v": [120],
                                                        "psu_variant": "230V"}
    # The next day from there again: the same open event, counted, not a second one.
    clock.advance(days=1)
    assert send(server, device, wan=HOME_B).status == 201
    events = _open(server, device.vpnid)
    assert events["outside_assigned_region"]["occurrences"] == 2
    assert len(get_device(server, device.vpnid).json()["events"]) == 2


def test_outside_region_same_voltage(server: Server, device: Device) -> None:
    assert send(server, device, wan=HOME_D).status == 201  # DE: 230 V, not in the region
    assert set(_open(server, device.vpnid)) == {"outside_assigned_region"}


def test_psu_120v_unit_in_japan(server: Server) -> None:
    dev = Device("EVO-300002")
    assert enroll(server, dev, sales_region=["JP", "US"], psu_variant="120V").status == 201
    assert send(server, dev, wan=HOME_C).status == 201
    assert set(_open(server, dev.vpnid)) == {"psu_voltage_mismatch"}


def test_wide_range_psu_never_mismatches(server: Server) -> None:
    dev = Device("EVO-300003")
    assert enroll(server, dev, sales_region=["BE"], psu_variant="100-240V").status == 201
    for wan in (HOME_B, HOME_C):
        assert send(server, dev, wan=wan).status == 201
    assert set(_open(server, dev.vpnid)) == {"outside_assigned_region"}


def test_one_part_replaced_is_a_change(server: Server, device: Device) -> None:
    doc = device.report()
    doc["hardware"]["rip_drive"]["serial"] = "NEWRIPDRIVE01"
    assert send(server, device, doc).status == 201
    events = _open(server, device.vpnid)
    assert set(events) == {"fingerprint_changed"}
    assert events["fingerprint_changed"]["detail"]["changed"] == ["rip_serial"]
    assert get_device(server, device.vpnid).json()["fingerprint"]["status"] == "changed"


def test_most_parts_differ_is_a_mismatch(server: Server, device: Device) -> None:
    doc = device.report()
    hw = doc["hardware"]
    hw["motherboard"]["serial"] = "OTHERBOARD"
    hw["mac_address"] = "00:11:22:33:44:55"
    hw["boot_drive"]["serial"] = "OTHERBOOT"
    assert send(server, device, doc).status == 201
    assert set(_open(server, device.vpnid)) == {"fingerprint_mismatch"}


def test_placeholders_are_not_compared(server: Server, device: Device) -> None:
    doc = device.report()
    doc["hardware"]["motherboard"]["serial"] = "To Be Filled By O.E.M."
    doc["hardware"]["boot_drive"]["serial"] = None
    doc["hardware"]["rip_drive"]["serial"] = "0000000000"
    assert send(server, device, doc).status == 201
    assert _open(server, device.vpnid) == {}
    fp = get_device(server, device.vpnid).json()["fingerprint"]
    assert fp["status"] == "match"
    assert fp["latest"]["motherboard_serial"] is None


def test_same_board_under_two_vpnids_is_a_clone(server: Server, device: Device) -> None:
    clone = Device("EVO-300009")
    clone.template["hardware"]["motherboard"]["serial"] = f"MB-{device.vpnid}-01"
    assert enroll(server, clone).status == 201
    for vpnid in (device.vpnid, clone.vpnid):
        events = _open(server, vpnid)
        assert events["clone_suspected"]["detail"]["vpnids"] == sorted([device.vpnid,
                                                                        clone.vpnid])


def test_clone_seen_from_a_report(server: Server, device: Device) -> None:
    other = Device("EVO-300010")
    assert enroll(server, other).status == 201
    doc = other.report()
    doc["hardware"]["motherboard"]["serial"] = f"mb-{device.vpnid}-01"  # case does not hide it
    assert send(server, other, doc).status == 201
    assert "clone_suspected" in _open(server, other.vpnid)
    assert "clone_suspected" in _open(server, device.vpnid)


def test_sequence_backwards_is_recorded(server: Server, device: Device) -> None:
    device.sequence = 10
    assert send(server, device).status == 201
    device.sequence = 2  # a restored state directory
    assert send(server, device).status == 201
    events = _open(server, device.vpnid)
    assert events["sequence_backwards"]["detail"] == {"previous": 11, "received": 3}


def test_resolve_event(server: Server, device: Device) -> None:
    assert send(server, device, wan=HOME_D).status == 201
    event = _open(server, device.vpnid)["outside_assigned_region"]
    path = f"/v1/events/{event['id']}/resolve"
    auth = {"Authorization": f"Bearer {SUPPORT}"}
    assert server.request("POST", path, headers=auth).status == 200
    assert server.request("POST", path, headers=auth).status == 404
    assert _open(server, device.vpnid) == {}
    # A new report from abroad opens a new event.
    assert send(server, device, wan=HOME_D).status == 201
    assert _open(server, device.vpnid)["outside_assigned_region"]["id"] != event["id"]


# ---- the rules alone ---------------------------------------------------------------------------
def test_voltage_table_is_sane() -> None:
    table = rules.mains_voltages()
    assert len(table) > 200
    assert table["BE"] == (230,)
    assert table["US"] == (120,)
    assert table["JP"] == (100,)
    assert table["BR"] == (127, 220)
    assert all(100 <= v <= 240 for volts in table.values() for v in volts)


@pytest.mark.parametrize(("psu", "country", "suits"), [
    ("230V", "BE", True), ("230V", "GB", True), ("230V", "CY", True), ("230V", "CN", True),
    ("230V", "US", False), ("120V", "US", True), ("120V", "MX", True), ("120V", "TW", True),
    ("120V", "JP", False), ("100V", "JP", True), ("230V", "BR", True), ("120V", "BR", True),
    ("100-240V", "JP", True), ("230V", "XX", None), ("banana", "BE", None),
])
def test_psu_suits(psu: str, country: str, suits: bool | None) -> None:
    assert rules.psu_suits(psu, country) is suits


def test_fingerprint_statuses() -> None:
    base = {"motherboard_serial": "A", "mac": "m", "boot_serial": "B", "rip_serial": "R",
            "cpu_model": "C"}
    assert rules.compare_fingerprints(base, base).status == "match"
    assert rules.compare_fingerprints(base, {}).status == "unknown"
    assert rules.compare_fingerprints(base, {**base, "rip_serial": "X"}).status == "changed"
    two = {**base, "rip_serial": "X", "boot_serial": "Y"}
    assert rules.compare_fingerprints(base, two).status == "changed"
    three = {**two, "mac": "z"}
    assert rules.compare_fingerprints(base, three).status == "mismatch"
