"""The disks collector on real machines' data: udev databases of ~25 machines (checkbox),
node_exporter's udev files, ghw sysfs snapshots, and hand-built trees laid out as the kernel lays
out sysfs.

The checkbox captures are ``udevadm info --export-db`` (GPL-3.0, read in place from the corpus).
:func:`tree_from_export_db` turns one into what the collector reads on a live system: udev's
database files ``/run/udev/data/bMAJ:MIN`` and a minimal sysfs (``/sys/block``, ``/sys/dev/block``,
``/sys/class/block`` links into ``/sys/devices``, ``dev``/``partition``/``uevent`` files, the SCSI
``type`` from the record's MODALIAS, md ``slaves/`` from the record's MD_DEVICE_* properties).
The root mount is not in an export-db: each test plants a mountinfo naming the root partition and
says which.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from collectors._udevdb import decode_escapes
from collectors._udevdb import parse_properties as parse_udev_data
from collectors.disks import Disks, natural_key, parse_mountinfo, parse_vpd_pg80
from evo_agent.hostroot import LiveHost, RecordingHost, ReplayHost
from evo_agent.policy import apply, load_policy
from tests.ttar import unpack

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "corpus"
CHECKBOX = CORPUS / "udev" / "checkbox"
GHW = CORPUS / "sysfs" / "ghw-snapshots"
DATA = Path(__file__).resolve().parent / "data" / "disks"


# Properties the kernel itself puts in the uevent (sysfs), not udev rules: a real
# /run/udev/data file does not hold them, so the builder leaves them out.
_KERNEL_PROPS = {"DEVPATH", "DEVNAME", "DEVTYPE", "MAJOR", "MINOR", "SUBSYSTEM", "DISKSEQ", "PARTN",
                 "DRIVER", "MODALIAS", "DEVLINKS", "TAGS", "CURRENT_TAGS", "USEC_INITIALIZED"}


def export_db_records(text: str) -> list[dict[str, Any]]:
    """Split ``udevadm info --export-db`` output into records {P, N, S: [...], E: {...}}."""
    records = []
    for chunk in re.split(r"\n\s*\n", text):
        rec: dict[str, Any] = {"P": None, "N": None, "S": [], "E": {}}
        for line in chunk.splitlines():
            tag, _, value = line.partition(": ")
            if tag == "P":
                rec["P"] = value
            elif tag == "N":
                rec["N"] = value
            elif tag == "S":
                rec["S"].append(value)
            elif tag == "E":
                key, _, val = value.partition("=")
                rec["E"][key] = val
        if rec["P"]:
            records.append(rec)
    return records


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(link):
        os.symlink(os.path.relpath(target, link.parent), link)


def tree_from_export_db(text: str, root: Path) -> list[str]:
    """Lay out the block devices of an export-db under ``root``; return their kernel names."""
    sys_root = root / "sys"
    names: dict[str, Path] = {}
    block = []
    for rec in export_db_records(text):
        env = rec["E"]
        devpath = rec["P"]
        sysdir = sys_root / devpath.lstrip("/")
        if env.get("SUBSYSTEM") == "scsi" and env.get("DEVTYPE") == "scsi_device":
            m = re.match(r"scsi:t-0x([0-9a-fA-F]+)", env.get("MODALIAS", ""))
            if m:  # sysfs prints the peripheral device type in decimal
                sysdir.mkdir(parents=True, exist_ok=True)
                (sysdir / "type").write_text(f"{int(m.group(1), 16)}\n")
            continue
        if env.get("SUBSYSTEM") != "block":
            continue
        if "MAJOR" not in env or "MINOR" not in env:
            # a hidden disk (NVMe multipath controller path nvmeXcYnZ): in /sys/block with
            # hidden=1, but no device number and no /dev node, hence no N: line
            sysdir.mkdir(parents=True, exist_ok=True)
            (sysdir / "hidden").write_text("1\n")
            _link(sys_root / "block" / os.path.basename(devpath), sysdir)
            continue
        name = rec["N"] or os.path.basename(devpath)
        devnum = f"{env['MAJOR']}:{env['MINOR']}"
        sysdir.mkdir(parents=True, exist_ok=True)
        (sysdir / "dev").write_text(devnum + "\n")
        (sysdir / "uevent").write_text(
            f"MAJOR={env['MAJOR']}\nMINOR={env['MINOR']}\nDEVNAME={name}\n"
            f"DEVTYPE={env.get('DEVTYPE', 'disk')}\n")
        if env.get("DEVTYPE") == "partition":
            number = (env.get("PARTN") or env.get("ID_PART_ENTRY_NUMBER")
                      or re.sub(r"^\D*", "", name))
            (sysdir / "partition").write_text(f"{number or 1}\n")
        else:
            _link(sys_root / "block" / name, sysdir)
            if "/block/" in devpath and not devpath.startswith("/devices/virtual/block/"):
                parent = sys_root / devpath.split("/block/")[0].lstrip("/")
                parent.mkdir(parents=True, exist_ok=True)
                _link(sysdir / "device", parent)
        _link(sys_root / "dev" / "block" / devnum, sysdir)
        _link(sys_root / "class" / "block" / name, sysdir)
        data = root / "run" / "udev" / "data" / f"b{devnum}"
        data.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"S:{s}" for s in rec["S"]]
        if "USEC_INITIALIZED" in env:
            lines.append(f"I:{env['USEC_INITIALIZED']}")
        lines += [f"E:{k}={v}" for k, v in env.items() if k not in _KERNEL_PROPS]
        data.write_text("\n".join(lines) + "\n")
        names[name] = sysdir
        block.append(rec)
    # md arrays list their members in MD_DEVICE_<x>_DEV (mdadm --detail --export, imported by
    # 63-md-raid-arrays.rules); the kernel's slaves/ links name the same devices.
    for rec in block:
        name = rec["N"] or os.path.basename(rec["P"])
        for key, value in rec["E"].items():
            if re.fullmatch(r"(UDISKS_)?MD_DEVICE_\w+_DEV", key) and value.startswith("/dev/"):
                member = value[5:]
                if member in names and rec["E"].get("DEVTYPE") == "disk":
                    _link(names[name] / "slaves" / member, names[member])
    return sorted(names, key=natural_key)


def write_mountinfo(root: Path, lines: list[str]) -> None:
    path = root / "proc" / "self" / "mountinfo"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def root_line(devnum: str, fstype: str, source: str, opts: str = "rw") -> str:
    return f"25 1 {devnum} / / rw,relatime shared:1 - {fstype} {source} {opts}"


def collect_checkbox(tmp_path: Path, capture: str, root_mount: str | None = None) -> dict[str, Any]:
    text = (CHECKBOX / f"{capture}.txt").read_text("utf-8", "replace")
    tree_from_export_db(text, tmp_path)
    lines = ["22 25 0:21 / /proc rw,relatime - proc proc rw",
             "23 25 0:22 / /sys rw,relatime - sysfs sysfs rw"]
    if root_mount:
        lines.insert(0, root_mount)
    write_mountinfo(tmp_path, lines)
    return Disks().collect(ReplayHost(tmp_path))


# ---- rip drive: every capture of the corpus with an optical drive --------------------------------
# Expected values read by eye from each capture's sr0/sr1 record (ID_MODEL_ENC, ID_SERIAL_SHORT).
RIP_DRIVES = {
    "HP_DVDRW_WITH_ISO9660_DISC": ("sr0", "hp HLDS DVDRW GUD1N", "7TNEBSAKKLY730"),
    "ONE_CDROM_ONLY": ("sr0", "BDDVDW SE-506BB", None),
    "VIRT_CDROM": ("sr0", "Virtual CDROM0", "AAAABBBBCCCC1"),
    "DELL_POWEREDGE_R820_NVME": ("sr0", "PLDS DVD+/-RW DS-8A8SH", "96R305508123243IQA00"),
    "DISK_SAMSUNG_KIOXIA": ("sr0", "Virtual CDROM0", "AAAABBBBCCCC1"),
    "VM_WITH_FLOPPY": ("sr0", "VMware Virtual SATA CDRW Drive", "00000000000000000001"),
}


@pytest.mark.parametrize("capture", sorted(RIP_DRIVES))
def test_rip_drive_named_captures(tmp_path: Path, capture: str) -> None:
    raw = collect_checkbox(tmp_path, capture)
    device, model, serial = RIP_DRIVES[capture]
    assert (raw["rip_drive_device"], raw["rip_drive_model"], raw["rip_drive_serial"]) == (
        device, model, serial)


def _optical_captures() -> list[str]:
    if not CHECKBOX.is_dir():
        return []
    return sorted(p.stem for p in CHECKBOX.glob("*.txt")
                  if "ID_CDROM=1" in p.read_text("utf-8", "replace"))


@pytest.mark.parametrize("capture", _optical_captures())
def test_every_optical_capture_gives_a_rip_drive(tmp_path: Path, capture: str) -> None:
    raw = collect_checkbox(tmp_path, capture)
    assert raw["rip_drive_device"] is not None and raw["rip_drive_device"].startswith("sr")
    assert raw["rip_drive_model"], "cdrom_id and ata_id/scsi_id give every drive a model"
    assert "_" not in raw["rip_drive_model"] or " " in raw["rip_drive_model"]
    names = [d["name"] for d in raw["drives"]]
    assert raw["rip_drive_device"] in names
    assert all(not re.match(r"(loop|ram|dm-|md)\d", n) for n in names)


def optical_chunks(capture: str, name: str, new_name: str) -> str:
    """Return the export-db records of one optical drive of a capture (its block device and its
    SCSI device), renamed ``new_name`` with the minor number that name has (srN is 11:N)."""
    text = (CHECKBOX / f"{capture}.txt").read_text("utf-8", "replace")
    records = re.split(r"\n\s*\n", text)
    chunks = [c for c in records if re.search(rf"^P: \S+/block/{name}$", c, re.M)]
    assert len(chunks) == 1, (capture, name)
    block = chunks[0]
    scsi_path = re.search(rf"^P: (\S+)/block/{name}$", block, re.M)
    assert scsi_path
    scsi = [c for c in records if re.search(rf"^P: {re.escape(scsi_path.group(1))}$", c, re.M)]
    minor = int(new_name[2:])
    block = re.sub(rf"/block/{name}$", f"/block/{new_name}", block, flags=re.M)
    block = re.sub(rf"^N: {name}$", f"N: {new_name}", block, flags=re.M)
    block = re.sub(rf"^E: DEVNAME=/dev/{name}$", f"E: DEVNAME=/dev/{new_name}", block, flags=re.M)
    block = re.sub(r"^E: MINOR=\d+$", f"E: MINOR={minor}", block, flags=re.M)
    return "\n\n".join([*scsi, block]) + "\n\n"


def collect_merged(tmp_path: Path, *parts: tuple[str, str, str]) -> dict[str, Any]:
    """Run the collector on the optical drives (capture, name in it, name here) put together."""
    tree_from_export_db("".join(optical_chunks(*part) for part in parts), tmp_path)
    write_mountinfo(tmp_path, [])
    raw = Disks().collect(ReplayHost(tmp_path))
    assert [d["name"] for d in raw["drives"]] == sorted((p[2] for p in parts), key=natural_key)
    return raw


# The corpus has no machine with a real optical drive beside a virtual one, so the records of
# named captures are put together, each drive under its own device path.  AMI's "Virtual CDROM0"
# (the BMC's virtual media on USB; VIRT_CDROM, DISK_SAMSUNG_KIOXIA, NVIDIA_DGXA100) stands for
# every USB device that shows a CD-ROM of its own (network adapters and modems in their driver-CD
# mode): an sr device on USB for which cdrom_id finds no disc format.
AMI = ("VIRT_CDROM", "sr0", "sr0")
RIP_RANKING = {
    # a SATA DVD writer beats the virtual CD-ROM named before it
    "sata_writer_after_virtual": (
        [AMI, ("HP_DVDRW_WITH_ISO9660_DISC", "sr0", "sr1")],
        ("sr1", "hp HLDS DVDRW GUD1N", "7TNEBSAKKLY730")),
    # a read-only SATA DVD-ROM (ID_CDROM_CD and ID_CDROM_DVD only) too
    "sata_dvd_rom_after_virtual": (
        [AMI, ("XEON", "sr0", "sr1")], ("sr1", "hp DVD D DS8DBSH", "426428902161")),
    # a USB Blu-ray writer beats a USB device without disc formats
    "usb_writer_after_virtual": (
        [AMI, ("ONE_CDROM_ONLY", "sr0", "sr2")], ("sr2", "BDDVDW SE-506BB", None)),
    # a drive not on USB beats a USB one, both with disc formats
    "sata_after_usb_writer": (
        [("ONE_CDROM_ONLY", "sr0", "sr0"), ("HP_DVDRW_WITH_ISO9660_DISC", "sr0", "sr1")],
        ("sr1", "hp HLDS DVDRW GUD1N", "7TNEBSAKKLY730")),
    # QEMU's CD-ROM as cdrom_id reports it (CD, DVD, MRW): the drive of a VM
    "qemu_cdrom_after_virtual": (
        [AMI, ("VIRT_CDROM", "sr1", "sr1"), ("IBM_PSERIES_POWER7", "sr0", "sr2")],
        ("sr2", "QEMU CD-ROM", "scsi0-cd2")),
    # within a rank, the natural order of names: sr2 before sr10
    "natural_order_within_a_rank": (
        [("VM_WITH_FLOPPY", "sr1", "sr10"), ("VM_WITH_FLOPPY", "sr0", "sr2"), AMI],
        ("sr2", "VMware Virtual SATA CDRW Drive", "00000000000000000001")),
    # only virtual CD-ROMs: still a rip drive, the first by name
    "only_virtual": (
        [("VIRT_CDROM", "sr1", "sr1"), AMI], ("sr0", "Virtual CDROM0", "AAAABBBBCCCC1")),
}


@pytest.mark.parametrize("case", sorted(RIP_RANKING))
def test_rip_drive_ranking_on_named_captures(tmp_path: Path, case: str) -> None:
    parts, expected = RIP_RANKING[case]
    raw = collect_merged(tmp_path, *parts)
    assert (raw["rip_drive_device"], raw["rip_drive_model"], raw["rip_drive_serial"]) == expected
    assert all("reads_discs" not in d and "optical" not in d for d in raw["drives"])


def test_qemu_ide_cd_beats_a_usb_virtual_cdrom(tmp_path: Path) -> None:
    # The appliance VM (tests/vm/vmlib.py): QEMU -device ide-cd on the q35's AHCI, which answers
    # GET CONFIGURATION with the DVD-ROM and CD-ROM profiles; cdrom_id's properties as for QEMU's
    # CD-ROM in IBM_PSERIES_POWER7.  A USB virtual CD-ROM (VIRT_CDROM's record) is sr0.
    tree_from_export_db(optical_chunks(*AMI), tmp_path)
    _scsi_disk(tmp_path, 1, "sr1", "11:1", "QEMU DVD-ROM", vpd_serial=b"QM00003", scsi_type=5)
    (tmp_path / "run" / "udev" / "data" / "b11:1").write_text(
        "S:cdrom\nE:ID_CDROM=1\nE:ID_CDROM_CD=1\nE:ID_CDROM_DVD=1\nE:ID_CDROM_MRW=1\n"
        "E:ID_CDROM_MRW_W=1\nE:ID_ATA=1\nE:ID_TYPE=cd\nE:ID_BUS=ata\n"
        "E:ID_MODEL=PIONEER_BD-RW_BDR-XD07\nE:ID_SERIAL_SHORT=EVO0123456\n")
    write_mountinfo(tmp_path, [])
    raw = Disks().collect(ReplayHost(tmp_path))
    assert (raw["rip_drive_device"], raw["rip_drive_model"], raw["rip_drive_serial"]) == (
        "sr1", "PIONEER BD-RW BDR-XD07", "EVO0123456")


def test_media_in_a_virtual_cdrom_is_no_disc_format(tmp_path: Path) -> None:
    # A BMC's virtual CD-ROM with an ISO in it: cdrom_id adds ID_CDROM_MEDIA_* (the disc, as for
    # the ISO9660 disc of HP_DVDRW_WITH_ISO9660_DISC), still no drive capability.  The USB
    # Blu-ray writer of ONE_CDROM_ONLY (sr1) stays ahead of it.
    ami = optical_chunks(*AMI).rstrip("\n") + (
        "\nE: ID_CDROM_MEDIA=1\nE: ID_CDROM_MEDIA_CD=1\nE: ID_CDROM_MEDIA_DVD=1"
        "\nE: ID_CDROM_MEDIA_STATE=complete\n\n")
    tree_from_export_db(ami + optical_chunks("ONE_CDROM_ONLY", "sr0", "sr1"), tmp_path)
    assert "ID_CDROM_MEDIA_CD=1" in (tmp_path / "run/udev/data/b11:0").read_text()
    write_mountinfo(tmp_path, [])
    raw = Disks().collect(ReplayHost(tmp_path))
    assert (raw["rip_drive_device"], raw["rip_drive_model"]) == ("sr1", "BDDVDW SE-506BB")


def test_optical_corpus_is_what_the_readme_says() -> None:
    # guards the parametrisation above against an empty or moved corpus
    assert len(_optical_captures()) >= 20


# ---- boot drive on real captures (the root partition is planted; say which) --------------------
def test_boot_sata_partition_one_cdrom_only(tmp_path: Path) -> None:
    # sdc2 (8:34) is the ext4 partition of the Crucial M4 SSD in ONE_CDROM_ONLY
    raw = collect_checkbox(tmp_path, "ONE_CDROM_ONLY", root_line("8:34", "ext4", "/dev/sdc2"))
    assert raw["boot_drive_device"] == "sdc"
    assert raw["boot_drive_model"] == "M4-CT064M4SSD3"
    assert raw["boot_drive_serial"] == "000000001311036DECE2"
    sdc = next(d for d in raw["drives"] if d["name"] == "sdc")
    assert sdc["transport"] == "sata" and sdc["wwn"] == "0x500a0751036dece2"


def test_boot_perc_raid_volume_dell_r820(tmp_path: Path) -> None:
    # sda2 (8:2) ext4 on the PERC H710 virtual disk; the NVMe drives have no udev identity there
    raw = collect_checkbox(tmp_path, "DELL_POWEREDGE_R820_NVME",
                           root_line("8:2", "ext4", "/dev/sda2"))
    assert (raw["boot_drive_device"], raw["boot_drive_model"], raw["boot_drive_serial"]) == (
        "sda", "PERC H710", "6d4ae5209cd049001ae31f4f0656fc29")


def test_boot_nvme_partition_samsung_kioxia(tmp_path: Path) -> None:
    # nvme0n1p2 (259:19) ext4; the KIOXIA namespaces sit under /devices/virtual/nvme-subsystem
    raw = collect_checkbox(tmp_path, "DISK_SAMSUNG_KIOXIA",
                           root_line("259:19", "ext4", "/dev/nvme0n1p2"))
    assert (raw["boot_drive_device"], raw["boot_drive_model"], raw["boot_drive_serial"]) == (
        "nvme0n1", "SAMSUNG MZ1L21T9HCLS-00A07", "S666NT0X601348")
    names = [d["name"] for d in raw["drives"]]
    # multipath namespaces under /devices/virtual/nvme-subsystem are drives; their hidden
    # per-controller paths (nvme2c2n1...) are not
    assert "nvme2n1" in names
    assert (tmp_path / "sys/block/nvme2c2n1/hidden").exists()
    assert not [n for n in names if re.fullmatch(r"nvme\d+c\d+n\d+", n)]
    kioxia = next(d for d in raw["drives"] if d["name"] == "nvme2n1")
    assert kioxia["model"] == "KIOXIA KCMYDRUG3T84" and kioxia["transport"] == "nvme"


def test_boot_emmc(tmp_path: Path) -> None:
    # mmcblk0p3 (179:3) ext4 on the eMMC of EMMC_AS_MAIN_DRIVE; udev has ID_NAME/ID_SERIAL (mmc)
    raw = collect_checkbox(tmp_path, "EMMC_AS_MAIN_DRIVE",
                           root_line("179:3", "ext4", "/dev/mmcblk0p3"))
    assert (raw["boot_drive_device"], raw["boot_drive_model"], raw["boot_drive_serial"]) == (
        "mmcblk0", "DF4032", "0xb7223e1a")
    assert raw["rip_drive_device"] is None
    # boot0/boot1/rpmb are hardware partitions of the same eMMC, not drives
    assert [d["name"] for d in raw["drives"]] == ["mmcblk0"]


def test_boot_intel_vroc_md_raid(tmp_path: Path) -> None:
    # md126p1 (259:8) on the IMSM RAID0 md126 of With_VRAID; members from MD_DEVICE_*: nvme1n1 and
    # nvme2n1 (nvme3n1/nvme4n1 are listed but absent from the capture).  The first sorted member.
    raw = collect_checkbox(tmp_path, "With_VRAID", root_line("259:8", "vfat", "/dev/md126p1"))
    assert (raw["boot_drive_device"], raw["boot_drive_model"], raw["boot_drive_serial"]) == (
        "nvme1n1", "KXG50ZNV256G NVMe TOSHIBA 256GB", "18FF71JMFQ9S")
    hynix = next(d for d in raw["drives"] if d["name"] == "nvme0n1")
    # the SK hynix firmware pads its serial with leading spaces: stripped
    assert hynix["serial"] == "SYBBN00931050BB0T"
    assert "md126" not in [d["name"] for d in raw["drives"]]


def test_boot_virtio_qemu_kvm(tmp_path: Path) -> None:
    # vda1 (253:1) ext4 of QEMU_KVM: virtio-blk has no model or serial unless given
    raw = collect_checkbox(tmp_path, "QEMU_KVM", root_line("253:1", "ext4", "/dev/vda1"))
    assert raw["boot_drive_device"] == "vda"
    assert raw["boot_drive_model"] is None and raw["boot_drive_serial"] is None
    assert [d["name"] for d in raw["drives"]] == ["vda"]
    assert raw["drives"][0]["transport"] == "virtio"


def test_boot_luks_without_members_two_dms(tmp_path: Path) -> None:
    # two_dms_one_with_ubuntu_save holds only the two LUKS mappings (253:0 is ubuntu-data): the
    # chain stops at dm-0, which is no drive and has no identity
    raw = collect_checkbox(tmp_path, "two_dms_one_with_ubuntu_save",
                           root_line("253:0", "ext4", "/dev/mapper/ubuntu-data"))
    assert raw["boot_drive_device"] == "dm-0"
    assert raw["boot_drive_model"] is None and raw["boot_drive_serial"] is None
    assert raw["drives"] == []


def test_no_mountinfo_no_boot_drive(tmp_path: Path) -> None:
    raw = collect_checkbox(tmp_path, "ONE_CDROM_ONLY")
    assert raw["boot_drive_device"] is None and raw["boot_drive_model"] is None
    assert raw["rip_drive_device"] == "sr0"


# ---- node_exporter's /run/udev/data (Apache-2.0, copied): LUKS + LVM on NVMe -------------------
def _kernel_block(root: Path, devpath: str, devnum: str, *, partition: int | None = None,
                  size: int | None = None) -> Path:
    """Create one block device as the kernel shows it (dir under /sys/devices, class links)."""
    sysdir = root / "sys" / devpath.lstrip("/")
    sysdir.mkdir(parents=True, exist_ok=True)
    name = sysdir.name
    (sysdir / "dev").write_text(devnum + "\n")
    if size is not None:
        (sysdir / "size").write_text(f"{size}\n")
    if partition is not None:
        (sysdir / "partition").write_text(f"{partition}\n")
    else:
        _link(root / "sys" / "block" / name, sysdir)
        if not devpath.startswith("/devices/virtual/"):
            _link(sysdir / "device", sysdir.parent.parent)
    _link(root / "sys" / "dev" / "block" / devnum, sysdir)
    _link(root / "sys" / "class" / "block" / name, sysdir)
    return sysdir


def test_boot_lvm_on_luks_node_exporter(tmp_path: Path) -> None:
    # udev files: node_exporter's fixture (252:2 system-root LV on 252:0 nvme0n1_crypt, 259:0 the
    # Samsung NVMe).  sysfs: a Debian "guided, encrypted LVM" layout, as the kernel lays it out:
    # dm-2 -> slaves/dm-0 -> slaves/nvme0n1p3 -> partition of nvme0n1.
    unpack(DATA / "node_exporter_udev.ttar", tmp_path / "run")
    nvme = "/devices/pci0000:00/0000:00:1d.0/0000:02:00.0/nvme/nvme0/nvme0n1"
    disk = _kernel_block(tmp_path, nvme, "259:0", size=1000215216)
    part = _kernel_block(tmp_path, nvme + "/nvme0n1p3", "259:3", partition=3)
    crypt = _kernel_block(tmp_path, "/devices/virtual/block/dm-0", "252:0")
    root = _kernel_block(tmp_path, "/devices/virtual/block/dm-2", "252:2")
    _link(crypt / "slaves" / "nvme0n1p3", part)
    _link(root / "slaves" / "dm-0", crypt)
    (disk / "queue").mkdir()
    (disk / "queue" / "rotational").write_text("0\n")
    (disk / "removable").write_text("0\n")
    write_mountinfo(tmp_path, [
        "26 1 252:2 / / rw,relatime shared:1 - ext4 /dev/mapper/system-root rw,errors=remount-ro",
    ])
    raw = Disks().collect(ReplayHost(tmp_path))
    assert (raw["boot_drive_device"], raw["boot_drive_model"], raw["boot_drive_serial"]) == (
        "nvme0n1", "SAMSUNG EHFTF55LURSY-000Y9", "S252B6CU1HG3M1")
    assert raw["drives"] == [{
        "name": "nvme0n1", "model": "SAMSUNG EHFTF55LURSY-000Y9", "serial": "S252B6CU1HG3M1",
        "wwn": "eui.p3vbbiejx5aae2r3", "size_bytes": 1000215216 * 512, "rotational": False,
        "removable": False, "transport": "nvme"}]


# ---- hand-built trees: each mirrors the kernel's layout for one storage stack ------------------
def _scsi_disk(root: Path, host: int, name: str, devnum: str, model: str, *,
               vpd_serial: bytes | None = None, scsi_type: int = 0) -> Path:
    """An sd/sr disk on an AHCI port: .../ata{n}/host{n}/target{n}:0:0/{n}:0:0:0/block/{name}."""
    scsi = (f"/devices/pci0000:00/0000:00:17.0/ata{host + 1}/host{host}/target{host}:0:0/"
            f"{host}:0:0:0")
    sysdir = _kernel_block(root, f"{scsi}/block/{name}", devnum, size=1953525168)
    dev = root / "sys" / scsi.lstrip("/")
    (dev / "model").write_text(model.ljust(16) + "\n")  # INQUIRY strings are space padded
    (dev / "type").write_text(f"{scsi_type}\n")
    if vpd_serial is not None:
        (dev / "vpd_pg80").write_bytes(bytes([scsi_type, 0x80, 0, len(vpd_serial)]) + vpd_serial)
    return sysdir


def test_md_raid1_picks_first_member(tmp_path: Path) -> None:
    # md0 RAID1 on sdb1 + sda1 (listed in slaves/ in whatever order): sda, the first sorted
    sda = _scsi_disk(tmp_path, 0, "sda", "8:0", "WDC WD10EZEX-08W", vpd_serial=b"WD-WCC6Y0ABCDEF")
    sdb = _scsi_disk(tmp_path, 1, "sdb", "8:16", "ST1000DM010-2EP1", vpd_serial=b"Z9A1BCDE")
    sda1 = _kernel_block(tmp_path, str(sda.relative_to(tmp_path / "sys")).join(["/", "/sda1"]),
                         "8:1", partition=1)
    sdb1 = _kernel_block(tmp_path, str(sdb.relative_to(tmp_path / "sys")).join(["/", "/sdb1"]),
                         "8:17", partition=1)
    md0 = _kernel_block(tmp_path, "/devices/virtual/block/md0", "9:0")
    _link(md0 / "slaves" / "sdb1", sdb1)
    _link(md0 / "slaves" / "sda1", sda1)
    write_mountinfo(tmp_path, [root_line("9:0", "ext4", "/dev/md0")])
    raw = Disks().collect(ReplayHost(tmp_path))
    # no udev database here: model from sysfs device/model, serial from VPD page 0x80
    assert (raw["boot_drive_device"], raw["boot_drive_model"], raw["boot_drive_serial"]) == (
        "sda", "WDC WD10EZEX-08W", "WD-WCC6Y0ABCDEF")
    assert [d["name"] for d in raw["drives"]] == ["sda", "sdb"]
    assert raw["drives"][1]["serial"] == "Z9A1BCDE"


def test_btrfs_anonymous_device_number(tmp_path: Path) -> None:
    # btrfs shows 0:N in mountinfo (fs/btrfs/super.c: anonymous bdev); its source names a member
    nvme = "/devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/nvme0n1"
    disk = _kernel_block(tmp_path, nvme, "259:0")
    _kernel_block(tmp_path, nvme + "/nvme0n1p2", "259:2", partition=2)
    ctrl = disk.parent.parent  # /sys/devices/.../nvme/nvme0: model and serial of the controller
    (ctrl / "model").write_text("WDC PC SN530 SDBPNPZ-512G-1014          \n")
    (ctrl / "serial").write_text("20424T800123        \n")
    write_mountinfo(tmp_path, [
        "29 1 0:26 /@ / rw,relatime shared:1 - btrfs /dev/nvme0n1p2 "
        "rw,ssd,space_cache=v2,subvolid=256,subvol=/@",
        "30 29 0:26 /@home /home rw,relatime shared:2 - btrfs /dev/nvme0n1p2 rw,subvol=/@home",
    ])
    raw = Disks().collect(ReplayHost(tmp_path))
    assert (raw["boot_drive_device"], raw["boot_drive_model"], raw["boot_drive_serial"]) == (
        "nvme0n1", "WDC PC SN530 SDBPNPZ-512G-1014", "20424T800123")


def test_live_boot_overlay_squashfs_loop_iso(tmp_path: Path) -> None:
    # Debian live: / is overlay (lowerdir squashfs on loop0, upper on tmpfs); loop0's backing
    # file is on the ISO (iso9660 on sr0).  The device under the image is the boot drive.
    _scsi_disk(tmp_path, 1, "sr0", "11:0", "DVD-ROM SN-208FB", scsi_type=5)
    loop = _kernel_block(tmp_path, "/devices/virtual/block/loop0", "7:0")
    (loop / "loop").mkdir()
    (loop / "loop" / "backing_file").write_text("/run/live/medium/live/filesystem.squashfs\n")
    write_mountinfo(tmp_path, [
        "28 33 11:0 / /run/live/medium ro,noatime shared:3 - iso9660 /dev/sr0 ro",
        "29 33 7:0 / /run/live/rootfs/filesystem.squashfs ro,noatime shared:4 - squashfs "
        "/dev/loop0 ro",
        "30 33 0:27 / /run/live/overlay rw,noatime shared:5 - tmpfs tmpfs rw,mode=755",
        "33 1 0:28 / / rw,noatime shared:1 - overlay overlay rw,"
        "lowerdir=/run/live/rootfs/filesystem.squashfs/,upperdir=/run/live/overlay/rw,"
        "workdir=/run/live/overlay/work",
    ])
    raw = Disks().collect(ReplayHost(tmp_path))
    assert raw["boot_drive_device"] == "sr0" and raw["boot_drive_model"] == "DVD-ROM SN-208FB"
    assert raw["rip_drive_device"] == "sr0"  # the same drive: sysfs SCSI type 5


def test_overlay_layers_added_one_by_one(tmp_path: Path) -> None:
    # Linux >= 6.8 shows layers given with fsconfig(FSCONFIG_SET_STRING, "lowerdir+") one by one
    _scsi_disk(tmp_path, 0, "sda", "8:0", "Samsung SSD 870")
    _kernel_block(tmp_path, "/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/"
                  "block/sda/sda3", "8:3", partition=3)
    write_mountinfo(tmp_path, [
        "21 30 8:3 / /media/os ro - ext4 /dev/sda3 ro",
        "22 30 0:31 / /media/rw rw - tmpfs tmpfs rw",
        "30 1 0:32 / / rw - overlay overlay rw,lowerdir+=/media/rw/top,lowerdir+=/media/os/image,"
        "upperdir=/media/rw/upper,workdir=/media/rw/work",
    ])
    raw = Disks().collect(ReplayHost(tmp_path))
    assert raw["boot_drive_device"] == "sda"


def test_tmpfs_root_has_no_boot_drive(tmp_path: Path) -> None:
    _scsi_disk(tmp_path, 0, "sda", "8:0", "Samsung SSD 870")
    write_mountinfo(tmp_path, ["2 1 0:2 / / rw - rootfs rootfs rw",
                               "20 2 0:20 / / rw shared:1 - tmpfs none rw,size=4g"])
    raw = Disks().collect(ReplayHost(tmp_path))
    assert raw["boot_drive_device"] is None
    assert [d["name"] for d in raw["drives"]] == ["sda"]


def test_qemu_ide_cd_prefers_udev_identity(tmp_path: Path) -> None:
    # QEMU -device ide-cd,model=...,serial=...: ata_id reads them from the ATA IDENTIFY data
    # (udev), while the SCSI INQUIRY shown in sysfs device/model stays "QEMU DVD-ROM".
    sr0 = _scsi_disk(tmp_path, 1, "sr0", "11:0", "QEMU DVD-ROM", vpd_serial=b"QM00003",
                     scsi_type=5)
    data = tmp_path / "run" / "udev" / "data" / "b11:0"
    data.parent.mkdir(parents=True)
    data.write_text("S:cdrom\nS:disk/by-id/ata-PIONEER_BD-RW_BDR-XD07_EVO0123456\nI:2036611\n"
                    "E:ID_CDROM=1\nE:ID_ATA=1\nE:ID_TYPE=cd\nE:ID_BUS=ata\n"
                    "E:ID_MODEL=PIONEER_BD-RW_BDR-XD07\n"
                    "E:ID_MODEL_ENC=PIONEER\\x20BD-RW\\x20\\x20\\x20BDR-XD07\\x20\\x20\n"
                    "E:ID_SERIAL=PIONEER_BD-RW_BDR-XD07_EVO0123456\n"
                    "E:ID_SERIAL_SHORT=EVO0123456\nG:systemd\n")
    write_mountinfo(tmp_path, [])
    raw = Disks().collect(ReplayHost(tmp_path))
    assert (raw["rip_drive_device"], raw["rip_drive_model"], raw["rip_drive_serial"]) == (
        "sr0", "PIONEER BD-RW BDR-XD07", "EVO0123456")
    assert sr0.exists()


def test_virtio_blk_serial(tmp_path: Path) -> None:
    # QEMU -device virtio-blk-pci,serial=EVO-BOOT-0001: udev sets ID_SERIAL only (no model), and
    # virtio_blk shows it as /sys/block/vda/serial
    vda = _kernel_block(tmp_path, "/devices/pci0000:00/0000:00:04.0/virtio1/block/vda", "254:0")
    (vda / "serial").write_text("EVO-BOOT-0001\n")
    _kernel_block(tmp_path, "/devices/pci0000:00/0000:00:04.0/virtio1/block/vda/vda1", "254:1",
                  partition=1)
    write_mountinfo(tmp_path, [root_line("254:1", "ext4", "/dev/vda1")])
    raw = Disks().collect(ReplayHost(tmp_path))
    assert (raw["boot_drive_device"], raw["boot_drive_serial"]) == ("vda", "EVO-BOOT-0001")
    data = tmp_path / "run" / "udev" / "data" / "b254:0"
    data.parent.mkdir(parents=True)
    data.write_text("S:disk/by-id/virtio-EVO-BOOT-0002\nE:ID_SERIAL=EVO-BOOT-0002\n"
                    "E:ID_PATH=pci-0000:00:04.0\n")
    raw = Disks().collect(ReplayHost(tmp_path))
    assert raw["boot_drive_serial"] == "EVO-BOOT-0002"  # udev first


# ---- every checkbox capture: the boot chain from each machine's first ext4 partition -----------
def _first_root_candidate(text: str) -> tuple[str, str, str] | None:
    """Return (MAJ:MIN, partition name, disk name) of the capture's first ext4/xfs partition."""
    for rec in export_db_records(text):
        env = rec["E"]
        if (env.get("SUBSYSTEM") == "block" and env.get("DEVTYPE") == "partition"
                and env.get("ID_FS_TYPE") in ("ext4", "xfs", "btrfs") and "MAJOR" in env
                and not rec["P"].startswith("/devices/virtual/")):
            parts = rec["P"].split("/")
            return f"{env['MAJOR']}:{env['MINOR']}", parts[-1], parts[-2]
    return None


