"""Just enough netlink, on raw AF_NETLINK sockets: which interface routes to an address, events
when the VPN link comes up or a default route appears, and udev's hot-plug announcements; each
event socket carries a classic BPF filter so that the kernel itself drops what the daemon ignores.

Why not pyroute2 or pyudev: importing pyroute2 costs 34 MB and 2.2 s in a QEMU guest (the
inventory issue), pyudev loads libudev through ctypes, and the resident daemon needs a few tiny
things from netlink.  A route lookup is one RTM_GETROUTE request (what ``ip route get ADDR``
sends).  The events are sockets the daemon's event loop waits on like any other file descriptor.

Why the filters: the goal is no wakeup of an idle daemon but the watchdog's.  A socket bound to
the rtnetlink link and route groups is woken by every route the kernel adds for an address
(local/broadcast routes, IPv6 temporary addresses) and every link message of any interface (each
Wi-Fi scan result, each veth or bridge a container adds); a socket bound to the kernel's uevent
group is woken by every device's every event.  A filter attached with SO_ATTACH_FILTER runs in
the kernel before the message is queued, so a dropped message never wakes the process
(``do_one_broadcast`` in net/netlink/af_netlink.c calls ``sk_filter`` before delivery).

* Route events: only a unicast route to 0/0 (any table but ``local``), i.e. a default route
  appearing; link events only for the VPN interface's index, plus the announcement of a new
  interface (``ifi_change`` all ones, ``rtmsg_ifinfo(..., ~0U, ...)`` in register_netdevice), so
  that the daemon learns the index of a VPN interface created later and re-attaches the filter.
* Hot-plug: not the kernel's uevents (group 1) but udev's announcements (group 2), sent by
  systemd-udevd once it has processed a device, in libudev's format: the header below, whose
  ``filter_subsystem_hash`` (MurmurHash2 of the subsystem, network order) exists precisely so that
  listeners can filter in the kernel, as libudev's own ``sd_device_monitor_filter_update`` does
  (src/libsystemd/sd-device/device-monitor.c in systemd).  The sender is checked like libudev
  does: SCM_CREDENTIALS uid 0, and a userspace port id (the kernel never sends to group 2).
  Without udevd (a container), libudev subscribes to nothing; so does the daemon (no hot-plug
  refresh, logged once), rather than falling back to the noisy kernel group.

Structures from linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/filter.h (stable kernel
ABI) and libudev's monitor_netlink_header (stable since udev 146: libudev of any version on the
same host must understand udevd's messages).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import struct
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

LOG = logging.getLogger(__name__)

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_NEWROUTE, RTM_GETROUTE = 16, 24, 26
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST = 1
RTMGRP_LINK, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE = 0x1, 0x40, 0x400
RTA_DST, RTA_OIF = 1, 4
IFLA_IFNAME = 3
IFF_UP, IFF_RUNNING, IFF_LOWER_UP = 0x1, 0x40, 0x10000
RT_TABLE_MAIN, RT_TABLE_LOCAL = 254, 255
RTN_UNICAST = 1
_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_IFINFOMSG = struct.Struct("=BxHiII")
_RTATTR = struct.Struct("=HH")


def _attrs(data: bytes, offset: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while offset + 4 <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < 4:
            break
        out[kind] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out


def _messages(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        out.append((kind, data[offset + _NLMSGHDR.size:offset + length]))
        offset += (length + 3) & ~3
    return out


def route_oif(address: str, timeout: float = 2.0) -> int | None:
    """Return the index of the interface the kernel would use to reach ``address`` (or None)."""
    addr = ipaddress.ip_address(address)
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    raw = addr.packed
    attr = _RTATTR.pack(4 + len(raw), RTA_DST) + raw
    body = _RTMSG.pack(family, len(raw) * 8, 0, 0, 0, 0, 0, 0, 0) + attr
    msg = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_GETROUTE, NLM_F_REQUEST, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       NETLINK_ROUTE) as s:
        s.settimeout(timeout)
        s.bind((0, 0))
        s.sendto(msg, (0, 0))
        data = s.recv(65536)
    for kind, payload in _messages(data):
        if kind == NLMSG_ERROR:
            return None  # e.g. ENETUNREACH: no route at all
        if kind == RTM_NEWROUTE and len(payload) >= _RTMSG.size:
            oif = _attrs(payload, _RTMSG.size).get(RTA_OIF)
            return struct.unpack("=i", oif[:4])[0] if oif and len(oif) >= 4 else None
    return None


NLM_F_DUMP = 0x300


def default_route(timeout: float = 2.0) -> bool:
    """Return True when a unicast default route exists (any family, any table but ``local``)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        body = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
        msg = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_GETROUTE,
                             NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                           NETLINK_ROUTE) as s:
            s.settimeout(timeout)
            s.bind((0, 0))
            s.sendto(msg, (0, 0))
            done = False
            while not done:
                data = s.recv(65536)
                for kind, payload in _messages(data):
                    if kind in (NLMSG_DONE, NLMSG_ERROR):
                        done = True
                    elif kind == RTM_NEWROUTE and parse_events(
                            _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), kind, 0, 0, 0)
                            + payload):
                        return True
                if not data:
                    done = True
    return False


