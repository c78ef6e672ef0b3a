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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
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
            for raw_line in text.splitlines():
                line = raw_line.split("#", 1)[0].strip()
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
    for raw_item in m.group(1).split(","):
        item = raw_item.strip()
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


def rootfs_with(extra: Sequence[str]) -> Path:
    """Return the cached appliance system plus ``extra`` packages (apt-get in a chroot of a copy).

    Used by the benchmark (bench/vm_bench.py), which needs lshw, inxi, hw-probe and
    fusioninventory-agent beside the agent; the appliance test itself uses :func:`rootfs`.
    apt resolves what debootstrap cannot (virtual packages, alternatives); Recommends are off.
    """
    base = rootfs()
    extra = sorted(extra)
    key = hashlib.sha256(json.dumps([base.name, extra]).encode()).hexdigest()[:16]
    target = cache_dir() / f"{base.name}+{key}"
    if (target / ".evo-vm-complete").is_file():
        return target
    tmp = cache_dir() / f".{target.name}.{os.getpid()}"
    prepare_tree(base, tmp)
    t0 = time.monotonic()
    shutil.copy2("/etc/resolv.conf", tmp / "etc/resolv.conf")
    _write(tmp / "usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)
    try:
        chroot(tmp, "apt-get", "-o", "DPkg::Lock::Timeout=900", "update", "-q")
        chroot(tmp, "apt-get", "-o", "DPkg::Lock::Timeout=900", "install", "-y", "-q",
               "--no-install-recommends", *extra)
        chroot(tmp, "apt-get", "clean")
    finally:
        (tmp / "usr/sbin/policy-rc.d").unlink()
    for lists in (tmp / "var/lib/apt/lists").glob("*_*"):
        lists.unlink()
    (tmp / ".evo-vm-packages").write_text("\n".join([*rootfs_packages(), *extra]) + "\n",
                                          encoding="utf-8")
    (tmp / ".evo-vm-complete").write_text(f"{time.monotonic() - t0:.1f} s\n", encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


# -- the package ----------------------------------------------------------------------------------
@dataclass
class Deb:
    """A built package and what lintian said about it."""

    path: Path
    version: str
    lintian: str
    lintian_status: int
    build_s: float


def _tree_files(repo: Path) -> list[str]:
    out = run(["git", "-C", repo, "ls-files", "-co", "--exclude-standard", "-z"], capture=True)
    return [f for f in out.stdout.split("\0") if f and (repo / f).is_file()]


def build_deb(out_dir: Path, repo: Path = REPO, version_suffix: str = "") -> Deb:
    """Build the .deb from the working tree (tracked and untracked files, as they are now).

    The build runs in a copy under ``out_dir``, so debian/.debhelper and friends never land in the
    tree.  ``version_suffix`` adds a changelog entry (e.g. "+upgrade1") to make a newer version
    for the upgrade check.
    """
    src = out_dir / "src"
    shutil.rmtree(out_dir, ignore_errors=True)
    src.mkdir(parents=True)
    for rel in _tree_files(repo):
        if rel.startswith((".git/", "tests/", "bench/")):
            continue
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, dest)
    version = run(["dpkg-parsechangelog", "-S", "Version", "-l", src / "debian/changelog"],
                  capture=True).stdout.strip()
    if version_suffix:
        version += version_suffix
        changelog = src / "debian/changelog"
        stamp = run(["date", "-R"], capture=True).stdout.strip()
        entry = (f"evo-agent ({version}) bookworm; urgency=medium\n\n"
                 "  * Test build by the appliance test (upgrade check).\n\n"
                 f" -- 432 EVO evo-agent maintainers <evo-agent@432evo.be>  {stamp}\n\n")
        changelog.write_text(entry + changelog.read_text(encoding="utf-8"), encoding="utf-8")
    t0 = time.monotonic()
    env = {**os.environ, "DEB_BUILD_OPTIONS": "nocheck" if version_suffix else ""}
    proc = run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, capture=True, check=False,
               env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"dpkg-buildpackage failed:\n{proc.stdout}\n{proc.stderr}")
    build_s = time.monotonic() - t0
    debs = sorted(out_dir.glob("evo-agent_*_all.deb"))
    if len(debs) != 1:
        raise RuntimeError(f"expected one .deb in {out_dir}, found {debs}")
    changes = sorted(out_dir.glob("evo-agent_*.changes"))
    lint = run(["lintian", "--pedantic", "--display-info", "--fail-on", "error,warning",
                changes[0]], capture=True, check=False)
    text = "\n".join(line for line in (lint.stdout + lint.stderr).splitlines()
                     if "running with root privileges" not in line)
    return Deb(debs[0], version, text, lint.returncode, build_s)


