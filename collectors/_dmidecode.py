"""A strict, never-failing parser of the text that ``dmidecode`` prints.

dmidecode (the reference SMBIOS decoder) is what the DMI collector runs, and its text output is the
one form of the table that a capture keeps (``commands/dmidecode.txt``).  Twenty years of dmidecode
versions and of firmware make that text vary, and every variant below is in the corpus
(``shared/corpus/dmidecode_txt``) and handled here:

* dmidecode >= 2.7 prints ``Handle 0x0002, DMI type 2, 15 bytes`` then a title at column 0 and
  tab-indented properties; 2.0-2.6 print ``Handle 0x0002`` alone, then ``DMI type 2, 8 bytes.``
  and the title indented (glpi-agent/openbsd-3.7, rhel-4.3), and the oldest ones (rhel-2.1,
  vmware-esx-2.5) also name the keys differently (``Vendor``/``Product``, ``Processor Version``).
  Some outputs are indented with spaces (glpi-agent/openbsd-4.5), so depth is measured in columns.
* ``Key:`` with deeper lines below is a list (``Characteristics:``, ``Flags:``, ``Strings:``);
  values keep trailing spaces in the text (``Manufacturer: Kingston           ``), trimmed here.
* dmidecode's own notes sit between or inside records: ``Invalid entry length (16). Fixed up to
  11.`` before a title (Supermicro X9DRW), ``Wrong DMI structures count``, ``DMI table is broken!``,
  ``<OUT OF SPEC>`` values, ``# ...`` comments, ``Table at 0x...``.
* Memory sizes in kB/MB/GB (``16384 MB`` and ``16 GB`` for the same module), ``No Module
  Installed``; speeds in ``MT/s`` (dmidecode >= 3.0) or ``MHz`` (older, same number: SMBIOS always
  stored the transfer rate) with ``(1.5 ns)`` after it; JEDEC JEP106 codes for manufacturers.

Whatever the input, :func:`parse` and :func:`summarize` never raise: what cannot be read is skipped.
Values are kept as the firmware gave them (trimmed); placeholders such as "To Be Filled By O.E.M."
are nulled later by the privacy filter, not here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# re.ASCII everywhere: "\d" would also match digits of other scripts, which are no SMBIOS number.
_HANDLE = re.compile(
    r"^Handle (0x[0-9A-Fa-f]{1,8})(?:, DMI type (\d{1,3}), (\d{1,5}) bytes?)?\.?$", re.ASCII
)
_OLD_TYPE = re.compile(r"^DMI type (\d{1,3}), (\d{1,5}) bytes?\.?$", re.ASCII)
# Lines dmidecode prints about the table rather than in it (always at column 0).
_NOTE = re.compile(
    r"^(?:#|Invalid entry length|Wrong DMI structures|DMI table is broken|Table is unreachable"
    r"|<TRUNCATED>|Table at 0x|Getting SMBIOS|Reading SMBIOS|Scanning )"
)


@dataclass
class Record:
    """One SMBIOS structure as dmidecode printed it."""

    handle: int | None
    type: int | None
    title: str = ""
    values: dict[str, str] = field(default_factory=dict)
    #: Deeper lines under a "Key:" line, by key; lines with no key at all under "".
    lists: dict[str, list[str]] = field(default_factory=dict)

    def get(self, *keys: str) -> str | None:
        """Return the first of ``keys`` with a non-empty value, trimmed, else None."""
        for key in keys:
            value = self.values.get(key)
            if value:
                return value
        return None


def _indent(line: str) -> int:
    """Return the column of the first non-blank character (tabs every 8 columns)."""
    column = 0
    for char in line:  # not expandtabs(): a garbage line of tabs would grow eight-fold
        if char == "\t":
            column = (column // 8 + 1) * 8
        elif char.isspace():
            column += 1
        else:
            break
    return column


class _Parser:
    """The state of :func:`parse` between lines."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.rec: Record | None = None
        self.title_indent = 0
        #: Depth of the record's properties; None before the first one, -1 once the record ended.
        self.prop_indent: int | None = None
        #: The property that deeper lines are list items of.
        self.key: str | None = None

    def feed(self, raw: str) -> None:
        """Take one line of dmidecode's output."""
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped:
            return
        m = _HANDLE.match(stripped)
        if m:
            self.rec = Record(int(m.group(1), 16), int(m.group(2)) if m.group(2) else None)
            self.records.append(self.rec)
            self.prop_indent, self.key = None, None
            return
        if self.rec is None:
            return  # preamble: "# dmidecode 3.4", "SMBIOS 3.0 present.", "Table at ..."
        if not self.rec.title:
            self._head(self.rec, stripped, _indent(line))
        else:
            self._body(self.rec, stripped, _indent(line))

    def _head(self, rec: Record, stripped: str, indent: int) -> None:
        m = _OLD_TYPE.match(stripped)
        if m and rec.type is None:
            rec.type = int(m.group(1))
        elif not _NOTE.match(stripped):
            rec.title = stripped
            self.title_indent = indent

    def _body(self, rec: Record, stripped: str, indent: int) -> None:
        if indent <= self.title_indent:
            # Back at the title's depth: a note ("Wrong DMI structures count"), a hex dump of a
            # structure old dmidecode could not name, or garbage.  Nothing more belongs to the
            # record.
            self.key = None
            self.prop_indent = -1
            return
        if self.prop_indent is None:
            self.prop_indent = indent
        elif self.prop_indent < 0:
            return
        if indent > self.prop_indent:
            if self.key is not None:
                rec.lists.setdefault(self.key, []).append(stripped)
            return
        name, sep, value = stripped.partition(":")
        name = name.strip()
        if not sep or not name:
            # A line without a key at property depth: "Inactive", or one of the strings that
            # dmidecode 2.2 listed bare under "OEM Data" (glpi-agent/vmware-esx-2.5).
            self.key = None
            rec.lists.setdefault("", []).append(stripped)
            return
        self.key = name
        rec.values.setdefault(name, value.strip())


