"""A complete "432 EVO" appliance laid out as a capture, planted with privacy canaries.

:func:`build_appliance` writes, under a directory, what ``evo-agent capture`` would record on a
432 EVO built on a desktop board: sysfs as the kernel lays it out (devices under
``/sys/devices``, relative links from ``/sys/bus``, ``/sys/class``, ``/sys/block`` and
``/sys/dev/block`` into it, ``uevent`` files), udev's database records in ``/run/udev/data``
(only the properties udev's rules and builtins add, as the real files hold), ``/proc`` files,
``/etc`` files, and the commands' output under ``commands/``.

The machine:

* a Gigabyte Z370M DS3H board: the SMBIOS table is the real ``dmidecode`` 3.5 text of that board
  (``tests/data/appliance/``, from linuxhw/DMI, CC-BY-4.0, whose serials were anonymised to
  ``--``), into which the board serial and the canaries are planted; one Core i3-8350K, two
  Crucial DDR4 DIMMs in four slots;
* Intel 200-series PCH functions (host bridge, UHD 630, xHCI 00:14.0, MEI, SATA AHCI 00:17.0,
  a PCIe root port with an Intel Wireless-AC 9260 behind it, LPC, PMC, HDA 00:1f.3, SMBus, I219-V
  Ethernet 00:1f.6 named eno1 by its ACPI index), with the names the hwdb gives them;
* a Samsung SATA SSD (sda, root on sda2, /home/<user> on sda3) and an LG DVD writer (sr0) on the
  AHCI controller;
* on the xHCI: a Cambridge Audio DacMagic 100 (USB Audio Class 2, ALSA card 1), a SanDisk Ultra
  Fit stick (sdb, mounted under /media/<user>), and the fiber dongle, a Realtek RTL8153 USB NIC
  (r8152, enx...) carrying the second LAN address;
* wlan0 (iwlwifi), docker0 (bridge) with a container's veth, and wg0 (WireGuard), which must
  never be chosen as LAN NICs;
* samba's ``netbios name``, the VPNID file, a kernel host name.

Values the policy sends are returned in :class:`Expected` (exactly what the report must hold);
values it does not send are canaries: distinct strings (most with the token ``4Q7ZK2``) that
cannot occur in a report by chance.  ``Expected.returned`` names the canaries a collector returns
raw (``inventory --raw`` shows them); the others sit in files the collectors read but do not
return (the board asset tag, user names in mountinfo and smb.conf).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data" / "appliance"
#: dmidecode 3.5 on a Gigabyte Z370M DS3H (linuxhw/DMI, CC-BY-4.0; see SOURCES.tsv beside it).
DMIDECODE = DATA / "dmidecode-gigabyte-z370m-ds3h.txt"

GIB = 1 << 30
STAMP = "4Q7ZK2"

# ---- what the policy sends ------------------------------------------------------------------
VPNID = "EVO-432-20417"
NETBIOS = "EVO-LIVING"
BOARD_VENDOR = "Gigabyte Technology Co., Ltd."  # as in the real table
BOARD_MODEL = "Z370M DS3H-CF"                   # as in the real table
BOARD_SERIAL = "SN183900074215"                 # planted (anonymised to "--" in the source)
CPU_MODEL = "Intel(R) Core(TM) i3-8350K CPU @ 4.00GHz"
ENO1_MAC = "e0:d5:5e:4a:32:10"
LAN_IP = "192.168.1.20"
DONGLE_IP = "192.168.1.21"
SSD_MODEL = "Samsung SSD 870 EVO 500GB"
SSD_SERIAL = "S6PWNJ0R812345K"
DVD_MODEL = "HL-DT-ST DVDRAM GH24NSD1"
DVD_SERIAL = "K9BH7JC2841"

# ---- canaries: never sent -------------------------------------------------------------------
USER = f"jcanary{STAMP.lower()}"       # the owner, in mountinfo (/home and /media mounts)
SMB_USER = f"scanary{STAMP.lower()}"   # named by smb.conf's [homes]
CANARIES: dict[str, str] = {
    "bios_vendor": f"CANARY BIOS Vendor {STAMP}",
    "system_serial": f"CANARY-SYS-SN-{STAMP}",
    "system_uuid": "4F7A2C19-8E3D-4B6A-9C55-D2E1F0A7B3C8",
    "chassis_serial": f"CANARY-CHASSIS-SN-{STAMP}",
    "chassis_asset_tag": f"CANARY-CHASSIS-TAG-{STAMP}",
    "board_asset_tag": f"CANARY-BOARD-TAG-{STAMP}",
    "dimm1_serial": f"CANARY-DIMM1-SN-{STAMP}",
    "dimm1_asset_tag": f"CANARY-DIMM1-TAG-{STAMP}",
    "dimm3_serial": f"CANARY-DIMM3-SN-{STAMP}",
    "dimm3_asset_tag": f"CANARY-DIMM3-TAG-{STAMP}",
    "oem_email": f"jane.canary{STAMP.lower()}@example.org",
    "oem_user": f"oemuser-canary{STAMP.lower()}",
    "dac_serial": f"CANARY-DAC-SN-{STAMP}",
    "stick_serial": f"4C530001CANARY{STAMP}",
    "user": USER,
    "home": f"/home/{USER}",
    "smb_user": SMB_USER,
    "smb_home": f"/home/{SMB_USER}",
    "hostname": f"evo-canary-{STAMP.lower()}",
    "wlan0_mac": "5c:87:9c:4a:7c:31",
    "wlan0_ipv4": "192.168.1.187",
    "wlan0_ipv6": "2001:db8:4a7c:1::187",
    "dongle_mac": "00:e0:4c:68:a1:b2",
    "docker0_mac": "02:42:7c:4a:9e:15",
    "docker0_ipv4": "172.29.141.1",
    "veth_mac": "9a:3f:c4:7e:51:d8",
    "wg0_ipv4": "10.77.41.9",
    "wg0_ipv6": "fd4a:7c31:9e15::9",
}
#: Canaries that a collector returns raw; the others are read (in a file or a command's output)
#: but not returned: summarize() keeps no board asset tag, disks keeps no mount list, identity
#: no smb.conf share.  The host name is not even read: smb.conf gives the NetBIOS name.
RETURNED = frozenset(CANARIES) - {"board_asset_tag", "user", "home", "smb_user", "smb_home",
                                  "hostname"}
#: Canaries that no collector needs to read at all on this appliance.
UNREAD = frozenset({"hostname"})


@dataclass(frozen=True)
class Expected:
    """What the report of the built appliance must say, and what must never be in it."""

    root: Path
    functional: dict[str, Any]
    hardware: dict[str, Any]
    #: name -> planted string that must not reach any output that is sent or logged
    canaries: dict[str, str]
    #: names of the canaries a collector returns raw (``inventory --raw`` must show them)
    returned: frozenset[str]


# ---- writing a tree -------------------------------------------------------------------------
class _Tree:
    """Writes host paths (``/sys/...``) under a capture directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def local(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def mkdir(self, path: str) -> None:
        self.local(path).mkdir(parents=True, exist_ok=True)

    def file(self, path: str, data: str | bytes) -> None:
        local = self.local(path)
        local.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            local.write_bytes(data)
        else:
            local.write_text(data, "utf-8")

    def attrs(self, path: str, values: dict[str, object]) -> None:
        """Write sysfs attribute files: one value and a newline each, as the kernel prints."""
        for name, value in values.items():
            self.file(f"{path}/{name}", f"{value}\n")

    def link(self, path: str, target: str) -> None:
        """Make ``path`` a link to the host path ``target``, relative as sysfs writes them."""
        local = self.local(path)
        local.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(target, os.path.dirname(path)), local)

    def uevent(self, path: str, values: dict[str, object]) -> None:
        self.file(f"{path}/uevent", "".join(f"{k}={v}\n" for k, v in values.items()))

    def udev(self, record: str, props: dict[str, str], links: tuple[str, ...] = (),
             tags: tuple[str, ...] = ()) -> None:
        """Write a udev database record as systemd-udevd 252 stores it (S:, I:, E:, G:, Q:, V:)."""
        lines = [f"S:{link}" for link in links]
        lines.append(f"I:{1_000_000 + 7919 * len(record)}")
        lines += [f"E:{key}={value}" for key, value in props.items()]
        for tag in tags:
            lines += [f"G:{tag}", f"Q:{tag}"]
        lines.append("V:1")
        self.file(f"/run/udev/data/{record}", "\n".join(lines) + "\n")