# -- the appliance's hardware ---------------------------------------------------------------------
@dataclass
class Appliance:
    """What QEMU is given: the values the inventory must find, and canaries it must never send."""

    bios: dict[str, str] = field(default_factory=lambda: {
        "vendor": "American Megatrends Inc.", "version": "P1.40", "date": "04/15/2021",
        "release": "5.13"})
    system: dict[str, str] = field(default_factory=lambda: {
        "manufacturer": "432 EVO", "product": "Aeon Mk3", "version": "3.1",
        "serial": "CANARY-SYS-SERIAL-71c4", "sku": "AEON-MK3", "family": "432 EVO"})
    system_uuid: str = "4e1f0c7a-9b2d-4c31-8e5f-c4a4a7e0b001"  # canary
    board: dict[str, str] = field(default_factory=lambda: {
        "manufacturer": "ASRock", "product": "H110M-ITX", "version": "1.02",
        "serial": "M80-D8012345678", "asset": "CANARY-BOARD-ASSET-5d2e", "location": "Onboard"})
    chassis: dict[str, str] = field(default_factory=lambda: {
        "manufacturer": "432 EVO", "version": "Mk3", "serial": "CANARY-CHASSIS-SERIAL-0b7f",
        "asset": "CANARY-CHASSIS-ASSET-9a31", "sku": "EVO-CHASSIS"})
    cpu_model: str = "Intel(R) Core(TM) i3-7100T CPU @ 3.40GHz"
    cpu: dict[str, str] = field(default_factory=lambda: {
        "sock_pfx": "CPU", "manufacturer": "Intel(R) Corporation",
        "serial": "CANARY-CPU-SERIAL-4411", "asset": "CANARY-CPU-ASSET-77e0", "part": "i3-7100T"})
    cores: int = 2
    threads: int = 4  # two threads per core
    oem_strings: tuple[str, ...] = ("EVO-OEM: service contact canary.owner@example.com",
                                    "CANARY-OEM-STRING-c93a")
    ram_mib: int = 2048
    dimm: dict[str, str] = field(default_factory=lambda: {
        "loc_pfx": "ChannelA-DIMM", "bank": "BANK 0", "manufacturer": "Kingston",
        "serial": "CANARY-DIMM-SERIAL-8c3d", "asset": "CANARY-DIMM-ASSET-1f20",
        "part": "KF432S20IB/8", "speed": "2400"})
    boot_model: str = "Samsung SSD 860 EVO 250GB"
    boot_serial: str = "S4BENS0N912345X"
    rip_model: str = "HL-DT-ST BD-RE BH16NS40"
    rip_serial: str = "KLJB2M91234"
    rip_drive: bool = True  # False: a unit built without its rip drive (manufacturing FAIL)
    usb_stick_serial: str = "CANARY-USBSTICK-5e61"
    lan_mac: str = "00:1b:21:e4:32:01"    # e1000e, the onboard NIC (an Intel OUI)
    fiber_mac: str = "00:e0:4c:68:43:02"  # usb-net on the xHCI, the fiber dongle (Realtek OUI)
    # Documentation ranges (RFC 5737), and only inside the test's network namespace.
    lan_ip: str = "192.0.2.10"
    lan_gw: str = "192.0.2.1"
    fiber_ip: str = "198.51.100.10"
    fiber_peer: str = "198.51.100.1"
    # The daemon spreads a fleet's boot reports over a few minutes by a splay derived from the
    # VPNID; this VPNID's is 0.5 s, so under TCG the boot report goes at once.
    vpnid: str = "EVO432-0330-TEST"
    hostname: str = "evo-aeon-test"
    netbios_name: str = "EVO-LIVINGROOM"
    home_canary: str = "/home/canary-user-d41d"

    def canaries(self) -> list[str]:
        """Every value planted that must never leave the device."""
        return [self.system["serial"], self.system_uuid, self.board["asset"],
                self.chassis["serial"], self.chassis["asset"], self.cpu["serial"],
                self.cpu["asset"], *self.oem_strings, "canary.owner@example.com",
                self.dimm["serial"], self.dimm["asset"], self.usb_stick_serial, self.hostname,
                self.home_canary]

    def smbios_args(self) -> list[str]:
        """-smbios options for types 0, 1, 2, 3, 4, 11 and 17."""
        def opt(kind: int, values: dict[str, str]) -> str:
            # QEMU option syntax: a comma inside a value is written twice.
            return f"type={kind}," + ",".join(f"{k}={v.replace(',', ',,')}"
                                              for k, v in values.items())
        args = ["-smbios", opt(0, self.bios),
                "-smbios", opt(1, {**self.system, "uuid": self.system_uuid}),
                "-smbios", opt(2, self.board),
                "-smbios", opt(3, self.chassis),
                "-smbios", opt(4, {**self.cpu, "version": self.cpu_model})]
        for value in self.oem_strings:
            args += ["-smbios", opt(11, {"value": value})]
        args += ["-smbios", opt(17, self.dimm)]
        return args


@dataclass
class Image:
    """A bootable appliance disk image and the kernel to boot it with."""

    disk: Path
    kernel: Path
    initrd: Path
    root_uuid: str
    build_s: float


PROBE_PORT = "org.evo.results"
#: Kernel command line that takes the agent out of a boot (systemd-debug-generator).
BOOT_TIME_MASK = "systemd.mask=evo-agent.service systemd.mask=evo-agent-manufacture.service"
#: The VPNID of the second unit, the one built without its rip drive.
NOCD_VPNID = "EVO432-0331-NOCD"


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def _symlink(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)


def prepare_tree(base: Path, work: Path) -> None:
    """Copy the cached system to ``work`` (the cache is never modified)."""
    shutil.rmtree(work, ignore_errors=True)
    run(["cp", "-a", "--reflink=auto", base, work])


def chroot(root: Path, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command in the tree, with a policy-rc.d that forbids starting services."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",
           "DEBIAN_FRONTEND": "noninteractive"}
    return run(["chroot", root, *argv], capture=True, check=check, env=env)


