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
from collectors._hwids import IdsFile, hex_id, plausible_name, usb_ids
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
            try:
                dev = read_device(host, name, ids)
            except OSError as exc:  # a link loop in a damaged capture: skip this one only
                LOG.debug("usb %s unreadable: %s", name, exc)
                continue
            if dev is not None:
                devices.append(dev)
        devices.sort(key=lambda d: _path_key(str(d["path"])))
        return {"devices": devices}


def _path_key(path: str) -> tuple[int, ...]:
    """Sort "1-1.10" after "1-1.2": by bus, then port numbers."""
    return tuple(n for p in re.split(r"[-.]", path) if (n := _udevdb.decimal(p)) is not None)


def _uevent(text: str | None) -> dict[str, str]:
    """Return the KEY=VALUE lines of a uevent file."""
    found: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found[key.strip()] = value.strip()
    return found


def _from_uevent(uevent: dict[str, str]) -> dict[str, str | None]:
    """Return idVendor, idProduct, bDeviceClass and dev as a USB device's uevent gives them."""
    # drivers/usb/core/driver.c usb_uevent(): PRODUCT=%x/%x/%x (idVendor, idProduct,
    # bcdDevice, without leading zeros) and TYPE=%d/%d/%d (class, subclass, protocol); the
    # device core adds MAJOR/MINOR (189:N for a USB device node).
    product = uevent.get("PRODUCT", "").split("/")
    dev_type = uevent.get("TYPE", "").split("/")
    major, minor = _udevdb.decimal(uevent.get("MAJOR")), _udevdb.decimal(uevent.get("MINOR"))
    cls = _udevdb.decimal(dev_type[0]) if len(dev_type) == 3 else None
    return {
        "idVendor": product[0] if len(product) == 3 else None,
        "idProduct": product[1] if len(product) == 3 else None,
        "bDeviceClass": f"{cls:x}" if cls is not None and cls <= 255 else None,
        "dev": f"{major}:{minor}" if major is not None and minor is not None else None,
    }


def read_device(host: Host, name: str, ids: IdsFile) -> dict[str, object] | None:
    """Return one USB device's raw values, or None when it has no vendor ID (not a device)."""
    base = host.realpath(f"{USB_DEVICES}/{name}")
    # The uevent file holds the IDs, class, driver and device number in one read; attribute
    # files are the fallback (trees and snapshots without uevent).
    uevent_text = host.read_attr(f"{base}/uevent")
    uevent = _uevent(uevent_text)
    attr = _from_uevent(uevent)
    for key in ("idVendor", "idProduct", "bDeviceClass"):
        if attr[key] is None:
            attr[key] = host.read_attr(f"{base}/{key}")
    vendor_id = hex_id(attr["idVendor"])
    if vendor_id is None:
        return None
    product_id = hex_id(attr["idProduct"])
    manufacturer = host.read_attr(f"{base}/manufacturer") or None
    product = host.read_attr(f"{base}/product") or None
    serial = host.read_attr(f"{base}/serial") or None
    if attr["dev"] is not None:
        record = _udevdb.usb_record(attr["dev"], None, None)
    else:
        record = _udevdb.usb_record(host.read_attr(f"{base}/dev"),
                                    host.read_attr(f"{base}/busnum"),
                                    host.read_attr(f"{base}/devnum"))
    udev = _udevdb.properties(host, record) if record else {}
    # A device's strings are compared with its own serial: a maker may put the unit's serial in
    # them ("SN 8F3A2C91D0" / "DAC 8f3a2c91d0e4" with serial "8f3a2c91d0e4").
    vendor = (udev.get("ID_VENDOR_FROM_DATABASE") or ids.vendor(vendor_id)
              or plausible_name(manufacturer, serial))
    model = (udev.get("ID_MODEL_FROM_DATABASE") or ids.device(vendor_id, product_id)
             or plausible_name(product, serial))
    if uevent_text is not None:
        driver = uevent.get("DRIVER")  # present exactly when a driver is bound
    else:
        link = host.readlink(f"{base}/driver")
        driver = link.rstrip("/").rsplit("/", 1)[-1] if link else None
    return {
        "path": name,
        "vendor_id": vendor_id,
        "product_id": product_id,
        "vendor": vendor or None,
        "product": model or None,
        "manufacturer_string": manufacturer,
        "product_string": product,
        "serial": serial,
        "device_class": hex_id(attr["bDeviceClass"], 2),
        "speed": host.read_attr(f"{base}/speed") or None,
        "driver": driver or None,
    }
