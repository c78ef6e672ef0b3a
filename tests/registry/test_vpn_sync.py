"""The VPN path keeps the registry's purposes: WAN IP, location, events and finder from the VPN
server's records; last seen on the VPN; the event of a unit under warranty that avoids the VPN.

Real registry on 127.0.0.1 over SQLite and PostgreSQL; the VPN server's files are written here in
the formats OpenVPN and ``wg show all dump`` write (the real WireGuard tunnel is in
test_vpn_wireguard.py).
"""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from evo_registry import vpnsync
from evo_registry.cli import main
from evo_registry.config import Settings
from tests.registry.conftest import (
    FACTORY,
    HOME_A,
    HOME_B,
    SUPPORT,
    Clock,
    Device,
    Server,
    enroll,
    get_device,
    send,
)

TUNNEL = "10.8.0.6"  # the unit's address inside the VPN (vpn_networks)
WG_KEY = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
WG_OTHER = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="


@pytest.fixture
def settings(db_url: str, geo_db: Path) -> Settings:
    return Settings(database=db_url, geo_database=str(geo_db), trusted_proxies=["127.0.0.1/32"],
                    vpn_networks=["10.8.0.0/16"], factory_tokens=[FACTORY],
                    support_tokens=[SUPPORT], rate_limit_reports=50)


@pytest.fixture
def device(server: Server) -> Device:
    dev = Device("EVO-700001")
    assert enroll(server, dev).status == 201  # region BE NL LU, 230 V, made 2026-01-15
    return dev


def openvpn_v2(clock: Clock, *clients: tuple[str, str]) -> str:
    """A status file as OpenVPN 2.6 writes it with ``status-version 2``."""
    t = int(clock.now.timestamp())
    lines = ["TITLE,OpenVPN 2.6.3 x86_64-pc-linux-gnu [SSL (OpenSSL)] [LZO] [LZ4] [EPOLL]",
             f"TIME,{clock.now:%Y-%m-%d %H:%M:%S},{t}",
             "HEADER,CLIENT_LIST,Common Name,Real Address,Virtual Address,Virtual IPv6 Address,"
             "Bytes Received,Bytes Sent,Connected Since,Connected Since (time_t),Username,"
             "Client ID,Peer ID,Data Channel Cipher"]
    for n, (cn, real) in enumerate(clients):
        lines.append(f"CLIENT_LIST,{cn},{real},10.8.0.{6 + n},,3860,3942,"
                     f"{clock.now:%Y-%m-%d %H:%M:%S},{t - 600},UNDEF,{n},{n},AES-256-GCM")
    lines += ["HEADER,ROUTING_TABLE,Virtual Address,Common Name,Real Address,Last Ref,"
              "Last Ref (time_t)", "GLOBAL_STATS,Max bcast/mcast queue length,0", "END"]
    return "\n".join(lines) + "\n"


def _sync(server: Server, clock: Clock, *texts: str, peers: dict[str, str] | None = None
          ) -> dict[str, int]:
    sightings = []
    for text in texts:
        sightings += vpnsync.parse_source(text, peers or {}, "test")
    counts = vpnsync.apply(server.app.store, server.app.geo, sightings, clock())
    counts.update(vpnsync.watch(server.app.store, clock(), server.app.settings.warranty_months))
    return counts


def _finder_names(server: Server, wan: str, query: str = "") -> list[str]:
    html = server.request("GET", "/" + query, headers={"X-Forwarded-For": wan}).body.decode()
    return [part.split("<", 1)[0] for part in html.split('<td class="name">')[1:]]


