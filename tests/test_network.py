"""The network collector: which NIC is onboard, which is the fiber dongle, and their addresses.

Data: a capture of the build sandbox (a QEMU guest with virtio-net, recorded by RecordingHost
without psutil, so its addresses come from /proc/net), node_exporter's and ghw's sysfs trees, a
live record-and-replay of this machine, and hand-built trees laid out as the kernel lays out
sysfs (each says what it mirrors).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from collectors.network import (
    Network,
    addresses_from_proc,
    parse_bonding_permanent,
    parse_fib_trie,
    parse_if_inet6,
    parse_probe,
    parse_route,
)
from evo_agent.hostroot import LiveHost, RecordingHost, ReplayHost
from evo_agent.policy import apply, load_policy
from tests.ttar import unpack

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "corpus"
DATA = Path(__file__).resolve().parent / "data" / "network"
SANDBOX = DATA / "qemu-virtio-sandbox"


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(link):
        os.symlink(os.path.relpath(target, link.parent), link)


def add_nic(root: Path, name: str, parent: str | None, *, mac: str, driver: str | None = None,
            assign: int = 0, arphrd: int = 1, devtype: str | None = None, wireless: bool = False,
            operstate: str = "up", carrier: int | None = 1, master: str | None = None,
            bus: str = "pci") -> Path:
    """One netdev as the kernel shows it: /sys/devices/<parent>/net/<name> (or virtual/net),
    /sys/class/net/<name> link, device -> the parent, device/driver and device/subsystem links."""
    sys_root = root / "sys"
    if parent is None:
        netdir = sys_root / "devices" / "virtual" / "net" / name
    else:
        netdir = sys_root / "devices" / parent / "net" / name
    netdir.mkdir(parents=True)
    (netdir / "address").write_text(mac + "\n")
    (netdir / "addr_assign_type").write_text(f"{assign}\n")
    (netdir / "type").write_text(f"{arphrd}\n")
    (netdir / "operstate").write_text(operstate + "\n")
    if carrier is not None:
        (netdir / "carrier").write_text(f"{carrier}\n")
    ifindex = len(list((sys_root / "class" / "net").glob("*"))) + 1 if (
        sys_root / "class" / "net").exists() else 1
    (netdir / "uevent").write_text(f"INTERFACE={name}\nIFINDEX={ifindex}\n"
                                   + (f"DEVTYPE={devtype}\n" if devtype else ""))
    _link(sys_root / "class" / "net" / name, netdir)
    if parent is not None:
        dev = sys_root / "devices" / parent
        _link(netdir / "device", dev)
        _link(dev / "subsystem", sys_root / "bus" / bus)
        if driver:
            drv = sys_root / "bus" / bus / "drivers" / driver
            drv.mkdir(parents=True, exist_ok=True)
            _link(dev / "driver", drv)
    if wireless:
        (netdir / "wireless").mkdir()
        phy = sys_root / "devices" / (parent or "virtual") / "ieee80211" / "phy0"
        phy.mkdir(parents=True)
        _link(netdir / "phy80211", phy)
    if master:
        # the kernel's link is relative to the net dir: master -> ../../../virtual/net/br0
        _link(netdir / "master", sys_root / "devices" / "virtual" / "net" / master)
        _link(sys_root / "devices" / "virtual" / "net" / master / f"lower_{name}", netdir)
    return netdir


def write_addresses(root: Path, table: dict[str, dict[str, list[str]]]) -> None:
    """What the live probe records: commands/netlink-addresses.txt."""
    (root / "commands").mkdir(exist_ok=True)
    (root / "commands" / "netlink-addresses.txt").write_text(json.dumps(table))


ONBOARD = "pci0000:00/0000:00:1f.6"  # Intel I219 on the PCH, as on most Intel boards
WIFI = "pci0000:00/0000:00:14.3"  # CNVi Wi-Fi: a lower PCI address than the Ethernet
DONGLE = "pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0"  # r8152 on an xHCI port
DONGLE2 = "pci0000:00/0000:00:14.0/usb2/2-2/2-2:1.0"


def appliance(root: Path, *, dongle: bool = True) -> None:
    """An appliance-like tree: onboard e1000e, r8152 fiber dongle, Wi-Fi, docker0, wg0, lo."""
    add_nic(root, "lo", None, mac="00:00:00:00:00:00", arphrd=772, operstate="unknown")
    add_nic(root, "enp0s31f6", ONBOARD, mac="a4:bb:6d:12:34:56", driver="e1000e")
    add_nic(root, "wlp0s20f3", WIFI, mac="02:ca:4a:77:88:99", driver="iwlwifi", devtype="wlan",
            wireless=True)
    if dongle:
        add_nic(root, "enx00e04c680001", DONGLE, mac="00:e0:4c:68:00:01", driver="r8152",
                bus="usb")
    add_nic(root, "docker0", None, mac="02:42:ac:11:00:01", devtype="bridge", assign=3,
            operstate="down", carrier=0)
    add_nic(root, "wg0", None, mac="", arphrd=65534, devtype="wireguard", operstate="unknown")
    write_addresses(root, {
        "lo": {"ipv4": ["127.0.0.1"], "ipv6": ["::1"]},
        "enp0s31f6": {"ipv4": ["192.168.1.50"], "ipv6": ["fe80::a6bb:6dff:fe12:3456"]},
        "wlp0s20f3": {"ipv4": ["192.168.1.177"], "ipv6": ["2a02:a03f:ca4a:ee00::177"]},
        "enx00e04c680001": {"ipv4": ["10.43.2.20"], "ipv6": []},
        "docker0": {"ipv4": ["172.17.0.1"], "ipv6": []},
        "wg0": {"ipv4": ["10.8.0.2"], "ipv6": ["fd86:ea04:1115::2"]},
    })


def collect(root: Path) -> dict[str, Any]:
    return Network().collect(ReplayHost(root))


def test_onboard_and_dongle(tmp_path: Path) -> None:
    appliance(tmp_path)
    raw = collect(tmp_path)
    assert raw["mac_address"] == "a4:bb:6d:12:34:56"
    assert raw["lan_ip"] == "192.168.1.50"
    assert raw["lan_ip_secondary"] == "10.43.2.20"
    by_name = {i["name"]: i for i in raw["interfaces"]}
    assert by_name["enp0s31f6"]["role"] == "onboard"
    assert by_name["enx00e04c680001"]["role"] == "secondary"
    assert {n: (i["bus"], i["driver"], i["role"]) for n, i in by_name.items()} == {
        "lo": ("virtual", None, None),
        "enp0s31f6": ("pci", "e1000e", "onboard"),
        "wlp0s20f3": ("pci", "iwlwifi", None),
        "enx00e04c680001": ("usb", "r8152", "secondary"),
        "docker0": ("virtual", None, None),
        "wg0": ("virtual", None, None),
    }
    assert by_name["enp0s31f6"]["permanent"] is True
    assert by_name["docker0"]["permanent"] is False


def test_dongle_hotplug_never_changes_the_mac(tmp_path: Path) -> None:
    appliance(tmp_path / "without", dongle=False)
    without = collect(tmp_path / "without")
    appliance(tmp_path / "with")
    with_one = collect(tmp_path / "with")
    appliance(tmp_path / "two")
    add_nic(tmp_path / "two", "enx00e04c680002", DONGLE2, mac="00:e0:4c:68:00:02",
            driver="ax88179_178a", bus="usb")
    two = collect(tmp_path / "two")
    assert without["mac_address"] == with_one["mac_address"] == two["mac_address"] == (
        "a4:bb:6d:12:34:56")
    assert without["lan_ip"] == with_one["lan_ip"] == two["lan_ip"] == "192.168.1.50"
    assert without["lan_ip_secondary"] is None
    # two dongles: the one with an address is the fiber dongle
    assert two["lan_ip_secondary"] == "10.43.2.20"


def test_onboard_without_address_keeps_its_role(tmp_path: Path) -> None:
    # cable unplugged from the onboard port: no LAN IP, but the MAC and the dongle's IP remain
    appliance(tmp_path)
    table = json.loads((tmp_path / "commands" / "netlink-addresses.txt").read_text())
    table["enp0s31f6"] = {"ipv4": [], "ipv6": ["fe80::a6bb:6dff:fe12:3456"]}
    write_addresses(tmp_path, table)
    raw = collect(tmp_path)
    assert raw["mac_address"] == "a4:bb:6d:12:34:56"
    assert raw["lan_ip"] is None  # a link-local IPv6 is no LAN address
    assert raw["lan_ip_secondary"] == "10.43.2.20"


def test_global_ipv6_when_no_ipv4(tmp_path: Path) -> None:
    appliance(tmp_path)
    table = json.loads((tmp_path / "commands" / "netlink-addresses.txt").read_text())
    table["enp0s31f6"] = {"ipv4": [], "ipv6": ["fe80::1", "2001:db8:5::50"]}
    write_addresses(tmp_path, table)
    assert collect(tmp_path)["lan_ip"] == "2001:db8:5::50"


def test_onboard_enslaved_to_a_bridge(tmp_path: Path) -> None:
    # systemd-networkd / ifupdown "bridge_ports enp0s31f6": the address is on br0, not on the NIC
    appliance(tmp_path)
    shutil.rmtree(tmp_path / "sys" / "devices" / ONBOARD / "net")
    os.unlink(tmp_path / "sys" / "class" / "net" / "enp0s31f6")
    add_nic(tmp_path, "br0", None, mac="a4:bb:6d:12:34:56", devtype="bridge", assign=3)
    add_nic(tmp_path, "enp0s31f6", ONBOARD, mac="a4:bb:6d:12:34:56", driver="e1000e",
            master="br0")
    table = json.loads((tmp_path / "commands" / "netlink-addresses.txt").read_text())
    table["enp0s31f6"] = {"ipv4": [], "ipv6": []}
    table["br0"] = {"ipv4": ["192.168.1.60"], "ipv6": []}
    write_addresses(tmp_path, table)
    raw = collect(tmp_path)
    assert raw["mac_address"] == "a4:bb:6d:12:34:56"
    assert raw["lan_ip"] == "192.168.1.60"
    by_name = {i["name"]: i for i in raw["interfaces"]}
    assert by_name["br0"]["role"] is None and by_name["br0"]["bus"] == "virtual"


# Kernel drivers/net/bonding/bond_procfs.c output, two slaves (its layout, our values)
BONDING = """Ethernet Channel Bonding Driver: v5.10.0-28-amd64