def _udev_enc(text: str) -> str:
    """Encode a string as udev's ``*_ENC`` properties do (blanks and '/' as \\xNN)."""
    return "".join(f"\\x{ord(c):02x}" if c in " /\\\"'" else c for c in text)


# ---- DMI --------------------------------------------------------------------------------------
def _dmi_set(text: str, handle: str, key: str, value: str, *, add: str = "") -> str:
    """Replace ``<TAB>key: ...`` in the record of ``handle`` (and add lines after it)."""
    blocks = text.split("\n\n")
    for i, block in enumerate(blocks):
        if block.startswith(f"Handle {handle},"):
            new, count = re.subn(rf"^\t{re.escape(key)}: .*$",
                                 lambda _m: f"\t{key}: {value}{add}", block, count=1,
                                 flags=re.MULTILINE)
            if count != 1:
                raise ValueError(f"dmidecode record {handle} has no {key!r}")
            blocks[i] = new
            return "\n\n".join(blocks)
    raise ValueError(f"dmidecode text has no record {handle}")


def dmidecode_text() -> str:
    """Return the real table's text with the board serial and the canaries planted."""
    c = CANARIES
    text = DMIDECODE.read_text("utf-8")
    for handle, key, value in (
        ("0x0000", "Vendor", c["bios_vendor"]),
        ("0x0001", "Serial Number", c["system_serial"]),
        ("0x0001", "UUID", c["system_uuid"]),
        ("0x0002", "Serial Number", BOARD_SERIAL),
        ("0x0002", "Asset Tag", c["board_asset_tag"]),
        ("0x0003", "Serial Number", c["chassis_serial"]),
        ("0x0003", "Asset Tag", c["chassis_asset_tag"]),
        ("0x0037", "Serial Number", c["dimm1_serial"]),
        ("0x0037", "Asset Tag", c["dimm1_asset_tag"]),
        ("0x0039", "Serial Number", c["dimm3_serial"]),
        ("0x0039", "Asset Tag", c["dimm3_asset_tag"]),
    ):
        text = _dmi_set(text, handle, key, value)
    # Integrators put contacts and accounts in OEM strings (type 11)
    return _dmi_set(text, "0x001D", "String 1", f"Contact: {c['oem_email']}",
                    add=f"\n\tString 2: Provisioned-by: {c['oem_user']}")


def _dmi_sysfs(t: _Tree) -> None:
    """/sys/class/dmi/id as the kernel exports it (read only when dmidecode cannot run)."""
    c = CANARIES
    dmi = "/sys/devices/virtual/dmi/id"
    t.attrs(dmi, {
        "bios_vendor": c["bios_vendor"], "bios_version": "F14", "bios_date": "11/13/2021",
        "sys_vendor": BOARD_VENDOR, "product_name": "Z370M DS3H", "product_version":
        "Default string", "product_serial": c["system_serial"],
        "product_uuid": c["system_uuid"].lower(), "board_vendor": BOARD_VENDOR,
        "board_name": BOARD_MODEL, "board_version": "Default string",
        "board_serial": BOARD_SERIAL, "board_asset_tag": c["board_asset_tag"],
        "chassis_vendor": "Default string", "chassis_type": "3",
        "chassis_serial": c["chassis_serial"], "chassis_asset_tag": c["chassis_asset_tag"],
    })
    t.uevent(dmi, {"MODALIAS": "dmi:bvnAmericanMegatrendsInc.:bvrF14:bd11/13/2021:"})
    t.link("/sys/class/dmi/id", dmi)


