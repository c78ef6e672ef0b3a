"""Network: the onboard NIC's MAC address, the LAN IP, and the second LAN IP of the fiber dongle.

The published policy sends "mac address" (a hardware identity: it must not change when a USB
dongle is plugged in or when interfaces are renamed), the LAN IP (so the owner can find the device
on his network) and the second LAN IP of the fiber dongle.  Interfaces are read from sysfs, where
the kernel says which are hardware (``device`` link, a path outside ``/devices/virtual``), on which
bus, with which driver.  Addresses are not in sysfs: IPv4 comes from an in-process probe
(psutil.net_if_addrs(), i.e. getifaddrs(3)), recorded in captures as
``commands/netlink-addresses.txt``, and without it from /proc/net; IPv6 comes from
/proc/net/if_inet6, whose flags tell a stable address from a temporary one.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import socket
from typing import Any

from collectors._udevdb import decimal, properties
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
#: IFA_F_DEPRECATED: preferred lifetime over, still valid: kept, but after the preferred ones.
_IFA_F_DEPRECATED = 0x20
#: Where the kernel lists PCI slots (drivers/pci/slot.c): <slot>/address is "DDDD:BB:DD", or
#: "DDDD:BB" for a slot that stands for a whole bus (slot number 0xff).
PCI_SLOTS = "/sys/bus/pci/slots"
_SLOT_ADDRESS = re.compile(r"^([0-9a-f]{4,8}):([0-9a-f]{2})(?::([0-9a-f]{2}))?$")
#: Drivers of phone tethering over USB, never a USB/PCI Ethernet adapter: ipheth is Apple's
#: iPhone/iPad protocol; RNDIS is what Android phones (and BMC virtual NICs) speak, and no Ethernet
#: adapter does.  cdc_ether and cdc_ncm are not listed: Android tethering uses them, but so do real
#: adapters (Realtek RTL8153/RTL8156 bind cdc_ether/cdc_ncm when r8152 does not take them).
_TETHERING_DRIVERS = frozenset({"ipheth", "rndis_host"})


# ---- address sources ------------------------------------------------------------------------
def probe_addresses() -> bytes:
    """Live probe: every interface's IPv4 and IPv6 addresses as JSON, from psutil.net_if_addrs().

    psutil reads getifaddrs(3): a link is listed when it has a link-layer address (a WireGuard or
    tun link has none, so it appears only with an IP address); an IPv4 alias made with ``label``
    is listed under its label (``eth0:1``); a point-to-point link gives its local address.  An
    IPv6 address comes with ``%scope`` for link-local ones, dropped here.
    """
    try:
        import psutil
    except ImportError:
        raise CommandUnavailable("netlink-addresses: python3-psutil is not installed") from None
    try:
        table = psutil.net_if_addrs()
    except OSError as exc:
        raise CommandFailed(f"netlink-addresses: {exc}") from None
    out: dict[str, dict[str, list[str]]] = {}
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
    found: dict[str, list[tuple[int, str]]] = {}
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
        found.setdefault(fields[5], []).append((flags & _IFA_F_DEPRECATED, str(addr)))
    # stable sort: deprecated addresses after the preferred ones, otherwise the kernel's order
    return {name: [addr for _, addr in sorted(addrs, key=lambda a: a[0])]
            for name, addrs in found.items()}


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


def read_pci_slots(host: Host) -> frozenset[tuple[int, int, int | None]]:
    """Return (domain, bus, device, or None for a whole-bus slot) of each slot in /sys/bus/pci."""
    slots = set()
    for entry in host.listdir_or_empty(PCI_SLOTS):
        m = _SLOT_ADDRESS.fullmatch((host.read_attr(f"{PCI_SLOTS}/{entry}/address") or "").lower())
        if m:
            slots.add((int(m.group(1), 16), int(m.group(2), 16),
                       None if m.group(3) is None else int(m.group(3), 16)))
    return frozenset(slots)


def _in_slot(pci: tuple[int, int, int, int] | None,
             slots: frozenset[tuple[int, int, int | None]], udev: dict[str, str]) -> bool:
    """Return True when the kernel or udev puts the NIC's PCI function in a physical slot.

    The kernel registers a slot on the bus its devices sit on: pciehp on the downstream port's
    secondary bus, device 0 ("0000:01:00" for a card behind root port 00:01.0); ACPI _SUN on the
    bus of the ACPI device that has it.  udev's net_id (ID_NET_NAME_SLOT, "ens1f0") matches slot
    addresses as a prefix of the PCI function's name and, since naming scheme v251 (Debian 12 has
    systemd 252), ignores a match at a bridge further up: firmware puts _SUN on chipset root ports
    (slot "0000:00:1c"), which would put the onboard NIC behind 00:1c.2 in a slot.  So the NIC's
    own function is matched, by device or by its whole bus (the upstream bridge's secondary bus).
    udev's record says the same when it has ID_NET_NAME_SLOT, unless the firmware also names the
    NIC onboard (ID_NET_NAME_ONBOARD: VMware gives both, checkbox VM_WITH_FLOPPY).
    """
    if pci is not None and ((pci[0], pci[1], pci[2]) in slots or (pci[0], pci[1], None) in slots):
        return True
    return bool(udev.get("ID_NET_NAME_SLOT")) and not udev.get("ID_NET_NAME_ONBOARD")


def read_interface(host: Host, name: str,
                   slots: frozenset[tuple[int, int, int | None]] = frozenset()) -> dict[str, Any]:
    """Return what sysfs says of one interface (addresses are added later)."""
    base = f"{NET}/{name}"
    real = host.realpath(base)
    has_device = host.lstat_kind(f"{base}/device") is not None
    physical = has_device or (real.startswith("/sys/devices/") and "/virtual/" not in real)
    uevent = _uevent(host, base)
    devtype = uevent.get("DEVTYPE")
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
    # Without a firmware index, a NIC in a physical slot is an add-in card: it ranks after the
    # NICs soldered on the board.  On consumer boards the onboard NIC sits behind the chipset
    # (enp3s0, AMD enp42s0) while the CPU's x16 slot is bus 01: by address alone a PCIe SFP card
    # (ixgbe) would become "onboard", and removing it would change the device's MAC.  Among slot
    # NICs (every NIC of a QEMU guest can be in one) the order stays by address.
    ifindex = _int(host.read_attr(f"{base}/ifindex")) or _int(uevent.get("IFINDEX"))
    udev = properties(host, f"n{ifindex}") if physical and ifindex > 0 else {}
    in_slot = bus == "pci" and _in_slot(_pci_key(real), slots, udev)
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
        "_sort": (not firmware_onboard, in_slot, _BUS_RANK.get(bus or "", 2),
                  _pci_key(real) or (0, 0, 0, 0), real, _int(host.read_attr(f"{base}/dev_port")),
                  name),
        "_tethering": driver in _TETHERING_DRIVERS,
        "_master": master,
    }


def _int(value: str | None) -> int:
    """Return a decimal attribute as an int, 0 when absent or not an ASCII number."""
    return decimal(value) or 0


def _primary(iface: dict[str, Any], by_name: dict[str, dict[str, Any]]) -> str | None:
    """Return the interface's primary IPv4 (else an IPv6), looking through its masters.

    A NIC enslaved to a bridge (br0) or bond carries no address of its own: the LAN address is
    on the master, so the master's (and its master's) addresses are the NIC's.
    """
    seen = set()
    node: dict[str, Any] | None = iface
    while node is not None and node["name"] not in seen:
        seen.add(node["name"])
        if node["ipv4"]:
            return str(node["ipv4"][0])
        v6 = _lan_ipv6(node["ipv6"])
        if v6:
            return v6
        node = by_name.get(node["_master"] or "")
    return None


_ULA = ipaddress.IPv6Network("fc00::/7")


def _lan_ipv6(addrs: list[str]) -> str | None:
    """Return the first global IPv6 address of the list, else the first local one (ULA)."""
    ula = None
    for addr in addrs:
        try:
            ip = ipaddress.IPv6Address(addr)
        except ValueError:
            continue
        if ip.is_link_local or ip.is_loopback or ip.is_multicast or ip.is_unspecified:
            continue
        if ip not in _ULA and not ip.is_site_local:  # fec0::/10: RFC 3879 withdrew it
            return str(ip)  # global (documentation prefixes included: they are not local)
        ula = ula or str(ip)
    return ula


class Network(Collector):
    name = "network"
    description = "onboard NIC MAC, LAN IP, fiber dongle's LAN IP, and all interfaces"
    fields = {
        "mac_address": "MAC of the onboard NIC (firmware-named onboard first, then the first "
                       "wired non-USB NIC not in a PCI slot by bus address), the burnt-in one "
                       "when readable",
        "lan_ip": "primary IPv4 of the onboard NIC (or of its bridge), else a stable global "
                  "IPv6, else a ULA",
        "lan_ip_secondary": "primary IPv4 of the second wired NIC (the fiber dongle; phone "
                            "tethering only when there is no other)",
        "interfaces": "every interface: name, mac, permanent, bus, driver, operstate, carrier, "
                      "ipv4, ipv6, role (never sent)",
    }

    def collect(self, host: Host) -> Raw:
        names = [n for n in host.listdir_or_empty(NET) if host.is_dir(f"{NET}/{n}")]
        slots = read_pci_slots(host)
        ifaces = [read_interface(host, n, slots) for n in names]
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
        # A phone tethering over USB (ipheth, rndis_host) is no fiber dongle: a real Ethernet
        # adapter is preferred, even one without an address; a phone only when nothing else is.
        others = [i for i in others if not i["_tethering"]] or others
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
            for key in ("_ethernet", "_onboard_ok", "_sort", "_master", "_tethering"):
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
        if parsed is None:
            return addresses_from_proc(host)
        # The probe (getifaddrs) gives IPv6 addresses without their flags, and the kernel lists
        # the newest first: on an IPv6-only LAN the "LAN IP" would be a temporary (privacy
        # extensions) address that rotates daily.  So the probe gives IPv4 only, and IPv6 comes
        # from /proc/net/if_inet6, read through the host (captured, replayed) with its flags,
        # exactly as without the probe.  When that file is absent (ipv6.disable=1, or a capture
        # made before it was read), the probe's IPv6 list is kept.
        try:
            v6 = parse_if_inet6(host.read_text("/proc/net/if_inet6"))
        except OSError:
            return parsed
        for name, entry in parsed.items():
            entry["ipv6"] = v6.pop(name, [])
        for name, addrs in v6.items():
            parsed[name] = {"ipv4": [], "ipv6": addrs}
        return parsed

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
