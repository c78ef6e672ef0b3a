"""Captures of finished units as the manufacturing line sees them: a good one, and faulty ones.

Each unit is a capture directory (what ``evo-agent manufacture --from`` replays), laid out as the
kernel and udev lay out a live system:

- ``commands/dmidecode.txt``: the real dmidecode 3.2 text of an MSI MS-7816 (H87-G43) board from
  tests/data/dmi (u-root, BSD-3-Clause), with edits: the base board's serial, which that board's
  firmware left as the placeholder "To be filled by O.E.M." (kept as is for the placeholder
  unit), is set to a serial of the MSI shape; the RAM unit has three of its four 8 GB DDR3 modules
  removed ("No Module Installed", as dmidecode prints an empty slot) and the fourth at 4 GB;
- the onboard Realtek NIC the H87-G43 carries (r8169 at PCI 0000:03:00.0) in /sys/class/net;
- a SATA SSD holding / (sda2) and a SATA DVD writer (sr0) on the Intel AHCI controller, with
  their udev database records (ata_id's ID_MODEL_ENC and ID_SERIAL_SHORT, cdrom_id's ID_CDROM);
- the board's HDA Intel PCH sound card in /proc/asound and /sys/class/sound.

Privacy canaries (never to leave the unit, containing "CNRY"): the system serial and UUID
(SMBIOS type 1, which the filter drops) and the chassis serial (type 3).

Serials and MACs planted here are made up and recognisable ("EVOTEST"), so that a test can find
them in what the registry stored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MSI_DMIDECODE = REPO / "tests/data/dmi/capture-msi-ms-7816/commands/dmidecode.txt"

BOARD_SERIAL = "601-7816-010B1403EVOTEST1"
MAC = "d8:cb:8a:e7:07:01"
BOOT_SERIAL = "S5STNF0EVOTEST2"
BOOT_MODEL = "Samsung SSD 870 EVO 250GB"
RIP_SERIAL = "K1EVOTEST3"
RIP_MODEL = "HL-DT-ST DVDRAM GP57EB40"
CANARIES = ("CNRY-SYS-SERIAL-4f2a", "4c4c4544-CNRY-4a10-8054-b2c04f4d3832", "CNRY-CHASSIS-77e1")
AHCI = "/devices/pci0000:00/0000:00:1f.2"


@dataclass(frozen=True)
class Unit:
    """What is wrong with a unit (nothing, for the good one)."""

    board_serial: str | None = BOARD_SERIAL  # None: the firmware's placeholder stays
    rip_drive: bool = True
    audio: bool = True
    low_ram: bool = False


GOOD = Unit()
NO_RIP_DRIVE = Unit(rip_drive=False)
PLACEHOLDER_SERIAL = Unit(board_serial=None)
LOW_RAM = Unit(low_ram=True)
NO_AUDIO = Unit(audio=False)


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(target, link.parent), link)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def dmidecode_text(unit: Unit) -> str:
    """Return the MSI MS-7816 dmidecode text with the unit's edits."""
    text = MSI_DMIDECODE.read_text()
    head, sep, rest = text.partition("Base Board Information\n")
    assert sep, "the MSI capture changed: no base board record"
    placeholder = "\tSerial Number: To be filled by O.E.M.\n"
    assert placeholder in rest.split("\n\n", 1)[0]
    if unit.board_serial is not None:
        rest = rest.replace(placeholder, f"\tSerial Number: {unit.board_serial}\n", 1)
    text = head + sep + rest
    system = "System Information\n\tManufacturer: MSI\n\tProduct Name: MS-7816\n\tVersion: 1.0\n"
    assert text.count(system + placeholder + "\tUUID: Not Present\n") == 1
    text = text.replace(system + placeholder + "\tUUID: Not Present\n",
                        f"{system}\tSerial Number: {CANARIES[0]}\n\tUUID: {CANARIES[1]}\n")
    chassis = "Chassis Information\n"
    c_head, c_sep, c_rest = text.partition(chassis)
    assert c_sep and placeholder in c_rest.split("\n\n", 1)[0]
    text = c_head + c_sep + c_rest.replace(placeholder, f"\tSerial Number: {CANARIES[2]}\n", 1)
    if unit.low_ram:
        blocks = text.split("\n\n")
        memory = [i for i, b in enumerate(blocks) if "\nMemory Device\n" in b]
        assert len(memory) == 4 and all("\tSize: 8 GB\n" in blocks[i] for i in memory)
        blocks[memory[0]] = blocks[memory[0]].replace("\tSize: 8 GB\n", "\tSize: 4 GB\n")
        for i in memory[1:]:
            blocks[i] = re.sub(r"\tSize: 8 GB\n", "\tSize: No Module Installed\n", blocks[i])
        text = "\n\n".join(blocks)
    return text


def _block(root: Path, devpath: str, devnum: str, *, partition: int | None = None) -> Path:
    sysdir = root / "sys" / devpath.lstrip("/")
    _write(sysdir / "dev", devnum + "\n")
    _write(sysdir / "size", "488397168\n")
    if partition is not None:
        _write(sysdir / "partition", f"{partition}\n")
    else:
        _link(root / "sys/block" / sysdir.name, sysdir)
        _link(sysdir / "device", sysdir.parent.parent)
    _link(root / "sys/dev/block" / devnum, sysdir)
    _link(root / "sys/class/block" / sysdir.name, sysdir)
    return sysdir