def can_reach(host: str, timeout: float = 2.0) -> bool:
    """Return True when the kernel has a route towards ``host`` (an address, or a name: then a
    default route must exist; names are not resolved here, the resident daemon must not block
    on DNS)."""
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return default_route(timeout)
    return route_oif(str(addr), timeout) is not None


def link_up(ifname: str, sys_root: str = "/sys") -> bool:
    """Return True when the interface exists, is administratively up and has carrier."""
    base = os.path.join(sys_root, "class", "net", ifname)
    try:
        with open(os.path.join(base, "flags"), encoding="ascii") as fh:
            flags = int(fh.read().strip(), 16)
        # tun/wg devices say operstate "unknown" when working; carrier is 1 once a process (or
        # the kernel module) drives them, and reading it fails with EINVAL when the link is down.
        with open(os.path.join(base, "carrier"), encoding="ascii") as fh:
            carrier = fh.read().strip() == "1"
    except (OSError, ValueError):
        return False
    return bool(flags & IFF_UP) and carrier


def ifindex(ifname: str) -> int | None:
    """Return an interface's index, or None when it does not exist."""
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None


# -- classic BPF (linux/filter.h) ----------------------------------------------------------------
SO_ATTACH_FILTER = 26
BPF_W, BPF_H, BPF_B, BPF_ABS = 0x00, 0x08, 0x10, 0x20  # BPF_LD is 0
BPF_JMP_JEQ = 0x05 | 0x10  # BPF_JMP | BPF_JEQ | BPF_K
BPF_RET_K = 0x06
ACCEPT, DROP = "accept", "drop"
#: one instruction: (code, k, jump-if-true, jump-if-false); jumps name a label or are None (next)
Insn = tuple[int, int, str | None, str | None]


def _ld(size: int, offset: int) -> Insn:
    return (size | BPF_ABS, offset, None, None)


def _jeq(value: int, yes: str | None, no: str | None) -> Insn:
    return (BPF_JMP_JEQ, value & 0xFFFFFFFF, yes, no)


def host_u16(value: int) -> int:
    """Return how a BPF halfword load (big-endian) sees a host-order u16 field holding ``value``."""
    return int.from_bytes(struct.pack("=H", value), "big")


def host_u32(value: int) -> int:
    """Return how a BPF word load (big-endian) sees a host-order 32-bit field holding ``value``."""
    return int.from_bytes(struct.pack("=I", value & 0xFFFFFFFF), "big")


def assemble(program: list[Insn | str]) -> bytes:
    """Return ``struct sock_filter[]`` bytes; strings in ``program`` are labels of the next insn.

    ``ACCEPT`` and ``DROP`` are appended as the last two instructions.
    """
    program = [*program, ACCEPT, (BPF_RET_K, 0xFFFFFFFF, None, None),
               DROP, (BPF_RET_K, 0, None, None)]
    labels: dict[str, int] = {}
    insns: list[Insn] = []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)
    out = bytearray()
    for i, (code, k, yes, no) in enumerate(insns):
        jt = labels[yes] - i - 1 if yes else 0
        jf = labels[no] - i - 1 if no else 0
        if not (0 <= jt <= 255 and 0 <= jf <= 255):
            raise ValueError("BPF jump out of range")
        out += struct.pack("=HBBI", code, jt, jf, k)
    return bytes(out)


