"""PCI devices: the "list of pci devices" of the privacy policy, read from sysfs.

Each function under ``/sys/bus/pci/devices`` gives its IDs, class and driver; names come from
udev's database (hwdb), else from pci.ids.  Support uses the list to see which controllers,
network chips and audio devices a unit has.
"""

from __future__ import annotations

import logging
import re

from collectors import _udevdb
from collectors._hwids import IdsFile, hex_id, pci_ids
from evo_agent.collector import Collector, Raw
from evo_agent.hostroot import Host

LOG = logging.getLogger(__name__)

PCI_DEVICES = "/sys/bus/pci/devices"
# Domain:bus:device.function; domains above ffff exist (Intel VMD uses 10000 and up).
_ADDRESS = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
# pci:v00008086d000051C8sv000017AAsd000022E7bc04sc03i80 (drivers/pci/pci-sysfs.c)
_MODALIAS = re.compile(
    r"^pci:v([0-9A-Fa-f]{8})d([0-9A-Fa-f]{8})sv([0-9A-Fa-f]{8})sd([0-9A-Fa-f]{8})"
    r"bc([0-9A-Fa-f]{2})sc([0-9A-Fa-f]{2})i([0-9A-Fa-f]{2})$"
)


class Pci(Collector):
    name = "pci"
    description = "PCI devices from /sys/bus/pci (names: udev hwdb, else pci.ids)"
    fields = {
        "devices": "PCI functions sorted by address: address, vendor_id, device_id, class_id, "
                   "prog_if, revision, subsystem_vendor_id, subsystem_device_id, vendor, device, "
                   "driver",
    }

    def collect(self, host: Host) -> Raw:
        ids = pci_ids(host)
        devices = []
        for name in host.listdir_or_empty(PCI_DEVICES):
            if not _ADDRESS.match(name):
                continue
            try:
                dev = read_device(host, name, ids)
            except OSError as exc:  # a link loop in a damaged capture: skip this one only
                LOG.debug("pci %s unreadable: %s", name, exc)
                continue
            if dev is not None:
                devices.append(dev)
        devices.sort(key=lambda d: str(d["address"]))
        return {"devices": devices}


def _modalias_ids(text: str | None) -> dict[str, str]:
    """Return the IDs held in a PCI modalias, keyed like the sysfs attributes."""
    m = _MODALIAS.match(text or "")
    if not m:
        return {}
    v, d, sv, sd, bc, sc, pi = m.groups()
    return {"vendor": v[-4:], "device": d[-4:], "subsystem_vendor": sv[-4:],
            "subsystem_device": sd[-4:], "class": f"{bc}{sc}{pi}"}


def _uevent_ids(text: str | None) -> dict[str, str]:
    """Return the IDs and driver a PCI uevent file holds, keyed like the sysfs attributes."""
    found: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition("=")
        value = value.strip()
        if key == "PCI_ID" and ":" in value:
            found["vendor"], _, found["device"] = value.partition(":")
        elif key == "PCI_SUBSYS_ID" and ":" in value:
            found["subsystem_vendor"], _, found["subsystem_device"] = value.partition(":")
        elif key == "PCI_CLASS" and value:
            found["class"] = value
        elif key == "DRIVER" and value:
            found["driver"] = value
    return found


def read_device(host: Host, name: str, ids: IdsFile) -> dict[str, object] | None:
    """Return one PCI function's raw values, or None when it has no readable vendor ID."""
    # Resolve the bus link once: the attributes are then read without walking it every time.
    base = host.realpath(f"{PCI_DEVICES}/{name}")
    # One read of the uevent file (drivers/pci/pci-driver.c pci_uevent()) gives the IDs, the
    # class and the driver; on a server with 500 functions that is three times fewer reads.
    # Attribute files are the fallback: sysfs snapshots often lack uevent (ghw's do).
    uevent = host.read_attr(f"{base}/uevent")
    attr: dict[str, str | None] = dict(_uevent_ids(uevent))
    for key in ("vendor", "device", "class", "subsystem_vendor", "subsystem_device"):
        if attr.get(key) is None:
            attr[key] = host.read_attr(f"{base}/{key}")
    attr["revision"] = host.read_attr(f"{base}/revision")  # not in the uevent
    # Some sysfs snapshots (ghw's, e.g.) hold only the modalias for the subsystem IDs; the
    # kernel builds it from the same config-space registers, so it is an exact fallback.
    if any(attr.get(key) is None for key in ("vendor", "device", "class", "subsystem_vendor",
                                             "subsystem_device")):
        for key, value in _modalias_ids(host.read_attr(f"{base}/modalias")).items():
            if attr.get(key) is None:
                attr[key] = value
    vendor_id = hex_id(attr["vendor"])
    if vendor_id is None:
        LOG.debug("pci %s: no vendor ID, skipped", name)
        return None
    device_id = hex_id(attr["device"])
    cls = hex_id(attr["class"], 6)
    udev = _udevdb.properties(host, _udevdb.pci_record(name))
    vendor = udev.get("ID_VENDOR_FROM_DATABASE") or ids.vendor(vendor_id)
    device = udev.get("ID_MODEL_FROM_DATABASE") or ids.device(vendor_id, device_id)
    if uevent is not None:
        # the kernel writes DRIVER= into the uevent exactly when a driver is bound
        driver = attr.get("driver")
    else:
        driver_link = host.readlink(f"{base}/driver")
        driver = driver_link.rstrip("/").rsplit("/", 1)[-1] if driver_link else None
    return {
        "address": name,
        "vendor_id": vendor_id,
        "device_id": device_id,
        "class_id": cls[:4] if cls else None,
        "prog_if": cls[4:] if cls else None,
        "revision": hex_id(attr["revision"], 2),
        "subsystem_vendor_id": hex_id(attr["subsystem_vendor"]),
        "subsystem_device_id": hex_id(attr["subsystem_device"]),
        "vendor": vendor or None,
        "device": device or None,
        "driver": driver or None,
    }
