"""The report: from the configuration to the document that would leave the device.

:func:`inventory_report` is the one pipeline every verb uses (``inventory``, ``explain``,
``capture``, ``collectors``, the daemon's cycle and snapshot, ``manufacture``): the enabled
collectors, the host the configuration names (or a capture given with ``--from``), the collection
(``evo_agent.inventory``), then the report built by the privacy filter alone (``evo_agent.policy``).
The helpers that read reports (:func:`rfc3339`, :func:`flatten`, :func:`diff_reports`) live here
too.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from evo_agent import __version__
from evo_agent.collector import Collector, discover
from evo_agent.config import Config
from evo_agent.hostroot import CaptureSource, Host, LiveHost, ReplayHost
from evo_agent.inventory import Inventory, collect
from evo_agent.policy import Policy, apply, load_policy

SCHEMA_ID = "evo-inventory/1"
TRIGGERS = ("boot", "daily", "manual", "manufacturing")
#: Report fields that change on every run: a difference there is no change of the device.
VOLATILE = ("report_id", "sequence", "collected_at", "trigger")


@dataclass
class InventoryRun:
    """One run of the pipeline: what the collectors gave, the report, what the filter dropped."""

    inventory: Inventory
    report: dict[str, Any]
    dropped: Counter[str]


def enabled_collectors(cfg: Config, classes: Mapping[str, type[Collector]] | None = None, *,
                       all_of_them: bool = False) -> list[Collector]:
    """Return the collectors the configuration enables (or all), with their options."""
    out = []
    for name, cls in sorted((discover() if classes is None else classes).items()):
        opts = dict(cfg.collectors.get(name, {}))
        if opts.pop("enabled", cls.default_enabled) or all_of_them:
            out.append(cls(opts, timeout=cfg.collector_timeout))
    return out


@contextlib.contextmanager
def open_host(cfg: Config, source: str | os.PathLike[str] | None = None) -> Iterator[Host]:
    """Yield the host to read: a capture given with --from, else ``[agent] host_root``.

    A root other than "/" is a capture (tests, or a technician replaying one): its commands are
    replayed from it, never run on this machine.
    """
    if source:
        with CaptureSource(source) as host:
            yield host
        return
    root = str(cfg.values.get("agent", {}).get("host_root", "/"))
    yield LiveHost("/") if root == "/" else ReplayHost(root)


def inventory_report(
    cfg: Config,
    *,
    source: str | os.PathLike[str] | None = None,
    host: Host | None = None,
    classes: Mapping[str, type[Collector]] | None = None,
    trigger: str = "manual",
    policy: Policy | None = None,
    raw_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
) -> InventoryRun:
    """Collect with the enabled collectors and build the report.

    ``host`` (e.g. a RecordingHost) replaces the one :func:`open_host` would give for ``source``;
    ``raw_overrides`` replaces raw values before the filter (manufacturing gives the VPNID the unit
    is about to get).
    """
    collectors = enabled_collectors(cfg, classes)
    opened = open_host(cfg, source) if host is None else contextlib.nullcontext(host)
    with opened as reading:
        inventory = collect(collectors, reading, deadline=cfg.collector_timeout * 3)
    for name, values in (raw_overrides or {}).items():
        outcome = inventory.outcomes.get(name)
        if outcome is not None:
            outcome.raw = {**(outcome.raw or {}), **values}
    report, dropped = build_report(inventory, load_policy() if policy is None else policy,
                                   trigger=trigger, clock=clock)
    return InventoryRun(inventory, report, dropped)


def rfc3339(now: datetime) -> str:
    """Return a UTC RFC 3339 timestamp with second precision."""
    return now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_report(
    inventory: Inventory,
    policy: Policy,
    *,
    trigger: str = "manual",
    sequence: int = 0,
    report_id: str | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
) -> tuple[dict[str, Any], Counter[str]]:
    """Return the evo-inventory/1 document and the names of the dropped fields."""
    if trigger not in TRIGGERS:
        raise ValueError(f"unknown trigger {trigger!r}")
    filtered = apply(policy, inventory.raw())
    report: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "policy_version": policy.version,
        "report_id": report_id or str(uuid.uuid4()),
        "sequence": sequence,
        "trigger": trigger,
        "collected_at": rfc3339(clock()),
        "agent_version": __version__,
        "functional": filtered.functional,
        "hardware": filtered.hardware,
        "collectors": {
            name: {"status": o.status, "duration_ms": o.duration_ms, "error": o.error_code}
            for name, o in inventory.outcomes.items()
        },
    }
    return report, filtered.dropped


def flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    """Return dotted paths to leaf values (list items by index)."""
    out: dict[str, Any] = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(doc, list) and doc:
        for i, v in enumerate(doc):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = doc
    return out


def diff_reports(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the fields that differ (volatile ones and timings left out)."""
    a, b = flatten(old), flatten(new)
    rows = []
    for key in sorted(set(a) | set(b)):
        if key in VOLATILE or key.endswith(".duration_ms"):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            rows.append({"field": key, "sent": a.get(key, "<absent>"),
                         "now": b.get(key, "<absent>")})
    return rows
