"""Crash safety: SIGKILL the process that writes the outbox at random points, many times.

Each cycle starts the real sender (``python3 -m evo_agent.delivery cycle``: send what waits,
collect, queue, send, acknowledge, record) and kills it with SIGKILL at a random point: anywhere,
right after a new report is queued, right after the registry got a request (so the
acknowledgement is often lost), or late in the cycle; some cycles finish.  After each kill the
test notes which reports sit in the outbox (those were queued).  At the end one cycle runs to
completion, and then:

* no outbox, state, sequence, key or transparency-log file is corrupt (parsed strictly);
* every report that was ever queued was stored by the registry exactly once (accepted once;
  a retry after a lost acknowledgement is answered "duplicate" and stored nothing);
* no sequence number was given to two reports; the outbox is empty, with no temp file left.

The number of cycles is ``EVO_CRASH_CYCLES`` (default 200, as the delivery issue asks; 80-100 s
on this shared two-core machine).  A second test kills the real daemon the same way, fewer times.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evo_agent.delivery import signing
from evo_agent.delivery.outbox import Outbox
from evo_agent.delivery.schedule import State
from evo_agent.delivery.translog import TransparencyLog
from tests.delivery.conftest import Agent
from tests.delivery.server import RegistryServer

REPO = Path(__file__).resolve().parents[2]
CYCLES = int(os.environ.get("EVO_CRASH_CYCLES", "200"))
_NAME = re.compile(r"^\d{12}-([0-9a-f-]{36})\.json$")


def _queued(state_dir: Path) -> set[str]:
    try:
        return {m.group(1) for p in (state_dir / "outbox").iterdir()
                if (m := _NAME.match(p.name))}
    except FileNotFoundError:
        return set()


def _sender(agent: Agent, trigger: str | None = "daily") -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "evo_agent.delivery", "cycle", "--config", str(agent.config)]
    if trigger:
        argv += ["--trigger", trigger]
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))


def _check_everything(agent: Agent, server: RegistryServer, queued: set[str]) -> None:
    sd = agent.state_dir
    box = Outbox(sd)
    assert box.pending() == [] and not (sd / "outbox" / "corrupt").exists()
    assert [p.name for p in (sd / "outbox").iterdir()] == []  # no temp file left either
    State.from_json((sd / "state.json").read_bytes())  # strict parse: raises if corrupt
    assert (sd / "sequence").read_text().strip().isdigit()
    signing.load(sd / "device.key")
    raw_lines = (sd / "sent" / "index.jsonl").read_bytes().splitlines()
    assert len(TransparencyLog(sd).entries()) == len(raw_lines) > 0  # every line parses
    reg = server.registry
    assert queued <= set(reg.stored), "a queued report never reached the registry"
    assert all(n == 1 for n in reg.accepted.values())
    assert set(reg.accepted) == set(reg.stored)
    sequences = [r["sequence"] for r in reg.stored.values()]
    assert len(sequences) == len(set(sequences)), "a sequence number was used twice"


@pytest.mark.slow
def test_sigkill_at_random_points_loses_and_doubles_nothing(agent: Agent,
                                                            server: RegistryServer) -> None:
    rng = random.Random(int(os.environ.get("EVO_CRASH_SEED", "20261123")))  # noqa: S311
    durations = []
    for _ in range(3):  # how long an uninterrupted cycle takes here
        t0 = time.monotonic()
        assert _sender(agent).wait(30) == 0
        durations.append(time.monotonic() - t0)
    span = statistics.median(durations)
    queued: set[str] = set(server.registry.stored)
    killed = killed_with_queue = 0
    for _ in range(CYCLES):
        before_files, before_requests = _queued(agent.state_dir), len(server.registry.requests)
        proc = _sender(agent)
        # Where to kill: anywhere in the cycle (mostly the imports), just after a new report is
        # queued, just after the registry got a request (the acknowledgement may be lost), or
        # late in the cycle.  Waiting for the step, not for a time, keeps this independent of
        # how loaded the machine is.
        plan = rng.choice(("anywhere", "queued", "answered", "late"))
        delay = rng.uniform(0, span) if plan == "anywhere" else rng.uniform(span * 0.8, span * 1.2)
        t0 = time.monotonic()
        if plan in ("queued", "answered"):
            while proc.poll() is None and time.monotonic() - t0 < 30:
                if (plan == "queued" and _queued(agent.state_dir) - before_files) or (
                        plan == "answered" and len(server.registry.requests) > before_requests):
                    break
                time.sleep(0.002)
            delay = rng.uniform(0, 0.03)
        try:
            proc.wait(delay)
            if plan in ("anywhere", "late"):
                durations.append(time.monotonic() - t0)
                span = statistics.median(durations[-9:])
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed += 1
        now_queued = _queued(agent.state_dir)
        killed_with_queue += bool(now_queued)
        queued |= now_queued
    assert _sender(agent, trigger=None).wait(30) == 0
    _check_everything(agent, server, queued)
    assert killed > CYCLES // 3  # the test did kill mid-way, often
    stored = len(server.registry.stored)
    assert stored > CYCLES // 8  # many cycles got as far as a delivery
    assert killed_with_queue > CYCLES // 10  # and many kills left a queued report behind
    print(f"\n{CYCLES} cycles, {killed} killed ({killed_with_queue} with a report queued), "
          f"{stored} reports stored, "
          f"{sum(server.registry.duplicates.values())} duplicates answered, "
          f"cycle {span:.2f} s")


@pytest.mark.slow
def test_sigkill_the_daemon(agent: Agent, server: RegistryServer, tmp_path: Path) -> None:
    rng = random.Random(5)  # noqa: S311
    queued: set[str] = set()
    for i in range(12):
        proc = subprocess.Popen([sys.executable, "-m", "evo_agent", "daemon", "--config",
                                 str(agent.config)], cwd=REPO, stderr=subprocess.DEVNULL,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
        if i % 3 == 0:  # a new boot: the boot report is due again
            (agent.state_dir / "state.json").unlink(missing_ok=True)
        time.sleep(rng.uniform(0.2, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        queued |= _queued(agent.state_dir)
    # an orphaned cycle child may still be running: the writer lock makes the next one wait
    result = subprocess.run([sys.executable, "-m", "evo_agent.delivery", "cycle", "--config",
                             str(agent.config)], cwd=REPO, capture_output=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ok"]
    _check_everything(agent, server, queued)
    assert len(server.registry.stored) >= 1
