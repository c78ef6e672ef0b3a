"""The owner's finder on a shared public address: ask for the VPNID, show that unit only.

The finder lists the units whose latest WAN IP is the visitor's home.  Behind carrier-grade NAT,
in a hotel, on a campus or an apartment block's shared line, many homes share one address, and
strangers would see each other's NetBIOS names, models and LAN addresses.  An address counts as
shared when more units than ``finder_shared_units`` reported from it, or when its units sit on
different LAN networks (homes behind one NAT each have their own LAN; one home rarely has two).
Then the page asks for the VPNID printed on the product and its box and shows that unit only, if
it is one of the address's units; for a single home the page is as before.  VPNIDs are made in
sequence, so wrong ones are counted per visitor address (``evo_registry.misses``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from evo_registry import wire
from evo_registry.db import Row


def _lan_network(address: object) -> str | None:
    ip = wire.stored_ip(address)
    if ip is None:
        return None
    return str(ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 64}", strict=False))


def shared(rows: Sequence[Row], max_units: int) -> bool:
    """Return True when the rows of one address look like more than one home."""
    networks = {_lan_network(r.get("lan_ip")) for r in rows} - {None}
    return len(rows) > max_units or len(networks) > 1


def select(rows: Sequence[Row], vpnid: str | None, max_units: int) -> tuple[list[Row], bool]:
    """Return the rows to show and whether the page asks for the VPNID."""
    if not shared(rows, max_units):
        return list(rows), False
    wanted = (vpnid or "").strip().upper()
    return [r for r in rows if wanted and str(r.get("vpnid", "")).upper() == wanted], True