def install_deb(root: Path, deb: Path) -> subprocess.CompletedProcess[str]:
    """dpkg -i the package in the tree, as an administrator would on the appliance."""
    _write(root / "usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)
    shutil.copy2(deb, root / "tmp" / deb.name)
    try:
        return chroot(root, "dpkg", "-i", f"/tmp/{deb.name}")
    finally:
        (root / "tmp" / deb.name).unlink()
        (root / "usr/sbin/policy-rc.d").unlink()


def configure_appliance(root: Path, hw: Appliance, probe_cfg: dict[str, Any], *,
                        write_vpnid: bool = True) -> None:
    """Write the appliance's own configuration and the test's probe into the tree.

    ``write_vpnid``: as if the unit had been manufactured already (the benchmark); without it,
    the VPNID comes from the factory boot (evo-agent-manufacture.service).
    """
    _write(root / "etc/hostname", hw.hostname + "\n")
    _write(root / "etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {hw.hostname}\n")
    if write_vpnid:
        _write(root / "etc/evo-agent/identity/vpnid", hw.vpnid + "\n")
    # The appliance serves music over Samba: its NetBIOS name is what the LAN sees.
    _write(root / "etc/samba/smb.conf",
           f"[global]\n   workgroup = WORKGROUP\n   netbios name = {hw.netbios_name}\n"
           f"[music]\n   path = {hw.home_canary}/music\n")
    _write(root / "etc/systemd/network/10-lan.network",
           f"[Match]\nMACAddress={hw.lan_mac}\n\n[Network]\nAddress={hw.lan_ip}/24\n"
           f"Gateway={hw.lan_gw}\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n")
    _write(root / "etc/systemd/network/20-fiber.network",
           f"[Match]\nMACAddress={hw.fiber_mac}\n\n[Network]\nAddress={hw.fiber_ip}/24\n"
           "LinkLocalAddressing=no\nIPv6AcceptRA=no\n")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    _symlink(wants / "systemd-networkd.service", "/lib/systemd/system/systemd-networkd.service")
    _symlink(root / "etc/systemd/system/sockets.target.wants/systemd-networkd.socket",
             "/lib/systemd/system/systemd-networkd.socket")
    # Timers that would only add noise (and try the network) during a two-minute boot.
    for unit in ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
                 "fstrim.timer", "systemd-tmpfiles-clean.timer"):
        _symlink(root / "etc/systemd/system" / unit, "/dev/null")
    lib = root / "usr/local/lib/evo-vm"
    _write(lib / "probe.py", (HERE / "guest/probe.py").read_text(encoding="utf-8"))
    _write(lib / "probe.json", json.dumps(probe_cfg, indent=1))
    _write(root / "etc/systemd/system/evo-vm-probe.service",
           (HERE / "guest/evo-vm-probe.service").read_text(encoding="utf-8"))
    _symlink(wants / "evo-vm-probe.service", "/etc/systemd/system/evo-vm-probe.service")
    # Empty machine-id: systemd makes one at first boot, as on a freshly flashed unit.
    _write(root / "etc/machine-id", "")


def make_image(root: Path, out_dir: Path, size: str = "3G", disk_name: str = "disk.img") -> Image:
    """Turn the tree into an ext4 image with mkfs.ext4 -d (no mount); keep kernel and initrd."""
    t0 = time.monotonic()
    root_uuid = str(uuid.uuid4())
    _write(root / "etc/fstab", f"UUID={root_uuid} / ext4 defaults,noatime 0 1\n")
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise RuntimeError(f"no kernel or initrd in {root}/boot")
    kernel, initrd = out_dir / "vmlinuz", out_dir / "initrd.img"
    shutil.copy2(kernels[-1], kernel)
    shutil.copy2(initrds[-1], initrd)
    disk = out_dir / disk_name
    if disk.exists():
        disk.unlink()
    run(["mkfs.ext4", "-q", "-F", "-L", "evo-root", "-U", root_uuid, "-d", root, disk, size])
    return Image(disk, kernel, initrd, root_uuid, time.monotonic() - t0)


# -- network namespace ------------------------------------------------------------------------
@contextlib.contextmanager
def netns(hw: Appliance) -> Iterator[str]:
    """A network namespace with the two tap devices the VM's NICs attach to, and nothing else.

    The host ends take the documentation-range peers (192.0.2.1, 198.51.100.1): all the VM's
    traffic stays inside this namespace, which has no route anywhere else.
    """
    name = f"evo-vm-{os.getpid()}"
    run(["ip", "netns", "add", name])
    try:
        ns = ["ip", "netns", "exec", name]
        run([*ns, "ip", "link", "set", "lo", "up"])
        for tap, addr in (("tap-lan", f"{hw.lan_gw}/24"), ("tap-fiber", f"{hw.fiber_peer}/24")):
            run([*ns, "ip", "tuntap", "add", "dev", tap, "mode", "tap"])
            run([*ns, "ip", "addr", "add", addr, "dev", tap])
            run([*ns, "ip", "link", "set", tap, "up"])
        yield name
    finally:
        run(["ip", "netns", "delete", name], check=False)


ECHO_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8)
print("listening", flush=True)
while True:
    c, peer = s.accept()
    c.settimeout(10)
    try:
        c.recv(100); c.sendall(("echo from namespace to %s\n" % peer[0]).encode())
    except OSError:
        pass
    c.close()