Bonding Mode: fault-tolerance (active-backup)
Primary Slave: None
Currently Active Slave: enp0s31f6
MII Status: up
MII Polling Interval (ms): 100
Up Delay (ms): 0
Down Delay (ms): 0
Peer Notification Delay (ms): 0

Slave Interface: enp0s31f6
MII Status: up
Speed: 1000 Mbps
Duplex: full
Link Failure Count: 0
Permanent HW addr: a4:bb:6d:12:34:56
Slave queue ID: 0

Slave Interface: enx00e04c680001
MII Status: up
Speed: 1000 Mbps
Duplex: full
Link Failure Count: 0
Permanent HW addr: 00:e0:4c:68:00:01
Slave queue ID: 0
"""


def test_bonded_onboard_reports_the_permanent_mac(tmp_path: Path) -> None:
    # bonding sets every slave's MAC to the bond's (addr_assign_type 3): the burnt-in one is in
    # /proc/net/bonding/bond0.  Here the bond took the dongle's MAC.
    add_nic(tmp_path, "bond0", None, mac="00:e0:4c:68:00:01", devtype="bond", assign=3)
    add_nic(tmp_path, "enp0s31f6", ONBOARD, mac="00:e0:4c:68:00:01", driver="e1000e", assign=3,
            master="bond0")
    add_nic(tmp_path, "enx00e04c680001", DONGLE, mac="00:e0:4c:68:00:01", driver="r8152",
            bus="usb", master="bond0")
    bonding = tmp_path / "proc" / "net" / "bonding"
    bonding.mkdir(parents=True)
    (bonding / "bond0").write_text(BONDING)
    write_addresses(tmp_path, {"bond0": {"ipv4": ["192.168.1.70"], "ipv6": []}})
    raw = collect(tmp_path)
    assert raw["mac_address"] == "a4:bb:6d:12:34:56"
    assert raw["lan_ip"] == "192.168.1.70"
    assert raw["lan_ip_secondary"] is None  # same bond: no second LAN presence
    onboard = next(i for i in raw["interfaces"] if i["role"] == "onboard")
    assert onboard["permanent"] is True


def test_changed_mac_uses_the_ethtool_probe(tmp_path: Path) -> None:
    # a MAC set by a udev .link file (MACAddressPolicy) or by hand: addr_assign_type 3; the
    # ETHTOOL_GPERMADDR probe's recorded answer gives the burnt-in address
    add_nic(tmp_path, "eth0", ONBOARD, mac="02:00:00:00:00:99", driver="e1000e", assign=3)
    write_addresses(tmp_path, {"eth0": {"ipv4": ["192.168.1.80"], "ipv6": []}})
    raw = collect(tmp_path)
    assert raw["mac_address"] == "02:00:00:00:00:99"  # no probe recorded: the current one
    assert raw["interfaces"][0]["permanent"] is False
    (tmp_path / "commands" / "ethtool-permaddr-eth0.txt").write_text("a4:bb:6d:12:34:56")
    raw = collect(tmp_path)
    assert raw["mac_address"] == "a4:bb:6d:12:34:56"
    assert raw["interfaces"][0]["permanent"] is True


def test_usb_only_machine_has_no_onboard(tmp_path: Path) -> None:
    add_nic(tmp_path, "enx00e04c680001", DONGLE, mac="00:e0:4c:68:00:01", driver="r8152",
            bus="usb")
    write_addresses(tmp_path, {"enx00e04c680001": {"ipv4": ["10.43.2.20"], "ipv6": []}})
    raw = collect(tmp_path)
    assert raw["mac_address"] is None and raw["lan_ip"] is None
    assert raw["lan_ip_secondary"] == "10.43.2.20"


# ---- real trees -----------------------------------------------------------------------------
def test_sandbox_capture_proc_fallback() -> None:
    # recorded on the build sandbox (QEMU, virtio-net at 0000:00:03.0) by RecordingHost, with no
    # psutil in that Python: the probe was unavailable and /proc/net was read instead
    raw = Network().collect(ReplayHost(SANDBOX))
    assert raw["mac_address"] == "02:fc:00:00:00:01"
    assert raw["lan_ip"] == "192.0.2.2"
    assert raw["lan_ip_secondary"] is None
    eth0 = next(i for i in raw["interfaces"] if i["name"] == "eth0")
    assert (eth0["bus"], eth0["driver"], eth0["role"]) == ("pci", "virtio_net", "onboard")
    assert eth0["ipv6"] == ["fe80::fc:ff:fe00:1", "fd00::2"]
    assert {i["name"]: i["role"] for i in raw["interfaces"]} == {
        "eth0": "onboard", "ifb0": None, "ifb1": None, "lo": None}


def test_live_record_and_replay_agree(tmp_path: Path) -> None:
    # this machine, through the real capture path: replay must give what the live run gave
    live = Network().collect(RecordingHost(LiveHost("/"), tmp_path))
    assert Network().collect(ReplayHost(tmp_path)) == live
    # /sys/class/net also holds the file bonding_masters when the bonding module is loaded
    assert {i["name"] for i in live["interfaces"]} == {
        n for n in os.listdir("/sys/class/net") if os.path.isdir(f"/sys/class/net/{n}")}


def test_node_exporter_sysfs(tmp_path: Path) -> None:
    # node_exporter's fixture: eth0 on PCI 0000:03:00.0 with a set (not permanent) MAC, and
    # bonds "int", "dmz", "bond0" as plain directories (virtual)
    ttar = CORPUS / "sysfs" / "node_exporter" / "sys.ttar"
    unpack(ttar, tmp_path)
    raw = collect(tmp_path)
    assert raw["mac_address"] == "01:01:01:01:01:01"
    by_name = {i["name"]: i for i in raw["interfaces"]}
    assert by_name["eth0"]["role"] == "onboard" and by_name["eth0"]["permanent"] is False
    assert by_name["eth0"]["bus"] == "pci"
    assert {by_name[n]["bus"] for n in ("int", "dmz", "bond0")} == {"virtual"}


def test_ghw_four_pci_nics(tmp_path: Path) -> None:
    # ghw snapshot linux-amd64-61797...: four PCI NICs, links only (no address files)
    snap = (CORPUS / "sysfs" / "ghw-snapshots"
            / "linux-amd64-61797caf7c0b6bca1725ad7975ed4773.tar.gz")
    with tarfile.open(snap) as tar:
        for member in tar.getmembers():
            if member.name.startswith("sys/") and (member.isdir() or member.isreg()
                                                   or member.issym()):
                tar.extract(member, tmp_path, set_attrs=False)
    raw = collect(tmp_path)
    roles = {i["name"]: i["role"] for i in raw["interfaces"]}
    # enp3s0 is 0000:03:00.0, the lowest PCI address; enp6s0f0 (06:00.0) comes next
    assert roles == {"enp3s0": "onboard", "enp6s0f0": "secondary", "enp6s0f1": None,
                     "enp8s0": None}
    assert raw["mac_address"] is None  # the snapshot has no address files


# ---- parsers on real text ----------------------------------------------------------------------
def test_proc_parsers_on_the_sandbox_files() -> None:
    net = SANDBOX / "proc" / "28253" / "net"
    assert parse_fib_trie((net / "fib_trie").read_text()) == ["127.0.0.1", "192.0.2.2"]
    routes = parse_route((net / "route").read_text())
    assert routes == [("eth0", 0xC0000200, 0xFFFFFF00)]
    assert parse_if_inet6((net / "if_inet6").read_text()) == {
        "lo": ["::1"], "eth0": ["fe80::fc:ff:fe00:1", "fd00::2"]}
    table = addresses_from_proc(ReplayHost(SANDBOX))
    assert table["eth0"]["ipv4"] == ["192.0.2.2"]
    assert "127.0.0.1" not in json.dumps(table)  # lo's address has no on-link route


def test_if_inet6_skips_temporary_and_tentative() -> None:
    text = ("20010db8000000000000000000000001 02 40 00 80   enp1s0\n"  # permanent
            "20010db80000000012345678abcdef01 02 40 00 01   enp1s0\n"  # temporary (privacy)
            "20010db8000000000000000000000002 02 40 00 40   enp1s0\n")  # tentative
    assert parse_if_inet6(text) == {"enp1s0": ["2001:db8::1"]}


def test_bonding_parser() -> None:
    assert parse_bonding_permanent(BONDING) == {"enp0s31f6": "a4:bb:6d:12:34:56",
                                                "enx00e04c680001": "00:e0:4c:68:00:01"}


def test_probe_output_from_cloud_init_sample(tmp_path: Path) -> None:
    # cloud-init's `ip -j addr show` sample (real machine) turned into what the probe records
    sample = CORPUS / "net" / "cloud-init" / "sample-ipaddrshow-json"
    table: dict[str, dict[str, list[str]]] = {}
    for link in json.loads(sample.read_text()):
        entry = table.setdefault(link["ifname"], {"ipv4": [], "ipv6": []})
        for addr in link.get("addr_info", []):
            entry["ipv4" if addr["family"] == "inet" else "ipv6"].append(addr["local"])
    parsed = parse_probe(json.dumps(table).encode())
    assert parsed == table
    assert parse_probe(b"not json") is None
    assert parse_probe(b'{"eth0": {"ipv4": ["300.1.1.1", "10.0.0.1"], "ipv6": ["zz"]}}') == {
        "eth0": {"ipv4": ["10.0.0.1"], "ipv6": []}}


# ---- privacy ------------------------------------------------------------------------------------
def test_canaries_never_leave(tmp_path: Path) -> None:
    appliance(tmp_path)
    raw = collect(tmp_path)
    wifi = next(i for i in raw["interfaces"] if i["name"] == "wlp0s20f3")
    assert wifi["mac"] == "02:ca:4a:77:88:99"  # collected raw, never sent
    out = apply(load_policy(), {"network": raw})
    sent = json.dumps({"functional": out.functional, "hardware": out.hardware})
    for canary in ("02:ca:4a:77:88:99", "192.168.1.177", "2a02:a03f:ca4a:ee00::177", "wlp0s20f3",
                   "10.8.0.2", "172.17.0.1", "00:e0:4c:68:00:01", "docker0"):
        assert canary not in sent
    assert out.functional["lan_ip"] == "192.168.1.50"
    assert out.functional["lan_ip_secondary"] == "10.43.2.20"
    assert out.hardware["mac_address"] == "a4:bb:6d:12:34:56"
    assert out.dropped["network.interfaces"] == 1


# ---- checkbox udev databases (GPL-3.0, read in place): ~50 real machines' interfaces -----------
CHECKBOX = CORPUS / "udev" / "checkbox"


def net_tree_from_export_db(text: str, root: Path, *, skip_usb: bool = False) -> list[str]:
    """Lay out the net devices of ``udevadm info --export-db`` as sysfs shows them.

    Each record's path becomes /sys/devices/<path> with /sys/class/net/<name> pointing at it, its
    properties /run/udev/data/n<ifindex>, a ``device`` link to its parent and a ``driver`` link
    from ID_NET_DRIVER (hardware only), and a uevent with the record's INTERFACE/IFINDEX/DEVTYPE.
    The MAC is written only where udev's ID_NET_NAME_MAC gives it (enx<12 hex>); the records
    hold no ARPHRD type, so no ``type``.
    """
    names = []
    for chunk in text.split("\n\n"):
        lines = chunk.strip().splitlines()
        props = dict(line[3:].partition("=")[::2] for line in lines if line.startswith("E: "))
        devpath = next((line[3:] for line in lines if line.startswith("P: ")), "")
        if props.get("SUBSYSTEM") != "net" or "/net/" not in devpath:
            continue
        if skip_usb and "/usb" in devpath:  # the same machine with its USB NICs unplugged
            continue
        name = props.get("INTERFACE") or devpath.rsplit("/", 1)[-1]
        netdir = root / "sys" / devpath.lstrip("/")
        netdir.mkdir(parents=True, exist_ok=True)
        uevent = [f"INTERFACE={name}", f"IFINDEX={props.get('IFINDEX', '0')}"]
        if props.get("DEVTYPE"):
            uevent.append(f"DEVTYPE={props['DEVTYPE']}")
        (netdir / "uevent").write_text("\n".join(uevent) + "\n")
        # net_id names only Ethernet links "en..." (wl for wlan, ww for wwan): such a name is
        # the kernel's ARPHRD_ETHER seen through udev
        if any(props.get(k, "").startswith("en") for k in
               ("ID_NET_NAME_MAC", "ID_NET_NAME_PATH", "ID_NET_NAME_SLOT", "ID_NET_NAME_ONBOARD")):
            (netdir / "type").write_text("1\n")
        onboard_name = props.get("ID_NET_NAME_ONBOARD", "")
        mac = props.get("ID_NET_NAME_MAC", "")
        if len(mac) == 15 and mac.startswith("enx"):
            (netdir / "address").write_text(
                ":".join(mac[3 + i:5 + i] for i in range(0, 12, 2)) + "\n")
        _link(root / "sys" / "class" / "net" / name, netdir)
        if props.get("IFINDEX"):  # the record itself, as udev keeps it: /run/udev/data/n<ifindex>
            record = root / "run" / "udev" / "data" / f"n{props['IFINDEX']}"
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text("".join(f"E:{k}={v}\n" for k, v in props.items()))
        parent = devpath.split("/net/")[0]
        if not devpath.startswith("/devices/virtual/"):
            _link(netdir / "device", root / "sys" / parent.lstrip("/"))
            index = re.match(r"^eno(\d+)", onboard_name)
            if index:  # udev made eno<N> from the PCI function's firmware index
                (root / "sys" / parent.lstrip("/") / "index").write_text(index.group(1) + "\n")
            if props.get("ID_NET_DRIVER"):
                drv = root / "sys" / "bus" / "x" / "drivers" / props["ID_NET_DRIVER"]
                drv.mkdir(parents=True, exist_ok=True)
                _link(root / "sys" / parent.lstrip("/") / "driver", drv)
        names.append(name)
    return names


def _net_captures() -> list[str]:
    if not CHECKBOX.is_dir():
        return []
    return sorted(p.stem for p in CHECKBOX.glob("*.txt")
                  if "SUBSYSTEM=net" in p.read_text("utf-8", "replace"))


# Read by eye from each capture's net records (ID_NET_NAME_ONBOARD, ID_PATH, ID_NET_NAME_MAC).
ONBOARD_NICS = {
    # the firmware names eno3 onboard; the Mellanox card and the BMC's USB NIC are not
    "bmc_network_vs_network": ("eno3", "4c:bb:47:b1:12:cb"),
    # eno1-4 (firmware onboard) beat the add-in card ens1f0 at a lower PCI bus; RNDIS is USB
    "RNDIS": ("eno1", "40:f2:e9:b9:38:a0"),
    "DELL_IDRAC_2": ("eno1", "f4:8e:38:c0:9e:c4"),  # not the iDRAC's USB cdc_ether "idrac"
    "DELL_MICROCHIP_USB_TO_SPI": ("eno1", "88:88:88:88:87:88"),  # two r8152 dongles plugged in
    "DISK_SAMSUNG_KIOXIA": ("eno3", "5c:ff:35:fe:29:02"),
    "TOSHIBA_NVME": ("enp0s31f6", "18:db:f2:24:d1:7a"),  # e1000e; iwlwifi at a higher address
    "QEMU_KVM": ("eth0", "04:01:26:04:72:01"),
    "RPI4B4G": ("eth0", "dc:a6:32:37:fa:a6"),  # bcmgenet, a platform device
    "ZCU104": ("eth0", "ae:dc:78:b9:d3:09"),  # macb; can0 (xilinx_can) is no Ethernet
    "CARA_T_SOCKETCAN": ("eth0", "14:b3:1f:09:25:b0"),  # r8169; can0 is a USB CAN adapter
    # a laptop with only a USB r8152 dongle: no onboard NIC, the dongle is the secondary
    "HP_ELITEBOOK_835_13_INCH_G10": (None, None),
}


@pytest.mark.parametrize("capture", sorted(ONBOARD_NICS))
def test_onboard_nic_named_captures(tmp_path: Path, capture: str) -> None:
    net_tree_from_export_db((CHECKBOX / f"{capture}.txt").read_text("utf-8", "replace"), tmp_path)
    raw = collect(tmp_path)
    onboard = next((i["name"] for i in raw["interfaces"] if i["role"] == "onboard"), None)
    assert (onboard, raw["mac_address"]) == ONBOARD_NICS[capture]


@pytest.mark.parametrize("capture", _net_captures())
def test_every_capture_usb_hotplug_keeps_the_mac(tmp_path: Path, capture: str) -> None:
    text = (CHECKBOX / f"{capture}.txt").read_text("utf-8", "replace")
    names = net_tree_from_export_db(text, tmp_path / "plugged")
    net_tree_from_export_db(text, tmp_path / "unplugged", skip_usb=True)
    plugged, unplugged = collect(tmp_path / "plugged"), collect(tmp_path / "unplugged")
    assert sorted(i["name"] for i in plugged["interfaces"]) == sorted(names)
    onboard = [i for i in plugged["interfaces"] if i["role"] == "onboard"]
    assert len(onboard) <= 1
    for nic in onboard:
        assert nic["bus"] not in ("usb", "virtual")
        assert not nic["name"].startswith(("wl", "ww", "lo", "docker", "vmnet", "sit"))
    assert plugged["mac_address"] == unplugged["mac_address"]
    assert [i["name"] for i in plugged["interfaces"] if i["role"] == "onboard"] == [
        i["name"] for i in unplugged["interfaces"] if i["role"] == "onboard"]


def test_usb_nic_on_a_fixed_port_is_onboard(tmp_path: Path) -> None:
    # Raspberry Pi 3B: smsc95xx behind the on-board LAN9514 hub, whose port 1 is declared
    # non-removable ("fixed"); a dongle on an external port stays a dongle
    rpi_eth = "platform/soc/3f980000.usb/usb1/1-1/1-1.1/1-1.1:1.0"
    add_nic(tmp_path, "eth0", rpi_eth, mac="b8:27:eb:12:34:56", driver="smsc95xx", bus="usb")
    (tmp_path / "sys" / "devices" / "platform/soc/3f980000.usb/usb1/1-1/1-1.1" / "removable"
     ).write_text("fixed\n")
    dongle = "platform/soc/3f980000.usb/usb1/1-1/1-1.3/1-1.3:1.0"
    add_nic(tmp_path, "eth1", dongle, mac="00:e0:4c:68:00:01", driver="r8152", bus="usb")
    (tmp_path / "sys" / "devices" / "platform/soc/3f980000.usb/usb1/1-1/1-1.3" / "removable"
     ).write_text("removable\n")
    write_addresses(tmp_path, {"eth0": {"ipv4": ["192.168.1.90"], "ipv6": []},
                               "eth1": {"ipv4": ["10.43.2.20"], "ipv6": []}})
    raw = collect(tmp_path)
    assert raw["mac_address"] == "b8:27:eb:12:34:56"
    assert (raw["lan_ip"], raw["lan_ip_secondary"]) == ("192.168.1.90", "10.43.2.20")


def test_cli_inventory_from_the_sandbox_capture(capsys: pytest.CaptureFixture[str]) -> None:
    # the whole path: discovery, replay of a capture directory, privacy filter, JSON on stdout
    from evo_agent.cli import main

    assert main(["inventory", "--from", str(SANDBOX), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["functional"]["lan_ip"] == "192.0.2.2"
    assert report["functional"]["lan_ip_secondary"] is None
    assert report["hardware"]["mac_address"] == "02:fc:00:00:00:01"
    assert report["collectors"]["network"]["status"] == "ok"
    assert report["collectors"]["disks"]["status"] == "no_data"  # no block devices captured


# ---- add-in cards in physical slots (review: a PCIe SFP card became the "onboard" NIC) --------
# A consumer board as the kernel lays it out: the onboard r8169 behind the chipset's root port
# 00:1c.2 (bus 03, enp3s0), and a dual-port ixgbe SFP+ card in the CPU's x16 slot, behind root
# port 00:01.0 on bus 01 (enp1s0f0/f1).  pciehp registers that slot on the port's secondary bus,
# device 0: /sys/bus/pci/slots/1/address is "0000:01:00" (drivers/pci/hotplug/pciehp_core.c).
REALTEK = "pci0000:00/0000:00:1c.2/0000:03:00.0"
SFP_F0 = "pci0000:00/0000:00:01.0/0000:01:00.0"
SFP_F1 = "pci0000:00/0000:00:01.0/0000:01:00.1"


def slot(root: Path, name: str, address: str) -> None:
    """One /sys/bus/pci/slots/<name> directory with its address file."""
    d = root / "sys" / "bus" / "pci" / "slots" / name
    d.mkdir(parents=True)
    (d / "address").write_text(address + "\n")


def consumer_board(root: Path, *, card: bool = True) -> None:
    add_nic(root, "lo", None, mac="00:00:00:00:00:00", arphrd=772, operstate="unknown")
    add_nic(root, "enp3s0", REALTEK, mac="00:d8:61:aa:bb:cc", driver="r8169")
    table = {"enp3s0": {"ipv4": ["192.168.1.50"], "ipv6": []}}
    if card:
        add_nic(root, "enp1s0f0", SFP_F0, mac="90:e2:ba:11:22:30", driver="ixgbe")
        add_nic(root, "enp1s0f1", SFP_F1, mac="90:e2:ba:11:22:31", driver="ixgbe",
                operstate="down", carrier=0)
        table["enp1s0f0"] = {"ipv4": ["10.43.2.20"], "ipv6": []}
    write_addresses(root, table)


@pytest.mark.parametrize("address", ["0000:01:00", "0000:01"])
def test_card_in_a_slot_is_never_onboard(tmp_path: Path, address: str) -> None:
    # "0000:01" is the kernel's form for a slot standing for a whole bus (slot number 0xff)
    consumer_board(tmp_path)
    slot(tmp_path, "1", address)
    raw = collect(tmp_path)
    assert raw["mac_address"] == "00:d8:61:aa:bb:cc"
    assert (raw["lan_ip"], raw["lan_ip_secondary"]) == ("192.168.1.50", "10.43.2.20")
    roles = {i["name"]: i["role"] for i in raw["interfaces"]}
    assert roles == {"lo": None, "enp3s0": "onboard", "enp1s0f0": "secondary", "enp1s0f1": None}
    # pulling the card out changes neither the MAC nor the LAN IP
    consumer_board(tmp_path / "without", card=False)
    without = collect(tmp_path / "without")
    assert (without["mac_address"], without["lan_ip"]) == ("00:d8:61:aa:bb:cc", "192.168.1.50")


def test_slot_on_a_root_port_does_not_make_the_onboard_nic_a_card(tmp_path: Path) -> None:
    # Firmware that puts ACPI _SUN on the chipset root port itself: drivers/acpi/pci_slot.c
    # registers slot "0000:00:1c" on the root bus.  net_id ignores a slot matched at a bridge
    # (naming scheme v251), and so do we: enp3s0 stays the onboard NIC.
    consumer_board(tmp_path)
    slot(tmp_path, "1", "0000:01:00")
    slot(tmp_path, "4", "0000:00:1c")
    raw = collect(tmp_path)
    assert raw["mac_address"] == "00:d8:61:aa:bb:cc"
    assert raw["lan_ip_secondary"] == "10.43.2.20"


def _udev_record(root: Path, name: str, props: dict[str, str]) -> None:
    """udev's database record of a net device, n<ifindex>, as systemd writes it."""
    uevent = (root / "sys" / "class" / "net" / name / "uevent").read_text()
    ifindex = re.search(r"IFINDEX=(\d+)", uevent)
    assert ifindex
    data = root / "run" / "udev" / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / f"n{ifindex.group(1)}").write_text(
        "I:1234567\n" + "".join(f"E:{k}={v}\n" for k, v in props.items()) + "G:systemd\n")


