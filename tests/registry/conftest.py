"""Fixtures of the registry tests: real databases, a real server on loopback, real devices.

- PostgreSQL is Debian's own (``apt-get install postgresql``), started here by initdb/pg_ctl in a
  temporary directory as an unprivileged user, listening only on a unix socket in that directory
  (no TCP port to collide with anything).  One server per session, one fresh database per test.
- The GEO database is a real MaxMind-format file written by ``mmdb_writer``; its networks are
  documentation ranges, which are only data here: no test connects to them.
- Devices have real Ed25519 keys and send gzip reports signed per docs/protocol.md to the real
  registry served by uvicorn on 127.0.0.1 (a free port), as ``evo-registry serve`` serves it.
"""

from __future__ import annotations

import base64
import copy
import gzip
import http.client
import http.server
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from evo_registry.app import Registry, create_app
from evo_registry.config import Settings
from evo_registry.db import Database
from evo_registry.geo import Geo
from evo_registry.server import ConnectionGuard, uvicorn_config
from tests.registry.pgserver import PgServer, pg_bin, postgres

FACTORY = "factory-token-for-tests"
SUPPORT = "support-token-for-tests"
HOME_A = "192.0.2.10"       # GEO: BE, Gent
HOME_B = "198.51.100.20"    # GEO: US, Springfield
HOME_C = "203.0.113.30"     # GEO: JP, Tokyo
HOME_D = "2001:db8::5"      # GEO: DE, Berlin
UNKNOWN_WAN = "100.64.0.1"  # not in the GEO database


# ---- PostgreSQL ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bindir = pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL binaries absent: apt-get install postgresql (see README)")
    with postgres(bindir) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    server: PgServer = request.getfixturevalue("pg_server")
    return server.create_database()


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = Database(db_url)
    db.migrate()
    yield db
    db.close()


# ---- GEO -------------------------------------------------------------------------------------
def _city(code: str, country: str, city: str) -> dict[str, Any]:
    return {"country": {"iso_code": code, "names": {"en": country}},
            "city": {"names": {"en": city}}}


@pytest.fixture(scope="session")
def geo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-City", languages=["en"],
                        description="evo-registry tests", ipv4_compatible=True)
    writer.insert_network(IPSet(["192.0.2.0/24"]), _city("BE", "Belgium", "Gent"))
    writer.insert_network(IPSet(["198.51.100.0/24"]), _city("US", "United States", "Springfield"))
    writer.insert_network(IPSet(["203.0.113.0/24"]), _city("JP", "Japan", "Tokyo"))
    writer.insert_network(IPSet(["2001:db8::/32"]), _city("DE", "Germany", "Berlin"))
    path = tmp_path_factory.mktemp("geo") / "test-city.mmdb"
    writer.to_db_file(str(path))
    return path


# ---- the server ------------------------------------------------------------------------------
class Clock:
    """A settable clock (the registry takes its time from it)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Server:
    """The registry served on 127.0.0.1:<free port> by uvicorn, as ``evo-registry serve`` does
    (evo_registry.server: same protocol class, limits and timeouts), in a thread of the test.

    ``protocol``: another protocol class (a test's shorter deadlines); ``tls``: (certificate,
    key) files to serve HTTPS with.
    """

    def __init__(self, app: Registry, protocol: type | None = None,
                 tls: tuple[str, str] | None = None) -> None:
        import uvicorn

        self.app = app
        self.guard = ConnectionGuard(app.settings.connections_per_client,
                                     app.settings.networks())
        self.asgi = create_app(registry=app, guard=self.guard)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        self.port = int(sock.getsockname()[1])
        config = uvicorn_config(app.settings, self.asgi, level=None)
        if protocol is not None:
            config.http = protocol
        if tls is not None:
            config.ssl_certfile, config.ssl_keyfile = tls
        self.uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [sock]},
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self.uvicorn.started:
            assert self._thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)

    @property
    def connections(self) -> int:
        """Return how many connections the server holds open."""
        return len(self.uvicorn.server_state.connections)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def stored_by_writers(self) -> int:
        """Return how many reports the app's group-commit writer took."""
        return self.app.writer.items

    def close(self) -> None:
        self.uvicorn.should_exit = True
        self._thread.join(30)
        assert not self._thread.is_alive(), "the server did not stop"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings(db_url: str, geo_db: Path) -> Settings:
    return Settings(database=db_url, geo_database=str(geo_db), trusted_proxies=["127.0.0.1/32"],
                    factory_tokens=[FACTORY], support_tokens=[SUPPORT], rate_limit_reports=5,
                    rate_limit_window_s=3600)


@pytest.fixture
def server(settings: Settings, clock: Clock) -> Iterator[Server]:
    db = Database(settings.database)
    db.migrate()
    app = Registry(settings, db=db, geo=Geo(settings.geo_database), clock=clock)
    srv = Server(app)
    yield srv
    srv.close()
    app.close()
    db.close()