def _captures_with_partitions() -> list[str]:
    if not CHECKBOX.is_dir():
        return []
    return sorted(p.stem for p in CHECKBOX.glob("*.txt")
                  if _first_root_candidate(p.read_text("utf-8", "replace")))


@pytest.mark.parametrize("capture", _captures_with_partitions())
def test_boot_chain_every_capture(tmp_path: Path, capture: str) -> None:
    text = (CHECKBOX / f"{capture}.txt").read_text("utf-8", "replace")
    found = _first_root_candidate(text)
    assert found
    devnum, part, disk = found
    raw = collect_checkbox(tmp_path, capture, root_line(devnum, "ext4", f"/dev/{part}"))
    assert raw["boot_drive_device"] == disk
    disk_rec = next(r for r in export_db_records(text) if r["P"].endswith(f"/{disk}")
                    and r["E"].get("SUBSYSTEM") == "block")
    short = disk_rec["E"].get("ID_SERIAL_SHORT", "").strip() or None
    if short:
        assert raw["boot_drive_serial"] == short
    if disk_rec["E"].get("ID_MODEL_ENC"):
        assert raw["boot_drive_model"]


# ---- ghw snapshots (Apache-2.0): real sysfs block trees without udev ---------------------------
def _ghw(tmp_path: Path, name: str) -> ReplayHost:
    import tarfile

    with tarfile.open(GHW / f"{name}.tar.gz") as tar:
        for member in tar.getmembers():
            if member.name.startswith(("sys/block", "sys/devices", "proc/self")) and (
                    member.isdir() or member.isreg() or member.issym()):
                tar.extract(member, tmp_path, set_attrs=False)
    return ReplayHost(tmp_path)


