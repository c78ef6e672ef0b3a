"""Country and city of a WAN IP, from a MaxMind-format database (GeoLite2-City, DB-IP City Lite).

The policy allows an *estimated* location from a public GEO database.  A missing database or an
address it does not know gives no location and a warning, never an error: a report is never
refused because the GEO data is incomplete.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Location:
    """An estimated location; each part may be unknown."""

    country: str | None = None
    city: str | None = None


NOWHERE = Location()


def _name(record: Any, key: str) -> str | None:
    part = record.get(key) if isinstance(record, dict) else None
    names = part.get("names") if isinstance(part, dict) else None
    value = names.get("en") if isinstance(names, dict) else None
    return value[:128] if isinstance(value, str) and value else None


class Geo:
    """Looks addresses up in one database file, opened once (memory-mapped, read only)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._reader: Any = None
        self._lock = threading.Lock()
        self._warned = False

    def _open(self) -> Any:
        if self._reader is not None or self.path is None:
            return self._reader
        with self._lock:
            if self._reader is None:
                try:
                    import maxminddb

                    self._reader = maxminddb.open_database(str(self.path))
                except (OSError, ValueError, ImportError) as exc:
                    if not self._warned:
                        LOG.warning("GEO database %s unusable, locations stay unknown: %s",
                                    self.path, exc)
                        self._warned = True
                    return None
        return self._reader

    def lookup(self, address: str | None) -> Location:
        """Return the location of an address; NOWHERE (with a warning) when unknown."""
        if not address:
            return NOWHERE
        if self.path is None:
            if not self._warned:
                LOG.warning("no GEO database configured: country and city stay unknown")
                self._warned = True
            return NOWHERE
        reader = self._open()
        if reader is None:
            return NOWHERE
        try:
            record = reader.get(str(ipaddress.ip_address(address)))
        except ValueError as exc:  # not an address, or an IPv6 address in an IPv4-only database
            LOG.warning("GEO lookup of %s failed: %s", address, exc)
            return NOWHERE
        if not isinstance(record, dict):
            LOG.warning("GEO database %s does not know %s", self.path, address)
            return NOWHERE
        country = record.get("country")
        code = country.get("iso_code") if isinstance(country, dict) else None
        if not isinstance(code, str) or len(code) != 2:
            code = None
        return Location(code.upper() if code else None, _name(record, "city"))

    def close(self) -> None:
        """Close the database file."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
