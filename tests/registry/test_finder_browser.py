"""The finder in headless Chromium (Debian's chromium): two homes, each sees only its device.

Each home is a small reverse proxy on loopback that adds the home's WAN address to
X-Forwarded-For, as the production proxy does; the registry trusts 127.0.0.1.  Chromium loads the
page through its home's proxy and dumps the DOM; the test reads the links from it and never
connects to a LAN address.
"""

from __future__ import annotations

import http.client
import http.server
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.registry.conftest import HOME_A, HOME_B, Device, Server, enroll, send, serve_on_loopback


@contextmanager
def _home_proxy(upstream: int, wan: str) -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=30)
            conn.request("GET", self.path, headers={"X-Forwarded-For": wan})
            resp = conn.getresponse()
            body = resp.read()
            self.send_response(resp.status)
            for key, value in resp.getheaders():
                if key.lower() not in ("connection", "transfer-encoding", "server", "date"):
                    self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)
            conn.close()

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serve_on_loopback(Handler) as port:
        yield port


def _chromium_dom(url: str, tmp: str) -> str:
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("chromium absent: apt-get install chromium")
    out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                          "--no-first-run", "--disable-extensions", "--disable-sync",
                          "--disable-background-networking", "--disable-component-update",
                          "--dns-prefetch-disable", f"--user-data-dir={tmp}",
                          "--virtual-time-budget=2000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _device(server: Server, vpnid: str, name: str, lan: str, wan: str) -> None:
    dev = Device(vpnid)
    dev.template["functional"].update(netbios_name=name, lan_ip=lan)
    assert enroll(server, dev).status == 201
    assert send(server, dev, wan=wan).status == 201


@pytest.mark.slow
def test_two_homes_in_chromium(server: Server, tmp_path: object) -> None:
    _device(server, "EVO-700001", "EVO-HOME-A", "192.168.1.44", HOME_A)
    _device(server, "EVO-700002", "EVO-HOME-B", "10.20.30.40", HOME_B)
    seen = {}
    for wan in (HOME_A, HOME_B):
        with _home_proxy(server.port, wan) as port:
            seen[wan] = _chromium_dom(f"http://127.0.0.1:{port}/", f"{tmp_path}/{wan}")
    rows_a = re.findall(r'<tr class="device">.*?</tr>', seen[HOME_A], re.S)
    rows_b = re.findall(r'<tr class="device">.*?</tr>', seen[HOME_B], re.S)
    assert len(rows_a) == len(rows_b) == 1
    assert "EVO-HOME-A" in rows_a[0]
    assert "EVO-HOME-B" in rows_b[0]
    assert "EVO-HOME-B" not in seen[HOME_A]
    assert "EVO-HOME-A" not in seen[HOME_B]
    link = re.compile(r'<a class="lan" href="([^"]+)"')
    assert link.findall(seen[HOME_A]) == ["http://192.168.1.44/"]
    assert link.findall(seen[HOME_B]) == ["http://10.20.30.40/"]
