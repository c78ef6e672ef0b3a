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


def _put(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8", "surrogatepass"))


# st.text() draws any code point, Unicode digits ("²", "٣") included: str.isdigit() accepts them
# and int() refuses some, which once killed the collector (tests/test_network.py
# test_unicode_digit_in_a_firmware_index_is_no_crash).
# Digit-like text as well, so that every run tries what once crashed rather than hoping for it.
_DIGITS = list("0123456789²³¹٣-+ \n:x\u07c0\uff10")  # NKO and fullwidth zero
_TEXT = st.one_of(st.text(max_size=40), st.text(alphabet=st.sampled_from(_DIGITS), max_size=6))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attrs=st.fixed_dictionaries({
    "address": _TEXT, "type": _TEXT, "uevent": _TEXT, "addr_assign_type": _TEXT,
    "carrier": _TEXT, "operstate": _TEXT, "dev_port": _TEXT, "ifindex": _TEXT,
    "device/acpi_index": _TEXT, "device/index": _TEXT}),
       slot_address=_TEXT, udev=st.text(max_size=200), removable=_TEXT, inet6=_TEXT,
       bonding=_TEXT)
def test_collector_on_garbage_text_attributes(*, attrs: dict[str, str], slot_address: str,
                                              udev: str, removable: str, inet6: str,
                                              bonding: str) -> None:
    # every sysfs/procfs/udev file the collector parses, as text; a PCI NIC whose firmware index,
    # slot and udev record are garbage, and a USB NIC on a hub port
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pci = "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0"
        usb_port = "sys/devices/pci0000:00/0000:00:14.0/usb1/1-1"
        for name, parent in (("enp1s0", pci), ("eth1", f"{usb_port}/1-1:1.0")):
            net = root / parent / "net" / name
            for attr, text in attrs.items():
                _put(net / attr if not attr.startswith("device/") else root / parent / attr[7:],
                     text)
            (root / "sys/class/net").mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(net, root / "sys/class/net"), root / "sys/class/net" / name)
            os.symlink(os.path.relpath(root / parent, net), net / "device")
            os.symlink(os.path.relpath(root / "sys/devices/virtual/net/bond0", net), net / "master")
        (root / "sys/devices/virtual/net/bond0").mkdir(parents=True)
        os.symlink("../../devices/virtual/net/bond0", root / "sys/class/net/bond0")
        _put(root / usb_port / "removable", removable)
        _put(root / "sys/bus/pci/slots/1/address", slot_address)
        for index in ("1", "2", "3"):
            _put(root / "run/udev/data" / f"n{index}", udev)
        _put(root / "proc/net/if_inet6", inet6)
        _put(root / "proc/net/bonding/bond0", bonding)
        (root / "commands").mkdir()
        (root / "commands" / "netlink-addresses.txt").write_text(
            '{"enp1s0": {"ipv4": ["192.0.2.2"], "ipv6": []}}')
        raw = Network().collect(ReplayHost(root))
        assert sorted(i["name"] for i in raw["interfaces"]) == ["bond0", "enp1s0", "eth1"]
        assert raw["lan_ip"] in (None, "192.0.2.2")