# ---- PCI ------------------------------------------------------------------------------------
# address, parent, vendor, device, class, subsystem device, revision, driver, hwdb device name,
# hwdb class and subclass names.  IDs and names: Debian 12's pci.ids / hwdb; Gigabyte's
# subsystem vendor is 1458.
PCI: tuple[tuple[str, str, int, int, int, int, int, str | None, str, str, str], ...] = (
    ("0000:00:00.0", "", 0x8086, 0x3E1F, 0x060000, 0x5000, 0x08, "skl_uncore",
     "8th Gen Core 4-core Desktop Processor Host Bridge/DRAM Registers [Coffee Lake S]",
     "Bridge", "Host bridge"),
    ("0000:00:02.0", "", 0x8086, 0x3E91, 0x030000, 0xD000, 0x00, "i915",
     "CoffeeLake-S GT2 [UHD Graphics 630]", "Display controller", "VGA compatible controller"),
    ("0000:00:14.0", "", 0x8086, 0xA2AF, 0x0C0330, 0x5007, 0x00, "xhci_hcd",
     "200 Series/Z370 Chipset Family USB 3.0 xHCI Controller", "Serial bus controller",
     "USB controller"),
    ("0000:00:16.0", "", 0x8086, 0xA2BA, 0x078000, 0x1C3A, 0x00, "mei_me",
     "200 Series PCH CSME HECI #1", "Communication controller", "Communication controller"),
    ("0000:00:17.0", "", 0x8086, 0xA282, 0x010601, 0xB005, 0x00, "ahci",
     "200 Series PCH SATA controller [AHCI mode]", "Mass storage controller",
     "SATA controller"),
    ("0000:00:1c.0", "", 0x8086, 0xA294, 0x060400, 0x5001, 0xF0, "pcieport",
     "200 Series PCH PCI Express Root Port #5", "Bridge", "PCI bridge"),
    ("0000:00:1f.0", "", 0x8086, 0xA2C9, 0x060100, 0x5001, 0x00, None,
     "Z370 Chipset LPC/eSPI Controller", "Bridge", "ISA bridge"),
    ("0000:00:1f.2", "", 0x8086, 0xA2A1, 0x058000, 0x5001, 0x00, None,
     "200 Series/Z370 Chipset Family Power Management Controller", "Memory controller",
     "Memory controller"),
    ("0000:00:1f.3", "", 0x8086, 0xA2F0, 0x040300, 0xA182, 0x00, "snd_hda_intel",
     "200 Series PCH HD Audio", "Multimedia controller", "Audio device"),
    ("0000:00:1f.4", "", 0x8086, 0xA2A3, 0x0C0500, 0x5001, 0x00, "i801_smbus",
     "200 Series/Z370 Chipset Family SMBus Controller", "Serial bus controller",
     "SMBus"),
    ("0000:00:1f.6", "", 0x8086, 0x15B8, 0x020000, 0xE000, 0x00, "e1000e",
     "Ethernet Connection (2) I219-V", "Network controller", "Ethernet controller"),
    ("0000:02:00.0", "0000:00:1c.0", 0x8086, 0x2526, 0x028000, 0x0014, 0x29, "iwlwifi",
     "Wireless-AC 9260", "Network controller", "Network controller"),
)
PCI_ROOT = "/sys/devices/pci0000:00"


def pci_path(address: str) -> str:
    """Return the /sys/devices path of one of the PCI functions above."""
    for addr, parent, *_rest in PCI:
        if addr == address:
            return f"{pci_path(parent)}/{addr}" if parent else f"{PCI_ROOT}/{addr}"
    raise KeyError(address)


def _pci(t: _Tree) -> None:
    t.mkdir("/sys/bus/pci/devices")
    for addr, _parent, vid, did, cls, sdid, rev, driver, name, cls_name, sub_name in PCI:
        path = pci_path(addr)
        svid = 0x1458 if addr != "0000:02:00.0" else 0x8086
        modalias = (f"pci:v{vid:08X}d{did:08X}sv{svid:08X}sd{sdid:08X}bc{cls >> 16:02X}"
                    f"sc{(cls >> 8) & 0xFF:02X}i{cls & 0xFF:02X}")
        # drivers/pci/pci-driver.c pci_uevent(); DRIVER= comes first when one is bound
        ue: dict[str, object] = {"DRIVER": driver} if driver else {}
        ue.update({"PCI_CLASS": f"{cls:X}", "PCI_ID": f"{vid:04X}:{did:04X}",
                   "PCI_SUBSYS_ID": f"{svid:04X}:{sdid:04X}", "PCI_SLOT_NAME": addr,
                   "MODALIAS": modalias})
        t.uevent(path, ue)
        t.attrs(path, {"vendor": f"0x{vid:04x}", "device": f"0x{did:04x}",
                       "class": f"0x{cls:06x}", "subsystem_vendor": f"0x{svid:04x}",
                       "subsystem_device": f"0x{sdid:04x}", "revision": f"0x{rev:02x}",
                       "modalias": modalias})
        t.link(f"{path}/subsystem", "/sys/bus/pci")
        if driver:
            t.link(f"{path}/driver", f"/sys/bus/pci/drivers/{driver}")
            t.link(f"/sys/bus/pci/drivers/{driver}/{addr}", path)
        t.link(f"/sys/bus/pci/devices/{addr}", path)
        t.udev(f"+pci:{addr}", {
            "ID_PCI_CLASS_FROM_DATABASE": cls_name, "ID_PCI_SUBCLASS_FROM_DATABASE": sub_name,
            "ID_VENDOR_FROM_DATABASE": "Intel Corporation", "ID_MODEL_FROM_DATABASE": name,
        })
    # the I219-V is named eno1 from its ACPI _DSM index (udev's net_id "onboard" name)
    t.attrs(pci_path("0000:00:1f.6"), {"acpi_index": 1, "label": "Onboard - LAN"})


def _expected_pci() -> list[dict[str, Any]]:
    return [{"address": addr, "vendor_id": f"{vid:04x}", "device_id": f"{did:04x}",
             "class_id": f"{cls >> 8:04x}", "vendor": "Intel Corporation", "device": name}
            for addr, _p, vid, did, cls, _s, _r, _d, name, _c, _sc in sorted(PCI)]


