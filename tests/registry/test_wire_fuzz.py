"""Garbage on the wire never crashes the checks: it becomes a 4xx with a reason (hypothesis)."""

from __future__ import annotations

import copy
import gzip
import ipaddress
import zlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from evo_registry import rules, wire
from evo_registry.errors import HttpError
from tests.registry.conftest import base_report

TRUSTED = [ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128")]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_gunzip_and_parse_never_crash(data: bytes) -> None:
    for body in (data, gzip.compress(data), gzip.compress(data)[: max(1, len(data) // 2)]):
        try:
            doc = wire.parse_json(wire.gunzip(body, limit=8192))
        except HttpError as exc:
            assert exc.status in (400, 413)
            assert exc.reason
            continue
        # Whatever parsed, the schema check answers (a reason or None) without raising.
        reason = wire.schema_errors(doc)
        assert reason is None or reason.startswith("schema:")


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=64 * 1024))
def test_gunzip_limit_is_exact(size: int) -> None:
    body = gzip.compress(b"a" * size)
    limit = 32 * 1024
    if size <= limit:
        assert wire.gunzip(body, limit=limit) == b"a" * size
    else:
        try:
            wire.gunzip(body, limit=limit)
        except HttpError as exc:
            assert exc.status == 413
        else:
            raise AssertionError("over the limit and accepted")


def test_gunzip_refuses_zlib_and_raw_deflate() -> None:
    for body in (zlib.compress(b"{}"), zlib.compress(b"{}")[2:-4]):
        try:
            wire.gunzip(body)
        except HttpError as exc:
            assert exc.status == 400
        else:
            raise AssertionError("not gzip and accepted")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=60)), st.one_of(st.none(), st.text(max_size=200)))
def test_client_address_never_crashes(peer: str | None, xff: str | None) -> None:
    addr = wire.client_address(peer, xff, TRUSTED)
    assert addr is None or ipaddress.ip_address(addr)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_fingerprint_of_anything(doc: Any) -> None:
    fp = rules.fingerprint(doc if isinstance(doc, dict) else {"hardware": doc})
    assert set(fp) == set(rules.PARTS)
    assert rules.compare_fingerprints(fp, fp).status in ("match", "unknown")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=12), st.text(max_size=3))
def test_psu_suits_never_crashes(psu: str, country: str) -> None:
    assert rules.psu_suits(psu, country) in (True, False, None)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


_REPORT = base_report("EVO-FUZZ")
_PATHS = _paths(_REPORT)[1:]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_PATHS), json_values | st.sampled_from(
    ["192.0.2.1", "::1", "999.1.1.1", "00ff", "ab:cd:ef:01:23:45", "", "x" * 200]))
def test_the_validator_judges_like_jsonschema(path: tuple[Any, ...], value: Any) -> None:
    """jsonschema-rs (the registry's validator) and jsonschema (the reference) agree."""
    from jsonschema import Draft202012Validator

    doc = copy.deepcopy(_REPORT)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    original = Draft202012Validator(wire.load_schema(),
                                    format_checker=Draft202012Validator.FORMAT_CHECKER)
    assert original.is_valid(doc) == wire.validator().is_valid(doc)
    assert (wire.schema_errors(doc) is None) == original.is_valid(doc)


def test_template_report_is_valid() -> None:
    assert wire.schema_errors(_REPORT) is None
