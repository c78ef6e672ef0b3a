"""The CLOCK_BOOTTIME timerfd the daemon sleeps on (the real kernel's)."""

from __future__ import annotations

import select
import time
from pathlib import Path

import pytest

from evo_agent.delivery.boottimer import CLOCK_BOOTTIME, BootTimer


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def test_fires_at_an_absolute_boottime_deadline() -> None:
    timer = BootTimer.create()
    if timer is None:
        pytest.skip("no timerfd here")
    try:
        info = Path(f"/proc/self/fdinfo/{timer.fileno()}").read_text()
        assert f"clockid: {CLOCK_BOOTTIME}" in info
        start = time.monotonic()
        timer.set(_boottime() + 0.3)
        assert select.select([timer], [], [], 0.1)[0] == []  # not yet
        assert select.select([timer], [], [], 2.0)[0] == [timer]
        assert 0.25 <= time.monotonic() - start < 1.5
        timer.clear()
        assert select.select([timer], [], [], 0.05)[0] == []  # consumed: no spin
        timer.set(_boottime() - 5)  # a deadline passed (during a suspend): fires at once
        assert select.select([timer], [], [], 1.0)[0] == [timer]
        timer.clear()
        timer.set(_boottime() + 86400)
        assert select.select([timer], [], [], 0.2)[0] == []
        remaining = next(line for line in Path(f"/proc/self/fdinfo/{timer.fileno()}")
                         .read_text().splitlines() if line.startswith("it_value:"))
        assert remaining.startswith("it_value: (8639") or remaining.startswith("it_value: (8640")
    finally:
        timer.close()
