"""The usb collector on devices described by real ``lsusb -v`` outputs, and usb.ids against lsusb.

``lsusb -v`` prints each device's descriptor: idVendor, idProduct, bDeviceClass and the string
descriptors iManufacturer/iProduct/iSerial, which the kernel also exposes in sysfs as
idVendor, idProduct, bDeviceClass, manufacturer, product and serial.  :func:`build_tree` writes
those attributes for every device of an output (files of shared/corpus/lsusb: cyme and glpi-agent
are GPL and read in place, jc is MIT).  lsusb -v does not show where a device is plugged, so the
sysfs names are made up as "<bus>-<device number>" (root hubs: "usb<bus>"); the values are real.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from collectors._hwids import USB_IDS_PATHS, IdsFile, plausible_name
from collectors.usb import Usb
from evo_agent.hostroot import LiveHost, ReplayHost

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "corpus"
LSUSB = CORPUS / "lsusb"
VERBOSE = sorted(p for p in LSUSB.glob("*/*")
                 if "Device Descriptor:" in p.read_text("utf-8", "replace"))
INSTALLED = next((p for p in USB_IDS_PATHS if Path(p).is_file()), None)

_HEADER = re.compile(r"^Bus (\d{3}) Device (\d{3}): ID ([0-9a-f]{4}):([0-9a-f]{4}) ?(.*)$")
_FIELD = re.compile(r"^  (idVendor|idProduct|bDeviceClass|iManufacturer|iProduct|iSerial)"
                    r"\s+(\S+) ?(.*)$")


def parse_lsusb_v(text: str) -> list[dict[str, str]]:
    """Return each device of an lsusb -v output: header fields and device descriptor fields."""
    devices: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in text.splitlines():
        m = _HEADER.match(line)
        if m:
            current = {"bus": m.group(1), "devnum": m.group(2), "vid": m.group(3),
                       "pid": m.group(4), "header": m.group(5).strip()}
            devices.append(current)
            continue
        f = _FIELD.match(line)
        if f and current is not None and f.group(1) not in current:
            current[f.group(1)] = f.group(2)
            current[f.group(1) + "_text"] = f.group(3).rstrip()
    return devices


def _name(dev: dict[str, str]) -> str:
    bus, num = int(dev["bus"]), int(dev["devnum"])
    return f"usb{bus}" if num == 1 and dev["vid"] == "1d6b" else f"{bus}-{num}"


def build_tree(devices: list[dict[str, str]], root: Path) -> None:
    """Write /sys/bus/usb/devices/<name> for each parsed device."""
    bus_dir = root / "sys/bus/usb/devices"
    bus_dir.mkdir(parents=True, exist_ok=True)
    for dev in devices:
        name = _name(dev)
        sysdir = root / "sys/devices/pci0000:00/0000:00:14.0" / name
        sysdir.mkdir(parents=True, exist_ok=True)
        (sysdir / "idVendor").write_text(dev["vid"] + "\n")
        (sysdir / "idProduct").write_text(dev["pid"] + "\n")
        if dev.get("bDeviceClass", "").isdigit():
            (sysdir / "bDeviceClass").write_text(f"{int(dev['bDeviceClass']):02x}\n")
        # a string descriptor index of 0 means the device has no such string (no sysfs file)
        for key, attr in (("iManufacturer", "manufacturer"), ("iProduct", "product"),
                          ("iSerial", "serial")):
            if dev.get(key, "0") != "0" and dev.get(key + "_text"):
                (sysdir / attr).write_text(dev[key + "_text"] + "\n", "utf-8")
        (sysdir / "busnum").write_text(f"{int(dev['bus'])}\n")
        (sysdir / "devnum").write_text(f"{int(dev['devnum'])}\n")
        if not os.path.lexists(bus_dir / name):
            (bus_dir / name).symlink_to(f"../../../devices/pci0000:00/0000:00:14.0/{name}")


def _tree(path: Path, tmp_path: Path, with_ids: bool = False) -> tuple[ReplayHost,
                                                                          list[dict[str, str]]]:
    if not path.is_file():
        pytest.skip(f"{path} is not in the corpus")
    devices = parse_lsusb_v(path.read_text("utf-8", "replace"))
    build_tree(devices, tmp_path)
    if with_ids:
        if INSTALLED is None:
            pytest.skip("usb.ids is not installed on this machine")
        dest = tmp_path / "usr/share/misc/usb.ids"
        dest.parent.mkdir(parents=True)
        shutil.copyfile(INSTALLED, dest)
    return ReplayHost(tmp_path), devices


@pytest.mark.corpus
@pytest.mark.parametrize("path", VERBOSE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_lsusb_v_device_is_listed(path: Path, tmp_path: Path) -> None:
    """IDs, class, strings and serial of every device; root hubs left out; names from strings."""
    host, devices = _tree(path, tmp_path)
    got = {d["path"]: d for d in Usb().collect(host)["devices"]}
    want = {_name(d): d for d in devices if not _name(d).startswith("usb")}
    assert set(got) == set(want)
    for name, dev in got.items():
        src = want[str(name)]
        assert (dev["vendor_id"], dev["product_id"]) == (src["vid"], src["pid"])
        assert dev["device_class"] == f"{int(src['bDeviceClass']):02x}"
        has_serial = src.get("iSerial", "0") != "0" and src.get("iSerial_text")
        assert dev["serial"] == (src["iSerial_text"] if has_serial else None)
        has_product = src.get("iProduct", "0") != "0" and src.get("iProduct_text")
        assert dev["product_string"] == (src["iProduct_text"] if has_product else None)
        # no udev database and no usb.ids in this tree: names are the plausible descriptors
        assert dev["product"] == plausible_name(dev["product_string"], dev["serial"])
        assert dev["vendor"] == plausible_name(dev["manufacturer_string"], dev["serial"])


@pytest.mark.corpus
def test_parallels_printer_path_never_becomes_a_name(tmp_path: Path) -> None:
    """cyme's Parallels VM: a product string with the user's home path is kept raw, not named."""
    host, _ = _tree(LSUSB / "cyme" / "lsusb_verbose.txt", tmp_path, with_ids=True)
    got = {d["product_string"]: d for d in Usb().collect(host)["devices"]}
    printer = got["Virtual Printer (/Users/john/Parallels/Arch.pvm/parallel.txt)"]
    assert (printer["vendor_id"], printer["product_id"]) == ("203a", "fffa")
    assert printer["vendor"] == "PARALLELS"  # usb.ids knows the vendor, not the product
    assert printer["product"] is None
    assert printer["serial"] == "SN0000"
    mouse = got["Virtual Mouse"]
    assert (mouse["vendor"], mouse["product"]) == ("PARALLELS", "Virtual Mouse")


@pytest.mark.corpus
def test_audient_evo4_named_from_its_descriptors(tmp_path: Path) -> None:
    """An audio interface whose vendor usb.ids does not know is named by its own strings."""
    host, _ = _tree(LSUSB / "jc" / "generic_lsusb-extra-hub-port-status-info.out", tmp_path,
                    with_ids=True)
    got = {(d["vendor_id"], d["product_id"]): d for d in Usb().collect(host)["devices"]}
    evo4 = got[("2708", "0006")]
    assert (evo4["vendor"], evo4["product"]) == ("Audient", "EVO4")
    assert evo4["device_class"] == "ef"
    assert evo4["serial"] is None  # iSerial 0: the device has none


@pytest.mark.corpus
@pytest.mark.skipif(INSTALLED is None, reason="usb.ids is not installed on this machine")
def test_usb_ids_names_match_lsusb() -> None:
    """Where this machine's usb.ids names both IDs, lsusb printed "<vendor> <product>" too.

    lsusb falls back to the descriptors where its list has no name (newer usbutils) or prints
    nothing (older): those entries are not a test of usb.ids and are left out.
    """
    ids = IdsFile(LiveHost("/"), USB_IDS_PATHS)
    compared = 0
    for path in sorted(LSUSB.glob("*/*")):
        for line in path.read_text("utf-8", "replace").splitlines():
            m = _HEADER.match(line)
            if not m:
                continue
            vendor, product = ids.vendor(m.group(3)), ids.device(m.group(3), m.group(4))
            if vendor and product:
                assert m.group(5).strip() == f"{vendor} {product}", (path.name, line)
                compared += 1
    assert compared >= 60, compared  # 64 of 78 entries in 12 files


def test_root_hubs_interfaces_and_gadgets(tmp_path: Path) -> None:
    """usbN root hubs and "1-1:1.0" interfaces are not listed; a 1d6b gadget on a port is."""
    devices = [
        {"bus": "001", "devnum": "001", "vid": "1d6b", "pid": "0002", "header": "",
         "bDeviceClass": "9", "iProduct": "2", "iProduct_text": "xHCI Host Controller"},
        # a Linux board plugged in as a USB gadget (multifunction composite): real hardware
        {"bus": "001", "devnum": "004", "vid": "1d6b", "pid": "0104", "header": "",
         "bDeviceClass": "239", "iProduct": "2", "iProduct_text": "Composite Gadget"},
    ]
    build_tree(devices, tmp_path)
    iface = tmp_path / "sys/devices/pci0000:00/0000:00:14.0/1-4/1-4:1.0"
    iface.mkdir(parents=True)
    (iface / "bInterfaceClass").write_text("02\n")
    (tmp_path / "sys/bus/usb/devices/1-4:1.0").symlink_to(
        "../../../devices/pci0000:00/0000:00:14.0/1-4/1-4:1.0")
    got = Usb().collect(ReplayHost(tmp_path))["devices"]
    assert [d["path"] for d in got] == ["1-4"]
    assert got[0]["vendor_id"] == "1d6b"


def test_sorted_by_port_path(tmp_path: Path) -> None:
    """1-1.2 before 1-1.10 before 2-1 (numeric per port, not lexical)."""
    for name in ("2-1", "1-1.10", "1-1.2", "1-1"):
        d = tmp_path / "sys/devices/x" / name
        d.mkdir(parents=True)
        (d / "idVendor").write_text("0d8c\n")
        bus = tmp_path / "sys/bus/usb/devices"
        bus.mkdir(parents=True, exist_ok=True)
        (bus / name).symlink_to(f"../../../devices/x/{name}")
    got = Usb().collect(ReplayHost(tmp_path))["devices"]
    assert [d["path"] for d in got] == ["1-1", "1-1.2", "1-1.10", "2-1"]


def test_garbage_attributes_never_raise(tmp_path: Path) -> None:
    """Non-hex IDs, non-UTF-8 strings, empty files: values become None, strings are decoded."""
    d = tmp_path / "sys/devices/x/3-2"
    d.mkdir(parents=True)
    (d / "idVendor").write_bytes(b"0d8c\n")
    (d / "idProduct").write_bytes(b"zz\xff")
    (d / "manufacturer").write_bytes(b"C-Media\xff\xfe Electronics")
    (d / "product").write_bytes(b"")
    (d / "bDeviceClass").write_bytes(b"100")
    (d / "dev").write_bytes(b"garbage")
    (d / "busnum").write_bytes(b"3")
    (d / "devnum").write_bytes(b"999")
    nodev = tmp_path / "sys/devices/x/3-3"
    nodev.mkdir(parents=True)
    (nodev / "idVendor").write_bytes(b"\x00\x00")
    bus = tmp_path / "sys/bus/usb/devices"
    bus.mkdir(parents=True)
    (bus / "3-2").symlink_to("../../../devices/x/3-2")
    (bus / "3-3").symlink_to("../../../devices/x/3-3")
    (bus / "3-4").symlink_to("../../../devices/x/missing")
    got = Usb().collect(ReplayHost(tmp_path))["devices"]
    assert len(got) == 1
    dev = got[0]
    assert dev["product_id"] is None
    assert dev["manufacturer_string"] == "C-Media\ufffd\ufffd Electronics"
    assert dev["product_string"] is None
    assert dev["device_class"] is None
    assert dev["vendor"] == "C-Media\ufffd\ufffd Electronics"  # no usb.ids in this tree


def test_no_usb_bus_is_empty(tmp_path: Path) -> None:
    """No /sys/bus/usb: an empty list."""
    assert Usb().collect(ReplayHost(tmp_path)) == {"devices": []}


@pytest.mark.parametrize(("text", "kept"), [
    ("USB Audio DAC", True), ("EVO4", True), ("Audient", True), ("USB2.0-CRW", True),
    ("AHA-2940U2/U2W /7890/7891", True), ("C-Media USB Headphone Set", True),
    ("Integrated_Webcam_HD", True), ("RTL8153", True),
    ("jane.doe@example.org", False), ("Contact: support+usb@maker.co.uk", False),
    ("/home/jane/dac", False), ("Virtual Printer (/Users/john/x.txt)", False),
    ("C:\\Users\\jane", False), ("~/dev", False), ("https://user@example.com", False),
    # cut by snd-usb-audio's 31-byte card name: no whole domain left
    ("Studio DAC of jane.doe@example.", False), ("DAC of jane@e", False),
    # serial-like manufacturer strings of real Dell webcams (shared/corpus/udev/checkbox)
    ("CN0CW54MLOG0079LB04LA00", False), ("CNFDH69F30401789B1B2", False),
    ("", False), ("   ", False),
])
def test_plausible_name(text: str, kept: bool) -> None:
    """Descriptor strings become names unless they look like personal data."""
    assert (plausible_name(text) is not None) is kept


def test_link_loop_skips_that_device_only(tmp_path: Path) -> None:
    """A link loop in a damaged capture costs one device, not the list."""
    d = tmp_path / "sys/devices/x/1-1"
    d.mkdir(parents=True)
    (d / "idVendor").write_text("0d8c\n")
    bus = tmp_path / "sys/bus/usb/devices"
    bus.mkdir(parents=True)
    (bus / "1-1").symlink_to("../../../devices/x/1-1")
    (bus / "1-2").symlink_to("1-2")
    assert [d["path"] for d in Usb().collect(ReplayHost(tmp_path))["devices"]] == ["1-1"]