def test_udev_slot_name_marks_a_card(tmp_path: Path) -> None:
    # no /sys/bus/pci/slots entry (e.g. a capture without it), but udev named the card by its
    # slot: ID_NET_NAME_SLOT=ens1f0, as on checkbox RNDIS's add-in card
    consumer_board(tmp_path)
    _udev_record(tmp_path, "enp1s0f0", {"ID_NET_NAME_PATH": "enp1s0f0",
                                        "ID_NET_NAME_SLOT": "ens1f0"})
    _udev_record(tmp_path, "enp1s0f1", {"ID_NET_NAME_PATH": "enp1s0f1",
                                        "ID_NET_NAME_SLOT": "ens1f1"})
    _udev_record(tmp_path, "enp3s0", {"ID_NET_NAME_PATH": "enp3s0"})
    raw = collect(tmp_path)
    assert raw["mac_address"] == "00:d8:61:aa:bb:cc"
    assert (raw["lan_ip"], raw["lan_ip_secondary"]) == ("192.168.1.50", "10.43.2.20")


def test_udev_slot_and_onboard_names_is_not_a_card(tmp_path: Path) -> None:
    # VMware gives its e1000 both names (checkbox VM_WITH_FLOPPY: eno16777736 and ens33): the
    # firmware calls it onboard, so a slot name alone does not send it behind the others
    consumer_board(tmp_path)
    _udev_record(tmp_path, "enp1s0f0", {"ID_NET_NAME_ONBOARD": "eno1",
                                        "ID_NET_NAME_SLOT": "ens1f0"})
    raw = collect(tmp_path)
    assert raw["mac_address"] == "90:e2:ba:11:22:30"  # no slot evidence left: by address


