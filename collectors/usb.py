"""USB devices: the "list of usb devices" of the privacy policy, read from sysfs.

The 432 EVO's USB ports carry what support most needs to know about: DACs, the fiber network
dongle, rip drives, storage.  Each device under ``/sys/bus/usb/devices`` gives its IDs, class,
speed and string descriptors; names come from udev's database (hwdb), else usb.ids, else the
device's own manufacturer/product strings.  The serial number is collected (support can read it
locally with ``--raw``) but the policy never lets it leave.
"""

from __future__ import annotations

import logging
import re

from collectors import _udevdb
from collectors._hwids import IdsFile, hex_id, usb_ids
from evo_agent.collector import Collector, Raw
from evo_agent.hostroot import Host

LOG = logging.getLogger(__name__)

USB_DEVICES = "/sys/bus/usb/devices"
# The kernel names its root hubs "usbN" (drivers/usb/core/hcd.c); they are the host controllers'
# built-in hubs (vendor 1d6b, Linux Foundation, products 0001-0003), not hardware anyone plugged
# in, so they are left out.  Other 1d6b devices (USB gadgets: a Linux board acting as a network
# or audio device) do sit on a port and are kept.  Interfaces ("1-1.2:1.0") are not devices.
_ROOT_HUB = re.compile(r"^usb[0-9]+$")
_DEVICE = re.compile(r"^[0-9]+-[0-9]+(?:\.[0-9]+)*$")
# Descriptor strings are free text written by the maker.  Used as a name only when no database
# knows the ID, they must not carry personal data: some makers put an e-mail address, a path, a
# URL with a user, or the unit's serial in them (the Dell webcams of
# shared/corpus/udev/checkbox/CAPTURE_METADATA.txt and DELL_INSPIRON_3048.txt have a serial-like
# "CN0CW54MLOG0079LB04LA00" as manufacturer string).
_EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[A-Za-z]{2,}")
# A path: "/Users/john/..." (a Parallels virtual printer's product string, lsusb output in
# shared/corpus/lsusb/cyme/lsusb_list.txt), "~/x", "C:\\x", "\\\\server".  The first component must
# start with a letter so that model names such as "AHA-2940U2/U2W /7890/7891" (pci.ids) pass.
_PATH = re.compile(r"(?:^|[\s(\[\"'=:,])(?:~[^\s/\\]*/|\.{0,2}/[A-Za-z_.][^\s/\\]*[/\\]"
                   r"|[A-Za-z]:\\|\\\\[A-Za-z])")
_URL = re.compile(r"[a-z][a-z0-9+.-]*://", re.I)
_SERIAL_LIKE = re.compile(r"^(?=(?:.*[0-9]){4})(?=(?:.*[A-Z]){2})[A-Z0-9]{16,}$")


def plausible_name(text: str | None) -> str | None:
    """Return a descriptor string usable as a device name, or None when it may be personal data."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    if _EMAIL.search(text) or _PATH.search(text) or _URL.search(text) or _SERIAL_LIKE.match(text):
        return None
    return text


class Usb(Collector):
    name = "usb"
    description = "USB devices from /sys/bus/usb (names: udev hwdb, else usb.ids, else descriptors)"
    fields = {
        "devices": "USB devices (root hubs left out) sorted by sysfs name: path, vendor_id, "
                   "product_id, vendor, product, manufacturer_string, product_string, serial "
                   "(never sent), device_class, speed, driver",
    }

    def collect(self, host: Host) -> Raw:
        ids = usb_ids(host)
        devices = []
        for name in host.listdir_or_empty(USB_DEVICES):
            if _ROOT_HUB.match(name) or not _DEVICE.match(name):
                continue
            dev = read_device(host, name, ids)
            if dev is not None:
                devices.append(dev)
        devices.sort(key=lambda d: _path_key(str(d["path"])))
        return {"devices": devices}


def _path_key(path: str) -> tuple[int, ...]:
    """Sort "1-1.10" after "1-1.2": by bus, then port numbers."""
    return tuple(int(p) for p in re.split(r"[-.]", path) if p.isdigit())


def read_device(host: Host, name: str, ids: IdsFile) -> dict[str, object] | None:
    """Return one USB device's raw values, or None when it has no vendor ID (not a device)."""
    base = host.realpath(f"{USB_DEVICES}/{name}")
    vendor_id = hex_id(host.read_attr(f"{base}/idVendor"))
    if vendor_id is None:
        return None
    product_id = hex_id(host.read_attr(f"{base}/idProduct"))
    manufacturer = host.read_attr(f"{base}/manufacturer") or None
    product = host.read_attr(f"{base}/product") or None
    serial = host.read_attr(f"{base}/serial") or None
    record = _udevdb.usb_record(host.read_attr(f"{base}/dev"), host.read_attr(f"{base}/busnum"),
                                host.read_attr(f"{base}/devnum"))
    udev = _udevdb.properties(host, record) if record else {}
    vendor = (udev.get("ID_VENDOR_FROM_DATABASE") or ids.vendor(vendor_id)
              or plausible_name(manufacturer))
    model = (udev.get("ID_MODEL_FROM_DATABASE") or ids.device(vendor_id, product_id)
             or plausible_name(product))
    driver_link = host.readlink(f"{base}/driver")
    return {
        "path": name,
        "vendor_id": vendor_id,
        "product_id": product_id,
        "vendor": vendor or None,
        "product": model or None,
        "manufacturer_string": manufacturer,
        "product_string": product,
        "serial": serial,
        "device_class": hex_id(host.read_attr(f"{base}/bDeviceClass"), 2),
        "speed": host.read_attr(f"{base}/speed") or None,
        "driver": driver_link.rstrip("/").rsplit("/", 1)[-1] if driver_link else None,
    }
