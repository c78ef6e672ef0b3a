"""Shared fixtures: where the repository and its corpus of real captures are."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Real captures from other public projects (tests/data/corpus/README.md, SOURCES.tsv).
CORPUS = REPO / "tests" / "data" / "corpus"
#: SHA-256 of the privacy policy as 432 EVO publishes it.  config/ holds a byte-identical copy;
#: when the policy is republished, the copy, config/policy.toml and this digest change together.
PUBLISHED_POLICY_SHA256 = "42cbe11dbe584c366f0d9262bf62bc093891643b45b4e8e4112cba5fc73171c1"


@pytest.fixture(scope="session")
def corpus() -> Path:
    """Return the corpus directory; its absence is a broken checkout, not a skip."""
    assert CORPUS.is_dir(), f"the shared corpus is missing at {CORPUS} (shared/ goes beside)"
    return CORPUS


def strip_volatile(report: dict[str, Any]) -> dict[str, Any]:
    """Drop what differs between two runs on the same data: id, time, durations."""
    report = json.loads(json.dumps(report))
    for key in ("report_id", "collected_at"):
        report.pop(key)
    for c in report["collectors"].values():
        c.pop("duration_ms")
    return report


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """In a strict run (scripts/test.sh, CI) a skipped test is a failure.

    Tests skip when a tool or the shared corpus is missing, which is right on a developer's
    laptop but would let CI pass without running them; scripts/test.sh installs everything, so
    there a skip means a broken set-up.  The appliance tests (marker ``vm``) are left out by their
    own gate (tests/vm/conftest.py) when not asked for (EVO_VM != 1: not root, or EVO_VM=0); when
    they are asked for, a skip among them fails like any other.
    """
    outcome = yield
    report = outcome.get_result()
    vm_off = item.get_closest_marker("vm") is not None and os.environ.get("EVO_VM") != "1"
    if (os.environ.get("EVO_STRICT_SKIPS") == "1" and report.skipped
            and not hasattr(report, "wasxfail") and not vm_off):
        report.outcome = "failed"
        report.longrepr = f"skipped in a strict run (EVO_STRICT_SKIPS=1): {report.longrepr}"
