"""End to end: the whole inventory of a complete 432 EVO, through the real command line.

The appliance is built by :mod:`tests.appliance` (a capture laid out as the kernel, udev and
dmidecode lay out a real machine, planted with canaries).  Every check goes through
``evo_agent.cli.main`` with ``--from`` a directory and ``--from`` a .tar.gz made by
``pack_capture``, as a technician or the test line would run it:

* the report validates against the schema, every declared value is what was planted, every
  collector says "ok";
* not one canary reaches ``inventory --json``, the table, ``explain --json`` or the logs (``-v``),
  while ``inventory --raw`` shows every canary a collector returns, and a recording of what the
  collectors read holds every canary (so these checks cannot pass by missing the canaries);
* unplugging the fiber dongle changes neither the MAC address nor the LAN IP;
* the archive and the directory give the same report, and so does a capture recorded from the
  appliance by ``RecordingHost`` (what ``evo-agent capture`` does on the device).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from evo_agent.cli import main
from evo_agent.collector import discover
from evo_agent.hostroot import LiveHost, RecordingHost, ReplayHost, pack_capture
from tests.appliance import STAMP, UNREAD, Expected, build_appliance
from tests.conftest import REPO, strip_volatile

SCHEMA = json.loads((REPO / "evo_agent/schemas/evo-inventory-1.schema.json").read_text("utf-8"))
SOURCES = ("dir", "tar")
VERBS: dict[str, list[str]] = {
    "json": ["inventory", "--json"],
    "table": ["inventory"],
    "raw": ["inventory", "--raw", "--json"],
    "explain": ["explain", "--json"],
}
#: Every declared field of the report, checked one by one.
FIELDS = (
    "functional.vpnid", "functional.netbios_name", "functional.lan_ip",
    "functional.lan_ip_secondary", "hardware.motherboard", "hardware.mac_address",
    "hardware.cpu", "hardware.ram", "hardware.boot_drive", "hardware.rip_drive",
    "hardware.usb_devices", "hardware.pci_devices", "hardware.audio_devices",
)


@dataclass(frozen=True)
class Run:
    """What one run of the command line gave."""

    code: int
    out: str
    err: str
    logs: str


def cli(argv: Sequence[str]) -> Run:
    """Run ``evo-agent ARGV`` in this process; capture stdout, stderr and every log record."""
    out, err, logs = io.StringIO(), io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(logs)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    # -v asks for DEBUG, but under pytest the root logger already has handlers, so the CLI's
    # basicConfig() does nothing: take every record here instead.
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return Run(code, out.getvalue(), err.getvalue(), logs.getvalue())


def leaks(text: str, expected: Expected) -> list[str]:
    """Return the names of the canaries found in ``text`` (any case), and the token itself."""
    folded = text.casefold()
    found = [name for name, value in expected.canaries.items() if value.casefold() in folded]
    if STAMP.casefold() in folded:
        found.append(f"token {STAMP}")
    return found


def pick(report: dict[str, Any], dotted: str) -> Any:
    node: Any = report
    for part in dotted.split("."):
        node = node[part]
    return node


#: The runs made on each appliance: every verb on the directory, and on the archive the report
#: and the raw values (unpacking an archive costs more than the inventory; the archive and the
#: directory are compared below, so the table and explain of one stand for both).
RUNS = (("dir", "json"), ("dir", "table"), ("dir", "raw"), ("dir", "explain"),
        ("tar", "json"), ("tar", "raw"))


@dataclass(frozen=True)
class Machine:
    """The appliance, its archive, a config, and the command line's answers on both."""

    expected: Expected
    archive: Path
    config: Path
    runs: dict[tuple[str, str], Run]


def _machine(base: Path, *, dongle: bool, runs: Sequence[tuple[str, str]] = RUNS) -> Machine:
    expected = build_appliance(base / "appliance", dongle=dongle)
    archive = base / "appliance.tar.gz"
    pack_capture(expected.root, archive)
    # an empty config file: this machine's /etc/evo-agent must not change the result
    config = base / "agent.toml"
    config.write_text("", "utf-8")
    done = {}
    for kind, verb in runs:
        src = archive if kind == "tar" else expected.root
        done[kind, verb] = cli([*VERBS[verb], "-v", "--from", str(src), "--config", str(config)])
    return Machine(expected, archive, config, done)


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Machine:
    return _machine(tmp_path_factory.mktemp("evo"), dongle=True)


