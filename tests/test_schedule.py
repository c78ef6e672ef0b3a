"""The schedule, driven by a fake clock across reboots, suspend, NTP jumps and long offline periods.

A small simulated device: a boot id, CLOCK_BOOTTIME (seconds since boot, suspend included) and a
wall clock that scenarios step at will.  The device "runs the daemon" by asking next_due, advancing
the clock to it and recording a delivery (or a failure), with the state serialised through JSON
between every step as the real daemon does through state.json.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from evo_agent.delivery.schedule import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    BOOT_SPLAY,
    DAILY_SPLAY,
    DAY,
    NETWORK_WAIT_MAX,
    Due,
    Now,
    State,
    after_failure,
    after_nothing_waiting,
    after_success,
    backoff,
    hold_for_network,
    load_state,
    next_due,
    save_state,
    splay,
)

KEY = "EVO-000123"


@dataclass
class Device:
    """A fake appliance: real time passes in `real`; the clocks the agent sees are derived."""

    real: float = 0.0  # true seconds since the start of the simulation
    boot_no: int = 0
    boot_real: float = 0.0  # real time of the current boot
    wall_offset: float = 1_700_000_000.0  # wall = real + offset (scenarios jump it)
    state: State = field(default_factory=State)
    sent: list[tuple[float, str]] = field(default_factory=list)  # (real time, trigger)
    online: bool = True
    rng: random.Random = field(default_factory=lambda: random.Random(7))  # noqa: S311 - jitter, not crypto

    def now(self) -> Now:
        return Now(f"boot-{self.boot_no}", self.real - self.boot_real, self.real + self.wall_offset)

    def reboot(self, downtime: float = 60.0) -> None:
        self.real += downtime
        self.boot_no += 1
        self.boot_real = self.real
        self.wall_offset = 946_684_800.0 - self.real  # no RTC battery: the clock restarts in 2000

    def ntp_sync(self) -> None:
        self.wall_offset = 1_700_000_000.0

    def run_until(self, end: float) -> None:
        """Run the daemon loop until real time `end` (or a step past it)."""
        while True:
            self.state = State.from_json(self.state.to_json())  # persisted between steps
            due = next_due(self.state, self.now(), KEY)
            wait = max(0.0, due.at - self.now().boottime)
            if self.real + wait > end:
                self.real = end
                return
            self.real += wait
            if self.online:
                self.sent.append((self.real, due.trigger))
                self.state = after_success(self.state, self.now(), "https")
            else:
                self.state = after_failure(self.state, self.now(), "connection refused",
                                           self.rng.random())


def test_splay_is_stable_bounded_and_spread() -> None:
    boots = [splay(f"EVO-{i:06d}") for i in range(2000)]
    assert splay(KEY) == splay(KEY)
    assert all(0 <= b < BOOT_SPLAY and 0 <= d < DAILY_SPLAY for b, d in boots)
    # a fleet is spread over the whole window, not bunched: every tenth of it is used
    assert len({int(d / DAILY_SPLAY * 10) for _, d in boots}) == 10
    assert len({int(b / BOOT_SPLAY * 10) for b, _ in boots}) == 10


def test_boot_report_then_daily_every_24h_plus_splay() -> None:
    d = Device()
    d.run_until(10 * DAY)
    boot_splay, daily_splay = splay(KEY)
    assert d.sent[0][0] == pytest.approx(boot_splay) and d.sent[0][1] == "boot"
    assert [t for _, t in d.sent[1:]] == ["daily"] * (len(d.sent) - 1)
    gaps = [b[0] - a[0] for a, b in zip(d.sent, d.sent[1:], strict=False)]
    assert all(g == pytest.approx(DAY + daily_splay) for g in gaps)
    assert len(d.sent) == 1 + int((10 * DAY - boot_splay) // (DAY + daily_splay))


def test_daemon_restart_does_not_double_the_boot_report() -> None:
    d = Device()
    d.run_until(3600)
    state_after = d.state
    assert [t for _, t in d.sent] == ["boot"]
    # a restart reads the same state in the same boot: nothing is due before the daily report
    due = next_due(State.from_json(state_after.to_json()), d.now(), KEY)
    assert due.trigger == "daily" and due.at > d.now().boottime + DAY - 3600


@pytest.mark.parametrize("jump", [-30 * 365 * DAY, -3 * DAY, +3 * DAY, +26 * 365 * DAY])
def test_ntp_jumps_neither_starve_nor_double(jump: float) -> None:
    d = Device()
    d.run_until(DAY / 2)
    d.wall_offset += jump  # NTP (or a technician) steps the clock
    d.run_until(5 * DAY)
    gaps = [b[0] - a[0] for a, b in zip(d.sent, d.sent[1:], strict=False)]
    assert len(d.sent) == 5  # boot + 4 daily, whatever the wall clock says
    assert all(DAY <= g <= DAY + DAILY_SPLAY for g in gaps)


def test_rtc_less_reboots_send_one_boot_report_each_and_keep_daily_cadence() -> None:
    d = Device()
    d.run_until(DAY * 1.5)
    for _ in range(3):
        d.reboot()  # clock restarts in 2000 ...
        d.run_until(d.real + 120)
        d.ntp_sync()  # ... and jumps to now two minutes later
        d.run_until(d.real + 7 * 3600)
    triggers = [t for _, t in d.sent]
    assert triggers.count("boot") == 4
    d.run_until(d.real + 2 * DAY)
    last_boot = max(i for i, (_, t) in enumerate(d.sent) if t == "boot")
    after = d.sent[last_boot + 1:]
    assert [t for _, t in after] == ["daily", "daily"]
    assert after[0][0] - d.sent[last_boot][0] >= DAY


def test_suspend_counts_as_elapsed_time() -> None:
    d = Device()
    d.run_until(3600)
    # suspended for 30 h: CLOCK_BOOTTIME advances, the boot id stays
    d.real += 30 * 3600
    due = next_due(d.state, d.now(), KEY)
    assert due.trigger == "daily" and due.at <= d.now().boottime  # due at once on resume
    d.run_until(d.real + 1)
    assert [t for _, t in d.sent] == ["boot", "daily"]


def test_long_offline_backs_off_to_the_cap_then_sends_once() -> None:
    d = Device()
    d.online = False
    d.run_until(5 * DAY)
    assert d.sent == []
    assert d.state.failures > 5
    # attempts while offline: bounded by the backoff (no busy loop), at least one per cap period
    assert d.state.failures < 100
    d.online = True
    d.run_until(d.real + BACKOFF_MAX + 1)
    assert [t for _, t in d.sent] == ["boot"]  # one report, no catch-up burst
    assert d.state.failures == 0


def test_backoff_bounds_and_retry_after() -> None:
    for n in range(1, 40):
        lo, hi = backoff(n, 0.0), backoff(n, 0.999999)
        assert lo == BACKOFF_MIN
        assert hi <= BACKOFF_MAX
        assert hi == pytest.approx(min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (n - 1)), rel=1e-5)
    assert backoff(1, 0.5, retry_after=900) == 900
    assert backoff(20, 0.99, retry_after=10) > 10
    assert backoff(1, 0.0, retry_after=10 * DAY) == DAY


def test_retry_after_delays_the_next_attempt() -> None:
    now = Now("b", 1000.0, 1e9)
    s = after_failure(State(), now, "429", 0.0, retry_after=1800)
    assert next_due(s, now, KEY).at == 2800.0
    assert next_due(s, now, KEY).trigger == "boot" and next_due(s, now, KEY).retry


def test_a_failure_after_this_boots_success_is_retried_at_the_backoff() -> None:
    """A failed manual send leaves its report waiting: it goes at the backoff (sending only
    what waits), not 24 h after the boot report."""
    s = after_success(State(), Now("b", 100.0, 1e9), "https")
    failed = Now("b", 5000.0, 1e9 + 4900)
    s = after_failure(s, failed, "503", 0.0)
    due = next_due(s, failed, KEY)
    assert (due.at, due.trigger, due.retry) == (5000.0 + BACKOFF_MIN, "retry", True)
    # the retry found nothing waiting: the next report is the daily one again
    after = after_nothing_waiting(s)
    assert next_due(after, failed, KEY).trigger == "daily"
    assert next_due(after, failed, KEY).at > 100.0 + DAY


def test_failures_from_another_boot_do_not_delay_the_boot_report() -> None:
    s = State()
    for _ in range(10):
        s = after_failure(s, Now("old", 5000.0, 1e9), "x", 0.9)
    due = next_due(s, Now("new", 1.0, 1e9), KEY)
    assert due.trigger == "boot" and due.at < BOOT_SPLAY
    assert after_failure(s, Now("new", 1.0, 1e9), "x", 0.9).failures == 1


def test_state_file_round_trip_and_corruption(tmp_path: Path) -> None:
    p = tmp_path / "state.json"
    assert load_state(p) == State()
    s = after_success(State(), Now("b", 12.5, 1.7e9), "vpn")
    save_state(p, s)
    assert load_state(p) == s
    p.write_bytes(b'{"success_boottime": "yesterday"')
    assert load_state(p) == State()
    assert (tmp_path / "state.json.corrupt").exists()
    p.write_bytes(b'{"success_boottime": "yesterday"}')
    assert load_state(p) == State()


def _first_attempt(route_at: float | None, horizon: float = 2 * 3600) -> tuple[float, str]:
    """Step a booting device's daemon second by second: when does the first attempt go, why?

    The kernel gets a route to the registry at ``route_at`` (None: never, e.g. a proxy the
    route check cannot see); the daemon re-evaluates at each wakeup, as the event loop does.
    """
    state = State()
    t = 0.0
    since = None
    while t < horizon:
        now = Now("boot-1", t, 1_700_000_000.0 + t)
        due = next_due(state, now, KEY)
        if due.at <= now.boottime:
            up = route_at is not None and t >= route_at
            since = None if up else (t if since is None else since)
            due = hold_for_network(due, up, t if since is None else since)
            if due.at <= now.boottime:
                return t, due.reason
            assert due.network_wait and "waiting for a route" in due.reason
        t += 1.0
    raise AssertionError("no attempt")


def test_boot_report_waits_for_a_route_instead_of_failing() -> None:
    boot_splay, _ = splay(KEY)
    # the route is there before the report is due: it goes at its time
    assert _first_attempt(0.0)[0] == pytest.approx(boot_splay, abs=1)
    # DHCP or the VPN come 10 minutes late: the report goes the second the route appears (the
    # netlink event wakes the loop), without a failed attempt or a backoff before it
    t, reason = _first_attempt(boot_splay + 600)
    assert t == pytest.approx(boot_splay + 600, abs=1) and "waiting" not in reason
    # never a route the check can see: tried anyway, NETWORK_WAIT_MAX after its due time
    t, _ = _first_attempt(None)
    assert t == pytest.approx(boot_splay + NETWORK_WAIT_MAX, abs=1)


def test_hold_keeps_the_trigger_and_retry() -> None:
    now = Now("b", 5000.0, 1_700_000_000.0)
    state = after_failure(State(), now, "refused", 0.0)
    due = next_due(state, Now("b", 6000.0, 1_700_001_000.0), KEY)
    held = hold_for_network(due, False, 6000.0)
    assert (held.trigger, held.retry, held.network_wait) == (due.trigger, True, True)
    assert held.at == max(due.at, 6000.0) + NETWORK_WAIT_MAX
    assert hold_for_network(due, True, 6000.0) is due
    # a daemon that starts long after the report fell due (hours of uptime) still waits: the
    # bound runs from when it first found no route, not from the due time
    late = hold_for_network(Due(120.0, "boot", "no report yet"), False, 10_800.0)
    assert late.at == 10_800.0 + NETWORK_WAIT_MAX
