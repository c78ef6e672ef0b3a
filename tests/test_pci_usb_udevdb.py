"""The pci and usb collectors on 57 real machines' udev databases (shared/corpus/udev/checkbox).

Each corpus file is the ``udevadm info --export-db`` of one machine (GPL-3.0, canonical/checkbox:
read in place, never copied).  :func:`build_tree` turns one into the two things the collectors read
on such a machine: the udev database records (``/run/udev/data/+pci:<slot>``, ``c189:<minor>``,
holding the record's ``E:`` properties) and the minimal sysfs tree those records describe
(``/sys/bus/pci/devices/<slot>`` with its uevent file, which is where the record's DRIVER, PCI_ID,
PCI_CLASS, PCI_SUBSYS_ID, PCI_SLOT_NAME and MODALIAS come from, and the same values as the
vendor/device/class/subsystem attribute files and driver link; ``/sys/bus/usb/devices/<name>``
with its uevent file (MAJOR, MINOR, DRIVER, PRODUCT, TYPE, BUSNUM, DEVNUM...), the same values
as idVendor/idProduct/bDeviceClass attribute files, the string descriptors from
ID_VENDOR_ENC/ID_MODEL_ENC/ID_SERIAL_SHORT, and busnum/devnum/dev).  The tree is derived, not
captured: the attributes export-db does not show (PCI revision, USB speed) are absent, and the
collectors must cope with that too.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors._hwids import PCI_IDS_PATHS, USB_IDS_PATHS
from collectors.pci import Pci
from collectors.usb import Usb
from evo_agent.hostroot import ReplayHost

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "corpus"
EXPORTS = CORPUS / "udev" / "checkbox"
pytestmark = pytest.mark.corpus

Record = dict[str, object]


def parse_export_db(text: str) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield (devpath, properties) for each record of an ``udevadm info --export-db`` output."""
    path: str | None = None
    props: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if path is not None:
                yield path, props
            path, props = None, {}
        elif line.startswith("P: "):
            path = line[3:].strip()
        elif line.startswith("E: ") and "=" in line:
            key, _, value = line[3:].partition("=")
            props[key] = value


def _udev_unescape(value: str) -> str:
    """Decode udev's \\xNN escapes (ID_VENDOR_ENC, ID_MODEL_ENC)."""
    raw = re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]),
                 value.encode("utf-8"))
    return raw.decode("utf-8", "replace")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, "utf-8")


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(path):
        os.symlink(target, path)


def _up(devpath: str) -> str:
    """Return the relative path from sys/devices/<devpath> back to sys/."""
    return "../" * (devpath.strip("/").count("/") + 1)


def _db_record(props: dict[str, str]) -> str:
    # udev writes "E:KEY=VALUE" lines (no space) into /run/udev/data
    return "".join(f"E:{key}={value}\n" for key, value in props.items())


