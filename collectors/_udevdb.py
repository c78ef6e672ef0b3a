"""Reads udev's device database (``/run/udev/data/*``) through the host root.

udev stores, for every device it has processed, the properties its rules and builtins gave it,
among them the names the hardware database (hwdb) assigns to a PCI or USB ID
(``ID_VENDOR_FROM_DATABASE``, ``ID_MODEL_FROM_DATABASE``).  Reading these files instead of using
pyudev keeps the collectors free of a heavy import and lets a capture replay them like any other
file.  Record names: ``c<major>:<minor>`` / ``b<major>:<minor>`` for devices with a device node (a
USB device is ``c189:N``), ``+<subsystem>:<sysname>`` for the others (``+pci:0000:00:1f.3``).
A record is lines of ``<letter>:<data>``; properties are ``E:KEY=VALUE`` (systemd
src/libsystemd/sd-device/device-private.c).  ``udevadm info --export-db`` prints the same properties
as ``E: KEY=VALUE`` (with a space), so the parser accepts both.
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
_HEX_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")
_DEVNUM = re.compile(r"[0-9]{1,10}:[0-9]{1,10}")  # ASCII: \d takes any script's digits
# The device number of a USB device node: major 189 (usb_device), and the minor the kernel
# derives from bus and device numbers (drivers/usb/core/usb.c: (busnum - 1) * 128 + devnum - 1).
USB_DEVICE_MAJOR = 189
_DECIMAL = re.compile(r"[0-9]{1,9}")


def parse_properties(text: str) -> dict[str, str]:
    """Return the ``E:KEY=VALUE`` properties of one udev database record; skips garbage."""
    props: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("E:"):
            continue
        key, sep, value = line[2:].lstrip(" ").partition("=")
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


def decimal(text: str | None) -> int | None:
    """Return a non-negative ASCII decimal number (at most 9 digits), else None.

    ``str.isdigit()`` is no test for ``int()``: it accepts "²" and other Unicode digits, which
    ``int()`` refuses (found by fuzzing, see tests/test_usb_udevdb.py).
    """
    if text is None:
        return None
    text = text.strip()
    return int(text) if _DECIMAL.fullmatch(text) else None


def usb_record(dev: str | None, busnum: str | None, devnum: str | None) -> str | None:
    """Return a USB device's record name from its ``dev`` attribute, else bus and device number."""
    if dev:
        major, sep, minor = dev.strip().partition(":")
        major_n, minor_n = decimal(major), decimal(minor)
        if sep and major_n is not None and minor_n is not None:
            return f"c{major_n}:{minor_n}"
    bus, num = decimal(busnum), decimal(devnum)
    if bus is not None and num is not None and bus >= 1 and 1 <= num <= 128:
        return f"c{USB_DEVICE_MAJOR}:{(bus - 1) * 128 + num - 1}"
    return None


def block_properties(host: Host, devnum: str | None) -> dict[str, str]:
    """Return the udev properties of the block device ``MAJ:MIN``, or {} when udev has none."""
    if not devnum or not _DEVNUM.fullmatch(devnum):
        return {}
    return properties(host, f"b{devnum}")


def decode_escapes(value: str) -> str:
    r"""Decode udev's ``\xNN`` escapes (``ID_MODEL_ENC``...) as UTF-8; bad bytes -> U+FFFD."""
    raw = value.encode("utf-8", "surrogateescape")
    return _HEX_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw).decode("utf-8", "replace")