# ---- USB ------------------------------------------------------------------------------------
XHCI = pci_path("0000:00:14.0")


def _usb_device(t: _Tree, name: str, *, bus: int, devnum: int, vid: str, pid: str, bcd: str,
                cls: tuple[int, int, int], speed: int, manufacturer: str, product: str,
                serial: str | None, removable: str, db: dict[str, str]) -> str:
    """Write a USB device (drivers/usb/core/sysfs.c, usb_dev_uevent()); return its path."""
    path = f"{XHCI}/{name}" if name.startswith("usb") else f"{XHCI}/usb{bus}/{name}"
    minor = (bus - 1) * 128 + devnum - 1
    t.uevent(path, {"MAJOR": 189, "MINOR": minor, "DEVNAME": f"bus/usb/{bus:03d}/{devnum:03d}",
                    "DEVTYPE": "usb_device", "DRIVER": "usb",
                    "PRODUCT": f"{int(vid, 16):x}/{int(pid, 16):x}/{int(bcd, 16):x}",
                    "TYPE": "/".join(str(x) for x in cls), "BUSNUM": f"{bus:03d}",
                    "DEVNUM": f"{devnum:03d}"})
    values: dict[str, object] = {
        "idVendor": vid, "idProduct": pid, "bcdDevice": bcd, "bDeviceClass": f"{cls[0]:02x}",
        "bDeviceSubClass": f"{cls[1]:02x}", "bDeviceProtocol": f"{cls[2]:02x}",
        "manufacturer": manufacturer, "product": product, "speed": speed, "busnum": bus,
        "devnum": devnum, "dev": f"189:{minor}", "removable": removable,
    }
    if serial is not None:
        values["serial"] = serial
    t.attrs(path, values)
    t.link(f"{path}/subsystem", "/sys/bus/usb")
    t.link(f"{path}/driver", "/sys/bus/usb/drivers/usb")
    t.link(f"/sys/bus/usb/devices/{name}", path)
    t.udev(f"c189:{minor}", db, tags=("seat",) if name.startswith("usb") else ())
    return path


def _usb_interface(t: _Tree, device: str, name: str, *, driver: str,
                   cls: tuple[int, int, int], product: str) -> str:
    path = f"{device}/{name}"
    t.uevent(path, {"DEVTYPE": "usb_interface", "DRIVER": driver, "PRODUCT": product,
                    "INTERFACE": "/".join(str(x) for x in cls)})
    t.attrs(path, {"bInterfaceClass": f"{cls[0]:02x}", "bInterfaceSubClass": f"{cls[1]:02x}",
                   "bInterfaceProtocol": f"{cls[2]:02x}"})
    t.link(f"{path}/subsystem", "/sys/bus/usb")
    t.link(f"{path}/driver", f"/sys/bus/usb/drivers/{driver}")
    t.link(f"/sys/bus/usb/drivers/{driver}/{name}", path)
    t.link(f"/sys/bus/usb/devices/{name}", path)
    return path


def _usb_db(*, vendor: str, vid: str, model: str, pid: str, serial: str | None, db_vendor: str,
            db_model: str, port: str, ifaces: str) -> dict[str, str]:
    """Properties udev's usb_id builtin and the hwdb give a USB device."""
    props = {
        "ID_BUS": "usb", "ID_VENDOR": vendor.replace(" ", "_"), "ID_VENDOR_ENC": _udev_enc(vendor),
        "ID_VENDOR_ID": vid, "ID_MODEL": model.replace(" ", "_").replace("/", "_"),
        "ID_MODEL_ENC": _udev_enc(model), "ID_MODEL_ID": pid, "ID_REVISION": "0100",
        "ID_SERIAL": "_".join(x.replace(" ", "_") for x in (vendor, model, serial or "") if x),
    }
    if serial:
        props["ID_SERIAL_SHORT"] = serial
    props.update({"ID_USB_INTERFACES": ifaces, "ID_VENDOR_FROM_DATABASE": db_vendor,
                  "ID_MODEL_FROM_DATABASE": db_model, "ID_PATH": f"pci-0000:00:14.0-usb-0:{port}",
                  "ID_PATH_TAG": f"pci-0000_00_14_0-usb-0_{port.replace('.', '_')}"})
    return props


def _usb(t: _Tree, dongle: bool) -> tuple[str, str, str | None]:
    """Write the root hubs, the DAC, the stick and (when plugged) the dongle."""
    c = CANARIES
    kernel = "Linux 6.1.0-18-amd64 xhci-hcd"
    for bus, pid, speed in ((1, "0002", 480), (2, "0003", 5000)):
        hub = _usb_device(
            t, f"usb{bus}", bus=bus, devnum=1, vid="1d6b", pid=pid, bcd="0601", cls=(9, 0, 1),
            speed=speed, manufacturer=kernel, product="xHCI Host Controller",
            serial="0000:00:14.0", removable="unknown",
            db={"ID_VENDOR_FROM_DATABASE": "Linux Foundation",
                "ID_MODEL_FROM_DATABASE": f"{bus + 1}.0 root hub", "ID_FOR_SEAT":
                "usb-pci-0000_00_14_0", "ID_PATH": "pci-0000:00:14.0"})
        _usb_interface(t, hub, f"{bus}-0:1.0", driver="hub", cls=(9, 0, 0),
                       product=f"1d6b/{int(pid)}/601")
    dac = _usb_device(
        t, "1-3", bus=1, devnum=2, vid="22e8", pid="dac4", bcd="0100", cls=(239, 2, 1),
        speed=480, manufacturer="Cambridge Audio", product="DacMagic 100",
        serial=c["dac_serial"], removable="removable",
        db=_usb_db(vendor="Cambridge Audio", vid="22e8", model="DacMagic 100", pid="dac4",
                   serial=c["dac_serial"], db_vendor="Cambridge Audio",
                   db_model="Azur DacMagic 100", port="3", ifaces=":010100:010200:fe0102:"))
    for i, cls in enumerate(((1, 1, 32), (1, 2, 32), (1, 2, 32))):
        _usb_interface(t, dac, f"1-3:1.{i}", driver="snd-usb-audio", cls=cls,
                       product="22e8/dac4/100")
    stick = _usb_device(
        t, "2-1", bus=2, devnum=2, vid="0781", pid="5583", bcd="0100", cls=(0, 0, 0),
        speed=5000, manufacturer=" SanDisk", product=" SanDisk 3.2Gen1",
        serial=c["stick_serial"], removable="removable",
        db=_usb_db(vendor="SanDisk", vid="0781", model="SanDisk 3.2Gen1", pid="5583",
                   serial=c["stick_serial"], db_vendor="SanDisk Corp.", db_model="Ultra Fit",
                   port="1", ifaces=":080650:"))
    stick_if = _usb_interface(t, stick, "2-1:1.0", driver="usb-storage", cls=(8, 6, 80),
                              product="781/5583/100")
    net_if = None
    if dongle:
        nic = _usb_device(
            t, "2-2", bus=2, devnum=3, vid="0bda", pid="8153", bcd="3000", cls=(0, 0, 0),
            speed=5000, manufacturer="Realtek", product="USB 10/100/1000 LAN",
            serial="001000001", removable="removable",
            db=_usb_db(vendor="Realtek", vid="0bda", model="USB 10/100/1000 LAN", pid="8153",
                       serial="001000001", db_vendor="Realtek Semiconductor Corp.",
                       db_model="RTL8153 Gigabit Ethernet Adapter", port="2",
                       ifaces=":ffff00:020600:0a0000:"))
        net_if = _usb_interface(t, nic, "2-2:1.0", driver="r8152", cls=(255, 255, 0),
                                product="bda/8153/3000")
    return dac, stick_if, net_if


