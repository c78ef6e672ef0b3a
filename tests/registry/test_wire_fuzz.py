"""Garbage on the wire never crashes the checks: it becomes a 4xx with a reason (hypothesis)."""

from __future__ import annotations

import gzip
import ipaddress
import zlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from evo_registry import rules, wire
from evo_registry.errors import HttpError

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