"""


@contextlib.contextmanager
def echo_server(ns: str, port: int) -> Iterator[subprocess.Popen[str]]:
    """A TCP echo listener on the host side of the namespace (the guest checks both LANs)."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", ECHO_SERVER,
                             str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        yield proc
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# -- the registry: evo-registry in the namespace ---------------------------------
#: The TLS proxy in front of the registry, on the LAN gateway (what the VM is told to use).
REGISTRY_PORT = 8443
#: ``evo-registry serve`` itself, on the namespace's own loopback (out of the VM's reach).
REGISTRY_UPSTREAM = "127.0.0.1:8480"  # (the echo listener has 8432)
#: How long the proxy holds the request during which the power is cut.
CUT_HOLD_S = 30
FACTORY_TOKEN = "evo-vm-factory-token-3b91c2"  # noqa: S105 - the test registry's own token
SUPPORT_TOKEN = "evo-vm-support-token-71d0ae"  # noqa: S105 - the test registry's own token


def delivery_available(repo: Path = REPO) -> bool:
    """True when the tree has the daemon, the registry and manufacturing."""
    return all((repo / f).is_file() for f in ("evo_agent/delivery/daemon.py", "evo_registry/cli.py",
                                              "evo_agent/manufacture.py", "tests/delivery/pki.py"))


@dataclass
class Registry:
    """The registry run by the test: its directory, TLS files and the namespace it lives in."""

    out: Path
    ca: Path
    cert: Path
    key: Path
    ns: str = ""

    @property
    def records(self) -> list[dict[str, Any]]:
        """What went through the TLS proxy so far (tests/vm/registry_netns.py writes it)."""
        path = self.out / "requests.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def get(self, path: str, token: str = SUPPORT_TOKEN) -> dict[str, Any]:
        """GET from the registry's API (inside the namespace); {"status", "doc"}."""
        proc = run(["ip", "netns", "exec", self.ns, sys.executable, HERE / "registry_netns.py",
                    "get", f"http://{REGISTRY_UPSTREAM}{path}", token], capture=True, timeout=60)
        doc: dict[str, Any] = json.loads(proc.stdout)
        return doc

    def device(self, vpnid: str) -> dict[str, Any]:
        """GET /v1/devices/{vpnid} with the support token."""
        return self.get(f"/v1/devices/{vpnid}")

    def snapshot(self, vpnid: str) -> dict[str, Any]:
        """The device as the registry's API shows it, and the proxy's records, now."""
        return {"device": self.device(vpnid), "records": self.records}


def opted_out_quiet_s(hw: Appliance) -> float:
    """CLOCK_BOOTTIME until which an opted-out unit is watched for requests: when its boot
    report would be due (its splay, from the VPNID) and two minutes for the cycle to run."""
    from evo_agent.delivery.schedule import splay

    return round(splay(hw.vpnid)[0] + 120, 1)


def make_registry(out_dir: Path, hw: Appliance) -> Registry:
    """A test CA with a certificate for the LAN gateway, and the registry's settings."""
    import importlib

    out = out_dir / "registry"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pki = importlib.import_module("tests.delivery.pki").make_pki(out_dir / "pki", "evo-vm",
                                                                  host=hw.lan_gw)
    (out / "registry.toml").write_text(
        "# Written by the appliance test (tests/vm/vmlib.py).\n"
        f'database = "sqlite:///{out}/registry.db"\n'
        f'listen = "{REGISTRY_UPSTREAM}"\n'
        "# The test's TLS proxy (registry_netns.py) forwards from the namespace's loopback.\n"
        'trusted_proxies = ["127.0.0.1/32"]\n'
        f'factory_tokens = ["{FACTORY_TOKEN}"]\nsupport_tokens = ["{SUPPORT_TOKEN}"]\n'
        "threads = 4\n", encoding="utf-8")
    return Registry(out, Path(pki.ca_pem), Path(pki.cert_pem), Path(pki.key_pem))


def _ids(root: Path, user: str, group: str) -> tuple[int, int]:
    uid = next(int(line.split(":")[2]) for line in (root / "etc/passwd").read_text().splitlines()
               if line.startswith(user + ":"))
    gid = next(int(line.split(":")[2]) for line in (root / "etc/group").read_text().splitlines()
               if line.startswith(group + ":"))
    return uid, gid


def provision_line(root: Path, hw: Appliance, reg: Registry) -> None:
    """What the manufacturing line's image holds: the registry's URL and CA, the bill of
    materials, the sales region and PSU, and the factory token (readable by the agent only)."""
    _write(root / "etc/evo-agent/ca.pem", reg.ca.read_text())
    _write(root / "etc/evo-agent/agent.d/50-line.toml",
           "# Written by the appliance test: the line's settings and the registry in the test's\n"
           "# network namespace.\n"
           f'[delivery]\nhttps_url = "https://{hw.lan_gw}:{REGISTRY_PORT}"\n'
           'ca_bundle = "/etc/evo-agent/ca.pem"\n'
           "[manufacture]\n"
           f'registry_url = "https://{hw.lan_gw}:{REGISTRY_PORT}"\n'
           'factory_token_file = "/etc/evo-agent/factory.token"\n'
           'sales_region = ["BE", "NL", "LU"]\npsu_variant = "230V"\nmodel = "432 EVO Aeon"\n'
           'expected_audio = "HDA Intel"\n'
           f"min_ram_bytes = {hw.ram_mib * 1024 * 1024}\n")
    uid, gid = _ids(root, "evo-agent", "evo-support")
    token = root / "etc/evo-agent/factory.token"
    _write(token, FACTORY_TOKEN + "\n", 0o640)
    os.chown(token, 0, gid)
    del uid