# ---- sound ------------------------------------------------------------------------------------
def _alsa(t: _Tree, dac: str) -> None:
    # sound/core/init.c card_info_read(): "%2i [%-15s]: %s - %s" then the long name, indented
    t.file("/proc/asound/cards",
           " 0 [PCH            ]: HDA-Intel - HDA Intel PCH\n"
           "                      HDA Intel PCH at 0xa1220000 irq 133\n"
           " 1 [D100           ]: USB-Audio - DacMagic 100\n"
           "                      Cambridge Audio DacMagic 100 at usb-0000:00:14.0-3, "
           "high speed\n")
    # the id snd-usb-audio derives from "DacMagic 100": the last word, prefixed by the first
    # letter when it starts with a digit (copy_valid_id_string(): "QuickCam Pro 9000" -> Q9000)
    for n, card_id in ((0, "PCH"), (1, "D100")):
        t.attrs(f"/proc/asound/card{n}", {"id": card_id})
        t.link(f"/proc/asound/{card_id}", f"/proc/asound/card{n}")
    t.attrs("/proc/asound/card1", {"usbid": "22e8:dac4"})
    t.file("/proc/asound/version",
           "Advanced Linux Sound Architecture Driver Version k6.1.0-18-amd64.\n")
    for n, device in ((0, pci_path("0000:00:1f.3")), (1, f"{dac}/1-3:1.0")):
        card = f"{device}/sound/card{n}"
        t.attrs(card, {"id": "PCH" if n == 0 else "D100", "number": n})
        t.uevent(card, {})
        t.link(f"{card}/device", device)
        t.link(f"{card}/subsystem", "/sys/class/sound")
        t.link(f"/sys/class/sound/card{n}", card)


# ---- block devices ----------------------------------------------------------------------------
def _scsi_disk(t: _Tree, host_path: str, hctl: str, name: str, *, major: int, minor: int,
               vendor: str, model: str, scsi_type: int, driver: str, size: int, removable: int,
               rotational: int, partitions: tuple[int, ...], db: dict[str, str],
               links: tuple[str, ...], vpd_serial: str | None = None) -> None:
    """Write a SCSI (ATA or USB mass storage) disk with its partitions and every block link."""
    target = f"{host_path}/target{hctl.rsplit(':', 1)[0]}/{hctl}"
    t.attrs(target, {"vendor": vendor, "model": model, "rev": "1B6Q", "type": scsi_type})
    t.uevent(target, {"DEVTYPE": "scsi_device", "DRIVER": driver,
                      "MODALIAS": f"scsi:t-0x{scsi_type:02x}"})
    if vpd_serial is not None:
        # SCSI VPD page 0x80 (unit serial number), which libata builds from IDENTIFY DEVICE
        page = vpd_serial.encode().ljust(20)
        t.file(f"{target}/vpd_pg80", bytes([0, 0x80, 0, len(page)]) + page)
    t.link(f"{target}/subsystem", "/sys/bus/scsi")
    t.link(f"{target}/driver", f"/sys/bus/scsi/drivers/{driver}")
    disk = f"{target}/block/{name}"
    t.attrs(disk, {"dev": f"{major}:{minor}", "size": size, "removable": removable, "ro": 0})
    t.attrs(f"{disk}/queue", {"rotational": rotational, "logical_block_size": 512})
    t.uevent(disk, {"MAJOR": major, "MINOR": minor, "DEVNAME": name, "DEVTYPE": "disk",
                    "DISKSEQ": minor + 1})
    t.link(f"{disk}/device", target)
    t.link(f"{disk}/subsystem", "/sys/class/block")
    t.mkdir(f"{disk}/slaves")
    t.mkdir(f"{disk}/holders")
    t.link(f"/sys/block/{name}", disk)
    t.link(f"/sys/class/block/{name}", disk)
    t.link(f"/sys/dev/block/{major}:{minor}", disk)
    t.udev(f"b{major}:{minor}", db, links=links, tags=("systemd",))
    start = 2048
    for n in partitions:
        part = f"{disk}/{name}{n}"
        psize = 1048576 if n == 1 else (size - 3 * 1048576) // max(1, len(partitions) - 1)
        t.attrs(part, {"dev": f"{major}:{minor + n}", "partition": n, "start": start,
                       "size": psize, "ro": 0})
        t.uevent(part, {"MAJOR": major, "MINOR": minor + n, "DEVNAME": f"{name}{n}",
                        "DEVTYPE": "partition", "DISKSEQ": minor + 1, "PARTN": n})
        t.link(f"{part}/subsystem", "/sys/class/block")
        t.mkdir(f"{part}/holders")
        t.link(f"/sys/class/block/{name}{n}", part)
        t.link(f"/sys/dev/block/{major}:{minor + n}", part)
        # udev copies the disk's identity to its partitions (60-persistent-storage.rules)
        t.udev(f"b{major}:{minor + n}", {**db, "ID_PART_ENTRY_NUMBER": str(n),
                                          "ID_PART_ENTRY_DISK": f"{major}:{minor}"},
               links=tuple(f"{link}-part{n}" for link in links), tags=("systemd",))
        start += psize


