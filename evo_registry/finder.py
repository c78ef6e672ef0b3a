"""The owner's finder on a shared public address: ask for the VPNID, show that unit only.

The finder lists the units whose latest WAN IP is the visitor's home.  Behind carrier-grade NAT,
in a hotel, on a campus or an apartment block's shared line, many homes share one address, and
strangers would see each other's NetBIOS names, models and LAN addresses.  An address counts as
shared when more units than ``finder_shared_units`` reported from it, or when its units sit on
different LAN networks (homes behind one NAT each have their own LAN; one home rarely has two).
Then the page asks for the VPNID printed on the product and its box and shows that unit only, if
it is one of the address's units; for a single home the page is as before.  VPNIDs are made in
sequence, so wrong ones are counted per visitor address (:class:`WrongGuesses`).
"""

from __future__ import annotations

import ipaddress
import math
import threading
from collections import deque
from collections.abc import Sequence

from evo_registry.db import Row


def _lan_network(address: object) -> str | None:
    if not isinstance(address, str):
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
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


class WrongGuesses:
    """The wrong VPNIDs each visitor address asked for in the last hour, in this process.

    In memory, per worker process: a bound on guessing, not an account of it (with N workers an
    address gets at most N times the limit).  Addresses whose guesses are all older than an hour
    are forgotten, so the table holds only the last hour's guessers.
    """

    WINDOW_S = 3600.0

    def __init__(self, per_hour: int) -> None:
        self.per_hour = per_hour
        self.times: dict[str, deque[float]] = {}
        self.lock = threading.Lock()  # the finder's page runs in the server's thread pool

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self.times.get(address, deque())
        while times and times[0] <= now - self.WINDOW_S:
            times.popleft()
        return times

    def retry_after(self, address: str, now: float) -> int:
        """Return 0 when the address may ask, else the seconds until it may again."""
        with self.lock:
            times = self._recent(address, now)
            if len(times) < self.per_hour:
                return 0
            return max(1, math.ceil(times[0] + self.WINDOW_S - now))

    def wrong(self, address: str, now: float) -> None:
        """Count one wrong VPNID of the address."""
        with self.lock:
            if len(self.times) > 10_000:  # forget the addresses with nothing in the window
                self.times = {a: t for a, t in self.times.items() if self._recent(a, now)}
            times = self._recent(address, now)
            times.append(now)
            self.times[address] = times
