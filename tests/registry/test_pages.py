"""The finder, the support page, erasure, the registration form and the OpenAPI document."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from evo_registry.app import Registry
from evo_registry.geo import Geo, Location
from tests.registry.conftest import (
    FACTORY,
    HOME_A,
    HOME_B,
    HOME_D,
    SUPPORT,
    Clock,
    Device,
    Server,
    enroll,
    get_device,
    send,
)

LINK = re.compile(r'<a class="lan" href="([^"]+)"')


def _finder(server: Server, wan: str) -> str:
    reply = server.request("GET", "/", headers={"X-Forwarded-For": wan})
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in reply.headers["content-security-policy"]
    return reply.body.decode()


def _home(server: Server, vpnid: str, name: str, lan: str, wan: str, *,
          lan2: str | None = None) -> Device:
    dev = Device(vpnid)
    dev.template["functional"].update(netbios_name=name, lan_ip=lan, lan_ip_secondary=lan2)
    assert enroll(server, dev).status == 201
    assert send(server, dev, wan=wan).status == 201
    return dev


def test_two_homes_see_only_their_own_device(server: Server) -> None:
    a = _home(server, "EVO-400001", "EVO-KITCHEN", "192.168.1.20", HOME_A, lan2="10.0.0.7")
    b = _home(server, "EVO-400002", "EVO-STUDIO", "192.168.178.30", HOME_B)
    page_a = _finder(server, HOME_A)
    page_b = _finder(server, HOME_B)
    assert "EVO-KITCHEN" in page_a
    assert "EVO-STUDIO" not in page_a
    assert "EVO-STUDIO" in page_b
    assert "EVO-KITCHEN" not in page_b
    assert LINK.findall(page_a) == ["http://192.168.1.20/", "http://10.0.0.7/"]
    assert LINK.findall(page_b) == ["http://192.168.178.30/"]
    # Nothing else of a device: no VPNID, serial, MAC, WAN IP or location.
    canaries = [a.vpnid, b.vpnid, f"MB-{a.vpnid}-01", "70:85:c2", "Gent", "Belgium", HOME_A,
                HOME_B, "J4125", "Springfield"]
    for page in (page_a, page_b):
        for canary in canaries:
            assert canary not in page
    # A stranger's network sees nobody.
    assert "No 432 EVO" in _finder(server, HOME_D)


def test_finder_forgets_after_30_days_and_follows_moves(server: Server, clock: Clock) -> None:
    dev = _home(server, "EVO-400003", "EVO-ATTIC", "192.168.1.5", HOME_A)
    clock.advance(days=29)
    assert "EVO-ATTIC" in _finder(server, HOME_A)
    clock.advance(days=2)
    assert "EVO-ATTIC" not in _finder(server, HOME_A)
    assert send(server, dev, wan=HOME_B).status == 201  # it moved house
    assert "EVO-ATTIC" in _finder(server, HOME_B)
    assert "EVO-ATTIC" not in _finder(server, HOME_A)


def test_ipv6_home_is_its_prefix(server: Server) -> None:
    # Every device of an IPv6 home has its own address; the home is the /64 they share.
    _home(server, "EVO-400011", "EVO-V6", "192.168.1.8", "2001:db8:0:1::5")
    assert "EVO-V6" in _finder(server, "2001:db8:0:1:a1b2:c3d4:e5f6:1")
    assert "EVO-V6" not in _finder(server, "2001:db8:0:2::5")
    record = get_device(server, "EVO-400011").json()
    assert (record["wan_ip"], record["country"]) == ("2001:db8:0:1::5", "DE")


def test_finder_escapes_device_text(server: Server) -> None:
    _home(server, "EVO-400004", "<b>x</b>&'\"", "fe80::1", HOME_A)
    page = _finder(server, HOME_A)
    assert "<b>x</b>" not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert LINK.findall(page) == ["http://[fe80::1]/"]


def test_untrusted_forwarded_for_is_ignored() -> None:
    from evo_registry import wire

    trusted = [__import__("ipaddress").ip_network("127.0.0.1/32")]
    # The proxy appends the address it saw; what the client wrote further left is not believed.
    assert wire.client_address("127.0.0.1", "203.0.113.9, 192.0.2.10", trusted) == "192.0.2.10"
    assert wire.client_address("198.51.100.1", "192.0.2.10", trusted) == "198.51.100.1"
    assert wire.client_address("127.0.0.1", "garbage", trusted) is None
    assert wire.client_address("::ffff:192.0.2.1", None, trusted) == "192.0.2.1"
    assert wire.client_address("127.0.0.1", "127.0.0.1, 2001:db8::1", trusted) == "2001:db8::1"


def test_erase_personal_data(server: Server) -> None:
    dev = _home(server, "EVO-400005", "EVO-DEN", "192.168.1.9", HOME_D)  # DE: outside region
    auth = {"Authorization": f"Bearer {SUPPORT}"}
    reply = server.request("DELETE", f"/v1/devices/{dev.vpnid}/personal-data", headers=auth)
    assert reply.status == 200
    record = get_device(server, dev.vpnid).json()
    assert (record["wan_ip"], record["country"], record["city"]) == (None, None, None)
    detail = record["events"][0]["detail"]
    assert "country" not in detail
    assert detail["location_erased"] is True
    assert "Berlin" not in json.dumps(record)
    assert "EVO-DEN" not in _finder(server, HOME_D)
    assert server.request("DELETE", "/v1/devices/EVO-0/personal-data",
                          headers=auth).status == 404


def test_support_page_lists_open_events(server: Server) -> None:
    _home(server, "EVO-400006", "EVO-A", "192.168.1.2", HOME_B)  # outside, 120 V
    _home(server, "EVO-400007", "EVO-B", "192.168.1.3", HOME_A)  # fine
    reply = server.request("GET", "/support", headers={"Authorization": f"Bearer {SUPPORT}"})
    assert reply.status == 200
    page = reply.body.decode()
    assert page.count('class="event"') == 2
    assert "EVO-400006" in page
    assert "EVO-400007" not in page
    assert "psu_voltage_mismatch" in page


def test_registration_form_pdf(server: Server) -> None:
    dev = Device("EVO-400008")
    assert enroll(server, dev).status == 201
    path = f"/v1/devices/{dev.vpnid}/registration-form.pdf"
    assert server.request("GET", path).status == 401
    reply = server.request("GET", path, headers={"Authorization": f"Bearer {FACTORY}"})
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/pdf"
    assert reply.body.startswith(b"%PDF-")
    assert b"%%EOF" in reply.body[-32:]
    text = _pdf_text(reply.body)
    for expected in (dev.vpnid, f"MB-{dev.vpnid}-01", "70:85:c2:aa:bb:01", f"S6PD{dev.vpnid}B",
                     f"K1{dev.vpnid}R", "2026-01-15", "432 EVO Aeon", "Dealer", "Owner"):
        assert expected in text, expected


def test_registration_form_qr_decodes_to_the_vpnid(server: Server, tmp_path: Path) -> None:
    import shutil
    import subprocess

    pdftoppm, zbarimg = shutil.which("pdftoppm"), shutil.which("zbarimg")
    if pdftoppm is None or zbarimg is None:
        pytest.skip("pdftoppm/zbarimg absent: apt-get install poppler-utils zbar-tools")
    dev = Device("EVO-400010")
    assert enroll(server, dev).status == 201
    reply = server.request("GET", f"/v1/devices/{dev.vpnid}/registration-form.pdf",
                           headers={"Authorization": f"Bearer {SUPPORT}"})
    (tmp_path / "form.pdf").write_bytes(reply.body)
    subprocess.run([pdftoppm, "-r", "150", "-png", "-singlefile", str(tmp_path / "form.pdf"),
                    str(tmp_path / "page")], check=True, capture_output=True)
    out = subprocess.run([zbarimg, "--quiet", "--raw", "-Sdisable", "-Sqrcode.enable",
                          str(tmp_path / "page.png")], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [dev.vpnid]


def _pdf_text(pdf: bytes) -> str:
    """Return the text of a PDF with pdftotext (poppler-utils) when present, else the raw text."""
    import shutil
    import subprocess

    tool = shutil.which("pdftotext")
    if tool is None:
        pytest.skip("pdftotext absent: apt-get install poppler-utils")
    out = subprocess.run([tool, "-", "-"], input=pdf, capture_output=True, check=True)
    return out.stdout.decode()


def test_openapi_document_matches_the_routes(server: Server) -> None:
    reply = server.request("GET", "/openapi.json")
    assert reply.status == 200
    served = reply.json()
    kept = json.loads((Path(__file__).resolve().parents[2] / "evo_registry" / "openapi.json")
                      .read_text())
    assert served == kept
    documented = {(m.upper(), p) for p, ops in served["paths"].items() for m in ops}
    routed = {(verb, route.path) for route in server.asgi.routes
              for verb in getattr(route, "methods", ()) if verb != "HEAD"}
    assert documented == routed


def test_geo_missing_database_warns_and_gives_nothing(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert Geo(tmp_path / "absent.mmdb").lookup("192.0.2.1") == Location()
    assert "unusable" in caplog.text
    assert Geo(None).lookup("192.0.2.1") == Location()
    assert "no GEO database" in caplog.text


def test_geo_lookup(geo_db: Path) -> None:
    geo = Geo(geo_db)
    assert geo.lookup(HOME_A) == Location("BE", "Gent")
    assert geo.lookup("2001:db8:1::9") == Location("DE", "Berlin")
    assert geo.lookup("10.1.2.3") == Location()
    geo.close()


def test_app_is_usable_without_geo(settings: object, clock: Clock) -> None:
    from evo_registry.config import Settings

    assert isinstance(settings, Settings)
    settings.geo_database = None
    app = Registry(settings, clock=clock)
    app.db.migrate()
    srv = Server(app)
    try:
        dev = Device("EVO-400009")
        assert enroll(srv, dev).status == 201
        assert send(srv, dev, wan=HOME_A).status == 201
        record = get_device(srv, dev.vpnid).json()
        assert (record["wan_ip"], record["country"]) == (HOME_A, None)
    finally:
        srv.close()
        app.db.close()