@pytest.mark.parametrize("machine", ["q35", "i440fx"])
def test_qemu_nics_all_in_slots_keep_their_address_order(tmp_path: Path, machine: str) -> None:
    # q35: each virtio-net behind its own pcie-root-port, every port a hot-plug slot on its
    # secondary bus; i440fx: ACPI hot-plug slots for every device of bus 0 (names ens3, ens4)
    if machine == "q35":
        first, second = ("pci0000:00/0000:00:02.0/0000:01:00.0/virtio1",
                         "pci0000:00/0000:00:02.1/0000:02:00.0/virtio2")
        slot(tmp_path, "0", "0000:01:00")
        slot(tmp_path, "1", "0000:02:00")
    else:
        first, second = "pci0000:00/0000:00:03.0/virtio0", "pci0000:00/0000:00:04.0/virtio1"
        slot(tmp_path, "3", "0000:00:03")
        slot(tmp_path, "4", "0000:00:04")
    add_nic(tmp_path, "eth1", second, mac="52:54:00:00:00:02", driver="virtio_net",
            bus="virtio")
    add_nic(tmp_path, "eth0", first, mac="52:54:00:00:00:01", driver="virtio_net", bus="virtio")
    write_addresses(tmp_path, {"eth0": {"ipv4": ["192.0.2.2"], "ipv6": []},
                               "eth1": {"ipv4": ["198.51.100.2"], "ipv6": []}})
    raw = collect(tmp_path)
    assert raw["mac_address"] == "52:54:00:00:00:01"
    assert (raw["lan_ip"], raw["lan_ip_secondary"]) == ("192.0.2.2", "198.51.100.2")


