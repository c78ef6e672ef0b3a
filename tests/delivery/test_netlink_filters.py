"""The in-kernel filters of the daemon's event sockets, and the daemon's wakeups, for real.

Namespaces: netlink multicast from userspace reaches only sockets of the sender's network
namespace, so each test makes its own (root) and sends there what udevd would send; the host's
devices and routes, and other tests, cannot disturb the counts.  No udevd runs in this sandbox:
the messages are built like systemd-udevd's ``device_monitor_send_device`` (tests/delivery/
netns_probe.py), whose subsystem hash is checked against the one Debian's libudev computes for the
filter pyudev's Monitor attaches.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from evo_agent.delivery import netlink
from evo_agent.delivery.schedule import load_state
from tests.delivery.conftest import Agent
from tests.delivery.fixtures import VPNID, write_config, write_host_root
from tests.delivery.netns_probe import UDEV_MAGIC, murmurhash2
from tests.delivery.pki import Pki

REPO = Path(__file__).resolve().parents[2]
IP = shutil.which("ip") or "ip"
needs_netns = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                 reason="needs root and iproute2 to create network namespaces")
_names = itertools.count()


def _ip(*args: str) -> None:
    subprocess.run([IP, *args], check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"evoflt{os.getpid()}x{next(_names)}"
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace here: {exc.stderr!r}")
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run([IP, "netns", "del", name], check=False, capture_output=True)


def _in(ns: str, *argv: str, user: bool = False, **kw: object) -> list[str]:
    """argv that runs python ``argv`` in ``ns`` (as uid 65534 with CAP_NET_ADMIN if ``user``)."""
    prefix = [IP, "netns", "exec", ns]
    if user:
        prefix += ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                   "--inh-caps=+net_admin", "--ambient-caps=+net_admin"]
    return [*prefix, sys.executable, *argv]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


# -- the hash and the parser --------------------------------------------------------------------
def _libudev_filter_constants(names: list[bytes]) -> set[int]:
    """Let Debian's libudev build its filter for ``names`` and read the constants back."""
    path = ctypes.util.find_library("udev")
    if path is None:
        pytest.skip("libudev is not installed")
    lib = ctypes.CDLL(path)
    libc = ctypes.CDLL(None, use_errno=True)
    lib.udev_new.restype = ctypes.c_void_p
    lib.udev_monitor_new_from_netlink.restype = ctypes.c_void_p
    lib.udev_monitor_new_from_netlink.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.udev_monitor_filter_add_match_subsystem_devtype.argtypes = [
        ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    lib.udev_monitor_filter_update.argtypes = [ctypes.c_void_p]
    lib.udev_monitor_get_fd.argtypes = [ctypes.c_void_p]
    lib.udev_monitor_unref.argtypes = [ctypes.c_void_p]
    lib.udev_unref.argtypes = [ctypes.c_void_p]
    udev = lib.udev_new()
    mon = lib.udev_monitor_new_from_netlink(udev, b"udev")
    try:
        for name in names:
            assert lib.udev_monitor_filter_add_match_subsystem_devtype(mon, name, None) >= 0
        assert lib.udev_monitor_filter_update(mon) == 0
        # SO_GET_FILTER: the length is counted in instructions (Python's getsockopt would cut
        # the answer to that many bytes, hence libc)
        buf = ctypes.create_string_buffer(8 * 512)
        length = ctypes.c_uint(512)
        fd = lib.udev_monitor_get_fd(mon)
        assert libc.getsockopt(fd, socket.SOL_SOCKET, 26, buf, ctypes.byref(length)) == 0
        return {k for code, _jt, _jf, k in struct.iter_unpack("=HBBI", buf.raw[:length.value * 8])
                if code == netlink.BPF_JMP_JEQ}
    finally:
        lib.udev_monitor_unref(mon)
        lib.udev_unref(udev)


def test_the_forged_messages_hash_subsystems_as_libudev() -> None:
    names = [b"usb", b"sound", b"block", b"pci", b"net", b"a", b"ab", b"abc", b"usb_device",
             b"\xc3\xa9t\xc3\xa9"]
    constants = _libudev_filter_constants(names)
    assert constants - {UDEV_MAGIC} == {murmurhash2(n) for n in names}


def test_udev_running_follows_libudev(tmp_path: Path) -> None:
    control = tmp_path / "control"
    devtmpfs = tmp_path / "mountinfo-host"
    # lines as /proc/self/mountinfo has them (this sandbox; a container with a tmpfs /dev)
    devtmpfs.write_text(
        "24 1 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=12334524k\n"
        "25 24 0:21 / /dev/pts rw shared:3 - devpts devpts rw,mode=620\n")
    container = tmp_path / "mountinfo-container"
    container.write_text(
        "612 611 0:57 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755\n"
        "613 612 0:58 / /dev/pts rw - devpts devpts rw\n")
    assert netlink.udev_running(str(control), str(devtmpfs))
    assert not netlink.udev_running(str(control), str(container))
    assert not netlink.udev_running(str(control), str(tmp_path / "none"))
    control.touch()
    assert netlink.udev_running(str(control), str(container))


# -- in the kernel -------------------------------------------------------------------------------
@needs_netns
def test_kernel_drops_other_subsystems_and_kernel_uevents(netns: str) -> None:
    out = subprocess.run(_in(netns, "-m", "tests.delivery.netns_probe", "udev"), env=_env(),
                         cwd=REPO, capture_output=True, check=True).stdout
    doc = json.loads(out)
    # an unfiltered socket on udev's group saw all ten messages, one on the kernel's group the
    # real uevent: they happened
    assert doc["raw"] == len(doc["sent"]) + 1 and doc["kernel"] >= 1
    # the daemon's monitor received only usb, sound and block: the kernel dropped the rest; a
    # kernel-format message on udev's group (only root can send one) passes libudev's filter,
    # which checks the magic of libudev's messages only, and is refused by libudev itself
    assert doc["received"] == ["usb", "sound", "block", "usb"]


@needs_netns
def test_kernel_drops_route_and_link_churn(netns: str) -> None:
    out = subprocess.run(_in(netns, "-m", "tests.delivery.netns_probe", "route"), env=_env(),
                         cwd=REPO, capture_output=True, check=True).stdout
    doc = json.loads(out)
    # the churn made many messages on the groups; the filtered socket got only the two new
    # interfaces' announcements (how it learns a VPN interface's index)
    assert doc["churn"]["raw"] >= 15
    assert doc["churn"]["filtered"] == [["new_link"], ["new_link"]]
    events = [tuple(e) for e in doc["events"]]
    assert ("link_up", "evovpn0") in events
    assert ("default_route", "ipv4") in events and ("default_route", "ipv6") in events
    assert {e for e in events if e[0] == "link_up"} == {("link_up", "evovpn0")}


@needs_netns
def test_router_advertisement_refreshes_do_not_pass(netns: str) -> None:
    """A home router re-advertises every few minutes: only the default route's appearance may
    wake the daemon, not each refresh of it."""
    router = f"{netns}r"
    _ip("netns", "add", router)
    try:
        _ip("-n", netns, "link", "add", "dev0", "type", "veth", "peer", "name", "rtr0",
            "netns", router)
        subprocess.run([IP, "netns", "exec", netns, "sysctl", "-qw",
                        "net.ipv6.conf.dev0.accept_ra=2"], check=True)
        _ip("-n", netns, "link", "set", "dev0", "up")
        _ip("-n", router, "link", "set", "rtr0", "up")
        time.sleep(2.5)  # link-local addresses leave DAD: a router must send from one
        watch = subprocess.Popen(_in(netns, "-m", "tests.delivery.netns_probe", "watch-routes",
                                     "6"), env=_env(), cwd=REPO, stdout=subprocess.PIPE)
        assert watch.stdout is not None and watch.stdout.readline().strip() == b"ready"
        subprocess.run(_in(router, "-m", "tests.delivery.netns_probe", "ra", "rtr0", "4", "1"),
                       env=_env(), cwd=REPO, check=True)
        doc = json.loads(watch.communicate(timeout=20)[0])
        assert doc["raw"] >= 2  # the prefix route and the default route, at least
        assert doc["filtered"] == [[["default_route", "ipv6"]]]  # once, for 4 advertisements
    finally:
        subprocess.run([IP, "netns", "del", router], check=False, capture_output=True)


@needs_netns
def test_forged_announcement_from_a_non_root_sender_is_ignored(netns: str) -> None:
    code = ("import json, sys, time, subprocess; from evo_agent.delivery import netlink; "
            "m = netlink.open_hotplug(['usb']); "
            "subprocess.run(sys.argv[1:], check=True); time.sleep(0.3); "
            "import os, socket; s = socket.socket(fileno=os.dup(m.fileno())); "
            "print(json.dumps([s.recv(65536, socket.MSG_PEEK) and 1, netlink.drain_hotplug(m)]))")
    forge = _in(netns, "-m", "tests.delivery.netns_probe", "send", "usb", user=True)
    out = subprocess.run(_in(netns, "-c", code, *forge[4:]), env=_env(), cwd=REPO,
                         capture_output=True, check=True).stdout
    peeked, received = json.loads(out)
    assert peeked == 1  # it reached the socket (uid is not in the BPF's reach) ...
    assert received == []  # ... and was refused: SCM_CREDENTIALS say uid 65534


# -- the daemon ----------------------------------------------------------------------------------
def _switches(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches")


def _timerfds(pid: int) -> list[dict[str, str]]:
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) != "anon_inode:[timerfd]":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
        except OSError:
            continue
        out.append(dict(line.split(":\t", 1) if ":\t" in line else line.split(": ", 1)
                        for line in info.splitlines() if ":" in line))
    return [{k.strip(): v.strip() for k, v in d.items()} for d in out]


def _wait(pred: object, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def _notify(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(20)
    return s


def _wait_ready(ns: socket.socket) -> None:
    while b"READY=1" not in ns.recv(4096):
        pass


@needs_netns
def test_daemon_wakes_for_usb_only(netns: str, tmp_path: Path, pki: Pki) -> None:
    out = tmp_path / "registry"
    out.mkdir()
    state, root = tmp_path / "state", write_host_root(tmp_path / "root")
    cfg = write_config(tmp_path / "agent.toml", state, root, "http://127.0.0.1:8080",
                       ca=pki.ca_pem)
    agent = Agent(cfg, state, root)
    procs = [subprocess.Popen(_in(netns, "-m", "tests.delivery.server", "--host", "127.0.0.1",
                                  "--port", "8080", "--enroll", VPNID, agent.public_key(),
                                  "--out", str(out)), env=_env(), cwd=REPO)]
    notify = _notify(tmp_path / "notify")
    log = tmp_path / "daemon.log"
    try:
        assert _wait((out / "ready").exists, 15)
        env = dict(_env(), NOTIFY_SOCKET=str(tmp_path / "notify"))  # no watchdog: no pings
        with log.open("wb") as fh:
            daemon = subprocess.Popen(_in(netns, "-m", "evo_agent", "daemon", "-v", "--config",
                                          str(cfg)), env=env, cwd=REPO, stderr=fh)
        procs.append(daemon)
        _wait_ready(notify)
        assert _wait(lambda: load_state(state / "state.json").success_wall is not None, 30), \
            log.read_text()
        time.sleep(1.5)  # the cycle child is gone; the daemon sleeps
        # no watchdog: the daemon sleeps until the daily report on a CLOCK_BOOTTIME timerfd
        # (a suspend counts), not in 15-minute steps
        timers = _timerfds(daemon.pid)
        assert len(timers) == 1 and timers[0]["clockid"] == "7", timers
        remaining = float(timers[0]["it_value"].strip("()").split(",")[0])
        assert 86400 - 60 <= remaining <= 86400 + 3600
        before = _switches(daemon.pid)
        # what must not wake it: other subsystems, kernel uevents, route/link/address churn
        churn = [_in(netns, "-m", "tests.delivery.netns_probe", "send", sub)
                 for sub in ("pci", "net", "input", "tty", "drm", "usbmisc")]
        for argv in churn:
            subprocess.run(argv, env=_env(), cwd=REPO, check=True)
        for cmd in (["link", "add", "lan0", "type", "veth", "peer", "name", "lan1"],
                    ["link", "set", "lan0", "up"], ["addr", "add", "192.0.2.10/24", "dev", "lan0"],
                    ["route", "add", "198.51.100.0/24", "via", "192.0.2.1"],
                    ["neigh", "add", "192.0.2.1", "lladdr", "02:00:00:00:00:01", "dev", "lan0"]):
            _ip("-n", netns, *cmd)
        subprocess.run([IP, "netns", "exec", netns, "sh", "-c",
                        "echo change > /sys/class/net/lo/uevent"], check=True)
        time.sleep(1.0)
        after = _switches(daemon.pid)
        # "new_link" (two veth ends) passes only when a VPN interface is configured: none here
        assert after == before, f"{after - before} wakeups\n{log.read_text()}"
        # a forged usb announcement (uid 65534) wakes it but refreshes nothing
        subprocess.run(_in(netns, "-m", "tests.delivery.netns_probe", "send", "usb", user=True),
                       env=_env(), cwd=REPO, check=True)
        time.sleep(6.5)  # longer than the hot-plug settle time
        assert not (state / "local.json").exists()
        # udevd's usb announcement: the local inventory is refreshed, nothing is sent
        subprocess.run(_in(netns, "-m", "tests.delivery.netns_probe", "send", "usb", "add"),
                       env=_env(), cwd=REPO, check=True)
        assert _wait((state / "local.json").exists, 20), log.read_text()
        doc = json.loads((state / "local.json").read_text())
        assert doc["reason"] == "hot-plug: add usb"
        time.sleep(0.5)
        lines = (out / "requests.jsonl").read_text().splitlines()
        assert len(lines) == 1  # the boot report only
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        notify.close()