def parse(text: str) -> list[Record]:
    """Split dmidecode's text output into records; never raises, skips what it cannot read."""
    parser = _Parser()
    for line in text.splitlines():
        parser.feed(line)
    return parser.records


# ---- values ---------------------------------------------------------------------------------

_SIZE = re.compile(
    r"^(\d{1,15})\s*(bytes?|kB|KB|K|MB|M|Mbyte|GB|G|Gbyte|TB|T|kbyte|Kbyte)\b", re.ASCII
)
_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SPEED = re.compile(r"^(\d{1,7})\s*(MT/s|MHz)\b", re.ASCII)
_INT = re.compile(r"^(\d{1,9})$", re.ASCII)


def parse_size(value: str | None) -> int | None:
    """Return a dmidecode size ("16384 MB", "8 GB", "512 kB") in bytes, or None."""
    if not value:
        return None
    m = _SIZE.match(value.strip())
    if not m:
        return None
    unit = m.group(2)[0].lower()
    size = int(m.group(1)) * _UNITS[unit]
    return size if size > 0 else None


def parse_speed(value: str | None) -> int | None:
    """Return a memory speed in MT/s from "2400 MT/s" or the older "667 MHz (1.5 ns)"."""
    if not value:
        return None
    # dmidecode < 3.0 printed the same SMBIOS field with the unit "MHz"; SMBIOS 3.1 renamed the
    # unit MT/s because the field always held the transfer rate (DDR4-2400 reads "2400 MHz" in
    # glpi-agent/dell-r640 and "2400 MT/s" in newer captures of the same generation).
    m = _SPEED.match(value.strip())
    if not m:
        return None
    speed = int(m.group(1))
    return speed if speed > 0 else None


def parse_count(value: str | None) -> int | None:
    """Return a positive integer count ("8"), or None for "0", "Unknown" and garbage."""
    if not value:
        return None
    m = _INT.match(value.strip())
    if not m:
        return None
    count = int(m.group(1))
    return count if count > 0 else None