def test_unicode_digit_in_a_firmware_index_is_no_crash(tmp_path: Path) -> None:
    # str.isdigit() accepts "²", int() refuses it: the collector died with ValueError
    consumer_board(tmp_path)
    for attr in ("index", "acpi_index"):
        (tmp_path / "sys" / "devices" / SFP_F0 / attr).write_text("²\n")
    (tmp_path / "sys" / "devices" / SFP_F0 / "net" / "enp1s0f0" / "dev_port").write_text("٣\n")
    raw = collect(tmp_path)
    assert raw["mac_address"] == "90:e2:ba:11:22:30"  # no index read, no slot: by address


# ---- IPv6-only LAN: the probe's IPv6 list carries no flags -----------------------------------
def _ipv6_only(root: Path, if_inet6: str | None) -> dict[str, Any]:
    add_nic(root, "enp0s31f6", ONBOARD, mac="a4:bb:6d:12:34:56", driver="e1000e")
    # getifaddrs order: the newest (temporary) address first, the stable one after
    write_addresses(root, {"enp0s31f6": {"ipv4": [], "ipv6": [
        "2001:db8:5:0:5c1e:77ab:9d02:e3f1", "fd12:3456:789a::50", "2001:db8:5::50",
        "fe80::a6bb:6dff:fe12:3456"]}})
    if if_inet6 is not None:
        (root / "proc" / "net").mkdir(parents=True)
        (root / "proc" / "net" / "if_inet6").write_text(if_inet6)
    return collect(root)


