"""Runs the collectors, each against its deadline.

Collectors run side by side, each in its own thread, against one deadline: one that raises,
hangs or meets garbage gets status ``error`` (or ``no_data``) and the report carries on with the
others.  The report is then built by the privacy filter alone (``evo_agent.policy``).
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


def collect(collectors: list[Collector], host: Host, deadline: float) -> Inventory:
    """Run every collector against ``host``, side by side; wait at most ``deadline`` seconds.

    One daemon thread per collector, not a ``ThreadPoolExecutor``: the executor's workers are
    joined when the interpreter exits, so a collector stuck in a read of a wedged device would
    keep the process alive; a daemon thread is abandoned and its collector reported as timed out.
    """
    results: dict[str, Outcome] = {}

    def run(c: Collector) -> None:
        results[c.name] = _run_one(c, host)

    threads = [threading.Thread(target=run, args=(c,), name=f"collector-{c.name}", daemon=True)
               for c in collectors]
    for t in threads:
        t.start()
    end = time.monotonic() + deadline
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    final = dict(results)  # what a collector abandoned here gives later is not used
    for c in collectors:
        if c.name not in final:
            LOG.warning("collector %s gave no answer within %.0f s", c.name, deadline)
            final[c.name] = Outcome(c.name, "error", int(deadline * 1000), None, "timeout",
                                    f"no answer within {deadline:g} s")
    return Inventory({c.name: final[c.name] for c in sorted(collectors, key=lambda c: c.name)})