def build_tree(export: Path, root: Path) -> None:
    """Write the udev database and minimal sysfs of one export-db capture under ``root``."""
    for devpath, props in parse_export_db(export.read_text("utf-8", "replace")):
        sysdir = root / "sys" / devpath.lstrip("/")
        up = _up(devpath)
        if props.get("SUBSYSTEM") == "pci" and "PCI_SLOT_NAME" in props and "PCI_ID" in props:
            # The sysfs name, not PCI_SLOT_NAME: IPU7_DRIVER's intel-ipu7 driver renamed its
            # device, whose uevent then says PCI_SLOT_NAME=intel-ipu7 for 0000:00:05.0.
            slot = devpath.rstrip("/").rsplit("/", 1)[-1]
            vid, _, did = props["PCI_ID"].partition(":")
            _write(sysdir / "vendor", f"0x{vid.lower()}\n")
            _write(sysdir / "device", f"0x{did.lower()}\n")
            if "PCI_CLASS" in props:
                _write(sysdir / "class", f"0x{int(props['PCI_CLASS'], 16):06x}\n")
            if "PCI_SUBSYS_ID" in props:
                svid, _, sdid = props["PCI_SUBSYS_ID"].partition(":")
                _write(sysdir / "subsystem_vendor", f"0x{svid.lower()}\n")
                _write(sysdir / "subsystem_device", f"0x{sdid.lower()}\n")
            if "DRIVER" in props:
                _link(sysdir / "driver", f"{up}bus/pci/drivers/{props['DRIVER']}")
            # these properties of the record are the kernel's uevent file, as it was
            _write(sysdir / "uevent", "".join(
                f"{key}={props[key]}\n" for key in
                ("DRIVER", "PCI_CLASS", "PCI_ID", "PCI_SUBSYS_ID", "PCI_SLOT_NAME", "MODALIAS")
                if key in props))
            _link(root / "sys/bus/pci/devices" / slot, f"../../../{devpath.lstrip('/')}")
            _write(root / "run/udev/data" / f"+pci:{slot}", _db_record(props))
        elif props.get("SUBSYSTEM") == "usb" and props.get("DEVTYPE") == "usb_device":
            name = devpath.rstrip("/").rsplit("/", 1)[-1]
            parts = props.get("PRODUCT", "").split("/")
            if len(parts) < 2:
                continue
            vid, pid = (f"{int(p, 16):04x}" for p in parts[:2])
            _write(sysdir / "idVendor", f"{vid}\n")
            _write(sysdir / "idProduct", f"{pid}\n")
            cls = props.get("TYPE", "").split("/")[0]
            if cls.isdigit():
                _write(sysdir / "bDeviceClass", f"{int(cls):02x}\n")
            # usb_id (udev) falls back to the ID when a device has no string descriptor, so a
            # value equal to the ID means there was none.
            if props.get("ID_VENDOR_ENC") and props.get("ID_VENDOR") != props.get("ID_VENDOR_ID"):
                _write(sysdir / "manufacturer", _udev_unescape(props["ID_VENDOR_ENC"]) + "\n")
            if props.get("ID_MODEL_ENC") and props.get("ID_MODEL") != props.get("ID_MODEL_ID"):
                _write(sysdir / "product", _udev_unescape(props["ID_MODEL_ENC"]) + "\n")
            if props.get("ID_SERIAL_SHORT"):
                _write(sysdir / "serial", props["ID_SERIAL_SHORT"] + "\n")
            for key, attr in (("BUSNUM", "busnum"), ("DEVNUM", "devnum")):
                if key in props:
                    _write(sysdir / attr, f"{int(props[key])}\n")
            if "MAJOR" in props and "MINOR" in props:
                _write(sysdir / "dev", f"{props['MAJOR']}:{props['MINOR']}\n")
                _write(root / "run/udev/data" / f"c{props['MAJOR']}:{props['MINOR']}",
                       _db_record(props))
            if "DRIVER" in props:
                _link(sysdir / "driver", f"{up}bus/usb/drivers/{props['DRIVER']}")
            _write(sysdir / "uevent", "".join(
                f"{key}={props[key]}\n" for key in
                ("MAJOR", "MINOR", "DEVNAME", "DEVTYPE", "DRIVER", "PRODUCT", "TYPE", "BUSNUM",
                 "DEVNUM") if key in props))
            _link(root / "sys/bus/usb/devices" / name, f"../../../{devpath.lstrip('/')}")


def expected(export: Path) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """Return the PCI records by slot and the USB device records by sysfs name of one export."""
    pci: dict[str, dict[str, str]] = {}
    usb: dict[str, dict[str, str]] = {}
    for devpath, props in parse_export_db(export.read_text("utf-8", "replace")):
        if props.get("SUBSYSTEM") == "pci" and "PCI_SLOT_NAME" in props and "PCI_ID" in props:
            pci[devpath.rstrip("/").rsplit("/", 1)[-1]] = props
        elif (props.get("SUBSYSTEM") == "usb" and props.get("DEVTYPE") == "usb_device"
              and len(props.get("PRODUCT", "").split("/")) >= 2):
            usb[devpath.rstrip("/").rsplit("/", 1)[-1]] = props
    return pci, usb


EXPORT_FILES = sorted(EXPORTS.glob("*.txt")) if EXPORTS.is_dir() else []


def _ids_file(paths: tuple[str, ...]) -> Path | None:
    for p in paths:
        if Path(p).is_file():
            return Path(p).resolve()
    return None


@pytest.fixture(scope="module")
def ids_copies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Copies of this machine's pci.ids/usb.ids, hard-linked into trees that want them."""
    out = tmp_path_factory.mktemp("ids")
    copies = {}
    for kind, paths in (("pci", PCI_IDS_PATHS), ("usb", USB_IDS_PATHS)):
        src = _ids_file(paths)
        if src is not None:
            copies[kind] = out / f"{kind}.ids"
            shutil.copyfile(src, copies[kind])
    return copies