# /proc/net/if_inet6 of that interface (net/ipv6/addrconf.c if6_seq_show: address, ifindex,
# prefix length, scope, flags): 0x01 temporary, 0x80 permanent, 0x00 from SLAAC
IF_INET6 = ("20010db8000500005c1e77ab9d02e3f1 02 40 00 01 enp0s31f6\n"
            "fd123456789a00000000000000000050 02 40 00 00 enp0s31f6\n"
            "20010db8000500000000000000000050 02 40 00 00 enp0s31f6\n"
            "fe80000000000000a6bb6dfffe123456 02 40 20 80 enp0s31f6\n"
            "00000000000000000000000000000001 01 80 10 80       lo\n")


def test_ipv6_lan_ip_is_never_a_temporary_address(tmp_path: Path) -> None:
    raw = _ipv6_only(tmp_path, IF_INET6)
    assert raw["lan_ip"] == "2001:db8:5::50"  # stable global, neither temporary nor the ULA
    nic = raw["interfaces"][0]
    assert "2001:db8:5:0:5c1e:77ab:9d02:e3f1" not in nic["ipv6"]
    # the probe path and the /proc fallback agree
    os.unlink(tmp_path / "commands" / "netlink-addresses.txt")
    assert collect(tmp_path)["lan_ip"] == "2001:db8:5::50"