@contextlib.contextmanager
def registry(ns: str, hw: Appliance, reg: Registry) -> Iterator[Registry]:
    """Run ``evo-registry serve`` and its TLS proxy inside the namespace."""
    reg.ns = ns
    procs: list[subprocess.Popen[bytes]] = []
    logs = [(reg.out / "registry.log").open("wb"), (reg.out / "proxy.log").open("wb")]
    serve = Path(sys.executable).with_name("evo-registry")
    cmd = [str(serve)] if serve.exists() else [
        sys.executable, "-c", "import sys; from evo_registry.cli import main; sys.exit(main())"]
    try:
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", ns, *cmd, "serve", "--config", str(reg.out / "registry.toml")],
            stdout=logs[0], stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(HERE / "registry_netns.py"), "proxy",
             "--listen", f"{hw.lan_gw}:{REGISTRY_PORT}",
             "--cert", str(reg.cert), "--key", str(reg.key), "--upstream", REGISTRY_UPSTREAM,
             "--out", str(reg.out)], stdout=logs[1], stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        while True:
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                raise RuntimeError("the registry did not start: "
                                   + (reg.out / "registry.log").read_text(errors="replace")
                                   + (reg.out / "proxy.log").read_text(errors="replace"))
            if (reg.out / "proxy-ready").exists():
                try:
                    if reg.get("/healthz")["status"] == 200:
                        break
                except (RuntimeError, ValueError):
                    pass
            time.sleep(0.5)
        yield reg
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for log in logs:
            log.close()


# -- QEMU ---------------------------------------------------------------------------------------
def qemu_argv(hw: Appliance, image: Image, out_dir: Path,
              cmdline_extra: str = "evo.manufacture=1") -> list[str]:
    """The QEMU command line of the appliance."""
    stick = out_dir / "usb-stick.img"
    with stick.open("wb") as fh:
        fh.truncate(64 * 1024 * 1024)
    append = (f"root=UUID={image.root_uuid} rw console=ttyS0,115200 panic=-1 "
              f"systemd.show_status=auto {cmdline_extra}").strip()
    return [
        "qemu-system-x86_64",
        "-machine", "q35,accel=tcg", "-nodefaults", "-no-user-config", "-display", "none",
        "-no-reboot",
        # An Intel vendor: the AMD one of qemu64 cannot have two threads per core without
        # topoext (QEMU warns, and the guest sees no SMT).
        "-cpu", f"qemu64,vendor=GenuineIntel,model-id={hw.cpu_model.replace(',', ',,')}",
        "-smp", f"{hw.threads},sockets=1,cores={hw.cores},threads={hw.threads // hw.cores}",
        "-m", str(hw.ram_mib),
        *hw.smbios_args(),
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", append,
        "-serial", f"file:{out_dir / 'console.log'}",
        # Boot drive and rip drive on the q35's own AHCI controller (00:1f.2).
        "-drive", f"if=none,id=boot,file={image.disk},format=raw,cache=unsafe",
        "-device", f"ide-hd,bus=ide.0,drive=boot,model={hw.boot_model},serial={hw.boot_serial}",
        *(["-device", f"ide-cd,bus=ide.1,model={hw.rip_model},serial={hw.rip_serial}"]
          if hw.rip_drive else []),
        # The onboard NIC.
        "-netdev", "tap,id=lan,ifname=tap-lan,script=no,downscript=no",
        "-device", f"e1000e,netdev=lan,mac={hw.lan_mac},addr=0x02",
        # xHCI with a USB stick, a USB audio device and the fiber dongle (usb-net).
        "-device", "qemu-xhci,id=xhci,addr=0x03",
        "-drive", f"if=none,id=stick,file={stick},format=raw,cache=unsafe",
        "-device", f"usb-storage,bus=xhci.0,drive=stick,serial={hw.usb_stick_serial}",
        "-audiodev", "none,id=snd0",
        "-device", "usb-audio,bus=xhci.0,audiodev=snd0",
        "-netdev", "tap,id=fiber,ifname=tap-fiber,script=no,downscript=no",
        "-device", f"usb-net,bus=xhci.0,netdev=fiber,mac={hw.fiber_mac}",
        # Intel HDA with a duplex codec.
        "-device", "intel-hda,id=hda,addr=0x04",
        "-device", "hda-duplex,bus=hda.0,audiodev=snd0",
        # The probe's way out: a virtio-serial port written to a file on this side.
        "-device", "virtio-serial-pci,id=vser,addr=0x05",
        "-chardev", f"file,id=results,path={out_dir / 'results.jsonl'}",
        "-device", f"virtserialport,bus=vser.0,chardev=results,name={PROBE_PORT}",
    ]