# ---- devices ---------------------------------------------------------------------------------
def base_report(vpnid: str) -> dict[str, Any]:
    """A complete evo-inventory/1 report (values as the privacy filter would send them)."""
    return {
        "schema": "evo-inventory/1",
        "policy_version": "2024-07-11",
        "report_id": str(uuid.uuid4()),
        "sequence": 0,
        "trigger": "manufacturing",
        "collected_at": "2026-11-20T09:00:00Z",
        "agent_version": "0.1.0",
        "functional": {"vpnid": vpnid, "netbios_name": "EVO-LIVING", "lan_ip": "192.168.1.20",
                       "lan_ip_secondary": None},
        "hardware": {
            "motherboard": {"vendor": "ASRock", "model": "J4125-ITX", "serial": f"MB-{vpnid}-01"},
            "mac_address": "70:85:c2:aa:bb:01",
            "cpu": {"model": "Intel(R) Celeron(R) J4125 CPU @ 2.00GHz", "cores": 4, "threads": 4},
            "ram": {"total_bytes": 8589934592, "modules": [
                {"type": "DDR4", "form_factor": "SODIMM", "size_bytes": 8589934592,
                 "speed_mts": 2400, "manufacturer": "Kingston", "part_number": "KVR24S17S8/8"}]},
            "boot_drive": {"model": "Samsung SSD 870 EVO 250GB", "serial": f"S6PD{vpnid}B"},
            "rip_drive": {"model": "HL-DT-ST DVDRAM GP57EB40", "serial": f"K1{vpnid}R"},
            "usb_devices": [{"vendor_id": "152a", "product_id": "8750", "vendor": "Thesycon",
                             "product": "USB Audio"}],
            "pci_devices": [{"address": "0000:00:02.0", "vendor_id": "8086", "device_id": "3185",
                             "class_id": "0300", "vendor": "Intel Corporation",
                             "device": "UHD Graphics 600"}],
            "audio_devices": [{"card": 0, "id": "PCH", "name": "HDA Intel PCH",
                               "driver": "snd_hda_intel", "bus": "pci", "usb_id": None}],
        },
        "collectors": {"dmi": {"status": "ok", "duration_ms": 12, "error": None}},
    }


class Device:
    """One 432 EVO: its key, its sequence, and what it sends."""

    def __init__(self, vpnid: str) -> None:
        self.vpnid = vpnid
        self.key = Ed25519PrivateKey.generate()
        self.sequence = 0
        self.template = base_report(vpnid)

    @property
    def public_key(self) -> str:
        raw = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return base64.b64encode(raw).decode()

    def enrolment(self, **extra: Any) -> dict[str, Any]:
        report = copy.deepcopy(self.template)
        report["trigger"] = "manufacturing"
        return {"vpnid": self.vpnid, "public_key": self.public_key, "report": report,
                "sales_region": ["BE", "NL", "LU"], "psu_variant": "230V",
                "manufactured_at": "2026-01-15T10:00:00Z", "model": "432 EVO Aeon", **extra}

    def report(self, **changes: Any) -> dict[str, Any]:
        self.sequence += 1
        doc = copy.deepcopy(self.template)
        doc.update(report_id=str(uuid.uuid4()), sequence=self.sequence, trigger="daily")
        for key, value in changes.items():
            doc[key] = value
        return doc

    def sign(self, body: bytes) -> str:
        return base64.b64encode(self.key.sign(body)).decode()

    def wire(self, doc: Any, raw: bytes | None = None) -> tuple[bytes, dict[str, str]]:
        body = raw if raw is not None else gzip.compress(json.dumps(doc).encode())
        return body, {"Content-Type": "application/json", "Content-Encoding": "gzip",
                      "X-Evo-Vpnid": self.vpnid, "X-Evo-Signature": self.sign(body),
                      "X-Evo-Path": "https"}


def enroll(server: Server, device: Device, **extra: Any) -> Reply:
    return server.request("POST", "/v1/enroll", json.dumps(device.enrolment(**extra)).encode(),
                          {"Content-Type": "application/json",
                           "Authorization": f"Bearer {FACTORY}"})


def send(server: Server, device: Device, doc: Any | None = None, *, wan: str | None = HOME_A,
         raw: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
    """POST a report; ``wan`` is the address a trusted proxy (127.0.0.1) puts in X-F-F."""
    body, hdrs = device.wire(doc if doc is not None else device.report(), raw)
    if wan:
        hdrs["X-Forwarded-For"] = wan
    hdrs.update(headers or {})
    return server.request("POST", "/v1/reports", body, hdrs)


def get_device(server: Server, vpnid: str) -> Reply:
    return server.request("GET", f"/v1/devices/{vpnid}",
                          headers={"Authorization": f"Bearer {SUPPORT}"})


@contextmanager
def serve_on_loopback(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    """Serve ``handler`` on 127.0.0.1 at a free port (a test's proxy); yield the port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
