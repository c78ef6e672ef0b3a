"""The VPN path between two network namespaces that the test creates (root only).

The device namespace holds the "VPN" interface; the registry namespace holds the other end and
the test server.  Two kinds of VPN interface:

* ``wireguard``: a real WireGuard tunnel made by Debian's wireguard-go (userspace; this kernel has
  no WireGuard module) on each side, over a veth underlay; the tun device reads operstate
  "unknown" and has carrier only while wireguard-go drives it, as on the appliance;
* ``veth``: a plain veth pair standing for the tunnel, so the path logic is still tested where
  wireguard-go is not installed.

HTTPS points at a port where nothing listens, so a report can only go over the VPN.  The daemon
starts with the VPN down: the boot report fails and waits for its retry (>= 1 minute); bringing
the interface up must send it at once (netlink event), over the VPN, and ``send --now --via vpn``
must fail (exit 75) while the interface is down and succeed once it is up.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from evo_agent.delivery.schedule import load_state
from tests.delivery.conftest import Agent
from tests.delivery.fixtures import VPNID, write_config, write_host_root
from tests.delivery.pki import Pki

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 to create network namespaces")


IP = shutil.which("ip") or "ip"


def _ip(*args: str) -> None:
    subprocess.run([IP, *args], check=True, capture_output=True)


@dataclass
class Vpn:
    """The namespaces and addresses of one test VPN."""

    dev: str
    reg: str
    ifname: str  # the device's VPN interface
    server_ip: str


def _netns_pair() -> tuple[str, str]:
    dev, reg = f"evodev{os.getpid()}", f"evoreg{os.getpid()}"
    try:
        _ip("netns", "add", dev)
        _ip("netns", "add", reg)
    except subprocess.CalledProcessError as exc:
        subprocess.run([IP, "netns", "del", dev], check=False, capture_output=True)
        pytest.skip(f"cannot create network namespaces here: {exc.stderr!r}")
    return dev, reg


def _veth(dev: str, reg: str, a: str, b: str, net: str) -> None:
    _ip("-n", dev, "link", "add", a, "type", "veth", "peer", "name", b, "netns", reg)
    _ip("-n", dev, "addr", "add", f"{net}.1/24", "dev", a)
    _ip("-n", reg, "addr", "add", f"{net}.2/24", "dev", b)
    for ns in (dev, reg):
        _ip("-n", ns, "link", "set", "lo", "up")
    _ip("-n", reg, "link", "set", b, "up")


def _await_uapi(proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    """Wait until wireguard-go listens on its control socket.

    Not by polling with `wg`: a `wg` that connects between wireguard-go's bind() and listen()
    gets ECONNREFUSED, takes the socket for a dead one's and unlinks it, and wireguard-go, which
    watches that file, then shuts its device down ("Protocol not supported" from every later
    `wg`, as seen in a clean-clone CI run). wireguard-go logs "UAPI listener started" once the
    socket listens.
    """
    deadline = time.monotonic() + timeout
    while b"UAPI listener started" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"wireguard-go did not start (exit {proc.poll()}): "
                                 f"{log.read_text(errors='replace')}")
        time.sleep(0.05)


def _wireguard(dev: str, reg: str, tmp: Path, procs: list[subprocess.Popen[bytes]],
               underlay: str = "192.168.77") -> str:
    """Make the tunnel over a veth underlay ``<underlay>.1`` (device) - ``.2`` (registry)."""
    wg, wggo = shutil.which("wg"), shutil.which("wireguard-go")
    if not wg or not wggo:
        pytest.skip("wireguard-go and wireguard-tools are not installed")
    _veth(dev, reg, "evoul0", "evoul1", underlay)
    _ip("-n", dev, "link", "set", "evoul0", "up")
    # wireguard-go's control sockets live in /var/run/wireguard, shared by all namespaces:
    # each side needs a name of its own
    names = {dev: f"wgd{os.getpid()}"[:15], reg: f"wgr{os.getpid()}"[:15]}
    env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1", LOG_LEVEL="verbose")
    keys, logs = {}, {}
    for ns in (dev, reg):
        key = subprocess.run([wg, "genkey"], capture_output=True, check=True).stdout
        pub = subprocess.run([wg, "pubkey"], input=key, capture_output=True, check=True).stdout
        (tmp / f"{ns}.key").write_bytes(key)
        (tmp / f"{ns}.key").chmod(0o600)
        keys[ns] = pub.decode().strip()
        logs[ns] = tmp / f"{names[ns]}.log"
        with logs[ns].open("wb") as out:
            procs.append(subprocess.Popen([IP, "netns", "exec", ns, wggo, "-f", names[ns]],
                                          env=env, stdout=out, stderr=subprocess.STDOUT))
    for proc, ns in zip(procs[-2:], (dev, reg), strict=True):
        _await_uapi(proc, logs[ns])
    sides = ((dev, reg, "1", "2", 51820, 51821), (reg, dev, "2", "1", 51821, 51820))
    for ns, peer, me, them, port, peer_port in sides:
        _ip("netns", "exec", ns, wg, "set", names[ns], "private-key", str(tmp / f"{ns}.key"),
            "listen-port", str(port), "peer", keys[peer], "allowed-ips", f"10.88.0.{them}/32",
            "endpoint", f"{underlay}.{them}:{peer_port}")
        _ip("-n", ns, "addr", "add", f"10.88.0.{me}/24", "dev", names[ns])
    _ip("-n", reg, "link", "set", names[reg], "up")
    return names[dev]


@pytest.fixture(params=["wireguard", "veth"])
def vpn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Vpn]:
    dev, reg = _netns_pair()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if request.param == "veth":
            _veth(dev, reg, "evovpn0", "evoreg0", "10.77.0")
            yield Vpn(dev, reg, "evovpn0", "10.77.0.2")
        else:
            ifname = _wireguard(dev, reg, tmp_path, procs)
            yield Vpn(dev, reg, ifname, "10.88.0.2")
    finally:
        for p in procs:
            p.terminate()
            p.wait(5)
        for ns in (dev, reg):
            subprocess.run([IP, "netns", "del", ns], check=False, capture_output=True)


def _in(ns: str, *argv: str, **kw: object) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
        [IP, "netns", "exec", ns, sys.executable, *argv], cwd=REPO, env=env, **kw)
    return proc


def _wait(pred: object, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_waiting_report_goes_over_the_vpn_when_it_comes_up(vpn: Vpn, tmp_path: Path,
                                                           pki: Pki) -> None:
    dev, reg = vpn.dev, vpn.reg
    state, out = tmp_path / "state", tmp_path / "registry"
    out.mkdir()
    cfg = write_config(tmp_path / "agent.toml", state, write_host_root(tmp_path / "root"),
                       "https://127.0.0.1:9", ca=pki.ca_pem,
                       extra=f'vpn_url = "http://{vpn.server_ip}:8080"\n'
                             f'vpn_interface = "{vpn.ifname}"')
    agent = Agent(cfg, state, tmp_path / "root")
    server = _in(reg, "-m", "tests.delivery.server", "--host", vpn.server_ip, "--port", "8080",
                 "--enroll", VPNID, agent.public_key(), "--out", str(out))
    log = (tmp_path / "daemon.log").open("wb")
    daemon = None
    try:
        assert _wait((out / "ready").exists, 15)
        daemon = _in(dev, "-m", "evo_agent", "daemon", "--config", str(cfg), stderr=log)
        # VPN down, HTTPS unreachable: the boot report fails and waits for its retry (>= 1 min)
        assert _wait(lambda: load_state(state / "state.json").failures == 1, 20)
        assert not (out / "requests.jsonl").exists()
        time.sleep(1.5)
        up = time.monotonic()
        _ip("-n", dev, "link", "set", vpn.ifname, "up")
        # the netlink event wakes the daemon: the waiting report goes at once, over the VPN
        assert _wait(lambda: len(list(out.glob("*-*-*.json"))) == 1, 15), \
            (tmp_path / "daemon.log").read_text()
        assert time.monotonic() - up < 10
        time.sleep(1.0)  # one report, not the waiting one plus a fresh one
        lines = [json.loads(x) for x in (out / "requests.jsonl").read_text().splitlines()]
        assert lines == [{"status": 201, "path": "vpn"}]
        assert _wait(lambda: load_state(state / "state.json").success_path == "vpn", 5)
        # --via vpn with the tunnel down: refused, exit 75; up again: delivered, exit 0
        _ip("-n", dev, "link", "set", vpn.ifname, "down")
        send = _in(dev, "-m", "evo_agent", "send", "--now", "--via", "vpn", "--config", str(cfg),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _stdout, err = send.communicate(timeout=60)
        assert send.returncode == 75 and b"down or absent" in err
        _ip("-n", dev, "link", "set", vpn.ifname, "up")
        time.sleep(0.5)
        send = _in(dev, "-m", "evo_agent", "send", "--now", "--via", "vpn", "--config", str(cfg),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, err = send.communicate(timeout=60)
        assert send.returncode == 0, err
        assert b"acknowledged via vpn" in stdout
    finally:
        for p in (daemon, server):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        log.close()


def test_boot_report_waits_for_a_route_then_goes_without_a_failure(tmp_path: Path,
                                                                    pki: Pki) -> None:
    """No route to the registry at start: no attempt (no failure, no backoff); the link event
    sends the boot report at once.  The VPN interface appears only after the daemon started: its
    netlink filter must learn the new interface's index to let the link-up through."""
    dev, reg = _netns_pair()
    server = daemon = None
    try:
        state, out = tmp_path / "state", tmp_path / "registry"
        out.mkdir()
        # both endpoints are in the registry's namespace: no route to either while the link is
        # down (and nothing listens on port 9: HTTPS could only fail)
        cfg = write_config(tmp_path / "agent.toml", state, write_host_root(tmp_path / "root"),
                           "https://10.77.0.2:9", ca=pki.ca_pem,
                           extra='vpn_url = "http://10.77.0.2:8080"\nvpn_interface = "evovpn0"')
        agent = Agent(cfg, state, tmp_path / "root")
        server = _in(reg, "-m", "tests.delivery.server", "--host", "0.0.0.0", "--port", "8080",
                     "--enroll", VPNID, agent.public_key(), "--out", str(out))
        assert _wait((out / "ready").exists, 15)
        log = tmp_path / "daemon.log"
        with log.open("wb") as fh:
            daemon = _in(dev, "-m", "evo_agent", "daemon", "--config", str(cfg), stderr=fh)
        assert _wait(lambda: b"waiting for one" in log.read_bytes(), 20), log.read_text()
        time.sleep(2.0)
        st = load_state(state / "state.json")
        assert st.failures == 0 and st.attempt_wall is None, log.read_text()
        assert not (out / "requests.jsonl").exists()
        status = _in(dev, "-m", "evo_agent", "status", "--json", "--config", str(cfg),
                     stdout=subprocess.PIPE)
        doc = json.loads(status.communicate(timeout=60)[0])
        assert "waiting for a route" in json.dumps(doc), doc
        _veth(dev, reg, "evovpn0", "evoreg0", "10.77.0")  # the device's end stays down
        time.sleep(1.0)
        assert load_state(state / "state.json").attempt_wall is None
        up = time.monotonic()
        _ip("-n", dev, "link", "set", "evovpn0", "up")
        assert _wait(lambda: len(list(out.glob("*-*-*.json"))) == 1, 15), log.read_text()
        assert time.monotonic() - up < 10
        assert _wait(lambda: load_state(state / "state.json").success_path == "vpn", 5)
        st = load_state(state / "state.json")
        assert st.failures == 0 and st.attempt_result == "acknowledged via vpn"
        lines = [json.loads(x) for x in (out / "requests.jsonl").read_text().splitlines()]
        assert lines == [{"status": 201, "path": "vpn"}]
    finally:
        for p in (daemon, server):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for ns in (dev, reg):
            subprocess.run([IP, "netns", "del", ns], check=False, capture_output=True)