def _ata_host(t: _Tree, port: int) -> str:
    ahci = pci_path("0000:00:17.0")
    host = f"{ahci}/ata{port}/host{port - 1}"
    t.attrs(f"{ahci}/ata{port}/ata_port/ata{port}", {"port_no": port})
    t.mkdir(f"{host}/scsi_host/host{port - 1}")
    return host


def _disks(t: _Tree, stick_if: str) -> None:
    c = CANARIES
    ssd_db = {
        "ID_ATA": "1", "ID_TYPE": "disk", "ID_BUS": "ata",
        "ID_MODEL": SSD_MODEL.replace(" ", "_"),
        "ID_MODEL_ENC": _udev_enc(SSD_MODEL.ljust(40)), "ID_REVISION": "SVT02B6Q",
        "ID_SERIAL": f"{SSD_MODEL.replace(' ', '_')}_{SSD_SERIAL}",
        "ID_SERIAL_SHORT": SSD_SERIAL, "ID_ATA_SATA": "1", "ID_ATA_ROTATION_RATE_RPM": "0",
        "ID_WWN": "0x5002538f42a1c0de", "ID_WWN_WITH_EXTENSION": "0x5002538f42a1c0de",
        "ID_PATH": "pci-0000:00:17.0-ata-1.0", "ID_PATH_TAG": "pci-0000_00_17_0-ata-1_0",
        "ID_PART_TABLE_TYPE": "gpt",
    }
    _scsi_disk(t, _ata_host(t, 1), "0:0:0:0", "sda", major=8, minor=0, vendor="ATA     ",
               model="Samsung SSD 870 ", scsi_type=0, driver="sd", size=976773168,
               removable=0, rotational=0, partitions=(1, 2, 3), db=ssd_db,
               links=(f"disk/by-id/ata-{ssd_db['ID_SERIAL']}",
                      "disk/by-id/wwn-0x5002538f42a1c0de",
                      "disk/by-path/pci-0000:00:17.0-ata-1.0"),
               vpd_serial=SSD_SERIAL)
    dvd_db = {
        "ID_CDROM": "1", "ID_CDROM_CD": "1", "ID_CDROM_CD_R": "1", "ID_CDROM_CD_RW": "1",
        "ID_CDROM_DVD": "1", "ID_CDROM_DVD_R": "1", "ID_CDROM_DVD_RW": "1",
        "ID_CDROM_DVD_RAM": "1", "ID_CDROM_DVD_PLUS_R": "1", "ID_CDROM_DVD_PLUS_RW": "1",
        "ID_CDROM_MRW": "1", "ID_CDROM_MRW_W": "1", "ID_ATA": "1", "ID_TYPE": "cd",
        "ID_BUS": "ata", "ID_MODEL": DVD_MODEL.replace(" ", "_"),
        "ID_MODEL_ENC": _udev_enc(DVD_MODEL.ljust(40)), "ID_REVISION": "1.00",
        "ID_SERIAL": f"{DVD_MODEL.replace(' ', '_')}_{DVD_SERIAL}",
        "ID_SERIAL_SHORT": DVD_SERIAL, "ID_ATA_SATA": "1",
        "ID_PATH": "pci-0000:00:17.0-ata-2.0", "ID_PATH_TAG": "pci-0000_00_17_0-ata-2_0",
    }
    _scsi_disk(t, _ata_host(t, 2), "1:0:0:0", "sr0", major=11, minor=0, vendor="HL-DT-ST",
               model="DVDRAM GH24NSD1 ", scsi_type=5, driver="sr", size=2097151, removable=1,
               rotational=1, partitions=(), db=dvd_db,
               links=("cdrom", "dvd", f"disk/by-id/ata-{dvd_db['ID_SERIAL']}",
                      "disk/by-path/pci-0000:00:17.0-ata-2.0"))
    for port in range(3, 7):
        _ata_host(t, port)
    stick_db = {
        "ID_BUS": "usb", "ID_MODEL": "SanDisk_3.2Gen1", "ID_MODEL_ENC": "SanDisk\\x203.2Gen1",
        "ID_MODEL_ID": "5583", "ID_SERIAL": f"SanDisk_SanDisk_3.2Gen1_{c['stick_serial']}-0:0",
        "ID_SERIAL_SHORT": c["stick_serial"], "ID_TYPE": "disk", "ID_INSTANCE": "0:0",
        "ID_VENDOR": "SanDisk", "ID_VENDOR_ENC": "SanDisk\\x20", "ID_VENDOR_ID": "0781",
        "ID_REVISION": "1.00", "ID_USB_DRIVER": "usb-storage", "ID_USB_INTERFACES": ":080650:",
        "ID_USB_INTERFACE_NUM": "00", "ID_PART_TABLE_TYPE": "dos",
        "ID_PATH": "pci-0000:00:14.0-usb-0:1:1.0-scsi-0:0:0:0",
        "ID_PATH_TAG": "pci-0000_00_14_0-usb-0_1_1_0-scsi-0_0_0_0",
    }
    host6 = f"{stick_if}/host6"
    t.mkdir(f"{host6}/scsi_host/host6")
    _scsi_disk(t, host6, "6:0:0:0", "sdb", major=8, minor=16, vendor="SanDisk ",
               model="SanDisk 3.2Gen1", scsi_type=0, driver="sd", size=60063744, removable=1,
               rotational=1, partitions=(1,), db=stick_db,
               links=(f"disk/by-id/usb-{stick_db['ID_SERIAL']}",
                      "disk/by-path/pci-0000:00:14.0-usb-0:1:1.0-scsi-0:0:0:0"))


