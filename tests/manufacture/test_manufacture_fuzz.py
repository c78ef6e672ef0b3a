"""The manufacturing checks and the kernel command line parser on garbage: never a crash.

What the collectors return and what /proc/cmdline holds come from hardware and firmware; the
checks must turn anything into a verdict (a failed check, never an exception), and the parser
anything into parameters or a usage error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evo_agent.config import SCHEMA
from evo_agent.errors import UsageError
from evo_agent.hostroot import ReplayHost
from evo_agent.manufacture import check_unit, parse_cmdline, verdict_text, vpnid_from_cmdline

BOM: dict[str, Any] = {key: spec[1] for key, spec in SCHEMA["manufacture"].items()}
BOM.update(expected_audio="HDA Intel", min_ram_bytes=8 << 30)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                               max_size=4),
    max_leaves=8)
KEYS = ["board_serial", "boot_drive_serial", "boot_drive_device", "rip_drive_device", "cards",
        "serial", "model", "total_bytes", "mac_address", "audio_devices", "ram", "motherboard",
        "boot_drive", "rip_drive", "status", "hardware", "collectors", "dmi", "disks", "alsa"]
mappings = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=8)


@settings(max_examples=100, deadline=None)
@given(report=st.dictionaries(st.sampled_from(["hardware", "collectors", "functional"]),
                              mappings, max_size=3),
       raw=st.dictionaries(st.sampled_from(["dmi", "disks", "alsa"]), mappings | st.none(),
                           max_size=3))
def test_checks_never_crash(report: dict[str, Any], raw: dict[str, Any]) -> None:
    checks = check_unit(report, raw, BOM)
    assert [c.name for c in checks] == ["board_serial", "mac", "boot_drive_serial", "rip_drive",
                                        "audio", "ram"]
    doc = {"vpnid": "EVO-1", "checks": [c.doc() for c in checks], "exit_code": 10,
           "enrolment": None, "identity": None, "duration_ms": 1}
    text = verdict_text(doc)
    assert text.splitlines()[0].startswith(("PASS EVO-1", "FAIL EVO-1"))


def test_placeholder_and_wrong_types_fail() -> None:
    report = {"hardware": {"motherboard": {"serial": None}, "ram": {"total_bytes": "8 GB"},
                           "mac_address": None}, "collectors": {"dmi": {"status": "ok"}}}
    raw = {"dmi": {"board_serial": "Default string\x00\x1b[2J"}, "alsa": {"cards": "x"}}
    checks = {c.name: c for c in check_unit(report, raw, BOM)}
    assert not any(c.passed for c in checks.values())
    assert checks["board_serial"].seen == "Default string??[2J"  # no control byte reaches a tty
    assert checks["ram"].seen is None and checks["ram"].detail == "RAM size unknown"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_cmdline_parser_never_crashes(text: str) -> None:
    params = parse_cmdline(text)
    assert all(k.startswith("evo.") and isinstance(v, str) for k, v in params.items())


@pytest.mark.parametrize(("line", "expected"), [
    ("quiet evo.vpnid=EVO-1", {"evo.vpnid": "EVO-1"}),
    ('evo.vpnid="EVO 1" x', {"evo.vpnid": "EVO 1"}),
    ('"evo.vpnid=EVO-2"', {"evo.vpnid": "EVO-2"}),
    ("evo.vpnid=A evo.vpnid=B", {"evo.vpnid": "B"}),
    ("evo.manufacture=1 evo.vpnid_file=/x", {"evo.manufacture": "1", "evo.vpnid_file": "/x"}),
    ("evo.vpnid", {}),
    ("myevo.vpnid=A", {}),
])
def test_cmdline_examples(line: str, expected: dict[str, str]) -> None:
    assert parse_cmdline(line) == expected


@pytest.fixture(scope="module")
def cmdline_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cmdline")
    (root / "proc").mkdir()
    return root


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=120))
def test_vpnid_from_garbage_cmdline(cmdline_root: Path, data: bytes) -> None:
    root = cmdline_root
    (root / "proc/cmdline").write_bytes(data)
    try:
        value = vpnid_from_cmdline(ReplayHost(root))
    except UsageError:
        return
    assert isinstance(value, str)