@pytest.fixture(scope="module")
def unplugged(tmp_path_factory: pytest.TempPathFactory) -> Machine:
    return _machine(tmp_path_factory.mktemp("evo-nodongle"), dongle=False,
                    runs=[("dir", "json"), ("tar", "json")])


def report_of(m: Machine, kind: str) -> dict[str, Any]:
    run = m.runs[kind, "json"]
    assert run.code == 0, run.err
    doc: dict[str, Any] = json.loads(run.out)
    return doc


# ---- 1. the report: schema, declared values, statuses ---------------------------------------
@pytest.mark.parametrize("kind", SOURCES)
def test_report_validates_and_every_collector_is_ok(machine: Machine, kind: str) -> None:
    report = report_of(machine, kind)
    jsonschema.validate(report, SCHEMA)
    assert {name: c["status"] for name, c in report["collectors"].items()} == {
        name: "ok" for name in ("alsa", "disks", "dmi", "identity", "network", "pci", "usb")}
    assert all(c["error"] is None for c in report["collectors"].values())
    # nothing is sent that the checks below do not look at
    sent = ({f"functional.{k}" for k in report["functional"]}
            | {f"hardware.{k}" for k in report["hardware"]})
    assert sent == set(FIELDS)


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("kind", SOURCES)
def test_declared_value_is_what_was_planted(machine: Machine, kind: str, field: str) -> None:
    report = report_of(machine, kind)
    expected = {"functional": machine.expected.functional, "hardware": machine.expected.hardware}
    assert pick(report, field) == pick(expected, field)


# ---- 2. privacy: no canary in anything sent, shown or logged ----------------------------------
@pytest.mark.parametrize(("kind", "verb"), [r for r in RUNS if r[1] != "raw"])
def test_no_canary_in_what_is_sent_or_shown(machine: Machine, kind: str, verb: str) -> None:
    run = machine.runs[kind, verb]
    assert run.code == 0, run.err
    assert run.out.strip()
    assert leaks(run.out, machine.expected) == []
    if verb == "explain":
        # the names of what was dropped are listed (never their values)
        dropped = json.loads(run.out)["not_sent"]
        assert {"dmi.product_serial", "dmi.oem_strings",
                "usb.devices[].serial", "network.interfaces"} <= set(dropped)


def test_no_canary_in_the_logs(machine: Machine) -> None:
    for (kind, verb), run in machine.runs.items():
        assert leaks(run.logs, machine.expected) == [], (kind, verb)
        assert leaks(run.err, machine.expected) == [], (kind, verb)
        if verb != "raw":  # -v did log: the filter names what it dropped
            assert "privacy filter dropped undeclared fields" in run.logs, (kind, verb)