def _handle(value: str | None) -> int | None:
    """Return a handle ("0x002D") as a number, or None."""
    if not value:
        return None
    try:
        return int(value.strip(), 16)
    except ValueError:
        return None


# ---- JEDEC JEP106 manufacturer codes ---------------------------------------------------------
# Firmware often fills a memory device's Manufacturer with the module's SPD manufacturer code in
# hex instead of a name (corpus: "80CE000080CE", "00AD00B300AD", "859B", "0x0198",
# "7F98000000000000").  The code is JEDEC JEP106: a bank (the number of 0x7F continuation codes)
# and a code byte with odd parity.  The names below are those of JEP106 for the memory makers seen
# in the corpus and other common module brands, spelt as in the vendor table of i2c-tools'
# decode-dimms 4.3 (tests/test_dmi.py checks every entry against /usr/bin/decode-dimms when it is
# installed).  Keys: (bank counted from 0, code without its parity bit).  A code not listed here is
# left as the firmware gave it.
JEP106: dict[tuple[int, int], str] = {
    (0, 0x09): "Intel",
    (0, 0x2C): "Micron Technology",
    (0, 0x2D): "SK Hynix",
    (0, 0x41): "Infineon",
    (0, 0x4E): "Samsung",
    (0, 0x54): "Hewlett-Packard",
    (1, 0x14): "Smart Modular",
    (1, 0x18): "Kingston",
    (1, 0x3A): "PNY Technologies Inc.",
    (1, 0x4F): "Transcend Information",
    (1, 0x7A): "Apacer Technology",
    (2, 0x1E): "Corsair",
    (2, 0x7E): "Elpida",
    (3, 0x0B): "Nanya Technology",
    (3, 0x16): "Netlist",
    (3, 0x25): "Kingmax Semiconductor",
    (4, 0x16): "Positivo Informatica Ltd",
    (4, 0x43): "Ramaxel Technology",
    (4, 0x4B): "A-DATA Technology",
    (4, 0x4D): "G Skill Intl",
    (4, 0x6F): "Team Group Inc.",
    (5, 0x02): "Patriot Memory",
    (5, 0x1B): "Crucial Technology",
    (5, 0x51): "Qimonda",
    (6, 0x53): "Silicon Power Computer & Communications",
    (7, 0x5D): "Wilk Elektronik S.A.",
    (10, 0x11): "CXMT",
}

_HEX_ID = re.compile(
    r"^(?:0x)?([0-9A-Fa-f]{4}|[0-9A-Fa-f]{12}|[0-9A-Fa-f]{16})$", re.ASCII
)


def _odd_parity(byte: int) -> bool:
    """Return whether a JEDEC code byte has odd parity, as every valid one does."""
    return bin(byte).count("1") % 2 == 1


_MODULE_ID = re.compile(r"^Bank (\d{1,2}), Hex 0x([0-9A-Fa-f]{2})$", re.ASCII)


def module_id_name(value: str | None) -> str | None:
    """Return the JEP106 name of dmidecode's "Module Manufacturer ID: Bank 6, Hex 0x9B"."""
    m = _MODULE_ID.match(value.strip()) if value else None
    if not m or int(m.group(1)) < 1:
        return None
    code = int(m.group(2), 16)
    return JEP106.get((int(m.group(1)) - 1, code & 0x7F)) if _odd_parity(code) else None


def jedec_name(value: str | None) -> str | None:
    """Return the JEP106 name of a hex manufacturer code, or None when it is not one we know."""
    if not value:
        return None
    m = _HEX_ID.match(value.strip())
    if not m:
        return None
    data = bytes.fromhex(m.group(1))
    if len(data) == 8:
        # DDR/DDR2 SPD: one 0x7F per bank passed, then the code, then padding (00 or FF).
        bank = 0
        while bank < len(data) and data[bank] == 0x7F:
            bank += 1
        if bank >= len(data) or any(b not in (0x00, 0xFF) for b in data[bank + 1:]):
            return None
        code = data[bank]
    else:
        # DDR3 and later: a bank count byte (parity in bit 7, not always set by firmware), then
        # the code.  The 6-byte form (HP, Dell) is module maker, two bytes, DRAM maker: the
        # module's maker comes first.
        bank, code = data[0] & 0x7F, data[1]
    if not _odd_parity(code):
        return None
    return JEP106.get((bank, code & 0x7F))