#: A boot that shows no console progress for this long before the system is up has hung.
#: Measured (TCG, 2 shared cores, 9 boots of the appliance): the longest pause between two console
#: lines before the login prompt was 7 s of guest time (udev loading drivers), and a whole boot to
#: the prompt took 30-45 s; the one hang seen (a clean-clone run of .ci/run, session 1) stopped
#: after "Loading compiled-in X.509 certificates" at 4 s and printed nothing for 600 s.  120 s is
#: many times the longest real pause, even on a machine several times as loaded.
STALL_S = 120.0
#: How often a hung boot is killed and started again before the boot counts as failed.
BOOT_RETRIES = 2
#: The system is up (the stall watch ends): the serial getty's prompt, or the test's probe.
#: After that the guest may rightly be silent for minutes (the probe runs the agent).
UP = re.compile(r" login: |evo-vm-probe: started|evo-agent-manufacture\b")
#: A guest whose kernel reports a CPU stuck before the system is up has hung too, although its
#: console keeps growing (the lockup detector prints every ~30 s, so the stall watch never fires).
#: Seen in a clean-clone run of .ci/run (session 2, host load ~6): the main boot's kernel sat in
#: text_poke_bp_batch / smp_call_function_many_cond from 8 s on, printing "watchdog: BUG: soft
#: lockup - CPU#0 stuck for 37s!" and then the same every 28 s until the 600 s timeout, while the
#: nine other boots of that run were fine: an MTTCG vCPU starved by the host, not the agent.
LOCKUP = re.compile(r"watchdog: BUG: soft lockup|rcu: INFO: rcu_\w+ detected stalls"
                    r"|rcu_\w+ self-detected stall")
#: A boot that ended in one of these failed for real: it is reported, never retried.
FATAL = re.compile(r"Kernel panic|You are in emergency mode|Give root password for maintenance"
                   r"|Gave up waiting for root|\(initramfs\) ")


@dataclass
class Boot:
    """One boot of the appliance: what came back and how long it took."""

    results: dict[str, Any] | None
    console: str
    wall_s: float
    returncode: int | None
    #: Boots killed as hung before this one (each: attempt, seconds, the last console line).
    hangs: list[dict[str, Any]] = field(default_factory=list)
    #: Why the boot failed for real (a FATAL match on the console, or the overall timeout).
    failure: str | None = None


