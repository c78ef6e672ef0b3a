"""The compiled schema check judges every document exactly as jsonschema does (the oracle).

Documents are the valid template report with one to four values replaced by hostile JSON (wrong
types, 1.0 for an integer, True for 1, "abcd\\n" for a pattern, scoped IPv6 addresses, ...),
keys added or removed, and the schema-following reports of test_generated_reports.  The oracle
is jsonschema on the original schema (references not inlined, formats checked).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from evo_registry import wire
from evo_registry.fastschema import Unsupported, compile_schema
from tests.registry.conftest import base_report
from tests.registry.test_generated_reports import _report

ORACLE = Draft202012Validator(wire.load_schema(),
                              format_checker=Draft202012Validator.FORMAT_CHECKER)
CHECK = compile_schema(wire.inline_refs(wire.load_schema()),
                       Draft202012Validator.FORMAT_CHECKER)

TRICKY = st.sampled_from([
    None, True, False, 0, 1, -1, 1.0, 0.0, -0.0, 1.5, 2**70, -(2**70), 1e300, "", " ", "x" * 15,
    "x" * 16, "x" * 64, "x" * 65, "x" * 128, "x" * 129, "abcd", "abcd\n", "ABCD", "00ff", "0000",
    "192.0.2.1", "192.0.2.1\n", "999.1.1.1", "01.2.3.4", "::1", "fe80::1%eth0", "2001:db8::5",
    "::ffff:192.0.2.1", "ab:cd:ef:01:23:45", "AB:CD:EF:01:23:45", "0000:00:02.0",
    "0000:00:02.8", "152a:8750", "daily", "boot", "Daily", "evo-inventory/1", "2026-11-20",
    "2026-11-20T09:00:00Z", "2026-11-20T09:00:00.5Z", "2026-11-20T09:00:00Z\n",
    "0f8b7e8e-1e0a-4a51-9c39-2a3c5d7e9f00", "ok", "no_data", "error", "bad_thing", "BAD",
    "\u00e9" * 15, "\U0001f600" * 64, [], {}, [None], {"x": 1}, ["daily"]])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20) | TRICKY,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=12)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


_REPORT = base_report("EVO-FAST")
_REPORT["collectors"]["usb"] = {"status": "no_data", "duration_ms": 0, "error": None}
_REPORT["functional"]["lan_ip_secondary"] = "2001:db8::20"
_PATHS = _paths(_REPORT)[1:]
EDIT = st.tuples(st.sampled_from(_PATHS), st.sampled_from(["set", "delete", "add"]),
                 st.text(min_size=1, max_size=8), JSON | TRICKY)


def _apply(doc: Any, path: tuple[Any, ...], how: str, name: str, value: Any) -> None:
    node = doc
    for key in path[:-1]:
        if not isinstance(node, dict | list):
            return
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return
    if not isinstance(node, dict | list):
        return
    last = path[-1]
    try:
        if how == "set":
            node[last] = value
        elif how == "delete":
            del node[last]
        elif isinstance(node, dict):
            node[name] = value
        else:
            node.append(value)
    except (KeyError, IndexError, TypeError):
        return


def test_template_is_valid_for_both() -> None:
    assert ORACLE.is_valid(_REPORT)
    assert CHECK(_REPORT)


@settings(max_examples=1500, deadline=None)
@given(st.lists(EDIT, min_size=1, max_size=4))
def test_edited_reports_judged_like_jsonschema(edits: list[tuple[Any, ...]]) -> None:
    doc = copy.deepcopy(_REPORT)
    for path, how, name, value in edits:
        _apply(doc, path, how, name, value)
    assert CHECK(doc) == ORACLE.is_valid(doc), list(ORACLE.iter_errors(doc))[:1]
    assert (wire.schema_errors(doc) is None) == ORACLE.is_valid(doc)


@settings(max_examples=300, deadline=None)
@given(_report("EVO-FAST"))
def test_generated_valid_reports_accepted(doc: dict[str, Any]) -> None:
    assert ORACLE.is_valid(doc)
    assert CHECK(doc)


@settings(max_examples=500, deadline=None)
@given(JSON)
def test_any_json_judged_like_jsonschema(doc: Any) -> None:
    assert CHECK(doc) == ORACLE.is_valid(doc)


@pytest.mark.parametrize("schema", [
    {"type": "object", "patternProperties": {"^x": {}}},
    {"type": "string", "format": "email"},
    {"oneOf": [{"type": "null"}]},
    {"type": "thing"},
    {"const": 1.5},
])
def test_unknown_keywords_are_refused(schema: dict[str, Any]) -> None:
    with pytest.raises(Unsupported):
        compile_schema(schema, Draft202012Validator.FORMAT_CHECKER)


def test_a_refused_report_still_gets_jsonschemas_reason() -> None:
    doc = copy.deepcopy(_REPORT)
    doc["hardware"]["usb_devices"][0]["vendor_id"] = "15AZ"
    reason = wire.schema_errors(doc)
    assert reason is not None
    assert reason.startswith("schema: hardware/usb_devices/0/vendor_id:")