# ---- the summary the collector returns ------------------------------------------------------

_NOT_CPU = ("Math Processor", "DSP Processor", "Video Processor")


def _populated(rec: Record) -> bool:
    """Return whether a processor socket holds an enabled CPU."""
    status = rec.get("Status")
    if status is None:
        # The oldest outputs (glpi-agent/vmware-esx-2.5, rhel-2.1) have no Status: count a socket
        # that names a processor (vmware-esx-2.5 lists 8 sockets; the 7 empty ones read
        # "Processor Manufacturer: 000000000000").
        ident = rec.get("Version", "Processor Version", "Manufacturer", "Processor Manufacturer")
        return bool(ident and ident.strip("0 "))
    # "Populated, Disabled By BIOS" marks the unused virtual sockets of VMware (126 of 128 in
    # u-root's VMWare.orig.txt); a disabled CPU runs no code, so it is not counted either.
    return status.startswith("Populated") and "Disabled" not in status


def _board_record(records: list[Record]) -> Record | None:
    """Return the motherboard's type 2 record (IBM x3650 also lists risers and backplanes)."""
    boards = [r for r in records if r.type == 2]
    for rec in boards:
        if rec.get("Type") == "Motherboard":
            return rec
    return boards[0] if boards else None


def _first(records: list[Record], kind: int) -> Record | None:
    """Return the first record of a type."""
    return next((r for r in records if r.type == kind), None)


def _cpu(records: list[Record]) -> dict[str, Any]:
    """Return the CPU model of the first enabled socket, and counts summed over the sockets."""
    cpus = [r for r in records if r.type == 4 and r.get("Type", "Processor Type") not in _NOT_CPU]
    used = [r for r in cpus if _populated(r)]
    model = next((v for r in used if (v := r.get("Version", "Processor Version"))), None)
    if model is None:
        # A Sony VGN-TX690P (linuxhw) calls its only socket "Unpopulated": the machine runs, so
        # the model is still the CPU's, but the firmware's counts cannot be trusted.
        model = next((v for r in cpus if (v := r.get("Version", "Processor Version"))), None)
    cores = [parse_count(r.get("Core Count")) for r in used]
    threads = [parse_count(r.get("Thread Count")) for r in used]
    # A sum over sockets is given only when every counted socket states its count: a partial sum
    # would under-count, and None lets the collector ask /proc/cpuinfo instead.
    return {
        "cpu_model": model,
        "cpu_cores": sum(c for c in cores if c) if used and all(cores) else None,
        "cpu_threads": sum(t for t in threads if t) if used and all(threads) else None,
        "cpu_sockets": len(used) if used else None,
    }


def _system_arrays(records: list[Record]) -> tuple[set[int], set[int]]:
    """Return the handles of the memory arrays used as system memory, and of the others."""
    system: set[int] = set()
    other: set[int] = set()
    for rec in records:
        if rec.type != 16 or rec.handle is None:
            continue
        use = rec.get("Use")
        # "Flash Memory" arrays hold the BIOS chip (Intel Thurley, Supermicro X9DRi in linuxhw).
        (other if use and use != "System Memory" else system).add(rec.handle)
    return system, other


