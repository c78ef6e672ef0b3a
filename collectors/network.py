"""Network: the onboard NIC's MAC address, the LAN IP, and the second LAN IP of the fiber dongle.

The published policy sends "mac address" (a hardware identity: it must not change when a USB
dongle is plugged in or when interfaces are renamed), the LAN IP (so the owner can find the device
on his network) and the second LAN IP of the fiber dongle.  Interfaces are read from sysfs, where
the kernel says which are hardware (``device`` link, a path outside ``/devices/virtual``), on which
bus, with which driver.  Addresses are not in sysfs: they come from an in-process probe (psutil,
which Debian ships; never pyroute2, whose import alone costs 2.2 s in a QEMU guest), recorded in
captures as ``commands/netlink-addresses.txt``; without it, from /proc/net.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
from typing import Any

from evo_agent.collector import Collector, Raw
from evo_agent.errors import CommandFailed, CommandUnavailable
from evo_agent.hostroot import Host

LOG = logging.getLogger(__name__)

NET = "/sys/class/net"
#: ARPHRD_ETHER (include/uapi/linux/if_arp.h): Ethernet and Wi-Fi; others are tunnels, loopback...
_ARPHRD_ETHER = "1"
#: addr_assign_type (include/uapi/linux/netdevice.h): 0 permanent, 1 random, 2 stolen, 3 set.
_NET_ADDR_PERM = "0"
#: uevent DEVTYPEs of software interfaces that can sit on real hardware paths (vlan on a PCI NIC
#: keeps its own virtual path, but a few drivers register wwan/wlan under the device).
_NOT_ETHERNET_DEVTYPES = frozenset({"wlan", "wwan", "bridge", "bond", "vlan", "macvlan", "team",
                                    "dsa", "wireguard", "vxlan", "gre", "ipip", "sit"})
_PCI_ADDRESS = re.compile(r"^([0-9a-f]{4,8}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")
_BUS_RANK = {"pci": 0, "platform": 1, "usb": 3}
#: Kernel name templates of non-Ethernet links (can%d, ib%d, wlan%d...): used only when sysfs
#: gives no ARPHRD type (partial snapshots), never over the type the kernel reports.
_NOT_ETHERNET_NAMES = re.compile(r"^(can|vcan|slcan|ib|wlan|wwan|ppp|sl|tun|tap|sit|ip6tnl|gre)\d")
# if_inet6 flags (include/uapi/linux/if_addr.h) of addresses not fit to be "the" LAN address:
# temporary (privacy extensions, rotated daily), DAD failed, tentative.
_IFA_F_SKIP = 0x01 | 0x08 | 0x40


# ---- address sources ------------------------------------------------------------------------
def probe_addresses() -> bytes:
    """Live probe: every interface's IPv4 and IPv6 addresses as JSON, from psutil (getifaddrs)."""
    import importlib

    try:
        # by name: mypy has no psutil stubs here, and pyproject lists no override for it
        psutil = importlib.import_module("psutil")
    except ImportError:
        raise CommandUnavailable("netlink-addresses: python3-psutil is not installed") from None
    import socket

    out: dict[str, dict[str, list[str]]] = {}
    try:
        table = psutil.net_if_addrs()
    except OSError as exc:
        raise CommandFailed(f"netlink-addresses: {exc}") from None
    for name, addrs in table.items():
        entry = out.setdefault(name, {"ipv4": [], "ipv6": []})
        for addr in addrs:
            if addr.family == socket.AF_INET:
                entry["ipv4"].append(addr.address)
            elif addr.family == socket.AF_INET6:
                entry["ipv6"].append(addr.address.split("%", 1)[0])
    return json.dumps(out, sort_keys=True).encode()


def parse_probe(data: bytes) -> dict[str, dict[str, list[str]]] | None:
    """Parse the probe's JSON, keeping valid addresses only; None when it is not that shape."""
    try:
        doc = json.loads(data.decode("utf-8", "replace"))
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    out: dict[str, dict[str, list[str]]] = {}
    for name, entry in doc.items():
        if not isinstance(name, str) or not isinstance(entry, dict):
            continue
        out[name] = {
            "ipv4": _valid(entry.get("ipv4"), ipaddress.IPv4Address),
            "ipv6": _valid(entry.get("ipv6"), ipaddress.IPv6Address),
        }
    return out


def _valid(values: Any, kind: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address],
           ) -> list[str]:
    """Return the values that parse as addresses of ``kind``, normalised."""
    if not isinstance(values, list):
        return []
    out = []
    for value in values:
        if not isinstance(value, str):
            continue
        try:
            out.append(str(kind(value.split("%", 1)[0])))
        except ValueError:
            continue
    return out


