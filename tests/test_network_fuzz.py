"""Garbage never crashes the network parsers (hypothesis), and regressions found so far."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectors.network import (
    Network,
    parse_bonding_permanent,
    parse_fib_trie,
    parse_if_inet6,
    parse_probe,
    parse_route,
)
from evo_agent.hostroot import ReplayHost

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


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(address=st.binary(max_size=24), arphrd=st.binary(max_size=6), uevent=st.binary(max_size=60),
       assign=st.binary(max_size=4), probe=st.binary(max_size=80), fib=st.binary(max_size=120),
       inet6=st.binary(max_size=120))
def test_collector_on_garbage_tree(*, address: bytes, arphrd: bytes, uevent: bytes, assign: bytes,
                                   probe: bytes, fib: bytes, inet6: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dev = root / "sys/devices/pci0000:00/0000:00:1f.6"
        net = dev / "net" / "eth0"
        net.mkdir(parents=True)
        for name, data in (("address", address), ("type", arphrd), ("uevent", uevent),
                           ("addr_assign_type", assign), ("carrier", arphrd[:1])):
            (net / name).write_bytes(data)
        os.symlink("../../../0000:00:1f.6", net / "device")
        (root / "sys/class/net").mkdir(parents=True)
        os.symlink("../../devices/pci0000:00/0000:00:1f.6/net/eth0", root / "sys/class/net/eth0")
        (root / "commands").mkdir()
        (root / "commands" / "netlink-addresses.txt").write_bytes(probe)
        (root / "proc/net").mkdir(parents=True)
        (root / "proc/net/fib_trie").write_bytes(fib)
        (root / "proc/net/if_inet6").write_bytes(inet6)
        raw = Network().collect(ReplayHost(root))
        assert [i["name"] for i in raw["interfaces"]] == ["eth0"]
        assert raw["lan_ip_secondary"] is None
