"""When the next report is due: a pure function of the clock it is given and of persisted state.

The policy: one report at every boot once the network is up, then whenever the last successful
delivery is 24 hours old or more; failed attempts back off exponentially with full jitter.

Why the schedule never subtracts two wall-clock readings: many appliances have no RTC battery, so
the wall clock starts in 1970 or 2000 and is stepped to the present by NTP minutes after boot (or
hours, or never, when offline); a technician may also set it back.  A difference of two wall-clock
readings is therefore worthless on this hardware: a jump forward would send at once (a double
report), a jump back would wait for years (starvation).  Instead elapsed time is measured with
``CLOCK_BOOTTIME``, which counts real seconds since boot *including suspend* and is never stepped.
Its readings compare only within one boot, so each is stored with the kernel's boot id
(``/proc/sys/kernel/random/boot_id``):

* a new boot id means a boot report is due (the policy sends one at every boot anyway), so time
  across a reboot never needs measuring;
* within a boot, the daily report is due 24 h (plus the device's splay) after the last success,
  by ``CLOCK_BOOTTIME``: suspend counts, NTP jumps both ways change nothing, and a daemon restart
  reads the same persisted reading back (no double, no starvation);
* any success in this boot (boot, daily or manual) counts as this boot's report.

The wall clock is kept only to show people when things happened or will happen.

No route, no attempt: when a report is due but the kernel has no route to the registry (the boot
report of a device whose DHCP lease or VPN is not there yet), an attempt can only fail and start
the backoff.  ``hold_for_network`` moves it to ``NETWORK_WAIT_MAX`` after the daemon first found
it due without a route instead; the daemon sends it as soon as a default route or the VPN link
appears (a netlink event), and the bound still tries it if that event never comes (a route the
check cannot see, e.g. a proxy).

Splay: a fleet that boots together after a power cut must not report in the same second.  Each
device derives a fixed offset from its VPNID (SHA-256, so it is spread evenly and stable): up to
``BOOT_SPLAY`` seconds for the boot report and up to ``DAILY_SPLAY`` for the daily one.

Backoff: after the n-th consecutive failure the next attempt waits a uniformly random time between
``BACKOFF_MIN`` and ``min(BACKOFF_MAX, BACKOFF_MIN * 2**(n-1))`` ("full jitter" with a floor, so
retries never spin), and never less than the backend's ``Retry-After``.  The random draw is an
argument, so this module stays pure; the caller passes ``random.random()``.  A failure after this
boot's success (a manual send whose report now waits) is retried at its backoff too, not at the
next daily time; that retry (trigger ``retry``) sends what waits and collects nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

LOG = logging.getLogger(__name__)

DAY = 86400.0
BOOT_SPLAY = 300.0
DAILY_SPLAY = 3600.0
BACKOFF_MIN = 60.0
BACKOFF_MAX = 6 * 3600.0
#: The longest a due report waits for a route to the registry before it is tried anyway.
NETWORK_WAIT_MAX = 1800.0
#: The trigger of a retry before the next scheduled report: send what waits, collect nothing.
RETRY = "retry"
#: A Retry-After beyond this is treated as this (a misconfigured backend must not silence a device).
RETRY_AFTER_MAX = DAY


@dataclass(frozen=True)
class Now:
    """One reading of the clocks: boot id, seconds since boot (CLOCK_BOOTTIME), wall (epoch)."""

    boot_id: str
    boottime: float
    wall: float


def read_clock(boot_id_file: str = "/proc/sys/kernel/random/boot_id") -> Now:
    """Read the real clocks of this machine."""
    try:
        with open(boot_id_file, encoding="ascii") as fh:
            boot_id = fh.read().strip()
    except OSError:  # not Linux, or /proc not mounted: one "boot" per process at worst
        boot_id = f"unknown-{os.getpid()}"
    return Now(boot_id, time.clock_gettime(time.CLOCK_BOOTTIME), time.time())


@dataclass(frozen=True)
class State:
    """What the schedule remembers between runs (``state_dir/state.json``)."""

    #: boot id and CLOCK_BOOTTIME of the last success (the boottime compares only in that boot)
    success_boot_id: str | None = None
    success_boottime: float | None = None
    #: wall clock of the last success and attempt, for people only
    success_wall: float | None = None
    success_path: str | None = None
    attempt_wall: float | None = None
    attempt_result: str | None = None
    #: consecutive failures, and when the next attempt may go (same boot only)
    failures: int = 0
    retry_boot_id: str | None = None
    retry_boottime: float | None = None

    def to_json(self) -> bytes:
        """Serialise for the state file."""
        return (json.dumps(asdict(self), sort_keys=True, indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> State:
        """Parse the state file; unknown keys are ignored (a newer version wrote it)."""
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        known = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in doc.items() if k in known})
        for name in ("success_boottime", "success_wall", "attempt_wall", "retry_boottime"):
            v = getattr(state, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ValueError(f"{name} is not a number")
        if isinstance(state.failures, bool) or not isinstance(state.failures, int):
            raise ValueError("failures is not an integer")
        return state


@dataclass(frozen=True)
class Due:
    """The next report: when (CLOCK_BOOTTIME of this boot), with which trigger, and why."""

    at: float
    trigger: str
    reason: str
    #: True when the time comes from the backoff of a failed attempt (a report is waiting)
    retry: bool = False
    #: True when the report is held for want of a route to the registry
    network_wait: bool = False

    def wall(self, now: Now) -> float:
        """Return the due time on the wall clock as it reads now (for display)."""
        return now.wall + (self.at - now.boottime)


def splay(key: str) -> tuple[float, float]:
    """Return this device's (boot, daily) splay in seconds, derived from its VPNID."""
    import hashlib  # loads libcrypto: the resident daemon gets its splay from a child instead

    digest = hashlib.sha256(f"evo-agent splay {key}".encode()).digest()
    boot = int.from_bytes(digest[:4], "big") / 2**32
    daily = int.from_bytes(digest[4:8], "big") / 2**32
    return boot * BOOT_SPLAY, daily * DAILY_SPLAY


