"""The daemon's decisions, from plain values: one row per rule of ``evo_agent.delivery.plan``.

Times: CLOCK_MONOTONIC ``NOW`` = 1000 for the loop, CLOCK_BOOTTIME ``BOOT`` = 5000 for the
schedule (they are different clocks on purpose: suspend separates them).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from evo_agent.delivery.plan import (
    IDLE_CAP,
    NET_KICK_INTERVAL,
    Action,
    KillChild,
    Loop,
    ReadSchedule,
    Sleep,
    StartCycle,
    StartSnapshot,
    kick_on_network,
    next_action,
)
from evo_agent.delivery.schedule import NETWORK_WAIT_MAX, RETRY, Due, hold_for_network

NOW = 1000.0
BOOT = 5000.0
DAILY_IN_1H = Due(BOOT + 3600, "daily", "24 h after the last success")
BOOT_DUE = Due(BOOT - 1, "boot", "no report yet since this boot")
RETRY_IN_2M = Due(BOOT + 120, RETRY, "retry after 1 failed attempt(s)", retry=True)
BOOT_RETRY_IN_2M = Due(BOOT + 120, "boot", "retry after 2 failed attempt(s)", retry=True)
#: a boot report due for 1300 s, first seen without a route 1200 s ago: it waits for a route
#: NETWORK_WAIT_MAX (1800 s) from then, i.e. 600 s more
NO_ROUTE = hold_for_network(replace(BOOT_DUE, at=BOOT - 1300), False, BOOT - 1200)

#: a daemon with nothing to do: enabled, the next report in an hour, no watchdog, no timer
IDLE = Loop(due=DAILY_IN_1H, boottime=BOOT, child_deadline=300.0)

CASES: list[tuple[str, Loop, Action]] = [
    # -- what starts, first match wins ----------------------------------------------------------
    ("manual send beats objection and schedule",
     replace(IDLE, send_via="vpn", objection_due=True, due=BOOT_DUE),
     StartCycle("manual", "vpn", "manual")),
    ("manual send ignores hold_until",
     replace(IDLE, send_via="auto", hold_until=NOW + 30), StartCycle("manual", "auto", "manual")),
    ("manual send needs no schedule read", replace(IDLE, send_via="https", due=None),
     StartCycle("manual", "https", "manual")),
    ("objection beats a due schedule", replace(IDLE, objection_due=True, due=BOOT_DUE),
     StartCycle(None, "auto", "objection")),
    ("objection needs no schedule read", replace(IDLE, objection_due=True, due=None),
     StartCycle(None, "auto", "objection")),
    ("objection held by hold_until: the schedule decides (held too)",
     replace(IDLE, objection_due=True, hold_until=NOW + 30, due=BOOT_DUE), Sleep(30.0)),
    ("objection waiting while opted out still goes",
     replace(IDLE, enabled=False, objection_waiting=True, objection_due=True),
     StartCycle(None, "auto", "objection")),
    ("opted out, nothing waiting: nothing starts, even a manual send",
     replace(IDLE, enabled=False, send_via="auto", due=BOOT_DUE, refresh_at=NOW - 1),
     Sleep(IDLE_CAP)),
    ("no schedule read yet", replace(IDLE, due=None), ReadSchedule()),
    ("due report starts with its trigger", replace(IDLE, due=BOOT_DUE),
     StartCycle("boot", "auto", "schedule")),
    ("a due retry sends what waits (no trigger)",
     replace(IDLE, due=replace(RETRY_IN_2M, at=BOOT)), StartCycle(None, "auto", "schedule")),
    # -- hold_until holds scheduled cycles, not kicked ones -------------------------------------
    ("hold_until delays a due report", replace(IDLE, due=BOOT_DUE, hold_until=NOW + 42),
     Sleep(42.0)),
    ("hold_until over: the due report starts", replace(IDLE, due=BOOT_DUE, hold_until=NOW),
     StartCycle("boot", "auto", "schedule")),
    ("a kick goes through hold_until", replace(IDLE, due=RETRY_IN_2M, kick=True,
                                               hold_until=NOW + 42),
     StartCycle(None, "auto", "schedule")),
    ("a kick of a boot report's retry keeps its trigger",
     replace(IDLE, due=BOOT_RETRY_IN_2M, kick=True), StartCycle("boot", "auto", "schedule")),
    # -- waiting for the network ----------------------------------------------------------------
    ("no route: sleep until the network wait's bound",
     replace(IDLE, due=NO_ROUTE), Sleep(600.0)),
    ("no route, with a timer: armed at the bound", replace(IDLE, due=NO_ROUTE, has_timer=True),
     Sleep(None, arm=BOOT - 1200 + NETWORK_WAIT_MAX)),
    ("no route past its bound: tried anyway",
     replace(IDLE, due=NO_ROUTE, boottime=BOOT + 600),
     StartCycle("boot", "auto", "schedule")),
    # -- hot-plug refresh ------------------------------------------------------------------------
    ("refresh settling: wake when it settles", replace(IDLE, refresh_at=NOW + 4.5), Sleep(4.5)),
    ("refresh settled: snapshot", replace(IDLE, refresh_at=NOW), StartSnapshot()),
    ("refresh waits behind a due report", replace(IDLE, due=BOOT_DUE, refresh_at=NOW - 9),
     StartCycle("boot", "auto", "schedule")),
    ("refresh goes while the schedule is held",
     replace(IDLE, due=BOOT_DUE, hold_until=NOW + 42, refresh_at=NOW - 1), StartSnapshot()),
    ("refresh settling while held: the earlier of the two",
     replace(IDLE, due=BOOT_DUE, hold_until=NOW + 42, refresh_at=NOW + 3), Sleep(3.0)),
    ("refresh waits for a running child",
     replace(IDLE, refresh_at=NOW - 9, child_started=NOW - 10), Sleep(290.0)),
    # -- the running child -------------------------------------------------------------------------
    ("child running: sleep until its deadline", replace(IDLE, child_started=NOW - 100,
                                                        send_via="auto", due=BOOT_DUE),
     Sleep(200.0)),
    ("child at its deadline: not yet killed", replace(IDLE, child_started=NOW - 300),
     Sleep(0.0)),
    ("child past its deadline: killed", replace(IDLE, child_started=NOW - 300.5), KillChild()),
    ("killed child: wait for its pipe to close, no spinning",
     replace(IDLE, child_started=NOW - 400, child_killed=True), Sleep(IDLE_CAP)),
    ("child of an opted-out daemon is still timed",
     replace(IDLE, enabled=False, child_started=NOW - 400), KillChild()),
    # -- how long to sleep: watchdog, timer, IDLE_CAP --------------------------------------------
    ("no timer, no watchdog: the schedule's deadline, capped",
     replace(IDLE, due=replace(DAILY_IN_1H, at=BOOT + 600)), Sleep(600.0)),
    ("no timer, no watchdog: a far deadline is capped at IDLE_CAP", IDLE, Sleep(IDLE_CAP)),
    ("timer: armed at the deadline, no timeout", replace(IDLE, has_timer=True),
     Sleep(None, arm=BOOT + 3600)),
    ("timer and watchdog: the next ping bounds the sleep",
     replace(IDLE, has_timer=True, watchdog_interval=15.0, next_ping=NOW + 12),
     Sleep(12.0, arm=BOOT + 3600)),
    ("watchdog replaces IDLE_CAP", replace(IDLE, watchdog_interval=1000.0, next_ping=NOW + 950),
     Sleep(950.0)),
    ("watchdog ping overdue: do not block", replace(IDLE, watchdog_interval=15.0,
                                                    next_ping=NOW - 3), Sleep(0.0)),
    ("watchdog bounds a running child's sleep",
     replace(IDLE, child_started=NOW, watchdog_interval=15.0, next_ping=NOW + 15), Sleep(15.0)),
    ("opted out with a timer: sleep without limit",
     replace(IDLE, enabled=False, has_timer=True), Sleep(None)),
]


@pytest.mark.parametrize(("loop", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_next_action(loop: Loop, expected: Action) -> None:
    assert next_action(loop, NOW) == expected


KICKS = [
    ("a report waits for its retry", RETRY_IN_2M, NOW - NET_KICK_INTERVAL, True),
    ("kicked less than a minute ago", RETRY_IN_2M, NOW - NET_KICK_INTERVAL + 1, False),
    ("nothing waits: the next report is the daily one", DAILY_IN_1H, -NET_KICK_INTERVAL, False),
    ("the retry is due anyway: the schedule starts it", replace(RETRY_IN_2M, at=BOOT),
     -NET_KICK_INTERVAL, False),
]


@pytest.mark.parametrize(("due", "last_kick", "expected"), [k[1:] for k in KICKS],
                         ids=[k[0] for k in KICKS])
def test_kick_on_network(due: Due, last_kick: float, expected: bool) -> None:
    assert kick_on_network(due, BOOT, NOW, last_kick) is expected