def test_ipv6_ula_when_no_global_and_deprecated_last(tmp_path: Path) -> None:
    ula_only = "".join(line for line in IF_INET6.splitlines(keepends=True)
                       if not line.startswith("20010db8"))
    assert _ipv6_only(tmp_path / "ula", ula_only)["lan_ip"] == "fd12:3456:789a::50"
    # ::50 and the ULA past their preferred lifetime (IFA_F_DEPRECATED 0x20), ::51 preferred:
    # ::51 is chosen, and the deprecated ones are listed last
    deprecated = (IF_INET6.replace("0050 02 40 00 00 enp0s31f6", "0050 02 40 00 20 enp0s31f6")
                  .replace("20010db8000500005c1e77ab9d02e3f1 02 40 00 01",
                           "20010db8000500000000000000000051 02 40 00 00"))
    raw = _ipv6_only(tmp_path / "dep", deprecated)
    assert raw["lan_ip"] == "2001:db8:5::51"
    assert raw["interfaces"][0]["ipv6"][-1] == "2001:db8:5::50"


def test_ipv6_probe_kept_when_if_inet6_is_absent(tmp_path: Path) -> None:
    # an older capture (or ipv6.disable=1 with a stale probe): nothing to filter with
    raw = _ipv6_only(tmp_path, None)
    assert raw["interfaces"][0]["ipv6"][0] == "2001:db8:5:0:5c1e:77ab:9d02:e3f1"


