"""The hardware timeline of a device: what changed between two consecutive reports.

Support asks "when was the rip drive swapped, and for what?": each report is reduced to named
components (one per slot for the motherboard, CPU, MAC and drives; a multiset for RAM modules and
USB, PCI and audio devices), and consecutive reports are compared.  A change is dated by the first
report that showed it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Slots holding one component each, in the order the page lists them.
_SINGLE = ("motherboard", "CPU", "MAC address", "boot drive", "rip drive")
_MULTI = ("RAM module", "USB device", "PCI device", "audio device")


@dataclass(frozen=True)
class Change:
    """One component added, removed or replaced, first seen in report ``report_id``."""

    at: str
    report_id: str | None
    kind: str  # "added", "removed", "replaced"
    slot: str
    before: str | None
    after: str | None


def _text(*parts: Any) -> str:
    return " ".join(str(p) for p in parts if p not in (None, ""))


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _drive(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return None
    serial = value.get("serial")
    return _text(value.get("model"), f"SN {serial}" if serial else None) or None


def components(report: Mapping[str, Any]) -> dict[str, Counter[str]]:
    """Return the components of a report by slot (each a multiset of descriptions)."""
    hw = _mapping(report.get("hardware"))
    board = _mapping(hw.get("motherboard"))
    cpu = _mapping(hw.get("cpu"))
    single: dict[str, str | None] = {
        "motherboard": _text(board.get("vendor"), board.get("model"),
                             f"SN {board['serial']}" if board.get("serial") else None) or None,
        "CPU": _text(cpu.get("model")) or None,
        "MAC address": hw.get("mac_address") if isinstance(hw.get("mac_address"), str) else None,
        "boot drive": _drive(hw.get("boot_drive")),
        "rip drive": _drive(hw.get("rip_drive")),
    }
    out: dict[str, Counter[str]] = {k: Counter([v] if v else []) for k, v in single.items()}

    def many(key: str, describe: Any) -> Counter[str]:
        value = hw.get(key)
        items: Iterable[Any] = value if isinstance(value, list) else []
        return Counter(describe(i) for i in items if isinstance(i, Mapping))

    modules = _mapping(hw.get("ram")).get("modules")
    modules = modules if isinstance(modules, list) else []
    out["RAM module"] = Counter(
        _text(m.get("manufacturer"), m.get("part_number"), m.get("type"), m.get("form_factor"),
              f"{int(m['size_bytes']) // 2**30} GiB" if isinstance(m.get("size_bytes"), int)
              else None)
        for m in modules if isinstance(m, Mapping))
    out["USB device"] = many("usb_devices", lambda d: _text(
        d.get("vendor"), d.get("product"), f"({d.get('vendor_id')}:{d.get('product_id')})",
        f"SN {d['serial']}" if d.get("serial") else None))
    out["PCI device"] = many("pci_devices", lambda d: _text(
        d.get("address"), d.get("vendor"), d.get("device")))
    out["audio device"] = many("audio_devices", lambda d: _text(
        f"card {d.get('card')}", d.get("id"), d.get("name")))
    return out


def diff(before: Mapping[str, Counter[str]], after: Mapping[str, Counter[str]], *, at: str,
         report_id: str | None) -> list[Change]:
    """Return the changes from one report's components to the next one's."""
    changes: list[Change] = []
    for slot in _SINGLE:
        old = next(iter(before.get(slot, Counter())), None)
        new = next(iter(after.get(slot, Counter())), None)
        if old == new:
            continue
        kind = "replaced" if old and new else ("added" if new else "removed")
        changes.append(Change(at, report_id, kind, slot, old, new))
    for slot in _MULTI:
        old_c, new_c = before.get(slot, Counter()), after.get(slot, Counter())
        for item in sorted((old_c - new_c).elements()):
            changes.append(Change(at, report_id, "removed", slot, item, None))
        for item in sorted((new_c - old_c).elements()):
            changes.append(Change(at, report_id, "added", slot, None, item))
    return changes


def timeline(reports: Sequence[tuple[str, str | None, Mapping[str, Any]]]) -> list[Change]:
    """Return every change along ``(received_at, report_id, report)`` in time order."""
    out: list[Change] = []
    previous: dict[str, Counter[str]] | None = None
    for at, report_id, doc in reports:
        current = components(doc)
        if previous is not None:
            out.extend(diff(previous, current, at=at, report_id=report_id))
        previous = current
    return out
