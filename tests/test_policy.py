"""The privacy filter and its policy file: bound to the published text, an allowlist."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evo_agent.collector import discover
from evo_agent.inventory import Inventory, Outcome
from evo_agent.policy import (
    CLEANERS,
    apply,
    clean_text,
    is_placeholder,
    load_policy,
    looks_personal,
)
from evo_agent.report import build_report
from tests.conftest import PUBLISHED_POLICY_SHA256, REPO

POLICY_COPY = REPO / "config" / "432evo-privacy-policy.txt"
SCHEMA = json.loads((REPO / "evo_agent/schemas/evo-inventory-1.schema.json").read_text())


def published_items() -> dict[str, list[str]]:
    """Return the '- ' list items of the published policy, by the heading above them."""
    sections: dict[str, list[str]] = {}
    heading = ""
    for line in POLICY_COPY.read_text("utf-8").splitlines():
        text = line.strip()
        if text.startswith("- "):
            sections.setdefault(heading, []).append(text[2:].strip())
        elif text and not text.startswith("Legitimate interest"):
            heading = text
    return sections


def test_repo_copy_is_the_published_policy() -> None:
    digest = hashlib.sha256(POLICY_COPY.read_bytes()).hexdigest()
    assert digest == PUBLISHED_POLICY_SHA256, f"{POLICY_COPY} is not the published text"


def test_every_field_cites_a_line_of_the_published_policy_verbatim() -> None:
    policy = load_policy()
    lines = {line.strip().removeprefix("- ").strip()
             for line in POLICY_COPY.read_text("utf-8").splitlines()}
    for rule in policy.fields:
        assert rule.line in lines, f"{rule.report}: {rule.line!r} is not in the published policy"
        for purpose in rule.purposes:
            assert purpose in lines, f"{rule.report}: purpose {purpose!r} is not in the policy"
    for derived in policy.derived:
        assert derived.line in lines
    for name, section in policy.sections.items():
        assert section["heading"] in lines, name
        assert section["collected"] in lines, name


def test_every_declared_item_of_the_policy_is_covered() -> None:
    """Each data item the policy lists is sent by a field or derived by the registry."""
    policy = load_policy()
    covered = {r.line for r in policy.fields} | {d.line for d in policy.derived}
    items = published_items()
    data_items = items["Functional data for my.432evo.be"] + items[
        "The following hardware related data fields are collected:"]
    missing = [item for item in data_items if item not in covered]
    assert not missing


def test_every_source_is_a_declared_field_of_a_collector() -> None:
    policy = load_policy()
    classes = discover()
    for rule in policy.fields:
        assert rule.collector in classes, f"{rule.report}: no collector {rule.collector!r}"
        assert rule.key in classes[rule.collector].fields, (
            f"{rule.report}: collector {rule.collector} does not declare {rule.key!r}")


def test_report_paths_are_the_schema_properties() -> None:
    policy = load_policy()
    for rule in policy.fields:
        node: Any = SCHEMA
        for part in rule.report.split("."):
            node = node["properties"][part]
            if "$ref" in node:
                node = SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[1]]
        if rule.type == "list":
            assert set(node["items"]["properties"]) == set(rule.items), rule.report


@pytest.mark.parametrize("value", [
    "To Be Filled By O.E.M.", "to be filled by o.e.m.", "Default string", "System Serial Number",
    "0123456789", "Not Specified", "  None  ", "00000000", "FFFFFFFFFFFF", "\ufffd\ufffd\ufffd",
    "..........", "", "   ", "NO DIMM", "[Empty]", "Undefined", "Unknown", "\x00\x00",
])
def test_placeholders_become_null(value: str) -> None:
    assert is_placeholder(value)
    assert clean_text(value) is None
    assert CLEANERS["serial"](value) is None


@pytest.mark.parametrize("value", ["PRIME Z390-A", "ASUSTeK COMPUTER INC.", "MS-7816", "1", "FF00",
                                   "180913/SN123", "N/A-7"])
def test_real_values_are_kept(value: str) -> None:
    assert clean_text(value) == value


def test_text_is_bounded_and_stripped_of_control_characters() -> None:
    assert clean_text("Intel\x1b[31m Core\u202e i5\r\n") == "Intel [31m Core i5"
    assert clean_text("ab" * 250) == "ab" * 64
    assert CLEANERS["serial"]("S" * 200) == "S" * 64
    assert clean_text(b"bytes \xff ok") == "bytes \ufffd ok"
    assert clean_text(42) is None


@pytest.mark.parametrize(("kind", "raw", "clean"), [
    ("hex4", "0x8086", "8086"), ("hex4", "8086", "8086"), ("hex4", "1D6B", "1d6b"),
    ("hex4", 0x10EC, "10ec"), ("hex4", "12345", None), ("hex4", "zz", None), ("hex4", True, None),
    ("usb_id", "046D:0A44", "046d:0a44"), ("usb_id", "046d", None),
    ("pci_address", "0000:00:1F.3", "0000:00:1f.3"), ("pci_address", "00:1f.3", None),
    ("ip", "192.168.1.20", "192.168.1.20"), ("ip", "fe80::1", "fe80::1"), ("ip", "127.0.0.1", None),
    ("ip", "0.0.0.0", None), ("ip", "300.1.1.1", None), ("ip", "x", None),
    ("mac", "3C:EC:EF:00:11:22", "3c:ec:ef:00:11:22"), ("mac", "00:00:00:00:00:00", None),
    ("mac", "3c-ec-ef-00-11-22", "3c:ec:ef:00:11:22"), ("mac", "3c:ec:ef:00:11", None),
    ("netbios", "evo-living", "EVO-LIVING"), ("netbios", "a" * 16, None), ("netbios", "a b", None),
    ("vpnid", "EVO-000123", "EVO-000123"), ("vpnid", "../../etc", None), ("vpnid", "0000", None),
    ("count", 8, 8), ("count", -1, None), ("count", "8", None), ("count", False, None),
    ("bytes", 17179869184, 17179869184), ("bytes", 0, None),
])
def test_identifiers_have_their_exact_shape_or_are_null(kind: str, raw: Any, clean: Any) -> None:
    assert CLEANERS[kind](raw) == clean


def test_undeclared_fields_are_dropped_and_counted_by_name_only(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    canary = "CANARY-UUID-4c4c4544-0051"
    raw = {
        "dmi": {"board_vendor": "ASRock", "product_uuid": canary,
                "memory_modules": [{"type": "DDR4", "serial_number": canary, "size_bytes": 8 << 30},
                                   {"type": "DDR4", "serial_number": canary + "2"}]},
        "thirdparty": {"anything": canary},
    }
    result = apply(load_policy(), raw)
    assert result.hardware["motherboard"]["vendor"] == "ASRock"
    assert result.hardware["ram"]["modules"][0] == {
        "type": "DDR4", "form_factor": None, "size_bytes": 8 << 30, "speed_mts": None,
        "manufacturer": None, "part_number": None}
    assert result.dropped == {"dmi.product_uuid": 1, "dmi.memory_modules[].serial_number": 2,
                              "thirdparty.anything": 1}
    out = json.dumps([result.functional, result.hardware])
    assert "CANARY" not in out
    assert "CANARY" not in caplog.text
    assert "dmi.product_uuid" in caplog.text


def test_lists_are_bounded() -> None:
    devices = [{"vendor_id": "046d", "product_id": f"{i:04x}"} for i in range(300)]
    raw = {"usb": {"devices": devices}}
    result = apply(load_policy(), raw)
    assert len(result.hardware["usb_devices"]) == 128
    assert result.dropped["usb.devices[] beyond 128"] == 172


scalar = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
          | st.text(max_size=40)
          | st.binary(max_size=40).map(lambda b: b.decode("utf-8", "replace")))
json_like = scalar | st.lists(scalar, max_size=4) | st.dictionaries(st.text(max_size=8), scalar,
                                                                     max_size=4)


def _raw_strategy() -> st.SearchStrategy[dict[str, dict[str, Any]]]:
    policy = load_policy()
    keys: dict[str, list[str]] = {}
    for rule in policy.fields:
        keys.setdefault(rule.collector, []).append(rule.key)
    item_keys = sorted({k for r in policy.fields for k in r.items})
    item = st.dictionaries(st.sampled_from(item_keys) | st.text(max_size=8), json_like, max_size=8)
    value = json_like | st.lists(item, max_size=4)
    return st.fixed_dictionaries({
        collector: st.dictionaries(st.sampled_from(names) | st.text(max_size=8), value, max_size=6)
        for collector, names in keys.items()
    })


@settings(max_examples=200, deadline=None)
@given(_raw_strategy())
def test_any_collector_output_gives_a_schema_valid_report(raw: dict[str, dict[str, Any]]) -> None:
    inventory = Inventory({name: Outcome(name, "ok", 1, values) for name, values in raw.items()})
    report, _dropped = build_report(inventory, load_policy())
    jsonschema.validate(report, SCHEMA, format_checker=jsonschema.FormatChecker())


def test_no_name_in_the_hardware_databases_looks_personal() -> None:
    """The personal-data check must not null real device names: all of pci.ids and usb.ids."""
    import re

    id_line = re.compile(r"^\t*(?:[0-9a-fA-F]{4}(?: [0-9a-fA-F]{4})?|C [0-9a-f]{2}|[0-9a-f]{2})"
                         r"\s+(.*)$")
    files = [Path(p) for p in ("/usr/share/misc/pci.ids", "/usr/share/misc/usb.ids")]
    assert all(f.is_file() for f in files), "hwdata is not installed (scripts/test.sh installs it)"
    names = [m.group(1) for f in files
             for m in map(id_line.match, f.read_text("utf-8", "replace").splitlines()) if m]
    assert len(names) > 30_000
    assert [n for n in names if looks_personal(n)] == []
    assert CLEANERS["text"]("Virtual Printer (/Users/john/Parallels/x.txt)") is None
    assert CLEANERS["text"]("Owner: jane.doe@example.org") is None
    assert CLEANERS["text"]("Studio DAC of jane.doe@example.") is None  # cut by the kernel
    assert CLEANERS["text"]("Studio DAC of jane.doe@exam") is None
    assert CLEANERS["text"]("TV@nywhere Plus") == "TV@nywhere Plus"
    assert CLEANERS["text"]("Core i5-4590 CPU @ 3.30GHz") == "Core i5-4590 CPU @ 3.30GHz"
    assert CLEANERS["text"]("see https://example.org/x") is None
    assert CLEANERS["text"]("C:\\Users\\jane") is None
    assert CLEANERS["text"]("Radeon HD 7700/7800 Series") == "Radeon HD 7700/7800 Series"
