"""What the daemon does next: a pure function of what it knows, as ``schedule`` is for when.

The daemon's loop reads its sources (signals, the control socket, netlink, udev, the timer, the
child's pipe), gathers what they told it into a ``Loop``, and asks ``next_action`` what to do:
start a report cycle, start a snapshot of the local inventory, kill an overdue child, or sleep (how
long, and the CLOCK_BOOTTIME deadline to arm the timer with).  No clock is read and nothing is
opened here, so every rule below is tested with tables of plain values
(``tests/delivery/test_plan.py``).

The rules, first match wins:

* a running child: nothing else starts (one writer of the outbox at a time); it is killed once it
  has run longer than its deadline;
* opted out with no objection waiting: nothing starts;
* a manual send (``evo-agent send --now``) goes first, whatever else waits or holds;
* then a waiting objection (or its withdrawal), unless ``hold_until`` holds it;
* then the schedule (read only now, ``ReadSchedule``: it costs a look at state.json and at the
  kernel's routes, which a running child or a manual send does not need).  ``hold_until`` (set
  for a minute after a cycle failed or could not start, a belt against spinning on odd failures)
  holds a due report, but not a kick (the VPN link or a default route appeared while a report
  waits for its retry; ``kick_on_network``);
* a pending refresh of the local inventory starts once its time has come: at once for ``evo-agent
  diff``, after a settle time for hot-plug (each new event restarts the wait, so a device that
  emits dozens of events in a second gets one refresh).

Sleeping: until the earliest of the hold, the refresh, the child's deadline and the watchdog's
next ping.  The schedule's deadline goes on the CLOCK_BOOTTIME timer where there is one (a
suspend counts); without one, ``select``'s timeout carries it, capped at ``IDLE_CAP`` so that a
suspend delays a report by that much at most.
"""

from __future__ import annotations

from dataclasses import dataclass

from evo_agent.delivery.schedule import RETRY, Due

#: Sleep cap without a watchdog where there is no CLOCK_BOOTTIME timer (see ``boottimer``).
IDLE_CAP = 900.0
#: A network event starts a waiting report at most this often; a failed cycle holds the
#: schedule this long.
NET_KICK_INTERVAL = 60.0
#: Quiet time after the last hot-plug event before the refresh (plugging a USB DAC emits dozens
#: of events over a second or two: one refresh, not dozens).
HOTPLUG_SETTLE = 5.0


@dataclass(frozen=True)
class Loop:
    """What the daemon knows when it decides (times are CLOCK_MONOTONIC unless said otherwise)."""

    enabled: bool = True
    #: an objection or its withdrawal waits on disk (it goes even when opted out)
    objection_waiting: bool = False
    #: the waiting objection should go now (set at start and at each reload)
    objection_due: bool = False
    #: the path asked by the first pending manual send, None when none waits
    send_via: str | None = None
    #: a network event lets a report waiting for its retry go now
    kick: bool = False
    #: no scheduled cycle before this
    hold_until: float = 0.0
    #: a hot-plug (or ``diff``) refresh of the local inventory is due at this time
    refresh_at: float | None = None
    #: the running child's start, None when no child runs; whether it was killed already
    child_started: float | None = None
    child_killed: bool = False
    #: how long a child may run
    child_deadline: float = 0.0
    #: the schedule (None: not read yet) and the CLOCK_BOOTTIME it was read at
    due: Due | None = None
    boottime: float = 0.0
    #: systemd's watchdog: ping interval (None: no watchdog) and when the next ping is due
    watchdog_interval: float | None = None
    next_ping: float = 0.0
    #: a CLOCK_BOOTTIME timerfd can carry the schedule's deadline
    has_timer: bool = False


@dataclass(frozen=True)
class StartCycle:
    """Start a report cycle child; ``why`` says which wish it serves (the daemon clears it)."""

    trigger: str | None  # None: send what waits, collect nothing
    via: str
    why: str  # "manual" | "objection" | "schedule"


@dataclass(frozen=True)
class StartSnapshot:
    """Start the child that refreshes the local inventory (nothing is sent)."""


@dataclass(frozen=True)
class KillChild:
    """The child ran past its deadline: SIGKILL it (its pipe then closes)."""


@dataclass(frozen=True)
class ReadSchedule:
    """The decision needs the schedule: read it (state file, route check) and ask again."""


@dataclass(frozen=True)
class Sleep:
    """Wait for an event at most ``timeout`` seconds (None: no limit); arm the timer at ``arm``."""

    timeout: float | None
    arm: float | None = None


Action = StartCycle | StartSnapshot | KillChild | ReadSchedule | Sleep


def next_action(s: Loop, now: float) -> Action:
    """Return what the daemon does next, ``now`` being CLOCK_MONOTONIC."""
    if s.child_started is not None:
        if s.child_killed:  # its pipe closes as it dies: nothing to time
            return Sleep(_capped(None, s, now))
        if now - s.child_started > s.child_deadline:
            return KillChild()
        return Sleep(_capped(max(0.0, s.child_started + s.child_deadline - now), s, now))
    if not (s.enabled or s.objection_waiting):
        return Sleep(_capped(None, s, now))
    if s.send_via is not None:
        return StartCycle("manual", s.send_via, "manual")
    if s.objection_due and now >= s.hold_until:
        return StartCycle(None, "auto", "objection")
    if s.due is None:
        return ReadSchedule()
    timeout: float | None = None
    arm: float | None = None
    if now < s.hold_until and not s.kick:
        timeout = s.hold_until - now
    elif s.kick or s.due.at <= s.boottime:
        return StartCycle(None if s.due.trigger == RETRY else s.due.trigger, "auto", "schedule")
    elif s.has_timer:
        arm = s.due.at
    else:
        timeout = s.due.at - s.boottime
    if s.refresh_at is not None:
        if s.refresh_at <= now:
            return StartSnapshot()
        timeout = _earliest(timeout, s.refresh_at - now)
    return Sleep(_capped(timeout, s, now), arm)


def kick_on_network(due: Due, boottime: float, now: float, last_kick: float) -> bool:
    """Return True when a route or VPN link that appeared should send the waiting report now."""
    return due.retry and due.at > boottime and now - last_kick >= NET_KICK_INTERVAL


def _capped(timeout: float | None, s: Loop, now: float) -> float | None:
    if s.watchdog_interval:
        return _earliest(timeout, max(0.0, s.next_ping - now))
    if s.has_timer:
        return timeout  # the timerfd brings the deadline; nothing else to look at
    return _earliest(timeout, IDLE_CAP)


def _earliest(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)
