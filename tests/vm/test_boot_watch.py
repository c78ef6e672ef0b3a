"""The boot's hang watch (vmlib.boot): a boot that makes no console progress is killed and
booted again a bounded number of times; a boot that fails for real is returned at once.

A hang cannot be provoked on demand (the one seen was a rare TCG early-boot stall), so the hung
guest here is a real QEMU started with ``-S``: its CPUs never run, so its console never shows a
byte, which is exactly what the watch sees of a hang.  The real failure is a real boot of the
appliance's kernel with a root file system that does not exist: the initramfs gives up waiting
for it, and that must not be retried.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.vm import vmlib
from tests.vm.conftest import _prerequisites

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def bare_image(tmp_path_factory: pytest.TempPathFactory) -> vmlib.Image:
    """The appliance's kernel and initrd with an empty disk (no root file system on it)."""
    _prerequisites()
    out = tmp_path_factory.mktemp("watch")
    base = vmlib.rootfs()
    kernel, initrd = out / "vmlinuz", out / "initrd.img"
    kernel.write_bytes(sorted((base / "boot").glob("vmlinuz-*"))[-1].read_bytes())
    initrd.write_bytes(sorted((base / "boot").glob("initrd.img-*"))[-1].read_bytes())
    disk = out / "disk.img"
    with disk.open("wb") as fh:
        fh.truncate(16 * 1024 * 1024)
    return vmlib.Image(disk, kernel, initrd, str(uuid.uuid4()), 0.0)


def test_a_silent_boot_is_killed_and_retried(bare_image: vmlib.Image, tmp_path: Path) -> None:
    hw = vmlib.Appliance()
    with vmlib.netns(hw) as ns:
        result = vmlib.boot(hw, bare_image, tmp_path, ns, timeout=120, stall_s=8, retries=1,
                            qemu_extra=["-S"])
    assert [h["attempt"] for h in result.hangs] == [1, 2]
    assert all(8 <= h["silent_s"] < 30 for h in result.hangs), result.hangs
    assert result.failure == "hung 2 times"
    assert result.results is None
    assert result.wall_s < 90
    assert (tmp_path / "console-hang-1.log").exists()
    assert len((tmp_path / "hangs.jsonl").read_text().splitlines()) == 2


def test_a_real_failure_is_not_retried(bare_image: vmlib.Image, tmp_path: Path) -> None:
    hw = vmlib.Appliance()
    with vmlib.netns(hw) as ns:
        # rootdelay: the initramfs waits that long for the missing root, then gives up.
        result = vmlib.boot(hw, bare_image, tmp_path, ns, timeout=400, stall_s=60, retries=2,
                            cmdline_extra="rootdelay=3")
    assert result.hangs == []
    assert result.failure is not None and "root" in result.failure, result.console[-2000:]
    assert result.results is None