def _add_ids(root: Path, copies: dict[str, Path]) -> None:
    for kind, src in copies.items():
        dest = root / "usr/share/misc" / f"{kind}.ids"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dest)
        except OSError:
            shutil.copyfile(src, dest)


@pytest.mark.parametrize("export", EXPORT_FILES, ids=lambda p: p.stem)
def test_udev_database_names_and_sysfs_ids(export: Path, tmp_path: Path) -> None:
    """Every PCI function and USB device of the export is listed with its IDs and udev's names."""
    build_tree(export, tmp_path)
    host = ReplayHost(tmp_path)  # no pci.ids/usb.ids in this tree: names come from udev only
    pci = Pci().collect(host)["devices"]
    usb = Usb().collect(host)["devices"]
    want_pci, want_usb = expected(export)

    assert [d["address"] for d in pci] == sorted(want_pci)
    for dev in pci:
        props = want_pci[dev["address"]]
        vid, _, did = props["PCI_ID"].lower().partition(":")
        assert (dev["vendor_id"], dev["device_id"]) == (vid, did)
        if "PCI_CLASS" in props:
            assert dev["class_id"] == f"{int(props['PCI_CLASS'], 16):06x}"[:4]
        assert dev["driver"] == props.get("DRIVER")
        assert dev["vendor"] == props.get("ID_VENDOR_FROM_DATABASE")
        assert dev["device"] == props.get("ID_MODEL_FROM_DATABASE")
        assert dev["revision"] is None  # export-db does not show it: absent, not invented

    roots = {name for name in want_usb if re.fullmatch(r"usb\d+", name)}
    assert {d["path"] for d in usb} == set(want_usb) - roots
    for dev in usb:
        props = want_usb[str(dev["path"])]
        vid, pid = (f"{int(p, 16):04x}" for p in props["PRODUCT"].split("/")[:2])
        assert (dev["vendor_id"], dev["product_id"]) == (vid, pid)
        assert dev["serial"] == (props.get("ID_SERIAL_SHORT") or None)
        if props.get("ID_VENDOR_FROM_DATABASE"):
            assert dev["vendor"] == props["ID_VENDOR_FROM_DATABASE"]
        if props.get("ID_MODEL_FROM_DATABASE"):
            assert dev["product"] == props["ID_MODEL_FROM_DATABASE"]


def _tree(name: str, tmp_path: Path) -> ReplayHost:
    export = EXPORTS / f"{name}.txt"
    if not export.is_file():
        pytest.skip(f"{export} is not in the corpus")
    build_tree(export, tmp_path)
    return ReplayHost(tmp_path)


def _by(devices: list[dict[str, object]], key: str) -> dict[object, dict[str, object]]:
    return {d[key]: d for d in devices}


def test_named_machine_dell_latitude_capture_metadata(tmp_path: Path) -> None:
    """Values of named devices of one machine (a Dell with a Sunrise Point-LP PCH)."""
    host = _tree("CAPTURE_METADATA", tmp_path)
    pci = _by(Pci().collect(host)["devices"], "address")
    audio = pci["0000:00:1f.3"]
    assert audio == {
        "address": "0000:00:1f.3", "vendor_id": "8086", "device_id": "9d71", "class_id": "0403",
        "prog_if": "00", "revision": None, "subsystem_vendor_id": "1028",
        "subsystem_device_id": "083a", "vendor": "Intel Corporation",
        "device": "Sunrise Point-LP HD Audio", "driver": "snd_hda_intel",
    }
    usb = _by(Usb().collect(host)["devices"], "path")
    assert "usb1" not in usb  # the xHCI root hub (1d6b:0002) is not a device anyone plugged in
    reader = usb["1-6"]
    assert (reader["vendor_id"], reader["product_id"]) == ("0bda", "0129")
    assert reader["vendor"] == "Realtek Semiconductor Corp."
    assert reader["product"] == "RTS5129 Card Reader Controller"
    assert reader["manufacturer_string"] == "Generic"
    assert reader["product_string"] == "USB2.0-CRW"
    assert reader["serial"] == "20100201396000000"
    assert reader["device_class"] == "ff"
    assert reader["driver"] == "usb"