def test_no_canary_on_the_stderr_of_the_real_process(machine: Machine) -> None:
    """``python3 -m evo_agent -v``: the logging the CLI sets up itself, on its real stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "evo_agent", "inventory", "--json", "-v", "--from",
         str(machine.expected.root), "--config", str(machine.config)],
        capture_output=True, text=True, env=env, check=False, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "evo-agent: DEBUG: " in proc.stderr
    assert leaks(proc.stderr, machine.expected) == []
    assert leaks(proc.stdout, machine.expected) == []
    assert strip_volatile(json.loads(proc.stdout)) == strip_volatile(report_of(machine, "dir"))


@pytest.mark.parametrize("kind", SOURCES)
def test_raw_output_shows_the_canaries(machine: Machine, kind: str) -> None:
    """``--raw`` holds every canary a collector returns: the checks above can fail."""
    run = machine.runs[kind, "raw"]
    assert run.code == 0, run.err
    doc = json.loads(run.out)
    assert doc["never_sent"] is True
    missing = [name for name in sorted(machine.expected.returned)
               if machine.expected.canaries[name] not in run.out]
    assert missing == []


class ImageHost(LiveHost):
    """The appliance tree as a mounted system image whose commands answer from ``commands/``.

    LiveHost never runs this machine's commands against another root; the image's own
    dmidecode output and address probe are what the device would have given.
    """

    def __init__(self, root: Path) -> None:
        super().__init__(root, allow_commands=False)
        self._commands = ReplayHost(root)

    def run(self, argv: Sequence[str], timeout: float) -> bytes:
        return self._commands.run(argv, timeout)

    def probe(self, name: str, func: Callable[[], bytes]) -> bytes:
        return self._commands.probe(name, func)


def _files(root: Path) -> Iterator[Path]:
    """Yield the regular files under a directory, in order."""
    return (p for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink())


def record(root: Path, out: Path) -> dict[str, Any]:
    """Run every collector on the appliance through a RecordingHost; return their raw values."""
    host = RecordingHost(ImageHost(root), out)
    return {name: cls().collect(host) for name, cls in sorted(discover().items())}


@dataclass(frozen=True)
class Recording:
    """A capture recorded from the appliance, and the raw values of the recording run."""

    capture: Path
    raw: dict[str, Any]


@pytest.fixture(scope="module")
def recording(machine: Machine, tmp_path_factory: pytest.TempPathFactory) -> Recording:
    capture = tmp_path_factory.mktemp("recorded") / "capture"
    return Recording(capture, record(machine.expected.root, capture))


def test_collectors_read_every_canary(machine: Machine, recording: Recording) -> None:
    """What the collectors read (recorded as a capture would) holds every canary.

    This is the proof for the canaries no collector returns (board asset tag, user names in
    mountinfo and smb.conf): they sit in data the collectors read, not beside it.
    """
    read = b"".join(p.read_bytes() for p in _files(recording.capture))
    missing = [name for name, value in machine.expected.canaries.items()
               if value.encode() not in read]
    assert missing == sorted(UNREAD)  # the host name stays out of the capture too


# ---- 3. hot-plug: the dongle unplugged -------------------------------------------------------
@pytest.mark.parametrize("kind", SOURCES)
def test_unplugging_the_dongle_keeps_mac_and_lan_ip(machine: Machine, unplugged: Machine,
                                                    kind: str) -> None:
    plugged, alone = report_of(machine, kind), report_of(unplugged, kind)
    jsonschema.validate(alone, SCHEMA)
    assert alone["hardware"]["mac_address"] == plugged["hardware"]["mac_address"]
    assert alone["functional"]["lan_ip"] == plugged["functional"]["lan_ip"]
    assert plugged["functional"]["lan_ip_secondary"] is not None
    assert alone["functional"]["lan_ip_secondary"] is None
    # and the rest is exactly what is plugged in
    assert alone["functional"] == unplugged.expected.functional
    assert alone["hardware"] == unplugged.expected.hardware
    assert [c["status"] for c in alone["collectors"].values()] == ["ok"] * 7
    assert leaks(unplugged.runs[kind, "json"].out, unplugged.expected) == []


# ---- 4. the same report from the archive, the directory and a recorded capture ---------------
def test_archive_and_directory_give_the_same_report(machine: Machine) -> None:
    assert strip_volatile(report_of(machine, "tar")) == strip_volatile(report_of(machine, "dir"))
    assert machine.runs["tar", "raw"].out == machine.runs["dir", "raw"].out


def _replay_capture(machine: Machine, recording: Recording) -> dict[str, Any]:
    """Return the report ``evo-agent inventory --from`` gives on the recorded capture, packed."""
    archive = recording.capture.parent / "recorded.tar.gz"
    if not archive.exists():
        pack_capture(recording.capture, archive)
    run = cli(["inventory", "--json", "--from", str(archive), "--config", str(machine.config)])
    assert run.code == 0, run.err
    doc: dict[str, Any] = strip_volatile(json.loads(run.out))
    return doc


def test_recorded_capture_replays_the_same(machine: Machine, recording: Recording) -> None:
    """What ``evo-agent capture`` would record on the appliance replays to the same report."""
    # the recording run itself saw what the direct replay sees
    assert recording.raw == {name: cls().collect(ReplayHost(machine.expected.root))
                             for name, cls in sorted(discover().items())}
    replayed = _replay_capture(machine, recording)
    direct = strip_volatile(report_of(machine, "dir"))
    assert replayed == direct


def test_recorded_capture_keeps_the_boot_drive(machine: Machine, recording: Recording) -> None:
    """The boot drive of a root on a partition survives capture and replay."""
    assert _replay_capture(machine, recording)["hardware"]["boot_drive"] == (
        machine.expected.hardware["boot_drive"])
