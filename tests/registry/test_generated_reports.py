"""Any report the schema allows is stored as sent (less the collector names the policy does not
declare), and the pages stay well formed (hypothesis).

Reports are drawn from a strategy that follows evo-inventory-1.schema.json field by field
(null everywhere the schema allows it, hostile text, IPv4 and IPv6, lists up to a few dozen
items) and go over HTTP to a real server on loopback.  Whatever they hold: 201, the stored
latest report equals what was sent but for undeclared collector names, and the finder and device
record never fail.
"""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evo_registry import wire
from evo_registry.app import Registry
from evo_registry.config import Settings
from tests.registry.conftest import FACTORY, SUPPORT, Device, Server, enroll

TEXT = st.one_of(st.none(), st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]),
                                    min_size=1, max_size=128),
                 st.sampled_from(["<script>alert(1)</script>", "\"'&<>", "\u202eevil", "é" * 128]))
SERIAL = st.one_of(st.none(), st.text(min_size=1, max_size=64),
                   st.sampled_from(["To Be Filled By O.E.M.", "0000000000", "Default string"]))
COUNT = st.one_of(st.none(), st.integers(min_value=0, max_value=2**40))
BYTES = st.one_of(st.none(), st.integers(min_value=1, max_value=2**50))
HEX4 = st.one_of(st.none(), st.from_regex(r"\A[0-9a-f]{4}\Z"))
IP = st.one_of(st.none(), st.ip_addresses().map(str))
MAC = st.one_of(st.none(), st.from_regex(r"\A[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z"))
NETBIOS = st.one_of(st.none(), st.text(max_size=15))


def _drive() -> Any:
    return st.fixed_dictionaries({"model": TEXT, "serial": SERIAL})


def _report(vpnid: str) -> Any:
    hardware = st.fixed_dictionaries({
        "motherboard": st.fixed_dictionaries({"vendor": TEXT, "model": TEXT, "serial": SERIAL}),
        "mac_address": MAC,
        "cpu": st.fixed_dictionaries({"model": TEXT, "cores": COUNT, "threads": COUNT}),
        "ram": st.fixed_dictionaries({"total_bytes": BYTES, "modules": st.lists(
            st.fixed_dictionaries({"type": TEXT, "form_factor": TEXT, "size_bytes": BYTES,
                                   "speed_mts": COUNT, "manufacturer": TEXT,
                                   "part_number": TEXT}), max_size=8)}),
        "boot_drive": _drive(), "rip_drive": _drive(),
        "usb_devices": st.lists(st.fixed_dictionaries({
            "vendor_id": HEX4, "product_id": HEX4, "vendor": TEXT, "product": TEXT}), max_size=20),
        "pci_devices": st.lists(st.fixed_dictionaries({
            "address": st.one_of(st.none(), st.from_regex(
                r"\A[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]\Z")),
            "vendor_id": HEX4, "device_id": HEX4, "class_id": HEX4, "vendor": TEXT,
            "device": TEXT}), max_size=30),
        "audio_devices": st.lists(st.fixed_dictionaries({
            "card": COUNT, "id": TEXT, "name": TEXT, "driver": TEXT, "bus": TEXT,
            "usb_id": st.one_of(st.none(), st.from_regex(r"\A[0-9a-f]{4}:[0-9a-f]{4}\Z"))}),
            max_size=8),
    })
    return st.fixed_dictionaries({
        "schema": st.just("evo-inventory/1"),
        "policy_version": st.just("2024-07-11"),
        "report_id": st.builds(lambda: str(uuid.uuid4())),
        "sequence": st.integers(min_value=0, max_value=2**62),
        "trigger": st.sampled_from(["boot", "daily", "manual", "manufacturing"]),
        "collected_at": st.just("2026-11-20T09:00:00Z"),
        "agent_version": st.text(max_size=64),
        "functional": st.fixed_dictionaries({"vpnid": st.just(vpnid), "netbios_name": NETBIOS,
                                             "lan_ip": IP, "lan_ip_secondary": IP}),
        "hardware": hardware,
        "collectors": st.dictionaries(st.text(max_size=10), st.fixed_dictionaries({
            "status": st.sampled_from(["ok", "no_data", "error"]),
            "duration_ms": st.integers(min_value=0, max_value=10**6),
            "error": st.one_of(st.none(), st.from_regex(r"\A[a-z0-9_]{0,64}\Z"))}), max_size=4),
    })


VPNID = "EVO-GEN-0001"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Device]]:
    db = tmp_path_factory.mktemp("gen") / "registry.db"
    app = Registry(Settings(database=f"sqlite:///{db}", factory_tokens=[FACTORY],
                            support_tokens=[SUPPORT], rate_limit_reports=10**6,
                            trusted_proxies=["127.0.0.1/32"]))
    app.db.migrate()
    srv = Server(app)
    dev = Device(VPNID)
    assert enroll(srv, dev).status == 201
    yield srv, dev
    srv.close()
    app.db.close()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(doc=_report(VPNID))
def test_any_valid_report_is_stored_as_sent(live: tuple[Server, Device],
                                            doc: dict[str, Any]) -> None:
    srv, dev = live
    assert wire.schema_errors(doc) is None, wire.schema_errors(doc)
    body = gzip.compress(json.dumps(doc).encode())
    if len(body) > wire.MAX_COMPRESSED:
        return  # beyond the protocol's size: 413, covered elsewhere
    _, headers = dev.wire(doc, raw=body)
    headers["X-Forwarded-For"] = "192.0.2.44"
    reply = srv.request("POST", "/v1/reports", body, headers)
    assert reply.status == 201, reply.body[:300]
    auth = {"Authorization": f"Bearer {SUPPORT}"}
    record = srv.request("GET", f"/v1/devices/{VPNID}", headers=auth)
    assert record.status == 200
    stored = record.json()["latest_report"]
    declared = {k: v for k, v in doc["collectors"].items() if k in wire.declared_collectors()}
    assert stored == {**doc, "collectors": declared}
    page = srv.request("GET", "/", headers={"X-Forwarded-For": "192.0.2.44"})
    assert page.status == 200
    text = page.body.decode()
    assert "<script>" not in text
    assert srv.request("GET", "/support", headers=auth).status == 200


def test_strategy_reaches_the_schema_limits() -> None:
    # The schema file is the one the agent validates with: the strategy must agree with it.
    schema = json.loads(Path(wire.__file__).resolve().parents[1].joinpath(
        "evo_agent", "schemas", "evo-inventory-1.schema.json").read_text())
    assert schema["properties"]["functional"]["properties"]["netbios_name"]["maxLength"] == 15
    assert schema["$defs"]["text"]["maxLength"] == 128
