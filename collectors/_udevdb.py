"""Reads udev's device database (``/run/udev/data/*``) through the host root.

udev stores, for every device it has processed, the properties its rules and builtins gave it,
among them the names the hardware database (hwdb) assigns to a PCI or USB ID
(``ID_VENDOR_FROM_DATABASE``, ``ID_MODEL_FROM_DATABASE``).  Reading these files instead of using
pyudev keeps the collectors free of a heavy import and lets a capture replay them like any other
file.  Record names: ``c<major>:<minor>`` / ``b<major>:<minor>`` for devices with a device node (a
USB device is ``c189:N``), ``+<subsystem>:<sysname>`` for the others (``+pci:0000:00:1f.3``).
A record is lines of ``<letter>:<data>``; properties are ``E:KEY=VALUE``.
"""

from __future__ import annotations

import logging
import re

from evo_agent.hostroot import Host

LOG = logging.getLogger(__name__)

UDEV_DATA = "/run/udev/data"
#: A database record is a few kilobytes; a bound keeps a corrupt one from costing memory.
MAX_RECORD = 256 * 1024
# udev property names: what systemd's udev accepts in ENV{} keys, in practice.
_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
# The device number of a USB device node: major 189 (usb_device), and the minor the kernel
# derives from bus and device numbers (drivers/usb/core/usb.c: (busnum - 1) * 128 + devnum - 1).
USB_DEVICE_MAJOR = 189


def parse_properties(text: str) -> dict[str, str]:
    """Return the ``E:KEY=VALUE`` properties of one udev database record; skips garbage."""
    props: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("E:"):
            continue
        key, sep, value = line[2:].partition("=")
        if not sep or not _KEY.match(key):
            continue
        props[key] = value
    return props


def properties(host: Host, record: str) -> dict[str, str]:
    """Return the properties of one record (``c189:3``, ``+pci:0000:00:1f.3``), or {} if absent."""
    if not record or "/" in record or record in (".", ".."):
        return {}
    try:
        text = host.read_text(f"{UDEV_DATA}/{record}", MAX_RECORD)
    except OSError:
        return {}
    return parse_properties(text)


def pci_record(address: str) -> str:
    """Return the udev database record name of a PCI function."""
    return f"+pci:{address}"


def usb_record(dev: str | None, busnum: str | None, devnum: str | None) -> str | None:
    """Return a USB device's record name from its ``dev`` attribute, else bus and device number."""
    if dev:
        major, sep, minor = dev.strip().partition(":")
        if sep and major.isdigit() and minor.isdigit():
            return f"c{int(major)}:{int(minor)}"
    if busnum and devnum and busnum.strip().isdigit() and devnum.strip().isdigit():
        bus, num = int(busnum), int(devnum)
        if bus >= 1 and 1 <= num <= 128:
            return f"c{USB_DEVICE_MAJOR}:{(bus - 1) * 128 + num - 1}"
    return None
