"""The console's test world: a real uvicorn on 127.0.0.1, real accounts, units put in through
the real store (enrolment, then signed-off reports as the report route would store them).

Units:
- EVO-100001, dealer DLR-A: its rip drive was replaced between its first and second report
  (HL-DT-ST GP57EB40 -> ASUS DRW-24D5MT); reported from Japan (outside its region: an event).
- EVO-100002, dealer DLR-B.
- EVO-100003, no dealer: its NetBIOS name is a planted ``<script>``.
"""

from __future__ import annotations

import copy
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests
import uvicorn
from starlette.applications import Starlette

from evo_registry import console
from evo_registry.config import Settings
from evo_registry.console import accounts
from evo_registry.db import Database
from evo_registry.geo import Location
from evo_registry.store import Enrolment, Limits, Store
from tests.registry.conftest import Device

PASSWORDS = {
    "ada.admin": "admin-password-0001",
    "sam.support": "support-password-0002",
    "dana.dealer": "dealer-a-password-0003",
    "bert.dealer": "dealer-b-password-0004",
    "fay.factory": "factory-password-0005",
}
ROLES = {"ada.admin": ("admin", None), "sam.support": ("support", None),
         "dana.dealer": ("dealer", "DLR-A"), "bert.dealer": ("dealer", "DLR-B"),
         "fay.factory": ("factory", None)}
SCRIPT_NAME = '<script>alert("evo")</script>'
WAN_CANARY = "203.0.113.77"     # the WAN IP of EVO-100001: never on a dealer's page
CITY_CANARY = "Canarytown"      # its city: likewise
OLD_RIP = ("HL-DT-ST DVDRAM GP57EB40", "K1OLDRIP")
NEW_RIP = ("ASUS DRW-24D5MT", "K9NEWRIP")


class Clock:
    """A settable clock for the console."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    """A served console over a populated database."""

    url: str
    db: Database
    clock: Clock
    clients: list[requests.Session] = field(default_factory=list)

    def client(self) -> requests.Session:
        """Return a new HTTP client (like a new browser), closed with the world."""
        s = requests.Session()
        self.clients.append(s)
        return s


def _unit(store: Store, vpnid: str, when: datetime, name: str) -> Device:
    dev = Device(vpnid)
    dev.template["functional"]["netbios_name"] = name
    dev.template["hardware"]["rip_drive"] = {"model": OLD_RIP[0], "serial": OLD_RIP[1]}
    store.enroll(Enrolment(vpnid, dev.public_key, copy.deepcopy(dev.template), ("BE", "LU", "NL"),
                           "230V", datetime(2026, 1, 15, 10, tzinfo=timezone.utc),
                           "432 EVO Aeon"), when)
    return dev


def populate(db: Database, clock: Clock) -> None:
    """Fill a migrated database with the accounts, dealers and units of the test world."""
    store = Store(db)
    start = clock.now - timedelta(days=40)
    with db.transaction() as tx:
        accounts.add_dealer(tx, "DLR-A", "Hifi Gent", ["BE", "LU", "NL"], start)
        accounts.add_dealer(tx, "DLR-B", "Klang Berlin", ["DE"], start)
        for name, (role, dealer) in ROLES.items():
            accounts.add_account(tx, name, role, dealer, password=PASSWORDS[name], now=start)
    one = _unit(store, "EVO-100001", start, "EVO-LIVING")
    two = _unit(store, "EVO-100002", start, "EVO-STUDIO")
    three = _unit(store, "EVO-100003", start, SCRIPT_NAME)
    limits = Limits()
    first = start + timedelta(days=1)
    store.ingest(one.report(), one.vpnid, WAN_CANARY, Location("BE", CITY_CANARY), now=first,
                 path="https", limits=limits)
    one.template["hardware"]["rip_drive"] = {"model": NEW_RIP[0], "serial": NEW_RIP[1]}
    store.ingest(one.report(), one.vpnid, WAN_CANARY, Location("JP", CITY_CANARY),
                 now=first + timedelta(days=10), path="https", limits=limits)
    store.ingest(two.report(), two.vpnid, "198.51.100.9", Location("DE", "Berlin"),
                 now=first, path="vpn", limits=limits)
    store.ingest(three.report(), three.vpnid, "192.0.2.50", Location("BE", "Gent"),
                 now=clock.now - timedelta(days=3), path="https", limits=limits)
    with db.transaction() as tx:
        for vpnid, dealer in (("EVO-100001", "DLR-A"), ("EVO-100002", "DLR-B")):
            tx.run("INSERT INTO console_device_dealers (vpnid, dealer, assigned_at, assigned_by) "
                   "VALUES (?, ?, ?, 'setup')", (vpnid, dealer, "2026-10-14T12:00:00.000000Z"))


class Uvicorn:
    """An ASGI app served by a real uvicorn on 127.0.0.1 at a free port, in a thread."""

    def __init__(self, app: Starlette) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        # as evo_registry.server runs it: the app, not uvicorn, decides whom to believe
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off",
                                                    access_log=False, proxy_headers=False))
        self._thread = threading.Thread(target=self.server.run,
                                        kwargs={"sockets": [self._sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self._thread.join(15)
        assert not self._thread.is_alive(), "uvicorn did not stop"
        self._sock.close()


@contextmanager
def served(db_url: str, tmp: Path) -> Iterator[World]:
    """Yield a populated console served on loopback."""
    db = Database(db_url)
    db.migrate()
    clock = Clock()
    populate(db, clock)
    # the test plays the TLS proxy in front of the registry, from 127.0.0.1
    settings = Settings(database=db_url, warranty_months=24, trusted_proxies=["127.0.0.1/32"])
    app = Starlette(routes=[console.mount(settings, db, clock)])
    server = Uvicorn(app)
    world = World(f"http://127.0.0.1:{server.port}/console", db, clock)
    try:
        yield world
    finally:
        for client in world.clients:
            client.close()
        server.close()
        db.close()


def login(world: World, username: str, password: str | None = None) -> requests.Session:
    """Return an HTTP session signed in as ``username`` (through the real login form)."""
    s = world.client()
    form = s.get(f"{world.url}/login", timeout=30)
    csrf = _hidden(form.text, "csrf")
    r = s.post(f"{world.url}/login", data={"csrf": csrf, "username": username,
                                           "password": password or PASSWORDS[username]},
               timeout=30, allow_redirects=False)
    assert r.status_code == 303, (r.status_code, r.text[:300])
    return s


def _hidden(html: str, name: str) -> str:
    marker = f'name="{name}" value="'
    start = html.index(marker) + len(marker)
    return html[start:html.index('"', start)]


def csrf_of(s: requests.Session, url: str) -> str:
    """Return the CSRF token of the forms on a page."""
    return _hidden(s.get(url, timeout=30).text, "csrf")