def _mountinfo() -> str:
    """/proc/self/mountinfo of a Debian 12 appliance (proc(5)): root on sda2, home on sda3."""
    home = CANARIES["home"]
    return "\n".join([
        "22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw",
        "23 28 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw",
        "24 28 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=8119644k,"
        "nr_inodes=2029911,mode=755,inode64",
        "25 24 0:23 / /dev/pts rw,nosuid,noexec,relatime shared:3 - devpts devpts rw,gid=5,"
        "mode=620,ptmxmode=000",
        "26 28 0:24 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs "
        "rw,size=1627908k,mode=755,inode64",
        "28 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw,errors=remount-ro",
        "29 22 0:6 / /sys/kernel/security rw,nosuid,nodev,noexec,relatime shared:8 - "
        "securityfs securityfs rw",
        "30 24 0:25 / /dev/shm rw,nosuid,nodev shared:4 - tmpfs tmpfs rw,inode64",
        "33 22 0:28 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 "
        "cgroup2 rw,nsdelegate,memory_recursiveprot",
        "58 28 8:1 / /boot/efi rw,relatime shared:31 - vfat /dev/sda1 rw,fmask=0077,"
        "dmask=0077,codepage=437,iocharset=ascii,shortname=mixed,utf8,errors=remount-ro",
        f"61 28 8:3 / {home} rw,relatime shared:33 - ext4 /dev/sda3 rw",
        "412 26 0:49 / /run/user/1000 rw,nosuid,nodev,relatime shared:250 - tmpfs tmpfs "
        "rw,size=1627904k,nr_inodes=406976,mode=700,uid=1000,gid=1000,inode64",
        f"440 26 8:17 / /media/{USER}/EVO-MUSIC rw,nosuid,nodev,relatime shared:262 - vfat "
        "/dev/sdb1 rw,fmask=0022,dmask=0022,codepage=437,iocharset=ascii,shortname=mixed,"
        "showexec,utf8,flush,errors=remount-ro",
    ]) + "\n"


# ---- network ----------------------------------------------------------------------------------
def _netdev(t: _Tree, name: str, path: str, *, ifindex: int, mac: str, arphrd: int,
            assign: int, devtype: str | None = None, device: str | None = None,
            operstate: str = "up") -> None:
    """Write /sys/class/net/<name> (net/core/net-sysfs.c) and its device link."""
    ue: dict[str, object] = {"DEVTYPE": devtype} if devtype else {}
    ue.update({"INTERFACE": name, "IFINDEX": ifindex})
    t.uevent(path, ue)
    t.attrs(path, {"address": mac, "addr_assign_type": assign, "addr_len": 6 if mac else 0,
                   "type": arphrd, "ifindex": ifindex, "mtu": 1500,
                   "operstate": operstate, "carrier": 1, "dev_port": 0})
    t.link(f"{path}/subsystem", "/sys/class/net")
    if device is not None:
        t.link(f"{path}/device", device)
    t.link(f"/sys/class/net/{name}", path)


def _network(t: _Tree, net_if: str | None) -> dict[str, dict[str, list[str]]]:
    """Write the interfaces; return the addresses the netlink probe would see."""
    c = CANARIES
    virtual = "/sys/devices/virtual/net"
    _netdev(t, "lo", f"{virtual}/lo", ifindex=1, mac="00:00:00:00:00:00", arphrd=772, assign=0)
    eno1 = pci_path("0000:00:1f.6")
    _netdev(t, "eno1", f"{eno1}/net/eno1", ifindex=2, mac=ENO1_MAC, arphrd=1, assign=0,
            device=eno1)
    wifi = pci_path("0000:02:00.0")
    _netdev(t, "wlan0", f"{wifi}/net/wlan0", ifindex=3, mac=c["wlan0_mac"], arphrd=1, assign=0,
            devtype="wlan", device=wifi)
    t.mkdir(f"{wifi}/net/wlan0/wireless")
    t.attrs(f"{wifi}/ieee80211/phy0", {"index": 0, "macaddress": c["wlan0_mac"]})
    t.link(f"{wifi}/net/wlan0/phy80211", f"{wifi}/ieee80211/phy0")
    _netdev(t, "docker0", f"{virtual}/docker0", ifindex=4, mac=c["docker0_mac"], arphrd=1,
            assign=3, devtype="bridge")
    t.attrs(f"{virtual}/docker0/bridge", {"stp_state": 0, "bridge_id": "8000.02427c4a9e15"})
    # a container's end of a veth pair, enslaved to docker0 (random MAC, no address of its own)
    veth = f"{virtual}/veth3f2a1b0"
    _netdev(t, "veth3f2a1b0", veth, ifindex=7, mac=c["veth_mac"], arphrd=1, assign=1)
    t.link(f"{veth}/master", f"{virtual}/docker0")
    t.link(f"{virtual}/docker0/brif/veth3f2a1b0", f"{veth}/brport")
    t.mkdir(f"{veth}/brport")
    # WireGuard: ARPHRD_NONE, no hardware address (the address file holds an empty line)
    _netdev(t, "wg0", f"{virtual}/wg0", ifindex=5, mac="", arphrd=65534, assign=0,
            devtype="wireguard", operstate="unknown")
    addrs = {
        "lo": {"ipv4": ["127.0.0.1"], "ipv6": ["::1"]},
        "eno1": {"ipv4": [LAN_IP], "ipv6": ["fe80::e2d5:5eff:fe4a:3210"]},
        "wlan0": {"ipv4": [c["wlan0_ipv4"]],
                  "ipv6": [c["wlan0_ipv6"], "fe80::5e87:9cff:fe4a:7c31"]},
        "docker0": {"ipv4": [c["docker0_ipv4"]], "ipv6": []},
        "wg0": {"ipv4": [c["wg0_ipv4"]], "ipv6": [c["wg0_ipv6"]]},
        "veth3f2a1b0": {"ipv4": [], "ipv6": ["fe80::983f:c4ff:fe7e:51d8"]},
    }
    if net_if is not None:
        name = "enx" + c["dongle_mac"].replace(":", "")
        _netdev(t, name, f"{net_if}/net/{name}", ifindex=6, mac=c["dongle_mac"], arphrd=1,
                assign=0, device=net_if)
        addrs[name] = {"ipv4": [DONGLE_IP], "ipv6": ["fe80::2e0:4cff:fe68:a1b2"]}
    return addrs