def test_ghw_snapshot_drives(tmp_path: Path) -> None:
    raw = Disks().collect(_ghw(tmp_path, "linux-amd64-8581cf3a529e5d8b97ea876eade2f60d"))
    assert [d["name"] for d in raw["drives"]] == ["sda", "sr0"]
    sda = raw["drives"][0]
    size = int((tmp_path / "sys/block/sda/size").read_text())
    assert sda["size_bytes"] == size * 512 and size > 0
    assert sda["transport"] == "scsi"
    assert raw["rip_drive_device"] == "sr0"  # no udev, no device/type: the sr driver's name
    assert raw["boot_drive_device"] is None  # the snapshot has /proc/self/mounts, no mountinfo


def test_live_record_and_replay_agree(tmp_path: Path) -> None:
    # this machine through the real capture path: the replay gives what the live run gave
    live = Disks().collect(RecordingHost(LiveHost("/"), tmp_path))
    assert Disks().collect(ReplayHost(tmp_path)) == live
    assert {d["name"] for d in live["drives"]} <= set(os.listdir("/sys/block"))


# ---- parsers ----------------------------------------------------------------------------------
def test_parse_mountinfo_procfs_fixture() -> None:
    # prometheus/procfs fixtures/proc/26231/mountinfo (Apache-2.0), including nfs and a bind
    text = ("1 1 0:5 /  /root rw,nosuid shared:8 - rootfs rootfs rw\n"
            "21 0 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro,data=ordered\n"
            "1128 67 253:0 /var/lib/containers/storage/overlay /var/lib/containers/storage/overlay "
            "rw,relatime - xfs /dev/mapper/rhel-root rw,seclabel,attr2,inode64\n")
    mounts = parse_mountinfo(text)
    # the first line has an empty root field (a double space: that fixture is hand-made);
    # fields are split on runs of blanks, since the kernel escapes blanks inside fields
    assert [(m.mountpoint, m.major, m.minor, m.fstype, m.source) for m in mounts] == [
        ("/root", 0, 5, "rootfs", "rootfs"),
        ("/", 8, 1, "ext4", "/dev/sda1"),
        ("/var/lib/containers/storage/overlay", 253, 0, "xfs", "/dev/mapper/rhel-root")]


