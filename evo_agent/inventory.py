"""Runs the collectors, each against its deadline.

Collectors run one after the other in a worker thread, each with a deadline: one that raises,
hangs or meets garbage gets status ``error`` (or ``no_data``) and the report carries on with the
others.  The
report is then built by the privacy filter alone (``evo_agent.policy``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from evo_agent.collector import Collector, Raw
from evo_agent.errors import EvoError, PartialData
from evo_agent.hostroot import Host

LOG = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What one collector gave."""

    name: str
    status: str  # ok | no_data | error
    duration_ms: int
    raw: Raw | None
    #: short machine code for the report (never a value from the system)
    error_code: str | None = None
    #: full message, shown locally only (it may quote what the hardware said)
    error_message: str | None = None


@dataclass
class Inventory:
    """All outcomes of one run, in collector-name order."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)

    def raw(self) -> dict[str, Raw | None]:
        """Return raw values by collector."""
        return {name: o.raw for name, o in self.outcomes.items()}


def _has_data(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(_has_data(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_data(v) for v in value)
    return value not in (None, "")


def error_code(exc: BaseException) -> str:
    """Return a value-free code for an exception: its class name in snake case."""
    name = type(exc).__name__
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()[:64]


def _run_one(collector: Collector, host: Host) -> Outcome:
    start = time.monotonic()
    try:
        raw = collector.collect(host)
        if not isinstance(raw, dict):
            raise TypeError(f"collect() returned {type(raw).__name__}, not dict")
    except PartialData as exc:
        LOG.warning("collector %s: %s", collector.name, exc)
        ms = int((time.monotonic() - start) * 1000)
        return Outcome(collector.name, "error", ms, exc.raw, exc.code, str(exc)[:500])
    except Exception as exc:  # a broken collector never kills the report
        LOG.warning("collector %s failed: %s", collector.name, exc)
        LOG.debug("collector %s traceback", collector.name, exc_info=True)
        ms = int((time.monotonic() - start) * 1000)
        message = str(exc) if isinstance(exc, EvoError) else f"{type(exc).__name__}: {exc}"
        return Outcome(collector.name, "error", ms, None, error_code(exc), message[:500])
    ms = int((time.monotonic() - start) * 1000)
    status = "ok" if _has_data(raw) else "no_data"
    if status == "no_data":
        LOG.debug("collector %s found nothing on this host", collector.name)
    return Outcome(collector.name, status, ms, raw)


#: A collector still running after this long (or after a quarter of the deadline) gets company:
#: the collectors queued after it start in another worker, so one that hangs delays the others by
#: this much at most.
HANDOFF_S = 1.0


def collect(collectors: list[Collector], host: Host, deadline: float) -> Inventory:
    """Run every collector against ``host``; each gets ``deadline`` seconds.

    One worker thread runs them one after the other.  Side by side in threads, collectors that
    are CPU-bound under the GIL hand the lock over at every file read: one live run made 3,092
    futex calls, and each is a context switch, dear in a QEMU TCG guest.  A collector that runs
    longer than the hand-off time (a wedged device, a command that hangs) keeps its worker, and the
    collectors queued behind it go on in a new one.  Workers are daemon threads: one stuck in a
    read of a wedged device must not keep the process alive; it is abandoned and its collector
    reported as timed out.
    """
    started = time.monotonic()
    handoff = min(HANDOFF_S, deadline / 4)
    results: dict[str, Outcome] = {}
    queue = list(collectors)
    names = {c.name for c in collectors}
    # worker -> when it started its current collector; guarded by ``changed``'s lock
    busy_since: dict[threading.Thread, float] = {}
    changed = threading.Condition()

    def work() -> None:
        me = threading.current_thread()
        done: tuple[str, Outcome] | None = None
        while True:
            # one locked step records the last outcome and takes the next collector, so a worker
            # between two collectors never looks stuck
            with changed:
                if done is not None:
                    results[done[0]] = done[1]
                    changed.notify()
                if not queue:
                    del busy_since[me]
                    return
                c = queue.pop(0)
                busy_since[me] = time.monotonic()
            done = (c.name, _run_one(c, host))

    def start_worker(n: int) -> None:
        t = threading.Thread(target=work, name=f"collectors-{n}", daemon=True)
        busy_since[t] = time.monotonic()  # the caller holds ``changed``
        t.start()

    workers = 1
    with changed:
        start_worker(workers)
        while True:
            now = time.monotonic()
            if len(results) == len(names) or now >= started + deadline:
                break
            waits = [started + deadline - now]
            if queue:
                # every worker is busy with one collector: once even the latest of those jobs is
                # older than the hand-off time, the queue gets a worker of its own
                newest = max(busy_since.values(), default=now)
                if now - newest >= handoff:
                    workers += 1
                    start_worker(workers)
                    continue
                waits.append(newest + handoff - now)
            changed.wait(max(0.0, min(waits)))
        queue.clear()  # an abandoned worker must not start anything more
        final = dict(results)
    for c in collectors:
        if c.name not in final:
            LOG.warning("collector %s gave no answer within %.0f s", c.name, deadline)
            final[c.name] = Outcome(c.name, "error", int(deadline * 1000), None, "timeout",
                                    f"no answer within {deadline:g} s")
    return Inventory({c.name: final[c.name] for c in sorted(collectors, key=lambda c: c.name)})