def last_line(text: str) -> str:
    """The console's last non-empty line (for the log of a hang)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][-200:] if lines else ""


def _read_console(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def _run_qemu(argv: list[str], out_dir: Path, deadline: float, stall_s: float,
              cut_power_when: Callable[[], bool] | None) -> tuple[int | None, str | None,
                                                                   float | None]:
    """Run QEMU once; return (status, failure, stalled seconds if it was killed as hung)."""
    console = out_dir / "console.log"
    with (out_dir / "qemu.log").open("w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        size, progress, up = -1, time.monotonic(), False
        while True:
            try:
                return proc.wait(0.5), None, None
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if cut_power_when is not None and cut_power_when():
                LOG.info("power cut: killing QEMU")
                proc.kill()
                return proc.wait(), None, None
            if now > deadline:
                LOG.error("QEMU still running at the boot's deadline: killing it")
                proc.kill()
                proc.wait()
                return None, "timeout", None
            new_size = console.stat().st_size if console.exists() else 0
            if new_size != size:
                size, progress = new_size, now
                text = _read_console(console)
                fatal = FATAL.search(text)
                if fatal:
                    # A real failure: give QEMU a moment to finish (panic=-1 reboots, and
                    # -no-reboot ends it), then stop it; never retried.
                    LOG.error("boot failed: %r on the console", fatal.group(0))
                    try:
                        rc: int | None = proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        rc = proc.wait()
                    return rc, f"console: {fatal.group(0)}", None
                up = up or bool(UP.search(text))
                if not up and LOCKUP.search(text):
                    LOG.warning("guest kernel lockup before the system was up: %r",
                                last_line(text))
                    proc.kill()
                    proc.wait()
                    return None, None, now - progress
            elif not up and now - progress > stall_s:
                proc.kill()
                proc.wait()
                return None, None, now - progress


def boot(hw: Appliance, image: Image, out_dir: Path, ns: str, *, timeout: float = 600,
         cmdline_extra: str = "evo.manufacture=1",
         cut_power_when: Callable[[], bool] | None = None,
         stall_s: float = STALL_S, retries: int = BOOT_RETRIES,
         qemu_extra: Sequence[str] = ()) -> Boot:
    """Boot the image under QEMU in the namespace; wait for the probe's results or the timeout.

    The disk image persists between calls: a second call is a reboot of the same unit.
    ``cut_power_when`` is polled while the VM runs; when it returns True, QEMU is killed
    (SIGKILL: the guest gets no chance to flush anything, as when the plug is pulled).

    Hang watch: until the system is up (:data:`UP` on the console), a boot whose console shows
    nothing new for ``stall_s`` seconds is a hang (seen once under TCG in the kernel's early
    boot); QEMU is killed (a power cut: the disk is the same) and the boot started again, at most
    ``retries`` times, each logged and returned in ``Boot.hangs`` (with the hung console kept as
    console-hang-N.log).  Anything else (QEMU exits, a kernel panic, emergency mode, the overall
    ``timeout``) is returned as it is: a real failure is never retried.
    """
    results = out_dir / "results.jsonl"
    argv = ["ip", "netns", "exec", ns,
            *qemu_argv(hw, image, out_dir, cmdline_extra), *qemu_extra]
    (out_dir / "qemu-argv.json").write_text(json.dumps(argv, indent=1), encoding="utf-8")
    hangs: list[dict[str, Any]] = []
    t0 = time.monotonic()
    deadline = t0 + timeout + retries * stall_s
    while True:
        for stale in (results, out_dir / "console.log"):
            if stale.exists():
                stale.unlink()
        LOG.info("booting (attempt %s): %s", len(hangs) + 1, " ".join(argv))
        started = time.monotonic()
        rc, failure, stalled = _run_qemu(argv, out_dir, min(deadline, started + timeout),
                                         stall_s, cut_power_when)
        console = _read_console(out_dir / "console.log")
        if stalled is None:
            fatal = FATAL.search(console)
            if failure is None and fatal:  # QEMU ended before the watch saw it (panic=-1)
                failure = f"console: {fatal.group(0)}"
            break
        hang = {"attempt": len(hangs) + 1, "after_s": round(time.monotonic() - started, 1),
                "silent_s": round(stalled, 1), "last_line": last_line(console)}
        hangs.append(hang)
        (out_dir / f"console-hang-{len(hangs)}.log").write_text(console, encoding="utf-8")
        with (out_dir / "hangs.jsonl").open("a") as fh:
            fh.write(json.dumps(hang) + "\n")
        if len(hangs) > retries:
            LOG.error("boot hung %s times (no console output for %.0f s before the system was "
                      "up; last line %r): giving up", len(hangs), stalled, hang["last_line"])
            failure = f"hung {len(hangs)} times"
            break
        LOG.warning("BOOT HANG: no console output for %.0f s before the system was up (last "
                    "line %r): QEMU killed, booting again (retry %s of %s)", stalled,
                    hang["last_line"], len(hangs), retries)
    wall = time.monotonic() - t0
    doc = None
    if results.exists():
        for line in results.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip().startswith("{"):
                doc = json.loads(line)
    return Boot(doc, console, wall, rc, hangs, failure)


def _mark_console(out_dir: Path, name: str) -> None:
    if (out_dir / "console.log").exists():
        shutil.copy2(out_dir / "console.log", out_dir / f"console-{name}.log")


def appliance_run(out_dir: Path, hw: Appliance | None = None, *,
                  extra_packages: Sequence[str] = (), bench_runs: int = 0,
                  timeout: float = 600, boot_time_runs: int = 2) -> dict[str, Any]:
    """Everything, once: .deb, system, image, boots; return the evidence (also saved as JSON).

    With the registry (:func:`delivery_available`), the unit lives its life in order: boot 1 is
    the factory's (``evo.manufacture=1 evo.vpnid=...``: the manufacturing unit checks, enrols and
    prints its verdict; the daemon stays off), boot 2 the owner's first (the boot report; the
    probe's full checks), boot 3 a reboot, boot 4 a power cut while a report is in flight,
    boot 5 the next boot, boot 6 the owner's ``evo-agent opt-out``, boot 7 an opted-out boot
    ending with ``evo-agent opt-in``; then a second unit built without its rip drive is booted at
    the factory (FAIL); last, ``boot_time_runs`` boots of the first unit with the agent's units
    enabled and as many with them masked, for the time the agent adds to boot. With ``bench_runs``,
    the system also has ``extra_packages`` and the probe runs bench/inventory_bench.py in the guest
    (the installed agent against lshw, inxi, ...).
    """
    hw = hw or Appliance()
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    deb = build_deb(out_dir / "deb")
    timings["build_deb_s"] = deb.build_s
    t1 = time.monotonic()
    base = rootfs_with(extra_packages) if extra_packages else rootfs()
    timings["rootfs_s"] = time.monotonic() - t1
    t1 = time.monotonic()
    work = out_dir / "root"
    prepare_tree(base, work)
    installed = install_deb(work, deb.path)
    port = 8432
    delivering = delivery_available() and not bench_runs
    configure_appliance(work, hw, {"guest_ips": [hw.lan_ip, hw.fiber_ip],
                                   "peers": [hw.lan_gw, hw.fiber_peer], "echo_port": port,
                                   "runs": 3, "bench_runs": bench_runs,
                                   "delivery_wait_s": 420 if delivering else 0,
                                   "opted_out_quiet_s": opted_out_quiet_s(hw)},
                        write_vpnid=not delivering)
    reg = make_registry(out_dir, hw) if delivering else None
    if reg is not None:
        provision_line(work, hw, reg)
    if bench_runs:
        # The benchmark runs the installed code: its REPO (parents[1]) is /usr/local/lib/evo-vm,
        # where the package's directories are linked.
        lib = work / "usr/local/lib/evo-vm"
        _write(lib / "bench/inventory_bench.py",
               (REPO / "bench/inventory_bench.py").read_text(encoding="utf-8"), 0o755)
        for name in ("evo_agent", "collectors", "config"):
            _symlink(lib / name, f"/usr/share/evo-agent/{name}")
    image = make_image(work, out_dir)
    nocd = replace(hw, rip_drive=False, vpnid=NOCD_VPNID)
    nocd_image = make_image(work, out_dir, disk_name="disk-nocd.img") if delivering else None
    shutil.rmtree(work)
    timings["image_s"] = time.monotonic() - t1
    life: dict[str, Any] = {}
    hangs: dict[str, list[dict[str, Any]]] = {}

    def one(name: str, unit: Appliance, img: Image, cmdline: str,
            cut: Callable[[], bool] | None = None) -> Boot:
        b = boot(unit, img, out_dir, ns, timeout=timeout, cmdline_extra=cmdline,
                 cut_power_when=cut)
        timings[f"{name}_boot_s"] = b.wall_s
        hangs[name] = b.hangs
        _mark_console(out_dir, name)
        return b

    with contextlib.ExitStack() as stack:
        ns = stack.enter_context(netns(hw))
        stack.enter_context(echo_server(ns, port))
        if reg is None:
            result = one("main", hw, image, "")
        else:
            stack.enter_context(registry(ns, hw, reg))
            factory = one("factory", hw, image,
                          f"evo.manufacture=1 evo.vpnid={hw.vpnid} evo.probe=factory")
            life["factory"] = {"guest": factory.results, "qemu_returncode": factory.returncode,
                               "console": factory.console, "failure": factory.failure,
                               **reg.snapshot(hw.vpnid)}
            # The owner's first boot: the full probe, and the boot report.
            result = one("main", hw, image, "")
            life["first"] = reg.snapshot(hw.vpnid)
            second = one("reboot", hw, image, "evo.probe=delivery")
            life["reboot"] = {"guest": second.results, "qemu_returncode": second.returncode,
                              "console_tail": second.console[-20000:], **reg.snapshot(hw.vpnid)}
            # Boot 4: the proxy holds the next request; the power is cut while it is in flight.
            # Boot 5: the proxy forwards again; the report must be stored exactly once.
            seen = len(reg.records)
            (reg.out / "mode").write_text(f"slow {CUT_HOLD_S}\n")

            def in_flight() -> bool:
                return any(r["event"] == "request" and r["path"] == "/v1/reports"
                           for r in reg.records[seen:])

            cut = one("power_cut", hw, image, "evo.probe=delivery", in_flight)
            (reg.out / "mode").write_text("ok\n")
            life["power_cut"] = {"qemu_returncode": cut.returncode, "guest": cut.results,
                                 "records_before": seen, "after_cut": reg.records}
            after = one("after_cut", hw, image, "evo.probe=delivery")
            # The held request reaches the registry CUT_HOLD_S after it came (its answer goes
            # nowhere: the VM that sent it is gone).
            deadline = time.monotonic() + CUT_HOLD_S + 30
            while (time.monotonic() < deadline
                   and not any(r["event"] == "answer" and r.get("mode") == "slow"
                               for r in reg.records[seen:])):
                time.sleep(1)
            life["after_cut"] = {"guest": after.results, "qemu_returncode": after.returncode,
                                 "console_tail": after.console[-20000:],
                                 **reg.snapshot(hw.vpnid)}
            # Boot 6: the owner objects (evo-agent opt-out) once the boot report went.
            # Boot 7: opted out, the unit sends nothing; then evo-agent opt-in, and the report.
            seen = len(reg.records)
            objecting = one("objection", hw, image, "evo.probe=objection")
            life["objection"] = {"guest": objecting.results,
                                 "qemu_returncode": objecting.returncode,
                                 "console_tail": objecting.console[-20000:],
                                 "records_before": seen, **reg.snapshot(hw.vpnid)}
            seen = len(reg.records)
            quiet = one("opted_out", hw, image, "evo.probe=optedout")
            life["opted_out"] = {"guest": quiet.results, "qemu_returncode": quiet.returncode,
                                 "console_tail": quiet.console[-20000:],
                                 "records_before": seen, **reg.snapshot(hw.vpnid)}
            # A unit built without its rip drive, at the factory.
            assert nocd_image is not None
            seen = len(reg.records)
            bad = one("nocd", nocd, nocd_image,
                      f"evo.manufacture=1 evo.vpnid={nocd.vpnid} evo.probe=factory")
            life["nocd"] = {"guest": bad.results, "qemu_returncode": bad.returncode,
                            "console": bad.console, "failure": bad.failure,
                            "records_before": seen, **reg.snapshot(nocd.vpnid)}
            nocd_image.disk.unlink()
            # The time the agent adds to boot: the same unit, booted with both units enabled and
            # with both masked (systemd.mask= on the kernel command line), interleaved so that
            # a drift of this machine's load hits both alike.
            life["boot_time"] = []
            for i in range(boot_time_runs):
                for state, extra in (("enabled", ""), ("masked", BOOT_TIME_MASK)):
                    b = one(f"boot_time_{state}_{i + 1}", hw, image,
                            f"evo.probe=boottime {extra}".strip())
                    life["boot_time"].append({"state": state, "guest": b.results,
                                              "qemu_returncode": b.returncode})
    timings["total_s"] = time.monotonic() - t0
    image.disk.unlink()
    evidence = {"deb": {"path": str(deb.path), "version": deb.version, "lintian": deb.lintian,
                        "lintian_status": deb.lintian_status, "dpkg_i": installed.stdout},
                "timings": timings, "hangs": hangs, "qemu_returncode": result.returncode,
                "guest": result.results, "console_tail": result.console[-20000:],
                "failure": result.failure, "delivery": life if reg is not None else None}
    (out_dir / "evidence.json").write_text(json.dumps(evidence, indent=1), encoding="utf-8")
    return evidence


if __name__ == "__main__":  # pragma: no cover - manual use
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if sys.argv[1:2] == ["rootfs"]:
        print(rootfs())
    elif sys.argv[1:2] == ["deb"]:
        print(build_deb(Path(sys.argv[2])))
    elif sys.argv[1:2] == ["boot"]:
        ev = appliance_run(Path(sys.argv[2]))
        print(json.dumps(ev["timings"]), ev["qemu_returncode"], ev["guest"] is not None)