def attach_filter(sock: socket.socket, code: bytes) -> None:
    """Attach a classic BPF program (``assemble``'s bytes) to ``sock`` (SO_ATTACH_FILTER)."""
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }: the pointer comes from
    # an array's buffer (no ctypes in the resident process); the kernel copies the program.
    buf = array("B", code)
    address, _ = buf.buffer_info()
    fprog = struct.pack("@HP", len(code) // 8, address)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


# -- link and route events --------------------------------------------------------------------
_NLMSG_TYPE = 4  # offset of nlmsg_type in struct nlmsghdr
_P = _NLMSGHDR.size  # the payload (rtmsg / ifinfomsg) follows the header


def route_filter(vpn_index: int | None) -> bytes:
    """Return the BPF program of the route monitor (see the module docstring).

    ``vpn_index``: None when no VPN interface is configured (no link group), 0 when it does not
    exist yet (only new interfaces pass, to learn its index).
    """
    prog: list[Insn | str] = [
        _ld(BPF_H, _NLMSG_TYPE),
        _jeq(host_u16(RTM_NEWROUTE), "route", None),
        _jeq(host_u16(RTM_NEWLINK), "link" if vpn_index is not None else DROP, DROP),
        "route",
        _ld(BPF_B, _P + 1),  # rtm_dst_len
        _jeq(0, None, DROP),
        _ld(BPF_B, _P + 7),  # rtm_type
        _jeq(RTN_UNICAST, None, DROP),
        _ld(BPF_B, _P + 4),  # rtm_table
        _jeq(RT_TABLE_LOCAL, DROP, ACCEPT),
        "link",
        _ld(BPF_W, _P + 12),  # ifi_change: all ones announces a new interface
        _jeq(0xFFFFFFFF, ACCEPT, None),
        _ld(BPF_W, _P + 4),  # ifi_index
        _jeq(host_u32(vpn_index or 0), ACCEPT, DROP),
    ]
    return assemble(prog)


@dataclass(frozen=True)
class Event:
    """Something the daemon may care about: a link came up or appeared, a default route appeared."""

    kind: str  # "link_up" | "new_link" | "default_route"
    name: str  # interface name for links, "ipv4"/"ipv6" for default_route
    index: int = 0  # interface index for links


def open_monitor(vpn_index: int | None = None) -> socket.socket:
    """Return a non-blocking, filtered netlink socket for default routes and the VPN's link.

    ``vpn_index``: as for ``route_filter``; None subscribes to route events only.
    """
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        attach_filter(s, route_filter(vpn_index))  # before bind: nothing unfiltered is queued
        groups = RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
        s.bind((0, groups | (RTMGRP_LINK if vpn_index is not None else 0)))
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


def parse_events(data: bytes) -> list[Event]:
    """Return the interesting events in one netlink datagram."""
    events = []
    for kind, payload in _messages(data):
        if kind == RTM_NEWLINK and len(payload) >= _IFINFOMSG.size:
            _family, _type, index, flags, change = _IFINFOMSG.unpack_from(payload)
            raw = _attrs(payload, _IFINFOMSG.size).get(IFLA_IFNAME, b"").split(b"\0")[0]
            name = raw.decode("ascii", "replace")
            if change == 0xFFFFFFFF:
                events.append(Event("new_link", name, index))
            if flags & IFF_UP and flags & (IFF_RUNNING | IFF_LOWER_UP):
                events.append(Event("link_up", name, index))
        elif kind == RTM_NEWROUTE and len(payload) >= _RTMSG.size:
            family, dst_len, _s, _t, table, _proto, _scope, rtype, _f = _RTMSG.unpack_from(payload)
            if dst_len == 0 and rtype == RTN_UNICAST and table != RT_TABLE_LOCAL:
                events.append(Event("default_route", "ipv6" if family == socket.AF_INET6
                                    else "ipv4"))
    return events


def drain(sock: socket.socket) -> list[Event]:
    """Read every pending datagram from a monitor socket and return their events."""
    events: list[Event] = []
    while True:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return events
        except OSError as exc:  # ENOBUFS: events were lost; say "something changed"
            LOG.debug("netlink monitor: %s", exc)
            with contextlib.suppress(OSError):
                sock.recv(0)
            return [*events, Event("default_route", "unknown")]
        events.extend(parse_events(data))




# -- udev's hot-plug announcements ------------------------------------------------------------
NETLINK_KOBJECT_UEVENT = 15
#: udev's multicast group (libudev's MONITOR_GROUP_UDEV), as the bind() mask; 1 is the kernel's
UDEV_GROUP = 2
UDEV_MAGIC = 0xFEEDCAFE
#: monitor_netlink_header: prefix "libudev\0", magic (network order), header_size,
#: properties_off, properties_len (host order), subsystem and devtype hashes, tag bloom hi/lo
#: (network order)
_UDEV_HEADER = struct.Struct("=8sIIIIIIII")
_UDEV_MAGIC_AT, _UDEV_SUBSYSTEM_HASH_AT = 8, 24
_UCRED = struct.Struct("=iII")  # struct ucred: pid, uid, gid


def murmurhash2(data: bytes, seed: int = 0) -> int:
    """Return MurmurHash2 (32 bit) of ``data``, as libudev computes its subsystem hashes."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    h = (seed ^ len(data)) & mask
    tail = len(data) & ~3
    # libudev reads each 4-byte block as a native uint32 (this hash differs between endiannesses,
    # and so does udevd's header: both sides run on the same host)
    for (block,) in struct.iter_unpack("=I", data[:tail]):
        k = (block * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    rest = data[tail:]
    if rest:
        for i in reversed(range(len(rest))):
            h ^= rest[i] << (8 * i)
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    return h ^ (h >> 15)


def udev_filter(subsystems: Iterable[str]) -> bytes:
    """Return the BPF program that passes udev messages of ``subsystems`` only."""
    prog: list[Insn | str] = [
        _ld(BPF_W, 0),
        _jeq(int.from_bytes(b"libu", "big"), None, DROP),
        _ld(BPF_W, 4),
        _jeq(int.from_bytes(b"dev\0", "big"), None, DROP),
        _ld(BPF_W, _UDEV_MAGIC_AT),
        _jeq(UDEV_MAGIC, None, DROP),
        _ld(BPF_W, _UDEV_SUBSYSTEM_HASH_AT),
    ]
    prog += [_jeq(murmurhash2(name.encode()), ACCEPT, None) for name in sorted(set(subsystems))]
    prog.append((BPF_RET_K, 0, None, None))
    return assemble(prog)


def udev_running(control: str = "/run/udev/control",
                 mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Return True where udevd announces devices: libudev's test (its control socket, or /dev
    being devtmpfs)."""
    if os.path.exists(control):
        return True
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                left, sep, right = line.partition(" - ")
                fields = left.split()
                if sep and len(fields) >= 5 and fields[4] == "/dev" \
                        and right.split()[:1] == ["devtmpfs"]:
                    return True
    except OSError:
        pass
    return False


def open_hotplug(subsystems: Iterable[str]) -> socket.socket:
    """Return a non-blocking socket that receives udev's announcements for ``subsystems``."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                      NETLINK_KOBJECT_UEVENT)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        attach_filter(s, udev_filter(subsystems))  # before bind: nothing unfiltered is queued
        s.bind((0, UDEV_GROUP))
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


def parse_udev(data: bytes, ancdata: list[tuple[int, int, bytes]], flags: int,
               address: object) -> dict[str, str]:
    """Return the properties of one udev announcement, or {} unless it comes from udevd intact."""
    if flags & socket.MSG_TRUNC or len(data) < _UDEV_HEADER.size:
        return {}
    # who sent it: group 2, a userspace port (never the kernel), uid 0 (what libudev checks)
    if not (isinstance(address, tuple) and len(address) == 2 and address[0] != 0
            and address[1] == UDEV_GROUP):
        LOG.debug("udev monitor: message from %r ignored", address)
        return {}
    uid = None
    for level, kind, cdata in ancdata:
        if (level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
                and len(cdata) >= _UCRED.size):
            uid = _UCRED.unpack_from(cdata)[1]
    if uid != 0:
        LOG.debug("udev monitor: message from uid %s ignored", uid)
        return {}
    prefix, _magic, _hsize, off, length, *_hashes = _UDEV_HEADER.unpack_from(data)
    magic = struct.unpack_from(">I", data, _UDEV_MAGIC_AT)[0]
    if prefix != b"libudev\0" or magic != UDEV_MAGIC or not _UDEV_HEADER.size <= off < len(data):
        return {}
    fields: dict[str, str] = {}
    for part in data[off:off + length].split(b"\0"):
        key, sep, value = part.partition(b"=")
        if sep and key:
            fields[key.decode("ascii", "replace")] = value.decode("utf-8", "replace")
    return fields if "ACTION" in fields and "SUBSYSTEM" in fields else {}


def drain_hotplug(sock: socket.socket) -> list[dict[str, str]]:
    """Read every pending announcement from an ``open_hotplug`` socket."""
    events: list[dict[str, str]] = []
    while True:
        try:
            data, anc, flags, address = sock.recvmsg(65536, socket.CMSG_SPACE(_UCRED.size))
        except (BlockingIOError, InterruptedError):
            return events
        except OSError as exc:  # ENOBUFS under an event storm: say "something changed"
            LOG.debug("udev monitor: %s", exc)
            return [*events, {"ACTION": "change", "SUBSYSTEM": "unknown"}]
        fields = parse_udev(data, anc, flags, address)
        if fields:
            events.append(fields)