def parse_fib_trie(text: str) -> list[str]:
    """Return the local IPv4 addresses of /proc/net/fib_trie (leaves marked "/32 host LOCAL")."""
    found: list[str] = []
    leaf: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|-- "):
            leaf = stripped[4:].strip()
        elif leaf and stripped.startswith("/32 host LOCAL"):
            try:
                addr = str(ipaddress.IPv4Address(leaf))
            except ValueError:
                continue
            if addr not in found:
                found.append(addr)
    return found


def parse_route(text: str) -> list[tuple[str, int, int]]:
    """Return (interface, network, netmask) of the on-link routes of /proc/net/route.

    The kernel prints each __be32 as one %08X of its in-memory value, so on the little-endian
    machines this agent runs on the bytes read backwards (192.0.2.0 is "000200C0").
    """
    routes = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            dest = int.from_bytes(bytes.fromhex(fields[1])[::-1], "big")
            flags = int(fields[3], 16)
            mask = int.from_bytes(bytes.fromhex(fields[7])[::-1], "big")
        except ValueError:
            continue
        if len(fields[1]) != 8 or len(fields[7]) != 8:
            continue
        if flags & 0x2 or mask == 0:  # RTF_GATEWAY, default route: not a subnet of the interface
            continue
        routes.append((fields[0], dest, mask))
    return routes


