"""Run inside a network namespace made by a test: send udev-format announcements like udevd does,
make kernel uevents and route/link churn, and count what the daemon's filtered sockets receive.

``python -m tests.delivery.netns_probe send SUBSYSTEM [ACTION]`` sends one libudev message to
udev's multicast group of the current network namespace (run it as root, or as another uid with
CAP_NET_ADMIN to forge one).  ``udev`` and ``route`` open the daemon's filtered socket beside an
unfiltered one on the same groups, make the events, and print one JSON line with both counts.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import subprocess
import sys
import time

from evo_agent.delivery import netlink

NETLINK_KOBJECT_UEVENT = 15
#: udev's multicast group (libudev's MONITOR_GROUP_UDEV), as the bind() mask; 1 is the kernel's
UDEV_GROUP = 2
UDEV_MAGIC = 0xFEEDCAFE
#: libudev's monitor_netlink_header: prefix "libudev\0", magic (network order), header_size,
#: properties_off, properties_len (host order), subsystem and devtype hashes, tag bloom hi/lo
#: (network order); udevd's own messages carry many more properties than the test sends
HEADER = struct.Struct("=8s4sIII4s4s4s4s")


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



def udev_message(subsystem: str, action: str = "add", devtype: str | None = None) -> bytes:
    """Return one announcement as systemd-udevd's ``device_monitor_send_device`` builds it."""
    props = (f"ACTION={action}\0DEVPATH=/devices/pci0000:00/0000:00:14.0/usb1/1-1\0"
             f"SUBSYSTEM={subsystem}\0SEQNUM=4711\0USEC_INITIALIZED=12345678\0"
             + (f"DEVTYPE={devtype}\0" if devtype else "")).encode()
    devtype_hash = murmurhash2(devtype.encode()) if devtype else 0
    return HEADER.pack(b"libudev", struct.pack(">I", UDEV_MAGIC), HEADER.size,
                       HEADER.size, len(props),
                       struct.pack(">I", murmurhash2(subsystem.encode())),
                       struct.pack(">I", devtype_hash), b"\0" * 4, b"\0" * 4) + props


def send(data: bytes) -> None:
    """Send ``data`` to udev's multicast group, as udevd does."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_KOBJECT_UEVENT) as s:
        s.bind((0, 0))
        # the kernel also hands a multicast to port 0 (its uevent socket), which refuses it
        with contextlib.suppress(ConnectionRefusedError):
            s.sendto(data, (0, UDEV_GROUP))


def _count(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def probe_udev() -> dict[str, object]:
    """Send udev messages of several subsystems and a kernel uevent; count what arrives."""
    raw = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_KOBJECT_UEVENT)
    raw.bind((0, UDEV_GROUP))
    raw.setblocking(False)
    kernel = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_KOBJECT_UEVENT)
    kernel.bind((0, 1))
    kernel.setblocking(False)
    mon = netlink.open_hotplug(["usb", "sound", "block"])
    sent = ["pci", "net", "usb", "input", "sound", "block", "usbmisc", "tty", "usb"]
    for subsystem in sent:
        send(udev_message(subsystem))
    send(b"add@/devices/x\0ACTION=add\0SUBSYSTEM=usb\0")  # kernel format, on udev's group
    with open("/sys/class/net/lo/uevent", "w") as fh:  # a real kernel uevent (group 1)
        fh.write("change")
    time.sleep(0.3)
    counts = {"raw": len(_count(raw)), "kernel": len(_count(kernel))}
    received = netlink.drain_hotplug(mon)
    for s in (raw, kernel):
        s.close()
    return {**counts, "sent": sent, "received": [e["SUBSYSTEM"] for e in received]}


def probe_route() -> dict[str, object]:
    """Make link, address, neighbour and route churn, then a VPN link and default routes."""
    raw = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_ROUTE)
    raw.bind((0, netlink.RTMGRP_LINK | netlink.RTMGRP_IPV4_ROUTE | netlink.RTMGRP_IPV6_ROUTE))
    raw.setblocking(False)
    _ip("link", "set", "lo", "up")
    _ip("link", "add", "evovpn0", "type", "veth", "peer", "name", "evovpn1")
    mon = netlink.open_monitor(socket.if_nametoindex("evovpn0"))
    # churn that must not wake the daemon
    _ip("link", "add", "lan0", "type", "veth", "peer", "name", "lan1")
    _ip("link", "set", "lan1", "up")
    _ip("link", "set", "lan0", "up")
    _ip("link", "set", "lan0", "mtu", "1400")
    _ip("addr", "add", "192.0.2.10/24", "dev", "lan0")
    _ip("addr", "add", "2001:db8::10/64", "dev", "lan0", "nodad")
    _ip("route", "add", "198.51.100.0/24", "via", "192.0.2.1")
    _ip("neigh", "add", "192.0.2.1", "lladdr", "02:00:00:00:00:01", "dev", "lan0")
    _ip("addr", "del", "192.0.2.10/24", "dev", "lan0")
    _ip("addr", "add", "192.0.2.10/24", "dev", "lan0")
    _ip("link", "set", "lan0", "down")
    _ip("link", "set", "lan0", "up")
    _ip("addr", "add", "2001:db8::10/64", "dev", "lan0", "nodad")  # the bounce flushed it
    time.sleep(0.3)
    churn = {"raw": len(_count(raw)), "filtered": [
        [e.kind for e in netlink.parse_events(d)] for d in _count(mon)]}
    # what matters: the VPN link up, a default route per family
    _ip("link", "set", "evovpn1", "up")
    _ip("link", "set", "evovpn0", "up")
    _ip("route", "add", "default", "via", "192.0.2.1")
    _ip("-6", "route", "add", "default", "via", "2001:db8::1", "dev", "lan0")
    time.sleep(0.3)
    events = [(e.kind, e.name) for d in _count(mon) for e in netlink.parse_events(d)]
    return {"churn": churn, "events": events}


def send_router_advertisements(ifname: str, count: int, interval: float) -> None:
    """Send ``count`` IPv6 router advertisements (router lifetime 30 min, a /64 prefix) on
    ``ifname``, as a home router does every few minutes."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)  # RFC 4861: must be 255
    prefix = struct.pack("!BBBBIII16s", 3, 4, 64, 0xC0, 86400, 14400, 0,
                         socket.inet_pton(socket.AF_INET6, "2001:db8:1::"))
    ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0) + prefix  # the kernel sums it
    for _ in range(count):
        s.sendto(ra, ("ff02::1", 0, 0, socket.if_nametoindex(ifname)))
        time.sleep(interval)
    s.close()


def watch_routes(seconds: float) -> dict[str, object]:
    """Open the route monitor (no VPN) beside an unfiltered socket; count for ``seconds``."""
    raw = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_ROUTE)
    raw.bind((0, netlink.RTMGRP_IPV4_ROUTE | netlink.RTMGRP_IPV6_ROUTE))
    raw.setblocking(False)
    mon = netlink.open_monitor(None)
    print("ready", flush=True)
    time.sleep(seconds)
    return {"raw": len(_count(raw)),
            "filtered": [[[e.kind, e.name] for e in netlink.parse_events(d)] for d in _count(mon)]}


def main(argv: list[str]) -> int:
    """Entry."""
    if argv[0] == "send":
        send(udev_message(argv[1], *argv[2:3]))
        return 0
    if argv[0] == "ra":
        send_router_advertisements(argv[1], int(argv[2]), float(argv[3]))
        return 0
    if argv[0] == "watch-routes":
        print(json.dumps(watch_routes(float(argv[1]))))
        return 0
    doc = probe_udev() if argv[0] == "udev" else probe_route()
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