def test_report_through_the_vpn_gets_its_wan_ip_from_openvpn(server: Server, device: Device,
                                                              clock: Clock) -> None:
    assert send(server, device, wan=TUNNEL, headers={"X-Evo-Path": "vpn"}).status == 201
    doc = get_device(server, device.vpnid).json()
    # The tunnel address is no WAN IP; the unit was seen on the VPN.
    assert (doc["wan_ip"], doc["country"], doc["wan_source"]) == (None, None, None)
    assert doc["vpn_seen_at"] == "2026-11-23T12:00:00.000000Z"
    assert _finder_names(server, HOME_B) == []
    clock.advance(minutes=5)
    counts = _sync(server, clock, openvpn_v2(clock, (device.vpnid, f"{HOME_B}:51234"),
                                             ("EVO-NOT-ENROLLED", "203.0.113.9:1194")))
    assert counts["wan_ips"] == 1 and counts["seen"] == 1
    doc = get_device(server, device.vpnid).json()
    assert (doc["wan_ip"], doc["wan_source"], doc["country"], doc["city"]) == \
        (HOME_B, "vpn", "US", "Springfield")
    assert doc["wan_seen_at"] == "2026-11-23T12:05:00.000000Z"
    # The address from the VPN counts for the region and PSU events like one over HTTPS ...
    open_kinds = {e["kind"] for e in doc["events"] if e["resolved_at"] is None}
    assert open_kinds == {"outside_assigned_region", "psu_voltage_mismatch"}
    # ... and for the finder of that home.
    assert _finder_names(server, HOME_B) == ["EVO-LIVING"]
    # A second sync from the same address is no second event.
    clock.advance(minutes=5)
    _sync(server, clock, openvpn_v2(clock, (device.vpnid, f"{HOME_B}:51234")))
    events = get_device(server, device.vpnid).json()["events"]
    assert [e["occurrences"] for e in events] == [1, 1]


def test_status_version_3_and_the_latest_address_wins(server: Server, device: Device,
                                                      clock: Clock) -> None:
    assert send(server, device, wan=HOME_A).status == 201
    assert get_device(server, device.vpnid).json()["wan_source"] == "https"
    # A VPN record older than the report's address does not replace it.
    stale = openvpn_v2(Clock(), (device.vpnid, f"{HOME_B}:1194")).replace(",", "\t")
    clock.advance(minutes=1)
    assert _sync(server, clock, stale.replace(
        str(int(Clock().now.timestamp())), str(int((clock.now - timedelta(hours=2)).timestamp()))
    ))["wan_ips"] == 0
    assert get_device(server, device.vpnid).json()["wan_ip"] == HOME_A
    # A newer one does (status-version 3: tabs).
    clock.advance(minutes=5)
    v3 = openvpn_v2(clock, (device.vpnid, f"{HOME_B}:1194")).replace(",", "\t")
    assert _sync(server, clock, v3)["wan_ips"] == 1
    doc = get_device(server, device.vpnid).json()
    assert (doc["wan_ip"], doc["wan_source"]) == (HOME_B, "vpn")
    # And a report over HTTPS after it wins again.
    clock.advance(minutes=5)
    assert send(server, device, wan=HOME_A).status == 201
    doc = get_device(server, device.vpnid).json()
    assert (doc["wan_ip"], doc["wan_source"], doc["country"]) == (HOME_A, "https", "BE")


def test_wireguard_dump_with_peer_map(server: Server, device: Device, clock: Clock) -> None:
    t = int(clock.now.timestamp())
    dump = ("wg0\tcGFzc3dvcmQtbm90LXJlYWxseS1hLWtleS1hdC1hbGw=\t"
            "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=\t51820\toff\n"
            f"wg0\t{WG_KEY}\t(none)\t[{'2001:db8::5'}]:40123\t10.8.0.6/32\t{t - 30}\t9000\t"
            "9400\t25\n"
            f"wg0\t{WG_OTHER}\t(none)\t(none)\t10.8.0.7/32\t0\t0\t0\toff\n")
    counts = _sync(server, clock, dump, peers={WG_KEY: device.vpnid, WG_OTHER: "EVO-700002"})
    assert counts["wan_ips"] == 1
    doc = get_device(server, device.vpnid).json()
    assert (doc["wan_ip"], doc["wan_source"], doc["country"]) == ("2001:db8::5", "vpn", "DE")
    assert doc["vpn_seen_at"] == "2026-11-23T11:59:30.000000Z"
    with pytest.raises(vpnsync.VpnSourceError, match="map of peer keys"):
        vpnsync.parse_source(dump, {}, "dump")
    with pytest.raises(vpnsync.VpnSourceError, match="line 1 is not"):
        vpnsync.parse_source("wg0\tgarbage\n", {WG_KEY: "X"}, "dump")