def parse_if_inet6(text: str) -> dict[str, list[str]]:
    """Return each interface's usable IPv6 addresses from /proc/net/if_inet6."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 6 or len(fields[0]) != 32:
            continue
        try:
            addr = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
            flags = int(fields[4], 16)
        except ValueError:
            continue
        if flags & _IFA_F_SKIP:
            continue
        out.setdefault(fields[5], []).append(str(addr))
    return out


def addresses_from_proc(host: Host) -> dict[str, dict[str, list[str]]]:
    """Fallback without the probe: IPv4 from fib_trie + route, IPv6 from if_inet6."""
    out: dict[str, dict[str, list[str]]] = {}
    try:
        local = parse_fib_trie(host.read_text("/proc/net/fib_trie"))
        routes = parse_route(host.read_text("/proc/net/route"))
    except OSError:
        local, routes = [], []
    for addr in local:
        value = int(ipaddress.IPv4Address(addr))
        best: tuple[int, str] | None = None
        for iface, net, mask in routes:
            # the interface whose on-link subnet holds the address; the longest prefix wins
            if value & mask == net and (best is None or mask > best[0]):
                best = (mask, iface)
        if best:
            out.setdefault(best[1], {"ipv4": [], "ipv6": []})["ipv4"].append(addr)
    try:
        v6 = parse_if_inet6(host.read_text("/proc/net/if_inet6"))
    except OSError:
        v6 = {}
    for iface, addrs in v6.items():
        out.setdefault(iface, {"ipv4": [], "ipv6": []})["ipv6"].extend(addrs)
    return out


def parse_bonding_permanent(text: str) -> dict[str, str]:
    """Return slave -> "Permanent HW addr" from /proc/net/bonding/<bond>."""
    out: dict[str, str] = {}
    slave: str | None = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "Slave Interface":
            slave = value
        elif key == "Permanent HW addr" and slave and _mac(value):
            out[slave] = _mac(value) or ""
    return out


def _mac(value: str | None) -> str | None:
    """Return a MAC address in lowercase colon form, or None when it is not one."""
    if not value:
        return None
    mac = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", mac) or mac == "00:00:00:00:00:00":
        return None
    return mac


def probe_permanent_mac(ifname: str) -> bytes:
    """Live probe: the burnt-in MAC via the ETHTOOL_GPERMADDR ioctl (what ``ethtool -P`` shows)."""
    import ctypes
    import fcntl
    import socket
    import struct

    siocethtool, ethtool_gpermaddr, max_addr_len = 0x8946, 0x20, 32  # linux/sockios.h, ethtool.h
    buf = ctypes.create_string_buffer(struct.pack("II", ethtool_gpermaddr, max_addr_len)
                                      + bytes(max_addr_len))
    ifreq = struct.pack("16sP", ifname.encode()[:15], ctypes.addressof(buf)).ljust(40, b"\0")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            fcntl.ioctl(sock.fileno(), siocethtool, ifreq)
    except OSError as exc:
        raise CommandFailed(f"ethtool-permaddr {ifname}: {exc.strerror}") from None
    size = struct.unpack_from("I", buf.raw, 4)[0]
    mac = buf.raw[8:8 + min(size, max_addr_len)]
    return ":".join(f"{b:02x}" for b in mac).encode()


# ---- interfaces -------------------------------------------------------------------------------
def _uevent(host: Host, path: str) -> dict[str, str]:
    """Return the KEY=VALUE lines of a sysfs uevent file."""
    try:
        text = host.read_text(f"{path}/uevent", 64 * 1024)
    except OSError:
        return {}
    return dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)


def _pci_key(path: str) -> tuple[int, int, int, int] | None:
    """Return the numeric address of the PCI function nearest the interface in its sysfs path."""
    for part in reversed(path.split("/")):
        m = _PCI_ADDRESS.match(part)
        if m:
            return (int(m.group(1), 16), int(m.group(2), 16), int(m.group(3), 16),
                    int(m.group(4)))
    return None


def read_interface(host: Host, name: str) -> dict[str, Any]:
    """Return what sysfs says of one interface (addresses are added later)."""
    base = f"{NET}/{name}"
    real = host.realpath(base)
    has_device = host.lstat_kind(f"{base}/device") is not None
    physical = has_device or (real.startswith("/sys/devices/") and "/virtual/" not in real)
    devtype = _uevent(host, base).get("DEVTYPE")
    wireless = (devtype in ("wlan", "wwan") or host.exists(f"{base}/wireless")
                or host.exists(f"{base}/phy80211"))
    if not physical:
        bus: str | None = "virtual"
    elif re.search(r"/usb\d+/", real):
        bus = "usb"
    elif _pci_key(real) is not None:
        bus = "pci"  # virtio-net included: its virtio device sits on a PCI function
    elif "/platform/" in real:
        bus = "platform"
    elif has_device and host.lstat_kind(f"{base}/device/subsystem") is not None:
        bus = os.path.basename(host.realpath(f"{base}/device/subsystem")) or None  # vio, ccwgroup
    else:
        bus = None
    driver = None
    if has_device and host.lstat_kind(f"{base}/device/driver") is not None:
        driver = os.path.basename(host.realpath(f"{base}/device/driver")) or None
    master = None
    if host.lstat_kind(f"{base}/master") is not None:
        master = os.path.basename(host.realpath(f"{base}/master")) or None
    carrier = host.read_attr(f"{base}/carrier")  # EINVAL while the link is down: None
    assign = host.read_attr(f"{base}/addr_assign_type")
    arphrd = host.read_attr(f"{base}/type")
    # Firmware that names a NIC as built in (ACPI _DSM index, SMBIOS type 41: what udev turns
    # into "eno<N>") is believed first: BMC USB NICs and add-in cards may have lower addresses
    # (bmc_network_vs_network: the onboard atlantic NIC sits behind the Mellanox card's domain).
    firmware_onboard = has_device and any(
        _int(host.read_attr(f"{base}/device/{attr}")) > 0 for attr in ("acpi_index", "index"))
    onboard_ok = physical and bus != "usb"
    if physical and bus == "usb":
        # a USB NIC wired to a hub port the hub declares non-removable is part of the board
        # (Raspberry Pi 2/3: smsc95xx/lan78xx behind the on-board LAN9514/LAN7515 hub)
        usb_dev = os.path.dirname(host.realpath(f"{base}/device"))
        onboard_ok = host.read_attr(f"{usb_dev}/removable") == "fixed"
    return {
        "name": name,
        "mac": _mac(host.read_attr(f"{base}/address")),
        "permanent": None if assign is None else assign == _NET_ADDR_PERM,
        "bus": bus,
        "driver": driver,
        "operstate": host.read_attr(f"{base}/operstate"),
        "carrier": None if carrier not in ("0", "1") else carrier == "1",
        "ipv4": [],
        "ipv6": [],
        "role": None,
        # private keys, removed before returning
        # a missing type file (partial snapshots such as ghw's) does not disqualify hardware
        "_ethernet": (physical and not wireless and devtype not in _NOT_ETHERNET_DEVTYPES
                      and (arphrd == _ARPHRD_ETHER
                           or (arphrd is None and not _NOT_ETHERNET_NAMES.match(name)))),
        "_onboard_ok": onboard_ok,
        "_sort": (not firmware_onboard, _BUS_RANK.get(bus or "", 2), _pci_key(real) or (0, 0, 0, 0),
                  real, _int(host.read_attr(f"{base}/dev_port")), name),
        "_master": master,
    }


def _int(value: str | None) -> int:
    """Return a decimal attribute as an int, 0 when absent or not a number."""
    return int(value) if value and value.isdigit() else 0


def _primary(iface: dict[str, Any], by_name: dict[str, dict[str, Any]]) -> str | None:
    """Return the interface's primary IPv4 (else a global IPv6), looking through its masters.

    A NIC enslaved to a bridge (br0) or bond carries no address of its own: the LAN address is
    on the master, so the master's (and its master's) addresses are the NIC's.
    """
    seen = set()
    node: dict[str, Any] | None = iface
    while node is not None and node["name"] not in seen:
        seen.add(node["name"])
        if node["ipv4"]:
            return str(node["ipv4"][0])
        for addr in node["ipv6"]:
            try:
                ip = ipaddress.IPv6Address(addr)
            except ValueError:
                continue
            if not (ip.is_link_local or ip.is_loopback or ip.is_multicast):
                return str(ip)
        node = by_name.get(node["_master"] or "")
    return None


class Network(Collector):
    name = "network"
    description = "onboard NIC MAC, LAN IP, fiber dongle's LAN IP, and all interfaces"
    fields = {
        "mac_address": "MAC of the onboard NIC (firmware-named onboard first, then the first "
                       "wired non-USB NIC by bus address), the burnt-in one when readable",
        "lan_ip": "primary IPv4 of the onboard NIC (or of its bridge), else a global IPv6",
        "lan_ip_secondary": "primary IPv4 of the second wired NIC (the fiber dongle)",
        "interfaces": "every interface: name, mac, permanent, bus, driver, operstate, carrier, "
                      "ipv4, ipv6, role (never sent)",
    }

    def collect(self, host: Host) -> Raw:
        names = [n for n in host.listdir_or_empty(NET) if host.is_dir(f"{NET}/{n}")]
        ifaces = [read_interface(host, n) for n in names]
        by_name = {i["name"]: i for i in ifaces}
        for name, addrs in self._addresses(host).items():
            if name in by_name:
                by_name[name]["ipv4"] = addrs["ipv4"]
                by_name[name]["ipv6"] = addrs["ipv6"]
        wired = sorted((i for i in ifaces if i["_ethernet"]), key=lambda i: i["_sort"])
        # The onboard NIC is never a USB one: a dongle plugged in (or out) must not change the
        # device's MAC address.  PCI first, by PCI address: stable across reboots and renames.
        onboard = next((i for i in wired if i["_onboard_ok"]), None)
        secondary = None
        others = [i for i in wired if i is not onboard]
        if others:
            # The fiber dongle: the other wired NIC that has an address, else the first other.
            secondary = next((i for i in others if _primary(i, by_name)), others[0])
        if onboard is not None:
            onboard["role"] = "onboard"
            if onboard["permanent"] is False:
                self._permanent_mac(host, onboard, by_name)
        if secondary is not None:
            secondary["role"] = "secondary"
        lan_ip = _primary(onboard, by_name) if onboard else None
        lan_ip_secondary = _primary(secondary, by_name) if secondary else None
        if (secondary and onboard and secondary["_master"]
                and secondary["_master"] == onboard["_master"]):
            lan_ip_secondary = None  # both in one bridge: one LAN presence, not a second one
        for i in ifaces:
            for key in ("_ethernet", "_onboard_ok", "_sort", "_master"):
                i.pop(key)
        return {
            "mac_address": onboard["mac"] if onboard else None,
            "lan_ip": lan_ip,
            "lan_ip_secondary": lan_ip_secondary,
            "interfaces": ifaces,
        }

    def _addresses(self, host: Host) -> dict[str, dict[str, list[str]]]:
        try:
            parsed = parse_probe(host.probe("netlink-addresses", probe_addresses))
        except (CommandUnavailable, CommandFailed) as exc:
            LOG.debug("address probe unavailable (%s): reading /proc/net", exc)
            parsed = None
        return parsed if parsed is not None else addresses_from_proc(host)

    def _permanent_mac(self, host: Host, iface: dict[str, Any],
                       by_name: dict[str, dict[str, Any]]) -> None:
        """Replace a changed (bond, set, random) MAC by the burnt-in one when it can be read."""
        master = iface["_master"]
        perm = None
        if master and master in by_name:
            # bonding gives every slave the bond's MAC; /proc/net/bonding keeps each slave's own
            try:
                perm = parse_bonding_permanent(host.read_text(f"/proc/net/bonding/{master}"))
            except OSError:
                perm = {}
            mac = perm.get(iface["name"])
            if mac:
                iface["mac"], iface["permanent"] = mac, True
                return
        try:
            data = host.probe(f"ethtool-permaddr-{iface['name']}",
                              lambda: probe_permanent_mac(iface["name"]))
        except (CommandUnavailable, CommandFailed) as exc:
            LOG.debug("permanent MAC of %s unreadable: %s", iface["name"], exc)
            return
        mac = _mac(data.decode("ascii", "replace"))
        if mac:
            iface["mac"], iface["permanent"] = mac, True
