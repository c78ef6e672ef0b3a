"""A real OpenVPN server and client between network namespaces, and ``evo-registry serve``
syncing the server's status file (status-version 2 and 3) by itself.

The unit's client certificate has its VPNID as common name, as the VPN server knows it.  The
underlay is 192.0.2.0/24 (GEO: Gent, BE): the client's real address 192.0.2.1 is the unit's WAN
IP; through the tunnel the registry sees 10.8.0.x.  ``serve`` runs vpn-sync every second here
(``vpn_sync_interval_s = 1``), so the device record gets the outer address without a command.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from evo_agent.delivery import signing
from evo_registry.db import Database
from evo_registry.store import Enrolment, Store
from tests.delivery.fixtures import VPNID, write_config, write_host_root
from tests.delivery.pki import make_pki
from tests.delivery.test_vpn_netns import IP, _in, _ip, _netns_pair, _veth, _wait
from tests.registry.conftest import base_report

OPENVPN = shutil.which("openvpn") or "/usr/sbin/openvpn"
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or not os.path.exists(OPENVPN)
    or not os.path.exists("/dev/net/tun"),
    reason="needs root, iproute2, /dev/net/tun and openvpn (apt-get install openvpn)")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    dev, reg = _netns_pair()
    try:
        _veth(dev, reg, "evoul0", "evoul1", "192.0.2")
        _ip("-n", dev, "link", "set", "evoul0", "up")
        yield dev, reg
    finally:
        for ns in (dev, reg):
            subprocess.run([IP, "netns", "del", ns], check=False, capture_output=True)


@pytest.mark.parametrize("version", [2, 3])
def test_openvpn_status_gives_the_unit_its_wan_ip(namespaces: tuple[str, str], version: int,
                                                  db_url: str, geo_db: Path,
                                                  tmp_path: Path) -> None:
    dev, reg = namespaces
    pki = make_pki(tmp_path / "pki", "vpn", client=VPNID)
    assert pki.client_cert_pem is not None and pki.client_key_pem is not None
    status = tmp_path / "openvpn-status.log"
    procs: list[subprocess.Popen[bytes]] = []
    server_log, client_log = tmp_path / "server.log", tmp_path / "client.log"
    common = ["--dev", "tun0", "--dev-type", "tun", "--proto", "udp", "--disable-dco",
              "--ca", str(pki.ca_pem), "--verb", "3"]
    with server_log.open("wb") as fh:
        procs.append(subprocess.Popen(
            [IP, "netns", "exec", reg, OPENVPN, *common, "--local", "192.0.2.2", "--port", "1194",
             "--server", "10.8.0.0", "255.255.255.0", "--topology", "subnet",
             "--cert", str(pki.cert_pem), "--key", str(pki.key_pem), "--dh", "none",
             "--keepalive", "2", "20", "--status", str(status), "1",
             "--status-version", str(version)], stdout=fh, stderr=subprocess.STDOUT))
    with client_log.open("wb") as fh:
        procs.append(subprocess.Popen(
            [IP, "netns", "exec", dev, OPENVPN, *common, "--client", "--nobind",
             "--remote", "192.0.2.2", "1194", "--cert", str(pki.client_cert_pem),
             "--key", str(pki.client_key_pem)], stdout=fh, stderr=subprocess.STDOUT))
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "agent.toml", state, write_host_root(tmp_path / "root"),
                       "https://127.0.0.1:9", ca=pki.ca_pem,
                       extra='vpn_url = "http://10.8.0.1:8432"\nvpn_interface = "tun0"')
    db = Database(db_url)
    db.migrate()
    store = Store(db)
    store.enroll(Enrolment(VPNID, signing.public_b64(signing.load_or_create(state)),
                           base_report(VPNID), ("BE", "NL"), "230V",
                           datetime(2026, 1, 15, tzinfo=timezone.utc)),
                 datetime.now(timezone.utc))
    settings = tmp_path / "registry.toml"
    settings.write_text(f'database = "{db_url}"\nlisten = "0.0.0.0:8432"\n'
                        f'geo_database = "{geo_db}"\nvpn_networks = ["10.8.0.0/24"]\n'
                        f'openvpn_status = ["{status}"]\nvpn_sync_interval_s = 1\n')
    serve_log = tmp_path / "serve.log"
    try:
        assert _wait(lambda: b"Initialization Sequence Completed" in client_log.read_bytes(),
                     30), client_log.read_text() + server_log.read_text()
        with serve_log.open("wb") as fh:
            procs.append(_in(reg, "-m", "evo_registry.cli", "serve", "--config", str(settings),
                             stdout=fh, stderr=subprocess.STDOUT))
        assert _wait(lambda: b"serving on" in serve_log.read_bytes(), 30), serve_log.read_text()
        send = _in(dev, "-m", "evo_agent", "send", "--now", "--via", "vpn", "--config", str(cfg),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = send.communicate(timeout=90)
        assert send.returncode == 0, err
        assert b"acknowledged via vpn" in out
        # The server rewrites its status file once a second (--status FILE 1): a client it has
        # just accepted appears at the next write (read at once, 1 run in 4 missed it here).
        listed = f"{VPNID}{',' if version == 2 else chr(9)}192.0.2.1:"
        assert _wait(lambda: listed in status.read_text(), 10), \
            status.read_text() + server_log.read_text()
        # serve's own periodic vpn-sync takes the real address from the status file.
        end = time.monotonic() + 20
        while time.monotonic() < end and store.device(VPNID)[0]["wan_source"] != "vpn":
            time.sleep(0.2)
        row = store.device(VPNID)[0]
        assert (row["wan_ip"], row["wan_source"], row["country"], row["city"]) == \
            ("192.0.2.1", "vpn", "BE", "Gent"), serve_log.read_text()
        assert row["vpn_seen_at"] is not None
        page = _in(dev, "-c", "import urllib.request,sys; sys.stdout.write(urllib.request."
                              "urlopen('http://192.0.2.2:8432/', timeout=20).read().decode())",
                   stdout=subprocess.PIPE)
        html = page.communicate(timeout=60)[0].decode()
        assert 'class="device"' in html and "EVO-LIVING-ROOM" in html, html
    finally:
        for p in reversed(procs):
            _stop(p)
        db.close()
