"""The privacy filter: the one place that decides what leaves the device.

It is driven by ``policy.toml`` (``config/`` in the source tree), which mirrors the published
privacy policy line by line.  The filter builds the report from the fields that file declares,
and nothing else: it is an allowlist.  Every other value a collector returned is dropped and
counted by name (the values themselves are never logged).  Each declared value is cleaned by its
type before it leaves: placeholders become null, free text is bounded and stripped of control
characters, identifiers must have their exact shape or become null.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from evo_agent.errors import PolicyError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: tomli is the same parser, a dependency there only
    import tomli as tomllib

LOG = logging.getLogger(__name__)

MAX_TEXT = 128
MAX_SERIAL = 64

# Strings firmware writers leave in SMBIOS fields they did not fill, and that disk, USB and
# memory descriptors use for "nothing".  Seen in the corpus (shared/corpus/dmidecode_txt, linuxhw
# and checkbox captures) and in cloud-init's and fwupd's lists.  Compared case-insensitively after
# whitespace is collapsed.
PLACEHOLDERS = frozenset(
    s.casefold()
    for s in (
        "To Be Filled By O.E.M.", "To be filled by O.E.M.", "To Be Filled By OEM", "Default string",
        "Default String", "System Serial Number", "System Product Name", "System manufacturer",
        "System Manufacturer", "System Version", "Base Board Serial Number",
        "Base Board Product Name", "Chassis Serial Number", "Chassis Manufacture",
        "Type1ProductConfigId", "Type2 - Board Serial Number", "Type2 - Board Vendor Name1",
        "Type2 - Board Product Name1", "0123456789", "123456789", "1234567890", "01234567890",
        "Not Specified", "Not Applicable", "Not Available", "Not Present",
        "None", "N/A", "NA", "Unknown", "Undefined", "OEM", "O.E.M.", "Default", "Empty", "[Empty]",
        "NO DIMM", "No Module Installed", "SerNum0", "SerNum1", "SerNum2", "SerNum3", "Serial",
        "PartNum0", "PartNum1", "PartNum2", "PartNum3", "Manufacturer0", "Manufacturer1",
        "Manufacturer2", "Manufacturer3", "INVALID", "XXXXXXXXXXXX", "Serial Number", "Part Number",
        "Unknown Manufacturer", "Fill By OEM", "Array1_PartNumber0", "Array1_SerialNumber0",
        "MB-1234567890", "OEM_Define0", "OEM_Define1", "Not Specified By OEM", "Sample",
    )
)
# A value made of one character repeated (all 0xFF bytes decode to U+FFFD, unset EEPROMs read
# 0x00 or 0xFF, and "00000000", "FFFFFFFF", "........" are common unset serials).
_REPEATED = re.compile(r"^(.)\1*$", re.DOTALL)
_REPEAT_CHARS = set("0Ff.-_ *xX#\ufffd\x00\xff?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")
_SPACES = re.compile(r"\s+")


def is_placeholder(value: str) -> bool:
    """Return True for strings that firmware uses to mean 'not set'."""
    text = _SPACES.sub(" ", value).strip()
    if not text:
        return True
    if text.casefold() in PLACEHOLDERS:
        return True
    m = _REPEATED.match(text)
    return bool(m and m.group(1) in _REPEAT_CHARS)


# Free text that names a person or their files: an e-mail address, a user's path, a URL.  USB
# descriptors are set by makers and sometimes by owners (shared/corpus/lsusb/cyme has a product
# string "Virtual Printer (/Users/john/Parallels/...)"), and the USB audio driver turns the product
# string into the ALSA card name.  A second line of defence behind the collectors' own checks.
_PERSONAL = re.compile(
    # an e-mail address, whole or cut short at the end (ALSA keeps 31 bytes of a USB product
    # name); product names with an "@" (TV@nywhere, PowerC@m, Smart@Link) have no dotted,
    # lower-case domain
    r"[\w.+-]+@[\w-]+\.|[\w.+-]{2,}@(?-i:[a-z0-9-]{3,})$"
    r"|(?:^|[\s(\[\"'=:,])(?:~[^\s/\\]*/|\.{0,2}/[A-Za-z_.][^\s/\\]*[/\\]|[A-Za-z]:\\|\\\\[A-Za-z])"
    r"|[a-z][a-z0-9+.-]*://",
    re.IGNORECASE,
)


def looks_personal(value: str) -> bool:
    """Return True for text holding an e-mail address, a file path or a URL."""
    return bool(_PERSONAL.search(value))


def clean_text(value: Any, limit: int = MAX_TEXT, *, personal_ok: bool = False) -> str | None:
    """Return printable, trimmed, bounded text; None for non-strings, placeholders and (unless
    ``personal_ok``) text that looks like personal data."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = unicodedata.normalize("NFC", value)
    value = _CONTROL.sub(" ", value)
    value = _SPACES.sub(" ", value).strip()
    if is_placeholder(value):
        return None
    if not personal_ok and looks_personal(value):
        return None
    if len(value) > limit:
        value = value[:limit].rstrip()
    return value or None


