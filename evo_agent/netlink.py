"""Just enough rtnetlink, on a raw AF_NETLINK socket: which interface routes to an address, and
events when a link comes up or a default route appears.

Why not pyroute2: importing it costs 34 MB and 2.2 s in a QEMU guest (the inventory issue), and the
resident daemon needs two tiny things from netlink.  A route lookup is one RTM_GETROUTE request
(what ``ip route get ADDR`` sends); the events are a socket bound to the RTMGRP_LINK and
RTMGRP_IPV4/IPV6_ROUTE multicast groups, which the daemon's event loop waits on like any other file
descriptor, so it sleeps until the kernel has news.  Structures from linux/netlink.h,
linux/rtnetlink.h and linux/if_link.h (stable kernel ABI).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import struct
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
RT_TABLE_MAIN = 254
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


@dataclass(frozen=True)
class Event:
    """Something the daemon may care about: a link came up, or a default route appeared."""

    kind: str  # "link_up" | "default_route"
    name: str  # interface name for link_up, "ipv4"/"ipv6" for default_route


def open_monitor() -> socket.socket:
    """Return a non-blocking netlink socket that receives link and route changes."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    s.bind((0, RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE))
    s.setblocking(False)
    return s


def parse_events(data: bytes) -> list[Event]:
    """Return the interesting events in one netlink datagram."""
    events = []
    for kind, payload in _messages(data):
        if kind == RTM_NEWLINK and len(payload) >= _IFINFOMSG.size:
            _family, _type, _index, flags, _change = _IFINFOMSG.unpack_from(payload)
            name = _attrs(payload, _IFINFOMSG.size).get(IFLA_IFNAME, b"").split(b"\0")[0]
            if flags & IFF_UP and flags & (IFF_RUNNING | IFF_LOWER_UP):
                events.append(Event("link_up", name.decode("ascii", "replace")))
        elif kind == RTM_NEWROUTE and len(payload) >= _RTMSG.size:
            family, dst_len, _s, _t, table, *_rest = _RTMSG.unpack_from(payload)
            if dst_len == 0 and table == RT_TABLE_MAIN:
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