def test_parse_mountinfo_escapes_and_optional_fields() -> None:
    text = r"40 25 8:3 / /media/my\040disk rw shared:9 master:2 - ext4 /dev/sda3 rw" + "\n"
    (m,) = parse_mountinfo(text)
    assert m.mountpoint == "/media/my disk" and m.source == "/dev/sda3"


def test_vpd_pg80() -> None:
    assert parse_vpd_pg80(b"\x00\x80\x00\x0c  WD-WX1234 ") == "WD-WX1234"
    assert parse_vpd_pg80(b"\x00\x83\x00\x04abcd") is None  # another page
    assert parse_vpd_pg80(b"\x00\x80\x00") is None
    assert parse_vpd_pg80(b"\x00\x80\x00\x04\x00\x00\x00\x00") is None


def test_udev_data_parser_on_node_exporter_file(tmp_path: Path) -> None:
    unpack(DATA / "node_exporter_udev.ttar", tmp_path)
    props = parse_udev_data((tmp_path / "udev/data/b11:0").read_text())
    assert props["ID_CDROM"] == "1" and props["ID_SERIAL_SHORT"] == "AAAABBBBCCCC1"
    assert decode_escapes(props["ID_MODEL_ENC"]) == "Virtual CDROM0  "
    assert props["ID_FS_TYPE"] == ""


