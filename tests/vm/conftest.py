"""Fixtures of the appliance test: one build and one boot per session, shared by the checks.

The tests marked ``vm`` need root, debootstrap, QEMU and lintian (tests/vm/install-deps.sh) and
take minutes, so they run only when asked for: ``pytest -m vm tests/vm`` (or EVO_VM=1).  When
asked for, a missing prerequisite is a failure, not a skip: CI must never pass by not running.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.vm import vmlib

TOOLS = ("debootstrap", "qemu-system-x86_64", "dpkg-buildpackage", "lintian", "mkfs.ext4", "ip")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: boots the appliance under QEMU or builds the .deb "
                                       "(root, minutes; run with -m vm)")


def _wanted(config: pytest.Config) -> bool:
    return os.environ.get("EVO_VM") == "1" or "vm" in (config.option.markexpr or "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _wanted(config):
        return
    skip = pytest.mark.skip(reason="appliance test: run with 'pytest -m vm tests/vm' (root)")
    for item in items:
        if item.get_closest_marker("vm") is not None:
            item.add_marker(skip)


def _prerequisites() -> None:
    if os.geteuid() != 0:
        pytest.fail("the appliance test needs root (debootstrap, chroot, network namespaces)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run tests/vm/install-deps.sh")


@pytest.fixture(scope="session")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the run's artefacts go: $EVO_VM_OUT (kept, for CI artefacts) or a temp dir."""
    if os.environ.get("EVO_VM_OUT"):
        path = Path(os.environ["EVO_VM_OUT"])
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("evo-vm")


@pytest.fixture(scope="session")
def hw() -> vmlib.Appliance:
    """The appliance's hardware, as given to QEMU."""
    return vmlib.Appliance()


@pytest.fixture(scope="session")
def evidence(out_dir: Path, hw: vmlib.Appliance) -> Iterator[dict[str, Any]]:
    """Build the .deb and the system, boot it once, and return what came back."""
    if os.environ.get("EVO_VM_EVIDENCE"):
        # Re-check the evidence of an earlier run (evidence.json) without booting: for
        # developing the checks only; CI never sets it.
        ev = json.loads(Path(os.environ["EVO_VM_EVIDENCE"]).read_text())
        yield ev
        return
    _prerequisites()
    ev = vmlib.appliance_run(out_dir / "appliance", hw)
    retried = {name: h for name, h in (ev.get("hangs") or {}).items() if h}
    if retried:
        # Shown in pytest's summary: a hung boot was killed and booted again (vmlib.boot).
        warnings.warn(f"appliance boot hung and was retried: {json.dumps(retried)}",
                      stacklevel=1)
    yield ev
    summary = {"timings": ev["timings"], "hangs": ev.get("hangs")}
    guest = ev.get("guest") or {}
    if guest.get("inventory_runs"):
        summary["inventory_runs"] = [{k: r[k] for k in ("status", "wall_s", "cpu_s", "max_rss_kib")}
                                     for r in guest["inventory_runs"]]
    units = guest.get("units") or {}
    summary["exposure"] = {u: v.get("exposure") for u, v in units.items()}
    print("\nappliance summary:", json.dumps(summary, indent=1))


@pytest.fixture(scope="session")
def guest(evidence: dict[str, Any]) -> dict[str, Any]:
    """The probe's results; fails (with the console's tail) when the VM sent nothing."""
    if not evidence.get("guest"):
        pytest.fail("the VM sent no results (QEMU status "
                    f"{evidence.get('qemu_returncode')}); console tail:\n"
                    + evidence.get("console_tail", "")[-4000:])
    result: dict[str, Any] = evidence["guest"]
    return result


@pytest.fixture(scope="session")
def report(guest: dict[str, Any]) -> dict[str, Any]:
    """The report of the first `evo-agent inventory --json` in the guest."""
    runs = guest.get("inventory_runs") or []
    if not runs or runs[0]["status"] != 0:
        pytest.fail(f"evo-agent inventory --json failed in the guest: {runs[:1]}")
    doc: dict[str, Any] = json.loads(runs[0]["stdout"])
    return doc
