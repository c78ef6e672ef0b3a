"""Garbage never crashes the network parsers (hypothesis), and regressions found so far."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from collectors.network import (
    parse_bonding_permanent,
    parse_fib_trie,
    parse_if_inet6,
    parse_probe,
    parse_route,
)

_HEXISH = st.text(alphabet=st.sampled_from(list("0123456789ABCDEFabcdefxz|-+/ \t.:\n")),
                  max_size=200)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_HEXISH, st.text(max_size=200)))
def test_fib_trie_never_raises(text: str) -> None:
    for addr in parse_fib_trie(text):
        assert addr.count(".") == 3


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.one_of(_HEXISH, st.text(max_size=10)), max_size=12)
                .map("\t".join), max_size=8))
def test_route_never_raises(lines: list[str]) -> None:
    for iface, net, mask in parse_route("Iface\tDestination\n" + "\n".join(lines)):
        assert isinstance(iface, str) and 0 <= net < 2**32 and 0 < mask < 2**32


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_HEXISH, max_size=7).map(" ".join), max_size=8))
def test_if_inet6_never_raises(lines: list[str]) -> None:
    assert isinstance(parse_if_inet6("\n".join(lines)), dict)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_bonding_never_raises(text: str) -> None:
    assert isinstance(parse_bonding_permanent("Slave Interface: eth0\n" + text), dict)


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_JSONISH.map(lambda v: json.dumps(v).encode()), st.binary(max_size=100)))
def test_probe_output_never_raises(data: bytes) -> None:
    parsed = parse_probe(data)
    assert parsed is None or all(set(v) == {"ipv4", "ipv6"} for v in parsed.values())
