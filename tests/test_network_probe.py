"""The address probe (psutil.net_if_addrs()) on this machine, and in a network namespace this test
creates with what getifaddrs(3) treats specially: an IPv4 alias with a label, several addresses on
one link, IPv6 global addresses, a tun link (no link-layer address) with and without an address,
a point-to-point peer, a veth pair, and a link that is down.  Run by Debian's python3 (which has
python3-psutil, as the appliance does) inside the namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors.network import parse_probe, probe_addresses
from tests.conftest import REPO

DEBIAN_PYTHON = "/usr/bin/python3"
IP = shutil.which("ip") or "/usr/sbin/ip"

NEW_PROBE = (f"import sys; sys.path.insert(0, {str(REPO)!r}); "
             "from collectors.network import probe_addresses; "
             "print(probe_addresses().decode())")


def _has_psutil() -> bool:
    if not os.access(DEBIAN_PYTHON, os.X_OK):
        return False
    return subprocess.run([DEBIAN_PYTHON, "-c", "import psutil"], capture_output=True,
                          check=False).returncode == 0


needs_psutil = pytest.mark.skipif(not _has_psutil(),
                                  reason="Debian's python3 with python3-psutil is not here")


def _run(prefix: list[str], code: str) -> str:
    return subprocess.run([*prefix, DEBIAN_PYTHON, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0 or not os.access(IP, os.X_OK):
        pytest.skip("network namespaces need root and iproute2")
    name = f"evo-probe-{uuid.uuid4().hex[:8]}"
    made = subprocess.run([IP, "netns", "add", name], capture_output=True, text=True,
                          check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run([IP, "netns", "del", name], capture_output=True, check=False)


def _ip(ns: str, *args: str) -> None:
    subprocess.run([IP, "-n", ns, *args], capture_output=True, text=True, check=True)


@needs_psutil
def test_probe_in_a_namespace_with_aliases_tun_and_peers(netns: str) -> None:
    # documentation prefixes only (RFC 5737, RFC 3849); the namespace is the test's own
    _ip(netns, "link", "set", "lo", "up")
    # veth pairs: this kernel may have no dummy module
    _ip(netns, "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p")
    _ip(netns, "link", "set", "lan0", "up")
    _ip(netns, "addr", "add", "192.0.2.10/24", "dev", "lan0")
    _ip(netns, "addr", "add", "192.0.2.11/24", "dev", "lan0")
    _ip(netns, "addr", "add", "198.51.100.7/24", "dev", "lan0", "label", "lan0:fiber")
    _ip(netns, "addr", "add", "2001:db8::10/64", "dev", "lan0", "nodad")
    _ip(netns, "addr", "add", "2001:db8::11/64", "dev", "lan0", "nodad")
    _ip(netns, "link", "add", "down0", "type", "veth", "peer", "name", "down0p")  # down
    _ip(netns, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
    _ip(netns, "link", "set", "veth0", "up")
    _ip(netns, "addr", "add", "203.0.113.1", "peer", "203.0.113.2", "dev", "veth0")
    tun = subprocess.run([IP, "-n", netns, "tuntap", "add", "dev", "tun0", "mode", "tun"],
                         capture_output=True, check=False).returncode == 0
    if tun:
        _ip(netns, "addr", "add", "192.0.2.99/32", "dev", "tun0")
        subprocess.run([IP, "-n", netns, "tuntap", "add", "dev", "tun1", "mode", "tun"],
                       capture_output=True, check=False)
    prefix = [IP, "netns", "exec", netns]
    new = _run(prefix, NEW_PROBE)
    doc = json.loads(new)
    # what makes this namespace worth testing is there
    assert doc["lan0"]["ipv4"] == ["192.0.2.10", "192.0.2.11"]
    assert doc["lan0:fiber"]["ipv4"] == ["198.51.100.7"]
    assert doc["lan0"]["ipv6"][:2] == ["2001:db8::11", "2001:db8::10"]  # newest first
    assert doc["veth0"]["ipv4"] == ["203.0.113.1"]
    assert "down0" in doc and "veth1" in doc
    if tun:
        assert doc["tun0"] == {"ipv4": ["192.0.2.99"], "ipv6": []}
        assert "tun1" not in doc  # no link-layer address and no IP address
    assert parse_probe(new.encode()) == doc


def test_probe_runs_in_this_process() -> None:
    doc = json.loads(probe_addresses())
    assert isinstance(doc, dict)
    assert all(set(v) == {"ipv4", "ipv6"} for v in doc.values())
    if Path("/sys/class/net/lo").exists():
        assert "127.0.0.1" in doc.get("lo", {}).get("ipv4", [])
