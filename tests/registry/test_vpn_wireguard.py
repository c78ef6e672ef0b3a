"""A real WireGuard VPN between network namespaces that the test creates, and the real registry.

The device namespace holds the unit (``evo-agent send --now``), the registry namespace holds
``evo-registry serve`` and the VPN server's end of the tunnel (wireguard-go on both sides, as in
tests/delivery/test_vpn_netns.py).  The underlay is 192.0.2.0/24, which the test GEO database
places in Gent (BE): the unit's outer address 192.0.2.1 is its "WAN IP".  Through the tunnel the
registry sees only 10.88.0.1; ``evo-registry vpn-sync`` reading the real ``wg show all dump``
gives the record its WAN IP, country and city, and the owner's finder at home (a browser at
192.0.2.1) lists the unit.  Before that, a tunnel whose peer does not answer is not "VPN up": the
agent says so and does not use it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from evo_agent.delivery import signing
from evo_registry.db import Database
from evo_registry.store import Enrolment, Store
from tests.delivery.fixtures import VPNID, write_config, write_host_root
from tests.delivery.pki import Pki, make_pki
from tests.delivery.test_vpn_netns import IP, _in, _ip, _netns_pair, _wait, _wireguard
from tests.registry.conftest import base_report

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 to create network namespaces")
UNDERLAY = "192.0.2"  # GEO: BE, Gent


@pytest.fixture
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), "good")


@pytest.fixture
def tunnel(tmp_path: Path) -> Iterator[tuple[str, str, str, Path]]:
    dev, reg = _netns_pair()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ifname = _wireguard(dev, reg, tmp_path, procs, underlay=UNDERLAY)
        yield dev, reg, ifname, tmp_path
    finally:
        for p in procs:
            p.terminate()
            p.wait(5)
        for ns in (dev, reg):
            subprocess.run([IP, "netns", "del", ns], check=False, capture_output=True)


def _wg(ns: str, *args: str) -> str:
    return subprocess.run([IP, "netns", "exec", ns, "wg", *args], capture_output=True,
                          check=True, text=True).stdout


def _send(dev: str, cfg: Path, *via: str) -> subprocess.CompletedProcess[bytes]:
    proc = _in(dev, "-m", "evo_agent", "send", "--now", *via, "--config", str(cfg),
               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=90)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_unit_reporting_through_wireguard_gets_its_wan_ip_country_and_finder(
        tunnel: tuple[str, str, str, Path], db_url: str, geo_db: Path, pki: Pki) -> None:
    dev, reg, ifname, tmp = tunnel
    dev_key = subprocess.run(["wg", "pubkey"], input=(tmp / f"{dev}.key").read_bytes(),
                             capture_output=True, check=True).stdout.decode().strip()
    # wireguard-go's sockets are shared by the namespaces: `wg show all` lists both ends; the
    # registry's is the one with the unit's key as its peer.
    reg_if = next(f[0] for f in (line.split("\t") for line in
                                 _wg(reg, "show", "all", "dump").splitlines())
                  if len(f) == 9 and f[1] == dev_key)
    # The unit, enrolled with the key of its state directory.
    state = tmp / "state"
    cfg = write_config(tmp / "agent.toml", state, write_host_root(tmp / "root"),
                       "https://127.0.0.1:9", ca=pki.ca_pem,
                       extra=f'vpn_url = "http://10.88.0.2:8432"\nvpn_interface = "{ifname}"')
    db = Database(db_url)
    db.migrate()
    store = Store(db)
    key = signing.public_b64(signing.load_or_create(state))
    store.enroll(Enrolment(VPNID, key, base_report(VPNID), ("BE", "NL"), "230V",
                           datetime(2026, 1, 15, tzinfo=timezone.utc)),
                 datetime.now(timezone.utc))
    settings = tmp / "registry.toml"
    settings.write_text(f'database = "{db_url}"\nlisten = "0.0.0.0:8432"\n'
                        f'geo_database = "{geo_db}"\nvpn_networks = ["10.88.0.0/24"]\n')
    log = tmp / "serve.log"
    with log.open("wb") as fh:
        serve = _in(reg, "-m", "evo_registry.cli", "serve", "--config", str(settings),
                    stdout=fh, stderr=subprocess.STDOUT)
    try:
        assert _wait(lambda: b"serving on" in log.read_bytes(), 30), log.read_text()
        # The registry's end does not know the unit's key yet: the link is up and routed, but
        # nothing answers through it.  Not "VPN up": refused fast, with the reason.
        peer_args = ["allowed-ips", "10.88.0.1/32", "endpoint", f"{UNDERLAY}.1:51820"]
        _wg(reg, "set", reg_if, "peer", dev_key, "remove")
        _ip("-n", dev, "link", "set", ifname, "up")
        dead = _send(dev, cfg, "--via", "vpn")
        assert dead.returncode == 75, dead.stderr
        assert b"not a working tunnel" in dead.stderr and b"handshake never" in dead.stderr
        assert store.counts()["reports"] == 0
        # The registry's end knows the key: a handshake, and the report goes through.
        _wg(reg, "set", reg_if, "peer", dev_key, *peer_args)
        sent = _send(dev, cfg, "--via", "vpn")
        assert sent.returncode == 0, sent.stderr
        assert b"acknowledged via vpn" in sent.stdout
        row = store.device(VPNID)[0]
        assert row["wan_ip"] is None and row["vpn_seen_at"] is not None  # the tunnel address
        # The VPN server's own record: `wg show all dump`, through vpn-sync's standard input.
        peers = tmp / "wireguard-peers"
        peers.write_text(f"{dev_key} {VPNID}\n")
        dump = _wg(reg, "show", "all", "dump")
        assert f"{UNDERLAY}.1:51820" in dump
        sync = subprocess.run([sys.executable, "-m", "evo_registry.cli", "vpn-sync", "--config",
                               str(settings), "--wireguard-peers", str(peers), "-"],
                              input=dump, capture_output=True, text=True, cwd=REPO, timeout=60,
                              check=False)
        assert sync.returncode == 0, sync.stderr
        row = store.device(VPNID)[0]
        assert (row["wan_ip"], row["wan_source"], row["country"], row["city"]) == \
            (f"{UNDERLAY}.1", "vpn", "BE", "Gent")
        # The owner's browser at home (the unit's outer address) finds it.
        page = _in(dev, "-c", "import urllib.request,sys; sys.stdout.write(urllib.request."
                              f"urlopen('http://{UNDERLAY}.2:8432/', timeout=20).read().decode())",
                   stdout=subprocess.PIPE)
        html = page.communicate(timeout=60)[0].decode()
        assert 'class="device"' in html and "EVO-LIVING-ROOM" in html, html
        reports = store.device(VPNID)[2]  # the one queued while the tunnel was dead, and the new
        assert [r["path"] for r in reports] == ["vpn", "vpn"]
        assert json.loads(store.device(VPNID)[3]["body"])["functional"]["vpnid"] == VPNID
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(10)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
        db.close()
