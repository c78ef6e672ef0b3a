"""The VPN path between two network namespaces that the test creates (root only).

The device namespace has the "VPN" interface ``evovpn0``; the registry namespace holds the
other end and the test server.  The interface here is a veth pair, not WireGuard: what the agent
checks (link up with carrier, the kernel's route to the endpoint through that interface, the
netlink events) is the same for a tun/wg device.  The WireGuard variant (wireguard-go between
namespaces) is the next step and is not done.  HTTPS points at a port where nothing listens, so
a report can only go over the VPN.
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
from pathlib import Path

import pytest

from evo_agent.schedule import load_state
from tests.delivery.conftest import VPNID, Agent, write_config, write_host_root
from tests.delivery.pki import Pki

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 to create network namespaces")


IP = shutil.which("ip") or "ip"


def _ip(*args: str) -> None:
    subprocess.run([IP, *args], check=True, capture_output=True)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    dev, reg = f"evodev{os.getpid()}", f"evoreg{os.getpid()}"
    try:
        _ip("netns", "add", dev)
        _ip("netns", "add", reg)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create network namespaces here: {exc.stderr!r}")
    try:
        _ip("-n", dev, "link", "add", "evovpn0", "type", "veth", "peer", "name", "evoreg0",
            "netns", reg)
        _ip("-n", dev, "addr", "add", "10.77.0.1/24", "dev", "evovpn0")
        _ip("-n", reg, "addr", "add", "10.77.0.2/24", "dev", "evoreg0")
        for ns, ifname in ((dev, "lo"), (reg, "lo"), (reg, "evoreg0")):
            _ip("-n", ns, "link", "set", ifname, "up")
        yield dev, reg
    finally:
        for ns in (dev, reg):
            subprocess.run([IP, "netns", "del", ns], check=False, capture_output=True)


def _in(ns: str, *argv: str, **kw: object) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([IP, "netns", "exec", ns, sys.executable, *argv], cwd=REPO,
                            env=env, **kw)  # type: ignore[call-overload, no-any-return]


def _wait(pred: object, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_waiting_report_goes_over_the_vpn_when_it_comes_up(
        namespaces: tuple[str, str], tmp_path: Path, pki: Pki) -> None:
    dev, reg = namespaces
    state, out = tmp_path / "state", tmp_path / "registry"
    out.mkdir()
    cfg = write_config(tmp_path / "agent.toml", state, write_host_root(tmp_path / "root"),
                       "https://127.0.0.1:9", ca=pki.ca_pem,
                       extra='vpn_url = "http://10.77.0.2:8080"\nvpn_interface = "evovpn0"')
    agent = Agent(cfg, state, tmp_path / "root")
    server = _in(reg, "-m", "tests.delivery.server", "--host", "10.77.0.2", "--port", "8080",
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
        _ip("-n", dev, "link", "set", "evovpn0", "up")
        # the netlink event wakes the daemon: the waiting report goes at once, over the VPN
        assert _wait(lambda: len(list(out.glob("*-*-*.json"))) == 1, 15), \
            (tmp_path / "daemon.log").read_text()
        assert time.monotonic() - up < 10
        lines = [json.loads(x) for x in (out / "requests.jsonl").read_text().splitlines()]
        assert lines == [{"status": 201, "path": "vpn"}]
        assert _wait(lambda: load_state(state / "state.json").success_path == "vpn", 5)
        # --via vpn with the tunnel down: refused, exit 75; up again: delivered, exit 0
        _ip("-n", dev, "link", "set", "evovpn0", "down")
        send = _in(dev, "-m", "evo_agent", "send", "--now", "--via", "vpn", "--config", str(cfg),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _stdout, err = send.communicate(timeout=60)
        assert send.returncode == 75 and b"down or absent" in err
        _ip("-n", dev, "link", "set", "evovpn0", "up")
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
