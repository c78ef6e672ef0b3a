"""Disks: the boot drive (the physical disk under ``/``), the rip drive (the optical drive), and the
list of drives, each with model, serial and size.

The published policy names the boot drive's and the rip drive's model and serial.  Both are found
from the kernel's view, never from device names guessed in advance: the root filesystem's device
number comes from ``/proc/self/mountinfo`` and is followed through ``/sys/dev/block`` to the disk,
down partitions, device-mapper (LVM, LUKS) and md layers (``slaves/``), loop files and overlay
lower directories.  Identity comes from udev's database first (what ata_id, scsi_id and the NVMe
rules read from the drive itself), then from sysfs attributes.  The rip drive is the optical drive
that cdrom_id finds reads or writes discs and that is not on USB, else one on USB that does: the
first srN may be a virtual CD-ROM (a BMC's virtual media, a USB device's driver CD).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from collectors._udevdb import block_properties, decode_escapes
from evo_agent.collector import Collector, Raw
from evo_agent.hostroot import Host

LOG = logging.getLogger(__name__)

#: How many layers (dm on md on loop on overlay...) are followed before giving up: real stacks
#: are 3-4 deep, and a bound stops a corrupt capture whose links loop.
_MAX_DEPTH = 12
#: Block devices that are never a drive of their own: they sit on top of other devices or memory.
_VIRTUAL_NAME = re.compile(r"^(loop|ram|zram|dm-|md|nbd|drbd|rbd|bcache|ubiblock|mtdblock)\d")
#: Block devices that are another view of a drive listed already: eMMC hardware partitions
#: (EMMC_AS_MAIN_DRIVE: mmcblk0boot0, mmcblk0boot1, mmcblk0rpmb) and the per-controller paths
#: of NVMe multipath namespaces (DISK_SAMSUNG_KIOXIA: nvme2c2n1 behind nvme2n1).
_SECONDARY_VIEW = re.compile(r"^(mmcblk\d+(boot\d+|rpmb|gp\d+)|nvme\d+c\d+n\d+)$")
#: File systems with no block device of their own below them.
_NO_DEVICE_FS = frozenset({"tmpfs", "ramfs", "rootfs", "devtmpfs", "nfs", "nfs4", "cifs", "smb3",
                           "9p", "virtiofs", "fuse", "zfs"})
#: SCSI peripheral device type 5: CD/DVD (SPC-4 table 49); sysfs prints it in decimal.
_SCSI_TYPE_CDROM = "5"
#: The disc formats cdrom_id finds a drive can read or write (ID_CDROM_CD, _CD_R, _DVD_PLUS_RW,
#: _BD_RE, _HDDVD_R...), from the drive's MMC profiles or the kernel's CDROM_GET_CAPABILITY.  Not
#: ID_CDROM_MEDIA_* (the disc in the tray), _MRW/_MRW_W (Mount Rainier packet writing on CD-RW),
#: _MO (magneto-optical) or _RW_REMOVABLE.  Every optical drive of the checkbox captures has
#: some, down to the DVD-ROMs of XEON and HP_PRO2110 (CD, DVD) and QEMU's CD-ROM in
#: IBM_PSERIES_POWER7 (CD, DVD); the AMI virtual CD-ROMs of VIRT_CDROM have none.
_DISC_FORMAT = re.compile(r"ID_CDROM_(?:CD|CD_R|CD_RW|DVD(?:_[A-Z_]+)?|BD(?:_[A-Z_]+)?"
                          r"|HDDVD(?:_[A-Z_]+)?)")


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo (proc(5))."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mountpoint: str
    fstype: str
    source: str
    super_options: str


def _unescape_octal(value: str) -> str:
    """Undo the kernel's \\ooo escapes of space, tab, newline and backslash in mount fields."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), value)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse /proc/self/mountinfo; lines that do not have its shape are skipped."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 3:
            continue
        try:
            mount_id, parent_id = int(fields[0]), int(fields[1])
            major_s, _, minor_s = fields[2].partition(":")
            major, minor = int(major_s), int(minor_s)
        except ValueError:
            continue
        if min(mount_id, parent_id, major, minor) < 0:
            continue
        mounts.append(Mount(
            mount_id=mount_id, parent_id=parent_id, major=major, minor=minor,
            root=_unescape_octal(fields[3]), mountpoint=_unescape_octal(fields[4]),
            fstype=fields[sep + 1], source=_unescape_octal(fields[sep + 2]),
            super_options=fields[sep + 3] if len(fields) > sep + 3 else "",
        ))
    return mounts


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that puts sr2 before sr10 and nvme0n1 before nvme1n1."""
    # ASCII digits only: "¹".isdigit() is True but int("¹") raises (found by hypothesis)
    return tuple((0, int(part)) if part.isascii() and part.isdigit() else (1, part)
                 for part in re.split(r"([0-9]+)", name) if part)


def parse_vpd_pg80(data: bytes) -> str | None:
    """Return the unit serial number of a SCSI VPD page 0x80 (SPC-4 7.8.19), or None."""
    if len(data) < 5 or data[1] != 0x80:
        return None
    length = int.from_bytes(data[2:4], "big")
    serial = data[4:4 + length].decode("ascii", "replace").strip(" \x00\t\r\n")
    if not serial or not serial.isprintable():
        return None
    return serial


def _mount_containing(mounts: list[Mount], path: str, exclude: Mount) -> Mount | None:
    """Return the mount whose mount point holds ``path`` (the last, longest one wins)."""
    best: Mount | None = None
    best_len = -1
    norm = "/" + os.path.normpath(path).lstrip("/")  # normpath keeps a leading "//"
    for m in mounts:
        if m is exclude:
            continue
        mp = m.mountpoint.rstrip("/") or "/"
        inside = norm == mp or norm.startswith(mp.rstrip("/") + "/")
        if inside and len(mp) >= best_len:
            best, best_len = m, len(mp)
    return best


class _Resolver:
    """Follows the root filesystem down to the disk it lives on."""

    def __init__(self, host: Host, mounts: list[Mount]) -> None:
        self.host = host
        self.mounts = mounts
        self._index: dict[str, str] | None = None

    # -- device numbers and names -> sysfs paths ---------------------------------------------
    def by_devnum(self, major: int, minor: int) -> str | None:
        """Return the sysfs directory of block device MAJ:MIN."""
        devnum = f"{major}:{minor}"
        path = f"/sys/dev/block/{devnum}"
        if self.host.lstat_kind(path) is not None:
            real = self.host.realpath(path)
            if self.host.is_dir(real):
                return real
        # Older captures and some container /sys have no /sys/dev/block: match the dev files.
        return self._devnum_index().get(devnum)

    def _devnum_index(self) -> dict[str, str]:
        """Return MAJ:MIN -> sysfs directory of every disk and partition under /sys/block."""
        if self._index is None:
            self._index = {}
            for disk in self.host.listdir_or_empty("/sys/block"):
                base = self.host.realpath(f"/sys/block/{disk}")
                for path in [base] + [f"{base}/{p}" for p in self.host.listdir_or_empty(base)
                                      if p.startswith(disk)]:
                    dev = self.host.read_attr(f"{path}/dev")
                    if dev:
                        self._index.setdefault(dev, path)
        return self._index

    def by_name(self, name: str) -> str | None:
        """Return the sysfs directory of a block device named like its /dev node."""
        if not name or "/" in name:
            return None
        path = f"/sys/class/block/{name}"
        if self.host.lstat_kind(path) is not None:
            return self.host.realpath(path)
        if self.host.lstat_kind(f"/sys/block/{name}") is not None:
            return self.host.realpath(f"/sys/block/{name}")
        for disk in self.host.listdir_or_empty("/sys/block"):
            if name.startswith(disk) and name != disk:
                base = self.host.realpath(f"/sys/block/{disk}")
                if self.host.is_dir(f"{base}/{name}"):
                    return f"{base}/{name}"
        return None

    def by_source(self, source: str) -> str | None:
        """Return the sysfs directory of a mount source such as /dev/nvme0n1p2 or /dev/mapper/x."""
        if not source.startswith("/dev/"):
            return None
        rest = source[len("/dev/"):]
        if rest.startswith("mapper/"):
            wanted = rest[len("mapper/"):]
            for name in self.host.listdir_or_empty("/sys/block"):
                if name.startswith("dm-") and self.host.read_attr(
                        f"/sys/block/{name}/dm/name") == wanted:
                    return self.host.realpath(f"/sys/block/{name}")
            return None
        if "/" in rest:
            # /dev/disk/by-uuid/..., /dev/vg/lv: links that udev made to the real node.
            target = self.host.realpath(source)
            if target.startswith("/dev/") and "/" not in target[5:]:
                return self.by_name(target[5:])
            return None
        return self.by_name(rest)

    # -- the chain ------------------------------------------------------------------------------
    def root_device(self) -> str | None:
        """Return the sysfs directory of the block device holding ``/``, or None."""
        roots = [m for m in self.mounts if m.mountpoint == "/"]
        if not roots:
            return None
        # The last mount on "/" is the one in effect (later mounts stack on earlier ones).
        return self.mount_device(roots[-1], 0)

    def mount_device(self, mount: Mount, depth: int) -> str | None:
        """Return the sysfs directory of the block device under a mount, or None."""
        if depth > _MAX_DEPTH:
            return None
        if mount.fstype == "overlay":
            return self._overlay_lower(mount, depth)
        if mount.fstype in _NO_DEVICE_FS:
            return None
        if mount.major != 0:
            found = self.by_devnum(mount.major, mount.minor)
            if found:
                return found
        # btrfs (and bcachefs) report an anonymous 0:N device number: its source names a member.
        return self.by_source(mount.source)

    def _overlay_lower(self, mount: Mount, depth: int) -> str | None:
        """Return the device under an overlay root: the filesystem of its lowest layer."""
        lower = None
        for opt in mount.super_options.split(","):
            # Layers are ':'-separated, top first; the last is the base image (live-boot's
            # squashfs, a container's first layer).  Layers added one by one with the new mount
            # API show as repeated "lowerdir+=" options (Linux 6.8), the last being the lowest.
            if opt.startswith("lowerdir="):
                lower = opt[len("lowerdir="):].split(":")[-1]
            elif opt.startswith("lowerdir+="):
                lower = opt[len("lowerdir+="):]
        if not lower:
            return None
        holder = _mount_containing(self.mounts, lower, mount)
        return self.mount_device(holder, depth + 1) if holder else None

    def physical_disk(self, syspath: str, depth: int = 0) -> str | None:
        """Return the sysfs directory of the disk below a block device (partition, dm, md, loop)."""
        if depth > _MAX_DEPTH:
            return None
        if self.host.exists(f"{syspath}/partition"):
            syspath = os.path.dirname(syspath)
        name = os.path.basename(syspath)
        slaves = sorted(self.host.listdir_or_empty(f"{syspath}/slaves"), key=natural_key)
        # dm (LVM, LUKS, dm-integrity) and md list their members in slaves/.  An md mirror has
        # several equal members: the first in sorted order is taken (md0 on sda1+sdb1 -> sda), so
        # the answer does not change from boot to boot.  A linear LV spanning disks likewise.
        for slave in slaves:
            below = self.physical_disk(self.host.realpath(f"{syspath}/slaves/{slave}"), depth + 1)
            if below:
                return below
        if name.startswith("loop"):
            backing = self.host.read_attr(f"{syspath}/loop/backing_file")
            if backing and backing.startswith("/"):
                holder = _mount_containing(self.mounts, backing.removesuffix(" (deleted)"),
                                           _NO_MOUNT)
                if holder:
                    below_dev = self.mount_device(holder, depth + 1)
                    if below_dev:
                        return self.physical_disk(below_dev, depth + 1)
            return None
        return syspath


_NO_MOUNT = Mount(-1, -1, 0, 0, "", "", "", "", "")


def _collapse(text: str) -> str:
    """Collapse runs of whitespace into one space and trim."""
    return re.sub(r"\s+", " ", text).strip()


def _udev_model(props: dict[str, str]) -> str | None:
    """Return the model udev read from the drive, decoded."""
    enc = props.get("ID_MODEL_ENC")
    if enc:
        model = _collapse(decode_escapes(enc))
        if model:
            return model
    raw = props.get("ID_MODEL", "")
    if raw.strip():
        # ID_MODEL has '_' for spaces when it was built from an ATA/SCSI string (ata_id, scsi_id);
        # the NVMe rules copy the sysfs attribute verbatim, spaces included (With_VRAID:
        # "PC801 NVMe SK hynix 1TB"), so only a value without spaces is decoded.
        return _collapse(raw if " " in raw else raw.replace("_", " "))
    name = props.get("ID_NAME", "")  # MMC/SD: 60-persistent-storage.rules copies the CID name
    return _collapse(name) or None


def _udev_serial(props: dict[str, str]) -> str | None:
    """Return the serial udev read from the drive, without the model prefix."""
    short = props.get("ID_SERIAL_SHORT", "").strip()
    if short:
        # NVMe serials are space-padded on the left in some firmware (With_VRAID: SK hynix PC801
        # "   SYBBN00931050BB0T"): stripped.
        return short
    if props.get("ID_NAME") or not props.get("ID_MODEL"):
        # Without a model, ID_SERIAL is the serial alone, not "<model>_<serial>": MMC copies the
        # CID serial (EMMC_AS_MAIN_DRIVE: "0xb7223e1a"), virtio-blk the -device serial= value
        # (60-persistent-storage.rules: ENV{ID_SERIAL}="$attr{serial}" for vd*).
        serial = props.get("ID_SERIAL", "").strip()
        return serial or None
    return None


class Disks(Collector):
    name = "disks"
    description = "boot drive (disk under /), rip drive (optical), and all drives"
    fields = {
        "boot_drive_model": "model of the disk holding the root filesystem",
        "boot_drive_serial": "serial number of that disk",
        "boot_drive_device": "kernel name of that disk (nvme0n1, sda, mmcblk0); the last layer "
                             "reached (dm-0) when sysfs shows nothing below it",
        "rip_drive_model": "model of the optical drive (one that reads discs and is not on USB "
                           "first, then one on USB, then the rest; by name within each)",
        "rip_drive_serial": "serial number of the optical drive",
        "rip_drive_device": "kernel name of the optical drive (sr0)",
        "drives": "every drive: name, model, serial, wwn, size_bytes, rotational, removable, "
                  "transport (never sent)",
    }

    def collect(self, host: Host) -> Raw:
        try:
            mounts = parse_mountinfo(host.read_text("/proc/self/mountinfo"))
        except OSError as exc:
            LOG.debug("mountinfo unreadable: %s", exc)
            mounts = []
        resolver = _Resolver(host, mounts)
        drives = [drive_info(host, name) for name in list_drives(host)]
        boot: dict[str, Any] | None = None
        root_dev = resolver.root_device()
        if root_dev:
            disk = resolver.physical_disk(root_dev)
            if disk:
                name = os.path.basename(disk)
                boot = next((d for d in drives if d["name"] == name), None) or drive_info(
                    host, name, disk)
        rip = min((d for d in drives if d["optical"]), key=_rip_rank, default=None)
        for d in drives:
            del d["optical"], d["reads_discs"]
        return {
            "boot_drive_model": boot["model"] if boot else None,
            "boot_drive_serial": boot["serial"] if boot else None,
            "boot_drive_device": boot["name"] if boot else None,
            "rip_drive_model": rip["model"] if rip else None,
            "rip_drive_serial": rip["serial"] if rip else None,
            "rip_drive_device": rip["name"] if rip else None,
            "drives": drives,
        }


def list_drives(host: Host) -> list[str]:
    """Return the names of the block devices that are drives (not loop, dm, md, zram...)."""
    names = []
    for name in host.listdir_or_empty("/sys/block"):
        if _VIRTUAL_NAME.match(name) or _SECONDARY_VIEW.match(name):
            continue
        if host.read_attr(f"/sys/block/{name}/hidden") == "1":  # GENHD_FL_HIDDEN: no /dev node
            continue
        # NVMe multipath namespaces live under /devices/virtual/nvme-subsystem and are real
        # drives (DISK_SAMSUNG_KIOXIA); only /devices/virtual/block is made of virtual devices.
        if "/devices/virtual/block/" in host.realpath(f"/sys/block/{name}"):
            continue
        names.append(name)
    return sorted(names, key=natural_key)


def drive_info(host: Host, name: str, syspath: str | None = None) -> dict[str, Any]:
    """Return what is known of one disk: identity from udev first, then sysfs."""
    base = syspath or host.realpath(f"/sys/block/{name}")
    devnum = host.read_attr(f"{base}/dev")
    props = block_properties(host, devnum)
    dev = f"{base}/device"
    # QEMU's ide-cd shows the model and serial given on the command line in its ATA identity
    # (udev's ID_MODEL/ID_SERIAL_SHORT, /dev/disk/by-id) while the SCSI INQUIRY that sysfs
    # device/model shows says "QEMU DVD-ROM": udev is preferred for that reason too.
    model = _udev_model(props) or _sysfs_text(host, f"{dev}/model") or _sysfs_text(
        host, f"{dev}/name")
    # virtio-blk puts its serial on the disk itself (/sys/block/vda/serial), NVMe and MMC on the
    # device below it
    serial = _udev_serial(props) or _sysfs_text(host, f"{base}/serial") or _sysfs_serial(host, dev)
    wwn = (props.get("ID_WWN_WITH_EXTENSION") or props.get("ID_WWN") or "").strip() or (
        _sysfs_text(host, f"{dev}/wwid") or _sysfs_text(host, f"{base}/wwid"))
    size = _int_attr(host, f"{base}/size")
    rotational = host.read_attr(f"{base}/queue/rotational")
    removable = host.read_attr(f"{base}/removable")
    # cdrom_id's ID_CDROM, else the SCSI device type; the sr driver binds only to CD/DVD (type 5)
    # and WORM (type 4) devices, so an srN disk is optical even when udev and device/ are absent
    # (the ghw snapshots have neither).
    optical = (props.get("ID_CDROM") == "1"
               or host.read_attr(f"{dev}/type") == _SCSI_TYPE_CDROM
               or re.fullmatch(r"sr\d+", name) is not None)
    reads_discs = optical and any(
        value == "1" and _DISC_FORMAT.fullmatch(key) for key, value in props.items())
    return {
        "name": name,
        "model": model,
        "serial": serial,
        "wwn": wwn,
        # sysfs sizes count 512-byte sectors whatever the logical block size (block/genhd.c)
        "size_bytes": size * 512 if size is not None else None,
        "rotational": None if rotational not in ("0", "1") else rotational == "1",
        "removable": None if removable not in ("0", "1") else removable == "1",
        "transport": _transport(name, base, props),
        "optical": optical,
        "reads_discs": reads_discs,
    }


def _rip_rank(drive: dict[str, Any]) -> tuple[int, tuple[tuple[int, int | str], ...]]:
    """Sort key of the optical drives: the rip drive is the smallest."""
    # A drive that reads or writes disc formats (cdrom_id) and is not on USB is the machine's
    # own; then a USB one that does; then the rest, which have no disc format at all: the
    # virtual CD-ROMs of BMCs (AMI "Virtual CDROM0-3" on USB in VIRT_CDROM, DISK_SAMSUNG_KIOXIA
    # and NVIDIA_DGXA100, sr0 to sr3) and of USB devices that carry their own driver CD.
    usb = drive["transport"] == "usb"
    tier = (0 if not usb else 1) if drive["reads_discs"] else 2
    return tier, natural_key(drive["name"])


def _sysfs_text(host: Host, path: str) -> str | None:
    """Return a printable sysfs string attribute, whitespace collapsed, or None."""
    value = host.read_attr(path)
    if not value:
        return None
    value = _collapse(value)
    return value if value and value.isprintable() else None


def _sysfs_serial(host: Host, dev: str) -> str | None:
    """Return the serial sysfs shows for a drive's device, or None."""
    # NVMe controllers and MMC cards have a serial attribute; SCSI disks have VPD page 0x80.
    serial = _sysfs_text(host, f"{dev}/serial")
    if serial:
        return serial
    try:
        return parse_vpd_pg80(host.read_bytes(f"{dev}/vpd_pg80", 4096))
    except OSError:
        return None