# ---- the appliance --------------------------------------------------------------------------
def build_appliance(root: Path, *, dongle: bool = True) -> Expected:
    """Lay out the appliance under ``root`` (created); return what its report must say."""
    c = CANARIES
    t = _Tree(root)
    root.mkdir(parents=True, exist_ok=True)
    t.file("/commands/dmidecode.txt", dmidecode_text())
    _dmi_sysfs(t)
    t.file("/proc/cpuinfo", "".join(
        f"processor\t: {n}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 158\n"
        f"model name\t: {CPU_MODEL}\nstepping\t: 11\nphysical id\t: 0\nsiblings\t: 4\n"
        f"core id\t\t: {n}\ncpu cores\t: 4\n\n" for n in range(4)))
    t.file("/proc/meminfo", "MemTotal:       16266012 kB\nMemFree:        12004876 kB\n")
    _pci(t)
    dac, stick_if, net_if = _usb(t, dongle)
    _alsa(t, dac)
    _disks(t, stick_if)
    t.file("/proc/self/mountinfo", _mountinfo())
    addrs = _network(t, net_if)
    # psutil's view, as collectors/network.py probe_addresses() prints it
    t.file("/commands/netlink-addresses.txt", json.dumps(addrs, sort_keys=True))
    t.file("/proc/sys/kernel/hostname", c["hostname"] + "\n")
    t.file("/etc/hostname", c["hostname"] + "\n")
    t.file("/etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{c['hostname']}\n")
    t.file("/etc/evo-agent/identity/vpnid", VPNID + "\n")
    t.file("/etc/samba/smb.conf", f"""\
#
# Sample configuration file for the Samba suite for Debian GNU/Linux.
#
#======================= Global Settings =======================

[global]

## Browsing/Identification ###

# Change this to the workgroup/NT-domain name your Samba server will part of
   workgroup = WORKGROUP
   netbios name = {NETBIOS}
   server string = %h server (Samba, 432 EVO)

#### Debugging/Accounting ####
   log file = /var/log/samba/log.%m
   max log size = 1000
   logging = file
   panic action = /usr/share/samba/panic-action %d

####### Authentication #######
   server role = standalone server
   obey pam restrictions = yes
   unix password sync = yes
   map to guest = bad user

#======================= Share Definitions =======================

[homes]
   comment = Home directory of {SMB_USER}
   path = {c['smb_home']}
   valid users = {SMB_USER}
   browseable = no
   read only = no

[Music]
   comment = 432 EVO music library
   path = /srv/music
   guest ok = yes
   read only = yes
""")
    module = {"type": "DDR4", "form_factor": "DIMM", "size_bytes": 8 * GIB, "speed_mts": 3200,
              # the table says "859B": JEDEC bank 6, code 0x9B
              "manufacturer": "Crucial Technology", "part_number": "CT8G4DFS824A.M8FD"}
    usb = [
        {"vendor_id": "22e8", "product_id": "dac4", "vendor": "Cambridge Audio",
         "product": "Azur DacMagic 100"},
        {"vendor_id": "0781", "product_id": "5583", "vendor": "SanDisk Corp.",
         "product": "Ultra Fit"},
    ]
    if dongle:
        usb.append({"vendor_id": "0bda", "product_id": "8153",
                    "vendor": "Realtek Semiconductor Corp.",
                    "product": "RTL8153 Gigabit Ethernet Adapter"})
    return Expected(
        root=root,
        functional={"vpnid": VPNID, "netbios_name": NETBIOS, "lan_ip": LAN_IP,
                    "lan_ip_secondary": DONGLE_IP if dongle else None},
        hardware={
            "motherboard": {"vendor": BOARD_VENDOR, "model": BOARD_MODEL,
                            "serial": BOARD_SERIAL},
            "mac_address": ENO1_MAC,
            "cpu": {"model": CPU_MODEL, "cores": 4, "threads": 4},
            "ram": {"total_bytes": 16 * GIB, "modules": [module, dict(module)]},
            "boot_drive": {"model": SSD_MODEL, "serial": SSD_SERIAL},
            "rip_drive": {"model": DVD_MODEL, "serial": DVD_SERIAL},
            "usb_devices": usb,
            "pci_devices": _expected_pci(),
            "audio_devices": [
                {"card": 0, "id": "PCH", "name": "HDA Intel PCH", "driver": "snd_hda_intel",
                 "bus": "pci", "usb_id": None},
                {"card": 1, "id": "D100", "name": "DacMagic 100", "driver": "snd-usb-audio",
                 "bus": "usb", "usb_id": "22e8:dac4"},
            ],
        },
        canaries=dict(CANARIES) if dongle else {k: v for k, v in CANARIES.items()
                                                 if k != "dongle_mac"},
        returned=RETURNED if dongle else RETURNED - {"dongle_mac"},
    )


def collect_all(host: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Run every collector (the real runner) and the filter on ``host``: (inventory, report,
    dropped), with the report's id, time and durations fixed so two runs compare equal.
    (tests/test_replay_archive.py and bench/compare_outputs.py; no pytest here: the bench's
    "live" mode runs on Debian's python.)"""
    from datetime import datetime, timezone

    from evo_agent.collector import discover
    from evo_agent.inventory import collect
    from evo_agent.policy import load_policy
    from evo_agent.report import build_report

    collectors = [cls() for _name, cls in sorted(discover().items())]
    inventory = collect(collectors, host, deadline=60.0)
    report, dropped = build_report(inventory, load_policy(), report_id="-",
                                   clock=lambda: datetime(2026, 1, 1, tzinfo=timezone.utc))
    for entry in report["collectors"].values():
        entry["duration_ms"] = "-"
    return inventory, report, dropped