def test_vpn_sync_command_reads_files_and_stdin(server: Server, device: Device, clock: Clock,
                                                tmp_path: Path, *,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    settings = server.app.settings
    status = tmp_path / "status.log"
    status.write_text(openvpn_v2(clock, (device.vpnid, f"{HOME_B}:51234")))
    peers = tmp_path / "peers"
    peers.write_text(f"# key VPNID\n{WG_KEY} EVO-700002\n")
    cfg = tmp_path / "registry.toml"
    cfg.write_text(f'database = "{settings.database}"\ngeo_database = "{settings.geo_database}"\n'
                   f'wireguard_peers = "{peers}"\n')
    out = io.StringIO()
    assert main(["vpn-sync", "--config", str(cfg), str(status)], out=out) == 0
    assert "'wan_ips': 1" in out.getvalue()
    assert get_device(server, device.vpnid).json()["wan_source"] == "vpn"
    monkeypatch.setattr("sys.stdin", io.StringIO("wg0\tnot a dump\n"))
    assert main(["vpn-sync", "--config", str(cfg), "-"]) == 65
    assert "<stdin>: line 1 is not a line of 'wg show all dump'" in capsys.readouterr().err
    assert main(["vpn-sync", "--config", str(cfg), str(tmp_path / "absent")]) == 65
    assert "cannot read" in capsys.readouterr().err


def _vpn_unused(server: Server, vpnid: str) -> dict[str, Any] | None:
    for e in get_device(server, vpnid).json()["events"]:
        if e["kind"] == "vpn_unused":
            return e  # type: ignore[no-any-return]
    return None


def test_warranty_unit_reporting_only_over_https_for_7_days(server: Server, device: Device,
                                                           clock: Clock) -> None:
    for _day in range(7):
        assert send(server, device, wan=HOME_A).status == 201
        _sync(server, clock)
        assert _vpn_unused(server, device.vpnid) is None
        clock.advance(days=1)
    assert send(server, device, wan=HOME_A).status == 201
    _sync(server, clock)
    event = _vpn_unused(server, device.vpnid)
    assert event is not None and event["resolved_at"] is None
    assert event["detail"] == {"days": 7, "last_seen_on_vpn": None}
    # Seen on the VPN again: the event closes itself at the next sync.
    clock.advance(hours=1)
    assert send(server, device, wan=TUNNEL).status == 201
    _sync(server, clock)
    event = _vpn_unused(server, device.vpnid)
    assert event is not None and event["resolved_at"] is not None


def test_no_vpn_event_after_the_warranty(server: Server, clock: Clock) -> None:
    old = Device("EVO-700009")
    assert enroll(server, old, manufactured_at="2020-01-15T10:00:00Z").status == 201
    for _day in range(9):
        assert send(server, old, wan=HOME_A).status == 201
        clock.advance(days=1)
    _sync(server, clock)
    assert _vpn_unused(server, old.vpnid) is None


def test_objected_unit_is_not_synced(server: Server, device: Device, clock: Clock) -> None:
    server.app.db.read("SELECT 1")
    with server.app.db.transaction() as tx:
        tx.run("UPDATE devices SET objected_at = ? WHERE vpnid = ?",
               ("2026-11-23T11:00:00.000000Z", device.vpnid))
    assert _sync(server, clock, openvpn_v2(clock, (device.vpnid, f"{HOME_B}:1")))["seen"] == 0
    doc = get_device(server, device.vpnid).json()
    assert (doc["wan_ip"], doc["vpn_seen_at"], doc["objected"]) == (None, None, True)


@pytest.mark.parametrize("version", [2, 3])
def test_parses_status_files_written_by_openvpn(version: int) -> None:
    """Status files a real OpenVPN 2.6.14 server wrote (tests/data/vpn/SOURCES.tsv)."""
    path = Path(__file__).resolve().parents[1] / "data" / "vpn" / \
        f"openvpn-2.6.14-status-v{version}.log"
    [s] = vpnsync.parse_source(path.read_text(), {}, str(path))
    assert (s.vpnid, s.address) == ("EVO-TEST-0042", "192.0.2.1")
    # The time the file was written (TIME line), when the client was known connected.
    assert s.at.timestamp() == {2: 1796419995, 3: 1796419998}[version]


def test_parses_an_ipv6_client_of_openvpn() -> None:
    """OpenVPN 2.6.14 over udp6 writes the real address without a port."""
    path = Path(__file__).resolve().parents[1] / "data" / "vpn" / \
        "openvpn-2.6.14-status-v2-ipv6.log"
    [s] = vpnsync.parse_source(path.read_text(), {}, str(path))
    assert (s.vpnid, s.address) == ("EVO-TEST-0042", "2001:db8:77::1")
    assert vpnsync.outer_address("[2001:db8::5]:51820") == "2001:db8::5"
    assert vpnsync.outer_address("192.0.2.1:44376") == "192.0.2.1"
    assert vpnsync.outer_address("::ffff:192.0.2.1") == "192.0.2.1"
    assert vpnsync.outer_address("(none)") is None
