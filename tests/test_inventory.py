"""The collector runner: one broken, hung or wrong collector never stops the report."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

import jsonschema

from evo_agent.collector import Collector, Raw
from evo_agent.hostroot import Host, ReplayHost
from evo_agent.inventory import collect, error_code
from evo_agent.policy import load_policy
from evo_agent.report import build_report as build
from tests.conftest import REPO

SCHEMA = json.loads((REPO / "evo_agent/schemas/evo-inventory-1.schema.json").read_text())
CANARY = "CANARY-serial-8c1f"


class Good(Collector):
    name = "dmi"
    description = "gives a board"
    fields: ClassVar[dict[str, str]] = {"board_vendor": "v"}

    def collect(self, host: Host) -> Raw:
        return {"board_vendor": host.read_attr("/sys/class/dmi/id/board_vendor")}


class Raises(Collector):
    name = "pci"
    description = "raises with a value in its message"
    fields: ClassVar[dict[str, str]] = {"devices": "d"}

    def collect(self, host: Host) -> Raw:
        raise ValueError(f"cannot parse line 'Serial Number: {CANARY}'")


class Hangs(Collector):
    name = "usb"
    description = "never answers"
    fields: ClassVar[dict[str, str]] = {"devices": "d"}
    release = threading.Event()

    def collect(self, host: Host) -> Raw:
        self.release.wait(30)
        return {"devices": []}


class WrongType(Collector):
    name = "alsa"
    description = "returns a list"
    fields: ClassVar[dict[str, str]] = {"cards": "c"}

    def collect(self, host: Host) -> Raw:
        return [1, 2]  # type: ignore[return-value]


class Empty(Collector):
    name = "disks"
    description = "finds nothing"
    fields: ClassVar[dict[str, str]] = {"boot_drive_model": "m"}

    def collect(self, host: Host) -> Raw:
        return {"boot_drive_model": None}


def test_failures_are_isolated_and_reported_without_values(tmp_path: Path) -> None:
    (tmp_path / "sys/class/dmi/id").mkdir(parents=True)
    (tmp_path / "sys/class/dmi/id/board_vendor").write_text("Supermicro\n")
    start = time.monotonic()
    try:
        inv = collect([Good(), Raises(), Hangs(), WrongType(), Empty()], ReplayHost(tmp_path),
                      deadline=0.5)
    finally:
        Hangs.release.set()
    assert time.monotonic() - start < 5
    status = {name: (o.status, o.error_code) for name, o in inv.outcomes.items()}
    assert status == {
        "alsa": ("error", "type_error"),
        "disks": ("no_data", None),
        "dmi": ("ok", None),
        "pci": ("error", "value_error"),
        "usb": ("error", "timeout"),
    }
    # the full message stays local (collectors verb); the report carries only the code
    assert CANARY in (inv.outcomes["pci"].error_message or "")
    report, _ = build(inv, load_policy(), trigger="boot", sequence=7,
                      clock=lambda: datetime(2026, 11, 23, 1, 2, 3, tzinfo=timezone.utc))
    jsonschema.validate(report, SCHEMA)
    assert report["hardware"]["motherboard"]["vendor"] == "Supermicro"
    assert report["collected_at"] == "2026-11-23T01:02:03Z"
    assert report["sequence"] == 7
    assert report["trigger"] == "boot"
    assert CANARY not in json.dumps(report)


def test_error_codes_are_snake_case_class_names() -> None:
    assert error_code(UnicodeDecodeError("utf-8", b"", 0, 1, "x")) == "unicode_decode_error"
    assert error_code(OSError()) == "os_error"
    assert error_code(TimeoutError()) == "timeout_error"


class _Probe(Collector):
    """Records which thread ran it and how many collectors ran at the same time."""

    description = "records its thread"
    fields: ClassVar[dict[str, str]] = {"x": "x"}
    lock = threading.Lock()
    running = 0
    most = 0
    threads: ClassVar[list[str]] = []
    daemons: ClassVar[list[bool]] = []
    started: ClassVar[dict[str, float]] = {}

    def collect(self, host: Host) -> Raw:
        with _Probe.lock:
            _Probe.running += 1
            _Probe.most = max(_Probe.most, _Probe.running)
            _Probe.threads.append(threading.current_thread().name)
            _Probe.daemons.append(threading.current_thread().daemon)
            _Probe.started[self.name] = time.monotonic()
        time.sleep(0.2)
        with _Probe.lock:
            _Probe.running -= 1
        return {"x": self.name}


def _probe(name: str) -> Collector:
    cls: type[Collector] = type(name.capitalize(), (_Probe,), {"name": name})
    return cls()


def test_collectors_run_side_by_side_in_daemon_threads(tmp_path: Path) -> None:
    # daemon threads: one stuck in a read of a wedged device must not keep the process alive
    _Probe.threads.clear()
    _Probe.daemons.clear()
    _Probe.most = 0
    inv = collect([_probe(n) for n in ("alsa", "disks", "dmi", "pci", "usb")],
                  ReplayHost(tmp_path), deadline=30)
    assert {o.status for o in inv.outcomes.values()} == {"ok"}
    assert _Probe.most > 1
    assert len(set(_Probe.threads)) == 5 and threading.main_thread().name not in _Probe.threads
    assert _Probe.daemons == [True] * 5


def test_a_hung_collector_does_not_hold_up_the_others(tmp_path: Path) -> None:
    class HangsFirst(Hangs):
        name = "alsa"

    Hangs.release.clear()
    start = time.monotonic()
    try:
        inv = collect([HangsFirst(), _probe("disks"), Raises(), _probe("usb")],
                      ReplayHost(tmp_path), deadline=2.0)
    finally:
        Hangs.release.set()
    elapsed = time.monotonic() - start
    status = {name: (o.status, o.error_code) for name, o in inv.outcomes.items()}
    assert status == {"alsa": ("error", "timeout"), "disks": ("ok", None),
                      "pci": ("error", "value_error"), "usb": ("ok", None)}
    assert 2.0 <= elapsed < 4
    # the others did not wait for it
    assert _Probe.started["disks"] - start < 1.0
    assert _Probe.started["usb"] - start < 1.0
