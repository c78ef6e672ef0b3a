"""The appliance harness: build the .deb, a Debian 12 system, and boot it under QEMU.

Why this exists: only a real boot of a real Debian 12 system proves that the package installs,
that its units start, and that the inventory finds the hardware.  The harness builds everything
from the working tree and from Debian's archive, with nothing but root on this machine:

1. ``build_deb``: ``dpkg-buildpackage -us -uc -b`` on a copy of the working tree (the tree itself
   is left clean), then lintian on the result.
2. ``rootfs``: ``debootstrap --variant=minbase`` of bookworm with systemd, udev, the kernel,
   dmidecode and the package's dependencies (read from debian/control), cached under
   ``cache_dir()`` and keyed on that package list, so a second run costs a copy, not 80 s.
3. ``make_image``: copy of the cached tree, ``dpkg -i`` of the .deb in a chroot, the test's own
   files (a probe unit that is NOT in the .deb, network config), then ``mkfs.ext4 -d`` (no mount).
4. ``boot``: QEMU TCG (``/dev/kvm`` here cannot boot a stock Debian kernel), q35, ``-nodefaults``,
   direct kernel boot with the image's own vmlinuz/initrd, the appliance's hardware described by
   an :class:`Appliance`, networking only through tap devices in a network namespace the harness
   creates (QEMU's user-mode network is never used), results back over a virtio-serial port.

Run by hand: ``python3 tests/vm/vmlib.py`` boots once and prints where the results are.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SUITE = "bookworm"
#: Bump when the way the cached tree is made changes (not its package list: that is in the key).
ROOTFS_RECIPE = "3"

#: What the appliance system needs besides the package's own dependencies.
BASE_PACKAGES = (
    "systemd", "systemd-sysv", "udev", "kmod", "linux-image-amd64", "initramfs-tools",
    "dmidecode", "iproute2", "procps",
    # debootstrap's resolver does not follow virtual packages: python3-cryptography depends on
    # python3-cffi-backend-api-min/-max, which only python3-cffi-backend provides.
    "python3-cffi-backend",
)


def cache_dir() -> Path:
    """Return the cache directory (outside the repository): $EVO_VM_CACHE or /var/cache/evo-vm."""
    path = Path(os.environ.get("EVO_VM_CACHE", "/var/cache/evo-vm"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def run(argv: Sequence[str | os.PathLike[str]], *, check: bool = True, timeout: float = 900,
        capture: bool = False, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, logging it; raise with its output when it fails."""
    LOG.info("+ %s", " ".join(str(a) for a in argv))
    proc = subprocess.run([str(a) for a in argv], text=True, timeout=timeout,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.PIPE if capture else None, check=False, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed with status {proc.returncode}:\n"
                           f"{proc.stdout or ''}{proc.stderr or ''}")
    return proc


# -- Debian mirror and package list -----------------------------------------------------------
def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """Return the URI of the Debian archive that apt on this machine uses for bookworm main."""
    entries: list[tuple[str, list[str], list[str]]] = []  # (uri, suites, components)
    files = [apt_dir / "sources.list"]
    sld = apt_dir / "sources.list.d"
    if sld.is_dir():
        files += sorted(sld.iterdir())
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    entries.append((uri, fields.get("suites", "").split(),
                                    fields.get("components", "").split()))
        elif path.name == "sources.list" or path.suffix == ".list":
            for line in text.splitlines():
                line = line.split("#", 1)[0].strip()
                m = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)$", line)
                if m:
                    entries.append((m.group(1), [m.group(2)], m.group(3).split()))
    for uri, suites, components in entries:
        if SUITE in suites and "main" in components:
            return uri.rstrip("/")
    raise RuntimeError(f"no 'deb ... {SUITE} main' source in {apt_dir}/sources.list(.d): "
                       "the appliance test builds its system from the mirror apt uses")


def package_depends(control: Path = REPO / "debian" / "control") -> list[str]:
    """Return the binary package's Depends from debian/control, without substitution variables."""
    text = control.read_text(encoding="utf-8")
    m = re.search(r"^Depends:(.*?)(?=^\S|\Z)", text.split("\nPackage:", 1)[1],
                  re.MULTILINE | re.DOTALL)
    if not m:
        return []
    names = []
    for item in m.group(1).split(","):
        item = item.strip()
        if not item or item.startswith("${"):
            continue
        names.append(re.split(r"[\s(:|]", item, maxsplit=1)[0])
    return names


def rootfs_packages() -> list[str]:
    """Return the sorted package list of the appliance system (the cache key)."""
    return sorted({*BASE_PACKAGES, "python3", *package_depends()})


def rootfs(packages: Sequence[str] | None = None, mirror: str | None = None) -> Path:
    """Return a cached debootstrap tree of bookworm with ``packages``; build it when missing."""
    packages = sorted(packages or rootfs_packages())
    mirror = mirror or debian_mirror()
    key = hashlib.sha256(
        json.dumps([ROOTFS_RECIPE, SUITE, "minbase", "amd64", packages]).encode()
    ).hexdigest()[:16]
    target = cache_dir() / f"rootfs-{SUITE}-{key}"
    if (target / ".evo-vm-complete").is_file():
        LOG.info("rootfs cached: %s", target)
        return target
    tmp = cache_dir() / f".rootfs-{key}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.monotonic()
    # debootstrap installs Depends only, never Recommends: the equivalent of
    # --no-install-recommends for the packages it resolves.
    run(["debootstrap", "--variant=minbase", "--arch=amd64", "--include=" + ",".join(packages),
         SUITE, tmp, mirror], timeout=1800)
    # apt inside the image must not try the network, and nothing later needs the .debs.
    for deb in (tmp / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    (tmp / ".evo-vm-packages").write_text("\n".join(packages) + "\n", encoding="utf-8")
    (tmp / ".evo-vm-complete").write_text(f"{time.monotonic() - t0:.1f} s\n", encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    LOG.info("rootfs built in %.0f s: %s", time.monotonic() - t0, target)
    return target


if __name__ == "__main__":  # pragma: no cover - manual use
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if sys.argv[1:2] == ["rootfs"]:
        print(rootfs())