def _serial(value: Any) -> str | None:
    return clean_text(value, MAX_SERIAL, personal_ok=True)


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= 1_000_000 else None


def _bytes(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 < value < 1 << 60 else None


_HEX4 = re.compile(r"^(?:0x)?([0-9a-fA-F]{1,4})$")


def _hex4(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFF:
        return f"{value:04x}"
    if isinstance(value, str):
        m = _HEX4.match(value.strip())
        if m:
            return m.group(1).lower().zfill(4)
    return None


def _usb_id(value: Any) -> str | None:
    if isinstance(value, str) and ":" in value:
        vid, _, pid = value.partition(":")
        v, p = _hex4(vid), _hex4(pid)
        if v and p:
            return f"{v}:{p}"
    return None


_PCI_ADDR = re.compile(r"^([0-9a-f]{4,8}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")


def _pci_address(value: Any) -> str | None:
    if isinstance(value, str) and _PCI_ADDR.match(value.strip().lower()):
        return value.strip().lower()
    return None


def _ip(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        addr = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if addr.is_unspecified or addr.is_loopback or addr.is_multicast:
        return None
    return str(addr)


_MAC = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")


def _mac(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    mac = value.strip().lower().replace("-", ":")
    if not _MAC.fullmatch(mac) or mac in ("00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"):
        return None
    return mac


# NetBIOS names: at most 15 characters, none of \/:*?"<>| (MS-NBT), upper case on the wire.
_NETBIOS = re.compile(r'^[^\\/:*?"<>|\s.][^\\/:*?"<>|\s]{0,14}$')


def _netbios(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    name = value.strip().upper()
    return name if _NETBIOS.fullmatch(name) else None


# The VPNID is printed on the box and the registration form: letters, digits, '-' and '_'.
_VPNID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def _vpnid(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = value.strip()
    return text if _VPNID.fullmatch(text) and not is_placeholder(text) else None


CLEANERS: dict[str, Callable[[Any], Any]] = {
    "text": clean_text,
    "serial": _serial,
    "count": _count,
    "bytes": _bytes,
    "hex4": _hex4,
    "usb_id": _usb_id,
    "pci_address": _pci_address,
    "ip": _ip,
    "mac": _mac,
    "netbios": _netbios,
    "vpnid": _vpnid,
}


@dataclass(frozen=True)
class FieldRule:
    """One declared field of the report."""

    report: str
    collector: str
    key: str
    line: str
    section: str
    type: str
    purposes: tuple[str, ...]
    items: Mapping[str, str] = field(default_factory=dict)
    max_items: int = 0


@dataclass(frozen=True)
class Derived:
    """A policy line the registry derives itself; the device sends nothing for it."""

    line: str
    section: str
    by: str


@dataclass(frozen=True)
class Policy:
    """The parsed policy file."""

    version: str
    sections: Mapping[str, Mapping[str, Any]]
    fields: tuple[FieldRule, ...]
    derived: tuple[Derived, ...]
    published_text: str

    def sources(self) -> set[tuple[str, str]]:
        """Return the (collector, key) pairs the policy lets leave."""
        return {(f.collector, f.key) for f in self.fields}


@dataclass
class FilterResult:
    """What the filter kept, and the names (never the values) of what it dropped."""

    functional: dict[str, Any]
    hardware: dict[str, Any]
    dropped: Counter[str]


def data_text(name: str) -> str:
    """Return a file of ``config/``: beside the code in a source tree or the .deb's private
    directory, else from the installed package data (``evo_agent.data``)."""
    beside = Path(__file__).resolve().parent.parent / "config" / name
    if beside.is_file():
        return beside.read_text("utf-8")
    try:
        return resources.files("evo_agent.data").joinpath(name).read_text("utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise PolicyError(f"{name}: not found beside the code nor in the package ({exc})") from None


def load_policy(text: str | None = None) -> Policy:
    """Parse the policy file shipped with the agent (or ``text``, for tests)."""
    if text is None:
        text = data_text("policy.toml")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy.toml: not valid TOML: {exc}") from None
    try:
        sections = doc["sections"]
        rules = []
        for i, spec in enumerate(doc["fields"]):
            collector, _, key = spec["source"].partition(".")
            kind = spec["type"]
            items = dict(spec.get("items", {}))
            for item_type in [kind, *items.values()]:
                if item_type not in CLEANERS and item_type != "list":
                    raise PolicyError(f"policy.toml: fields[{i}]: unknown type {item_type!r}")
            if (kind == "list") != bool(items):
                raise PolicyError(f"policy.toml: fields[{i}]: a list needs items, and only a list")
            if spec["section"] not in sections:
                raise PolicyError(f"policy.toml: fields[{i}]: unknown section {spec['section']!r}")
            purposes = tuple(spec.get("purposes", sections[spec["section"]]["purposes"]))
            rules.append(FieldRule(
                report=spec["report"], collector=collector, key=key, line=spec["line"],
                section=spec["section"], type=kind, purposes=purposes, items=items,
                max_items=int(spec.get("max_items", 0)),
            ))
        derived = tuple(Derived(d["line"], d["section"], d["by"]) for d in doc.get("derived", []))
        return Policy(str(doc["policy_version"]), sections, tuple(rules), derived,
                      str(doc["published_text"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyError(f"policy.toml: malformed: {exc!r}") from None


def _put(target: dict[str, Any], dotted: str, value: Any) -> None:
    node = target
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _clean_list(rule: FieldRule, value: Any, dropped: Counter[str]) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        return []
    out: list[dict[str, Any]] = []
    for item in value:
        if not isinstance(item, Mapping):
            continue
        if rule.max_items and len(out) >= rule.max_items:
            dropped[f"{rule.collector}.{rule.key}[] beyond {rule.max_items}"] += 1
            continue
        for name, raw in item.items():
            if name not in rule.items and raw not in (None, "", [], {}):
                dropped[f"{rule.collector}.{rule.key}[].{name}"] += 1
        out.append({name: CLEANERS[t](item.get(name)) for name, t in rule.items.items()})
    return out


def apply(policy: Policy, raw: Mapping[str, Mapping[str, Any] | None]) -> FilterResult:
    """Build the functional and hardware parts of a report from raw collector output."""
    result: dict[str, dict[str, Any]] = {"functional": {}, "hardware": {}}
    dropped: Counter[str] = Counter()
    for rule in policy.fields:
        values: Mapping[str, Any] = raw.get(rule.collector) or {}
        value = values.get(rule.key)
        cleaned: Any
        if rule.type == "list":
            cleaned = _clean_list(rule, value, dropped)
        else:
            cleaned = CLEANERS[rule.type](value)
        top, _, rest = rule.report.partition(".")
        if top not in result:
            raise PolicyError(f"policy.toml: {rule.report!r} is outside functional/hardware")
        _put(result[top], rest, cleaned)
    allowed = policy.sources()
    for collector, found in raw.items():
        for key, value in (found or {}).items():
            if (collector, key) not in allowed and value not in (None, "", [], {}):
                dropped[f"{collector}.{key}"] += 1
    if dropped:
        LOG.debug("privacy filter dropped undeclared fields: %s", ", ".join(sorted(dropped)))
    return FilterResult(result["functional"], result["hardware"], dropped)
