"""Reader of udev's database entries for block devices (``/run/udev/data/b<MAJ>:<MIN>``).

udev keeps what its rules learnt about each device (the ATA/SCSI/NVMe identity read by ata_id,
scsi_id and the persistent-storage rules, ``ID_CDROM`` from cdrom_id) in one small text file per
device.  Reading that file is far cheaper than importing pyudev, and it replays from a capture like
any other file.  Format (systemd src/libsystemd/sd-device/device-private.c): one record per line,
``<letter>:<value>``; ``E:KEY=VALUE`` are the properties, ``S:`` the /dev links, ``I:`` the
initialisation time, ``G:``/``Q:`` tags, ``L:`` the link priority, ``W:`` a watch handle,
``V:`` the format version.  ``udevadm info --export-db`` prints the same properties as
``E: KEY=VALUE`` (with a space), so the parser accepts both.
"""

from __future__ import annotations

import re

from evo_agent.hostroot import Host

UDEV_DATA = "/run/udev/data"
#: udev data files are a few KiB; a bound keeps a corrupt capture from costing memory.
_MAX_UDEV_FILE = 256 * 1024
_HEX_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")


def parse_udev_data(text: str) -> dict[str, str]:
    """Return the properties (``E:`` lines) of a udev database entry; garbage lines are skipped."""
    props: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("E:"):
            continue
        key, sep, value = line[2:].lstrip(" ").partition("=")
        if sep and key and key.isprintable() and " " not in key:
            props[key] = value
    return props


def read_block_udev(host: Host, devnum: str | None) -> dict[str, str]:
    """Return the udev properties of the block device ``MAJ:MIN``, or {} when udev has none."""
    if not devnum or not re.fullmatch(r"\d{1,10}:\d{1,10}", devnum):
        return {}
    try:
        text = host.read_text(f"{UDEV_DATA}/b{devnum}", _MAX_UDEV_FILE)
    except OSError:
        return {}
    return parse_udev_data(text)


def decode_udev_escapes(value: str) -> str:
    r"""Decode udev's ``\xNN`` escapes (``ID_MODEL_ENC``...) as UTF-8; bad bytes -> U+FFFD."""
    raw = value.encode("utf-8", "surrogateescape")
    return _HEX_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw).decode("utf-8", "replace")