#: A sysfs decimal number, in ASCII digits: str.isdigit() also takes "²", which int() refuses,
#: and int() takes the digits of other scripts ("𞥐", "٣"), which the kernel never prints.  Up to
#: 20 digits, since a size counts 512-byte sectors (a 20 TB disk has 11 digits): collectors/
#: _udevdb.decimal() stops at 9.
_DECIMAL = re.compile(r"[0-9]{1,20}")


def _int_attr(host: Host, path: str) -> int | None:
    """Return a non-negative integer attribute, or None."""
    value = host.read_attr(path)
    if value is None or not _DECIMAL.fullmatch(value):
        return None
    return int(value)


def _transport(name: str, syspath: str, props: dict[str, str]) -> str | None:
    """Return how the drive is attached (usb, nvme, sata, virtio, mmc, scsi...), as lsblk's TRAN."""
    if "/usb" in syspath or props.get("ID_BUS") == "usb":
        return "usb"
    if name.startswith("nvme"):
        return "nvme"
    if name.startswith("mmcblk") or "/mmc_host/" in syspath:
        return "mmc"
    if name.startswith("vd") or "/virtio" in syspath:
        return "virtio"
    if re.search(r"/ata\d+/", syspath) or props.get("ID_BUS") == "ata":
        return "sata" if props.get("ID_ATA_SATA") == "1" else "ata"
    if props.get("ID_BUS"):
        return props["ID_BUS"]
    if re.search(r"/host\d+/", syspath):
        return "scsi"
    return None
