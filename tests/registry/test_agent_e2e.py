"""End to end with the agent: `evo-agent send --now` against the registry on 127.0.0.1.

The agent runs as its own process from the repository, with a replayed host root (the identity
collector's files) and its real delivery code (gzip, Ed25519 key in its state directory, the
protocol's headers).  Between them a reverse proxy on loopback plays the home's router and the
registry's front end: it adds the home's WAN address to X-Forwarded-For.  The device record must
then show the right first/last seen, WAN IP and location (from the test GEO database).
"""

from __future__ import annotations

import http.client
import http.server
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.registry.conftest import (
    FACTORY,
    HOME_A,
    HOME_D,
    Clock,
    Server,
    base_report,
    get_device,
    serve_on_loopback,
)

REPO = Path(__file__).resolve().parents[2]
VPNID = "EVO-E2E-0001"


@contextmanager
def _front(upstream: int, wan: str) -> Iterator[int]:
    """A reverse proxy on loopback that forwards every request and appends ``wan`` to X-F-F."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("host", "connection", "x-forwarded-for")}
            headers["X-Forwarded-For"] = wan
            conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=30)
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            self.send_response(resp.status)
            for key, value in resp.getheaders():
                if key.lower() not in ("connection", "transfer-encoding", "server", "date",
                                       "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _forward

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serve_on_loopback(Handler) as port:
        yield port


def _agent(tmp_path: Path, url: str) -> Path:
    root = tmp_path / "host"
    (root / "etc" / "evo-agent" / "identity").mkdir(parents=True)
    (root / "etc" / "evo-agent" / "identity" / "vpnid").write_text(VPNID + "\n")
    (root / "proc" / "sys" / "kernel").mkdir(parents=True)
    (root / "proc" / "sys" / "kernel" / "hostname").write_text("evo-living-room\n")
    state = tmp_path / "state"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{state}"\nhost_root = "{root}"\n'
                   f'control_socket = "{tmp_path / "control.sock"}"\n'
                   f'[delivery]\nhttps_url = "{url}"\nca_bundle = ""\n'
                   "connect_timeout = 5.0\ntotal_timeout = 20.0\n")
    return cfg


def _send_now(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evo_agent", "send", "--now", "--config",
                           str(cfg)], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)


def test_send_now_shows_up_in_the_device_record(server: Server, clock: Clock,
                                                tmp_path: Path) -> None:
    from evo_agent.delivery import signing

    with _front(server.port, HOME_A) as port:
        cfg = _agent(tmp_path, f"http://127.0.0.1:{port}")
        # Manufacturing: the agent's own key (created where the agent keeps it) is enrolled.
        key = signing.load_or_create(tmp_path / "state")
        manufacturing = base_report(VPNID)
        enrol = {"vpnid": VPNID, "public_key": signing.public_b64(key), "report": manufacturing,
                 "sales_region": ["BE", "NL"], "psu_variant": "230V"}
        reply = server.request("POST", "/v1/enroll", json.dumps(enrol).encode(),
                               {"Content-Type": "application/json",
                                "Authorization": f"Bearer {FACTORY}"})
        assert reply.status == 201, reply.body
        sent = _send_now(cfg)
        assert sent.returncode == 0, sent.stdout + sent.stderr
    record = get_device(server, VPNID).json()
    assert record["first_seen"] == record["last_seen"] == "2026-11-23T12:00:00.000000Z"
    assert (record["wan_ip"], record["country"], record["city"]) == (HOME_A, "BE", "Gent")
    assert len(record["reports"]) == 1
    assert record["reports"][0]["path"] == "https"
    latest = record["latest_report"]
    assert latest["functional"]["vpnid"] == VPNID
    assert latest["functional"]["netbios_name"] == "EVO-LIVING-ROOM"  # from the host name

    # The next day from another home: last seen moves, first seen stays, one WAN IP kept.
    clock.advance(days=1)
    with _front(server.port, HOME_D) as port:
        text = cfg.read_text()
        start = text.index("https_url = ")
        end = text.index("\n", start)
        cfg.write_text(text[:start] + f'https_url = "http://127.0.0.1:{port}"' + text[end:])
        sent = _send_now(cfg)
        assert sent.returncode == 0, sent.stdout + sent.stderr
    record = get_device(server, VPNID).json()
    assert record["first_seen"] == "2026-11-23T12:00:00.000000Z"
    assert record["last_seen"] == "2026-11-24T12:00:00.000000Z"
    assert (record["wan_ip"], record["country"], record["city"]) == (HOME_D, "DE", "Berlin")
    assert len(record["reports"]) == 2