def _sata(root: Path, port: int, name: str, devnum: str, *, inquiry: str, scsi_type: int,
          udev: str) -> Path:
    scsi = f"{AHCI}/ata{port + 1}/host{port}/target{port}:0:0/{port}:0:0:0"
    disk = _block(root, f"{scsi}/block/{name}", devnum)
    dev = root / "sys" / scsi.lstrip("/")
    _write(dev / "model", inquiry.ljust(16) + "\n")
    _write(dev / "type", f"{scsi_type}\n")
    _write(disk / "removable", "1\n" if scsi_type == 5 else "0\n")
    _write(root / "run/udev/data" / f"b{devnum}", udev)
    return disk


def build(root: Path, unit: Unit = GOOD, *, cmdline: str | None = None) -> Path:
    """Lay out one unit's capture under ``root``; return ``root``."""
    _write(root / "commands/dmidecode.txt", dmidecode_text(unit))
    _write(root / "proc/sys/kernel/hostname", "evo-line-07\n")
    if cmdline is not None:
        _write(root / "proc/cmdline", cmdline + "\n")
    # network: the onboard RTL8111G, and lo
    nic = root / "sys/devices/pci0000:00/0000:00:1c.2/0000:03:00.0"
    net = nic / "net/enp3s0"
    for name, value in (("address", MAC), ("addr_assign_type", "0"), ("type", "1"),
                        ("operstate", "up"), ("carrier", "1"),
                        ("uevent", "INTERFACE=enp3s0\nIFINDEX=2")):
        _write(net / name, value + "\n")
    _link(root / "sys/class/net/enp3s0", net)
    _link(net / "device", nic)
    (root / "sys/bus/pci/drivers/r8169").mkdir(parents=True)
    _link(nic / "driver", root / "sys/bus/pci/drivers/r8169")
    lo = root / "sys/devices/virtual/net/lo"
    for name, value in (("address", "00:00:00:00:00:00"), ("type", "772")):
        _write(lo / name, value + "\n")
    _link(root / "sys/class/net/lo", lo)
    # storage: / on sda2; the DVD writer on the next port
    sda = _sata(root, 0, "sda", "8:0", inquiry="Samsung SSD 870", scsi_type=0, udev=
                "E:ID_ATA=1\nE:ID_TYPE=disk\nE:ID_BUS=ata\nE:ID_ATA_SATA=1\n"
                "E:ID_MODEL=Samsung_SSD_870_EVO_250GB\n"
                "E:ID_MODEL_ENC=Samsung\\x20SSD\\x20870\\x20EVO\\x20250GB\\x20\\x20\\x20\\x20\n"
                f"E:ID_SERIAL=Samsung_SSD_870_EVO_250GB_{BOOT_SERIAL}\n"
                f"E:ID_SERIAL_SHORT={BOOT_SERIAL}\n")
    _write(sda / "queue/rotational", "0\n")
    _block(root, str(sda.relative_to(root / "sys")).join(["/", "/sda2"]), "8:2", partition=2)
    _write(root / "proc/self/mountinfo",
           "25 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw,errors=remount-ro\n"
           "22 25 0:21 / /proc rw,relatime - proc proc rw\n")
    if unit.rip_drive:
        _sata(root, 1, "sr0", "11:0", inquiry="DVDRAM GP57EB40", scsi_type=5, udev=
              "E:ID_CDROM=1\nE:ID_ATA=1\nE:ID_TYPE=cd\nE:ID_BUS=ata\nE:ID_ATA_SATA=1\n"
              "E:ID_MODEL=HL-DT-ST_DVDRAM_GP57EB40\n"
              "E:ID_MODEL_ENC=HL-DT-ST\\x20DVDRAM\\x20GP57EB40\\x20\\x20\\x20\\x20\\x20\\x20\n"
              f"E:ID_SERIAL=HL-DT-ST_DVDRAM_GP57EB40_{RIP_SERIAL}\n"
              f"E:ID_SERIAL_SHORT={RIP_SERIAL}\n")
    # sound: sound/core/init.c's /proc/asound/cards format (index, id, driver, short name; the
    # long name indented on the next line)
    if unit.audio:
        _write(root / "proc/asound/cards",
               " 0 [PCH            ]: HDA-Intel - HDA Intel PCH\n"
               "                      HDA Intel PCH at 0xf7e10000 irq 31\n")
        _write(root / "proc/asound/card0/id", "PCH\n")
        hda = root / "sys/devices/pci0000:00/0000:00:1b.0"
        card = hda / "sound/card0"
        card.mkdir(parents=True)
        _link(root / "sys/class/sound/card0", card)
        _link(card / "device", hda)
        (root / "sys/bus/pci/drivers/snd_hda_intel").mkdir(parents=True)
        _link(hda / "driver", root / "sys/bus/pci/drivers/snd_hda_intel")
        _link(hda / "subsystem", root / "sys/bus/pci")
    else:
        _write(root / "proc/asound/cards", "--- no soundcards ---\n")
    return root