def test_old_udev_without_hwdb_falls_back_to_id_files(tmp_path: Path,
                                                      ids_copies: dict[str, Path]) -> None:
    """DELL_INSPIRON_3048's udev stored no hwdb names for USB: usb.ids / descriptors name them."""
    if "usb" not in ids_copies or "pci" not in ids_copies:
        pytest.skip("hwdata's pci.ids/usb.ids are not installed on this machine")
    host = _tree("DELL_INSPIRON_3048", tmp_path)
    _add_ids(tmp_path, ids_copies)
    usb = _by(Usb().collect(host)["devices"], "path")
    mouse = usb["3-7"]
    assert (mouse["vendor_id"], mouse["product_id"]) == ("192f", "0416")
    assert mouse["manufacturer_string"] is None  # the mouse has no manufacturer string
    assert mouse["product_string"] == "USB Optical Mouse"
    # 192f is Avago in usb.ids; its 0416 product is named there too (ADNS-5700) on recent lists
    assert mouse["vendor"] == "Avago Technologies, Pte."
    assert mouse["product"] in ("ADNS-5700 Optical Mouse Controller (3-button)",
                                "USB Optical Mouse")
    cam = usb["3-4"]
    # The webcam's manufacturer string is a serial-like code; never a fallback name.
    assert cam["manufacturer_string"] == "CNFDH69F30401789B1B2"
    assert cam["vendor"] != "CNFDH69F30401789B1B2"
    pci = _by(Pci().collect(host)["devices"], "address")
    assert all(d["vendor"] for d in pci.values()), "every PCI vendor ID is in pci.ids"


def test_id_files_agree_with_udev_hwdb_names() -> None:
    """The fallback names (this machine's pci.ids/usb.ids) are those udev's hwdb gave, mostly.

    hwdb is built from the same files, in other versions: names get renamed between versions
    ("Standard Microsystems Corp." -> "Microchip Technology, Inc. (formerly SMSC)", "Root Port"
    -> "Root Port #5"), and hwdb appends the subsystem's name in parentheses for known
    subsystems ("Wireless 7260 (Dual Band Wireless-AC 7260)").  Measured on the 57 exports with
    pci.ids 2023.04.10 / usb.ids 2025.07.26: PCI vendors 2042/2072, PCI devices 1301/1445, USB
    names 338/354 agree; the bounds below leave room for a newer hwdata.
    """
    pci_paths = [p for p in PCI_IDS_PATHS if Path(p).is_file()]
    usb_paths = [p for p in USB_IDS_PATHS if Path(p).is_file()]
    if not pci_paths or not usb_paths:
        pytest.skip("hwdata's pci.ids/usb.ids are not installed on this machine")
    from collectors._hwids import pci_ids, usb_ids
    from evo_agent.hostroot import LiveHost

    pci, usb = pci_ids(LiveHost("/")), usb_ids(LiveHost("/"))
    counts = {"pci_vendor": [0, 0], "pci_device": [0, 0], "usb": [0, 0]}
    for export in EXPORT_FILES:
        want_pci, want_usb = expected(export)
        for props in want_pci.values():
            vid, _, did = props["PCI_ID"].lower().partition(":")
            if "ID_VENDOR_FROM_DATABASE" in props:
                counts["pci_vendor"][0] += 1
                counts["pci_vendor"][1] += pci.vendor(vid) == props["ID_VENDOR_FROM_DATABASE"]
            if "ID_MODEL_FROM_DATABASE" in props:
                name, hwdb = pci.device(vid, did), props["ID_MODEL_FROM_DATABASE"]
                counts["pci_device"][0] += 1
                counts["pci_device"][1] += bool(name) and (hwdb == name
                                                           or hwdb.startswith(f"{name} ("))
        for props in want_usb.values():
            vid, pid = (f"{int(p, 16):04x}" for p in props["PRODUCT"].split("/")[:2])
            for key, name in (("ID_VENDOR_FROM_DATABASE", usb.vendor(vid)),
                              ("ID_MODEL_FROM_DATABASE", usb.device(vid, pid))):
                if key in props:
                    counts["usb"][0] += 1
                    counts["usb"][1] += name == props[key]
    assert counts["pci_vendor"][0] > 2000 and counts["pci_vendor"][1] >= 0.95 * counts[
        "pci_vendor"][0], counts
    assert counts["pci_device"][0] > 1400 and counts["pci_device"][1] >= 0.85 * counts[
        "pci_device"][0], counts
    assert counts["usb"][0] > 300 and counts["usb"][1] >= 0.9 * counts["usb"][0], counts