# ---- privacy ------------------------------------------------------------------------------------
def test_canaries_never_leave(tmp_path: Path) -> None:
    # boot: sda (udev identity); a USB stick with a canary serial; mounts under a user's home
    sda = _scsi_disk(tmp_path, 0, "sda", "8:0", "Samsung SSD 870")
    _kernel_block(tmp_path, str(sda.relative_to(tmp_path / "sys")).join(["/", "/sda2"]), "8:2",
                  partition=2)
    usb = ("/devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0/host6/target6:0:0/6:0:0:0/block/sdb")
    _kernel_block(tmp_path, usb, "8:16")
    udev = tmp_path / "run" / "udev" / "data"
    udev.mkdir(parents=True)
    (udev / "b8:0").write_text("E:ID_BUS=ata\nE:ID_MODEL=Samsung_SSD_870_EVO_500GB\n"
                               "E:ID_SERIAL_SHORT=S6PXNM0T123456X\n")
    (udev / "b8:16").write_text("E:ID_BUS=usb\nE:ID_MODEL=Cruzer_Blade\n"
                                "E:ID_SERIAL_SHORT=CANARYSTICK4C530001\n")
    write_mountinfo(tmp_path, [
        root_line("8:2", "ext4", "/dev/sda2"),
        "41 25 8:17 / /home/canaryuser/Music rw,relatime - vfat /dev/sdb1 rw,uid=1000",
        "42 25 0:45 / /home/canaryuser/.cache rw - tmpfs tmpfs rw",
    ])
    raw = Disks().collect(ReplayHost(tmp_path))
    assert raw["boot_drive_serial"] == "S6PXNM0T123456X"
    assert any(d["serial"] == "CANARYSTICK4C530001" for d in raw["drives"])  # collected, raw
    out = apply(load_policy(), {"disks": raw})
    sent = json.dumps({"functional": out.functional, "hardware": out.hardware})
    for canary in ("CANARYSTICK4C530001", "canaryuser", "/home/", "Cruzer"):
        assert canary not in sent
    assert out.hardware["boot_drive"] == {"model": "Samsung SSD 870 EVO 500GB",
                                          "serial": "S6PXNM0T123456X"}
    assert out.dropped["disks.drives"] == 1