def next_due(state: State, now: Now, splay_key: str | tuple[float, float]) -> Due:
    """Return when the next report is due (``splay_key``: the VPNID, or its splay if known)."""
    boot_splay, daily_splay = splay(splay_key) if isinstance(splay_key, str) else splay_key
    if state.success_boot_id != now.boot_id or state.success_boottime is None:
        due = Due(boot_splay, "boot", "no report yet since this boot")
    else:
        due = Due(state.success_boottime + DAY + daily_splay, "daily",
                  "24 h after the last success")
    if state.retry_boot_id == now.boot_id and state.retry_boottime is not None:
        reason = f"retry after {state.failures} failed attempt(s)"
        if state.retry_boottime >= due.at:
            due = Due(state.retry_boottime, due.trigger, reason, retry=True)
        else:
            # A failure after this boot's success (a manual send): its report waits in the
            # outbox and goes at the backoff, not at the next daily slot; the retry sends only
            # what waits (trigger "retry"), it collects nothing new.
            due = Due(state.retry_boottime, RETRY, reason, retry=True)
    return due


def hold_for_network(due: Due, network_up: bool, since: float) -> Due:
    """Return ``due`` held while there is no route to the registry: ``NETWORK_WAIT_MAX`` at most
    after ``since`` (when the caller first saw it due without a route; CLOCK_BOOTTIME)."""
    if network_up:
        return due
    return Due(max(due.at, since) + NETWORK_WAIT_MAX, due.trigger,
               f"{due.reason}; waiting for a route to the registry (at most "
               f"{NETWORK_WAIT_MAX / 60:.0f} min)", retry=due.retry, network_wait=True)


def after_success(state: State, now: Now, path: str) -> State:
    """Return the state after an acknowledged delivery."""
    return replace(state, success_boot_id=now.boot_id, success_boottime=now.boottime,
                   success_wall=now.wall, success_path=path, attempt_wall=now.wall,
                   attempt_result=f"acknowledged via {path}", failures=0, retry_boot_id=None,
                   retry_boottime=None)


def backoff(failures: int, draw: float, retry_after: float | None = None) -> float:
    """Return the wait after the ``failures``-th consecutive failure; ``draw`` is in [0, 1)."""
    ceiling = min(BACKOFF_MAX, BACKOFF_MIN * 2.0 ** min(max(failures - 1, 0), 30))
    delay = BACKOFF_MIN + min(max(draw, 0.0), 1.0) * (ceiling - BACKOFF_MIN)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, RETRY_AFTER_MAX))
    return delay


def after_failure(state: State, now: Now, result: str, draw: float,
                  retry_after: float | None = None) -> State:
    """Return the state after a failed attempt (counting failures within this boot only)."""
    failures = state.failures + 1 if state.retry_boot_id == now.boot_id else 1
    return replace(state, attempt_wall=now.wall, attempt_result=result, failures=failures,
                   retry_boot_id=now.boot_id,
                   retry_boottime=now.boottime + backoff(failures, draw, retry_after))


def after_nothing_waiting(state: State) -> State:
    """Return the state after a retry found no report waiting: nothing is left to retry."""
    return replace(state, failures=0, retry_boot_id=None, retry_boottime=None)


def load_state(path: Path) -> State:
    """Read the state file; a missing one is a fresh state, a corrupt one is set aside."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return State()
    try:
        return State.from_json(data)
    except (ValueError, TypeError) as exc:
        # A crash cannot produce this (the file is replaced atomically); a disk fault can.  A fresh
        # state means one boot report: the safe side.
        LOG.error("%s is unreadable (%s); set aside as %s.corrupt, starting afresh", path, exc,
                  path.name)
        with contextlib.suppress(OSError):
            os.replace(path, path.with_name(path.name + ".corrupt"))
        return State()


def save_state(path: Path, state: State) -> None:
    """Write the state file atomically."""
    from evo_agent.delivery.outbox import atomic_write

    atomic_write(path, state.to_json())
