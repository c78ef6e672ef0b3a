"""Failures per client address over a sliding window, in memory: the finder's wrong VPNIDs and
the console's failed logins.

Per worker process: a bound on guessing, not an account of it (with N workers an address gets at
most N times the limit; the console's audit trail keeps every failed login).  Addresses whose
failures have all left the window are forgotten, so the table holds only recent guessers.
"""

from __future__ import annotations

import math
import threading
from collections import deque


class Misses:
    """At most ``limit`` failures per address within ``window_s`` seconds."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self.times: dict[str, deque[float]] = {}
        self.lock = threading.Lock()  # pages run in the server's thread pool

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self.times.get(address, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def retry_after(self, address: str, now: float) -> int:
        """Return 0 when the address may try, else the seconds until it may again."""
        with self.lock:
            times = self._recent(address, now)
            if len(times) < self.limit:
                return 0
            return max(1, math.ceil(times[0] + self.window_s - now))

    def missed(self, address: str, now: float) -> None:
        """Count one failure of the address."""
        with self.lock:
            if len(self.times) > 10_000:  # forget the addresses with nothing in the window
                self.times = {a: t for a, t in self.times.items() if self._recent(a, now)}
            times = self._recent(address, now)
            times.append(now)
            self.times[address] = times