def _modules(records: list[Record], non_system: set[int]) -> list[dict[str, Any]]:
    """Return the installed memory devices of the system memory arrays."""
    modules = []
    for rec in records:
        if rec.type != 17:
            continue
        if _handle(rec.get("Array Handle")) in non_system:
            continue
        size = parse_size(rec.get("Size"))
        if size is None:
            continue  # "No Module Installed": an empty slot
        maker = rec.get("Manufacturer")
        maker = jedec_name(maker) or maker
        if maker in (None, "Unknown", "Not Specified"):
            # SMBIOS 3.2 added the module maker's JEDEC ID, which dmidecode >= 3.2 prints even
            # where the firmware left the name unset: "Unknown" beside "Bank 6, Hex 0x9B" for a
            # Crucial CT16G4SFS832A in an AZW GTR, beside "Bank 3, Hex 0x9E" for a Corsair
            # CMK64GX5M2B6000Z30 on an ASRock B650M Pro RS (linuxhw).
            maker = module_id_name(rec.get("Module Manufacturer ID")) or maker
        speed = parse_speed(rec.get("Speed"))
        if speed is None:
            speed = parse_speed(rec.get("Configured Memory Speed", "Configured Clock Speed"))
        modules.append({
            "locator": rec.get("Locator"),
            "bank_locator": rec.get("Bank Locator"),
            "type": rec.get("Type"),
            "form_factor": rec.get("Form Factor"),
            "size_bytes": size,
            "speed_mts": speed,
            "manufacturer": maker,
            "part_number": rec.get("Part Number"),
            "serial_number": rec.get("Serial Number"),
            "asset_tag": rec.get("Asset Tag"),
        })
    return modules


def _ram_total(records: list[Record], modules: list[dict[str, Any]],
               non_system: set[int]) -> int | None:
    """Return the installed RAM: the modules' sizes, else the mapped ranges'."""
    sizes: list[int] = [m["size_bytes"] for m in modules if m["size_bytes"]]
    if sizes:
        return sum(sizes)
    # No memory device states a size (some VMs and old boards): the mapped address ranges of
    # the system memory arrays (type 19) add up to the installed memory.
    ranges = [
        parse_size(r.get("Range Size")) for r in records
        if r.type == 19 and _handle(r.get("Physical Array Handle")) not in non_system
    ]
    total = sum(s for s in ranges if s)
    return total or None


def _oem_strings(records: list[Record]) -> list[str]:
    """Return the non-empty OEM strings of type 11."""
    strings: list[str] = []
    for rec in records:
        if rec.type != 11:
            continue
        for key, value in rec.values.items():
            if key.startswith("String") and value:
                strings.append(value)
        # dmidecode -u lists them under "Strings:", dmidecode 2.2 bare under "OEM Data".
        strings.extend(rec.lists.get("Strings", []))
        strings.extend(rec.lists.get("", []))
    return strings


def usable(records: list[Record]) -> bool:
    """Return whether the records hold any of what the collector reports."""
    return any(r.type in (0, 1, 2, 3, 4, 17) for r in records)


def summarize(records: list[Record]) -> dict[str, Any]:
    """Return the DMI collector's values (all but ``source``) from parsed records."""
    board = _board_record(records)
    system = _first(records, 1)
    chassis = _first(records, 3)
    bios = _first(records, 0)
    _system, non_system = _system_arrays(records)
    modules = _modules(records, non_system)

    def val(rec: Record | None, *keys: str) -> str | None:
        return rec.get(*keys) if rec is not None else None

    out: dict[str, Any] = {
        "board_vendor": val(board, "Manufacturer", "Vendor"),
        "board_name": val(board, "Product Name", "Product"),
        "board_serial": val(board, "Serial Number"),
        "board_version": val(board, "Version"),
        "sys_vendor": val(system, "Manufacturer", "Vendor"),
        "product_name": val(system, "Product Name", "Product"),
        "product_version": val(system, "Version"),
        "product_serial": val(system, "Serial Number"),
        "product_uuid": val(system, "UUID"),
        "chassis_vendor": val(chassis, "Manufacturer", "Vendor"),
        "chassis_serial": val(chassis, "Serial Number"),
        "chassis_asset_tag": val(chassis, "Asset Tag"),
        "bios_vendor": val(bios, "Vendor"),
        "bios_version": val(bios, "Version"),
        "bios_date": val(bios, "Release Date", "Release"),
    }
    out.update(_cpu(records))
    out["ram_total_bytes"] = _ram_total(records, modules, non_system)
    out["memory_modules"] = modules
    out["oem_strings"] = _oem_strings(records)
    return out