# ---- phone tethering is no fiber dongle -----------------------------------------------------
IPHONE = "pci0000:00/0000:00:14.0/usb1/1-3/1-3:4.2"  # ipheth binds the iPhone's interface 2


@pytest.mark.parametrize("driver", ["ipheth", "rndis_host"])
def test_phone_tethering_is_not_the_fiber_dongle(tmp_path: Path, driver: str) -> None:
    appliance(tmp_path)
    add_nic(tmp_path, "eth1", IPHONE, mac="be:ef:00:00:00:01", driver=driver, bus="usb")
    table = json.loads((tmp_path / "commands" / "netlink-addresses.txt").read_text())
    table["eth1"] = {"ipv4": ["172.20.10.2"], "ipv6": []}  # iOS Personal Hotspot subnet
    write_addresses(tmp_path, table)
    raw = collect(tmp_path)
    assert raw["lan_ip_secondary"] == "10.43.2.20"
    # the fiber dongle without a link: still the dongle, no address (not the phone's)
    table["enx00e04c680001"] = {"ipv4": [], "ipv6": []}
    write_addresses(tmp_path, table)
    raw = collect(tmp_path)
    roles = {i["name"]: i["role"] for i in raw["interfaces"]}
    assert (roles["enx00e04c680001"], roles["eth1"]) == ("secondary", None)
    assert raw["lan_ip_secondary"] is None
    # only the phone: it is what there is
    shutil.rmtree(tmp_path / "sys" / "devices" / DONGLE / "net")
    os.unlink(tmp_path / "sys" / "class" / "net" / "enx00e04c680001")
    assert collect(tmp_path)["lan_ip_secondary"] == "172.20.10.2"
