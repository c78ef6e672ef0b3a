"""The checks behind the policy's purposes: region, mains voltage and hardware fingerprint.

Pure functions of what was enrolled and what a report says, so they are tested without a server:
- grey export: the GEO country of the WAN IP lies outside the unit's assigned sales region;
- PSU voltage: the country's mains voltage (``data/mains_voltage.csv``, from IEC World Plugs)
  does not suit the unit's PSU variant;
- unauthorised use: the hardware fingerprint differs from the one enrolled at manufacturing.
"""

from __future__ import annotations

import csv
import importlib.resources
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from evo_agent.policy import is_placeholder

# The parts of the fingerprint, in the order they are shown.
PARTS = ("motherboard_serial", "mac", "boot_serial", "rip_serial", "cpu_model")

# A PSU suits a country when one of the country's nominal voltages is within this fraction of
# the PSU's nominal voltage (or inside its range, for a wide-range PSU).  10 % covers 220/230/240
# for a 230 V unit and 110/115/120/127 for a 120 V unit, and keeps 100 V (Japan) apart from a
# 120 V unit (17 % under) - the mismatches that matter for liability.
VOLTAGE_TOLERANCE = 0.10

_PSU = re.compile(r"^\s*(?P<low>\d{2,3})(?:\s*-\s*(?P<high>\d{2,3}))?\s*V\s*$", re.IGNORECASE)
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_SPACES = re.compile(r"\s+")


def parse_psu_variant(text: str) -> tuple[int, int] | None:
    """Return the (low, high) voltage of a PSU variant like "230V" or "100-240V", else None."""
    m = _PSU.match(text)
    if not m:
        return None
    low = int(m.group("low"))
    high = int(m.group("high") or low)
    return (low, high) if low <= high else None


def valid_country(code: Any) -> bool:
    """Return True for an ISO 3166-1 alpha-2 code in upper case."""
    return isinstance(code, str) and bool(_COUNTRY.match(code))


@lru_cache(maxsize=1)
def mains_voltages() -> dict[str, tuple[int, ...]]:
    """Return the nominal mains voltages by country code, from the table in the package."""
    table: dict[str, tuple[int, ...]] = {}
    text = importlib.resources.files("evo_registry.data").joinpath("mains_voltage.csv").read_text(
        encoding="utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    for row in csv.DictReader(lines):
        volts = tuple(int(v) for v in row["voltages_v"].split(";") if v.strip())
        if volts:
            table[row["country"]] = volts
    return table


def psu_suits(psu_variant: str, country: str) -> bool | None:
    """Return whether the PSU suits the country's mains, or None when either is unknown."""
    psu = parse_psu_variant(psu_variant)
    volts = mains_voltages().get(country)
    if psu is None or not volts:
        return None
    low, high = psu
    return any(low * (1 - VOLTAGE_TOLERANCE) <= v <= high * (1 + VOLTAGE_TOLERANCE)
               for v in volts)


def no_nul(value: str) -> str:
    """Return text a PostgreSQL TEXT column takes: NUL (valid JSON, "\\u0000") becomes U+FFFD."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _serial(value: Any) -> str | None:
    if not isinstance(value, str) or is_placeholder(value):
        return None
    return no_nul(_SPACES.sub(" ", value).strip().upper()) or None


def _text(value: Any) -> str | None:
    if not isinstance(value, str) or is_placeholder(value):
        return None
    return no_nul(_SPACES.sub(" ", value).strip()) or None


def _mac(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    mac = value.strip().lower()
    # All-zero and broadcast addresses are what a driver reports when it has none.
    if mac in ("00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff") or not mac:
        return None
    return mac


def _get(doc: Mapping[str, Any], *keys: str) -> Any:
    cur: Any = doc
    for k in keys:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(k)
    return cur


def fingerprint(report: Mapping[str, Any]) -> dict[str, str | None]:
    """Return the normalised fingerprint of a report; placeholders become None."""
    return {
        "motherboard_serial": _serial(_get(report, "hardware", "motherboard", "serial")),
        "mac": _mac(_get(report, "hardware", "mac_address")),
        "boot_serial": _serial(_get(report, "hardware", "boot_drive", "serial")),
        "rip_serial": _serial(_get(report, "hardware", "rip_drive", "serial")),
        "cpu_model": _text(_get(report, "hardware", "cpu", "model")),
    }


@dataclass(frozen=True)
class FingerprintCheck:
    """How a reported fingerprint compares with the enrolled one."""

    status: str  # match | changed | mismatch | unknown
    compared: tuple[str, ...]
    changed: tuple[str, ...]


def compare_fingerprints(enrolled: Mapping[str, str | None],
                         reported: Mapping[str, str | None]) -> FingerprintCheck:
    """Compare two fingerprints part by part; a part missing on either side is not compared."""
    compared = tuple(p for p in PARTS if enrolled.get(p) and reported.get(p))
    changed = tuple(p for p in compared if enrolled.get(p) != reported.get(p))
    if not compared:
        status = "unknown"
    elif not changed:
        status = "match"
    elif len(changed) >= 2 and len(changed) * 2 > len(compared):
        # Most of the parts differ: not a repaired unit but other hardware under this VPNID.
        status = "mismatch"
    else:
        status = "changed"
    return FingerprintCheck(status, compared, changed)


def add_months(moment: datetime, months: int) -> datetime:
    """Return the same day ``months`` later (the last day of a shorter month)."""
    month0 = moment.month - 1 + months
    year, month = moment.year + month0 // 12, month0 % 12 + 1
    for day in (moment.day, 30, 29, 28):
        try:
            return moment.replace(year=year, month=month, day=day)
        except ValueError:
            continue
    raise AssertionError("unreachable: every month has 28 days")
