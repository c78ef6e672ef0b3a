"""Webhook alerts: new events reach a real HTTP receiver on loopback, signed, batched, retried
with backoff; a dealer's webhook gets only its units' events, without the city."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from evo_registry.console import alerts
from evo_registry.db import parse_utc
from evo_registry.geo import Location
from evo_registry.store import Limits, Store
from tests.registry.conftest import Device, serve_on_loopback
from tests.registry.consoleenv import CITY_CANARY, World, csrf_of, login, served

SECRET = "webhook-shared-secret-1"  # noqa: S105 - a test fixture


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Iterator[World]:
    with served(db_url, tmp_path) as w:
        yield w


class Receiver:
    """What the loopback receiver got; on each path it answers its ``statuses`` in turn, then
    204."""

    def __init__(self, statuses: dict[str, list[int]]) -> None:
        self.statuses = statuses
        self.got: list[tuple[dict[str, str], bytes]] = []

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                todo = outer.statuses.get(self.path, [])
                self.send_response(todo.pop(0) if todo else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _verify(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    mac = hmac.new(SECRET.encode(), headers["x-evo-timestamp"].encode() + b"." + body,
                   hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-evo-signature"], "sha256=" + mac)
    doc: dict[str, Any] = json.loads(body)
    return doc


def _abroad(world: World, vpnid: str, days: int) -> None:
    """A new report of a unit from Japan (outside its region; a new event once resolved)."""
    with world.db.transaction() as tx:
        tx.run("UPDATE events SET resolved_at = ? WHERE vpnid = ? AND resolved_at IS NULL",
               ("2026-11-01T00:00:00.000000Z", vpnid))
    dev = Device(vpnid)
    seq = world.db.read("SELECT last_sequence FROM devices WHERE vpnid = ?", (vpnid,))[0]
    dev.sequence = int(seq["last_sequence"] or 0)
    Store(world.db).ingest(dev.report(), vpnid, "203.0.113.5", Location("JP", CITY_CANARY),
                           now=world.clock.now - timedelta(days=days), path="https",
                           limits=Limits())


def test_events_are_delivered_signed_batched_and_retried(world: World) -> None:
    receiver = Receiver({"/hook": [500, 503]})
    with serve_on_loopback(receiver.handler()) as port:
        admin = login(world, "ada.admin")
        page = admin.post(f"{world.url}/admin/webhooks", data={
            "csrf": csrf_of(admin, f"{world.url}/admin/webhooks"),
            "url": f"http://127.0.0.1:{port}/hook", "secret": SECRET, "dealer": ""}, timeout=30)
        assert page.status_code == 200 and f"127.0.0.1:{port}" in page.text
        assert SECRET not in page.text
        dealer_hook = alerts.add(world.db, f"http://127.0.0.1:{port}/dealer", SECRET, "DLR-A",
                                 world.clock.now)
        dispatcher = alerts.Dispatcher(world.db, world.clock)
        # Events from before the webhook existed are not sent.
        assert dispatcher.deliver() == 0 and receiver.got == []
        start = world.db.read("SELECT MAX(id) AS m FROM events")[0]["m"]
        _abroad(world, "EVO-100001", 5)
        _abroad(world, "EVO-100002", 5)
        new = world.db.read("SELECT vpnid FROM events WHERE id > ?", (start,))
        # EVO-100001 from Japan: outside its region, 230 V PSU, and another rip drive serial
        # than enrolled (3 events); EVO-100002 opens its own.
        assert [r["vpnid"] for r in new].count("EVO-100001") == 3
        assert len(new) > 3
        # The first webhook: 500, then (not before its backoff) 503, then delivered.
        assert dispatcher.deliver() == 3  # the dealer's webhook took its unit's events at once
        assert dispatcher.deliver() == 0  # the other one waits for its retry
        world.clock.now += timedelta(seconds=31)
        assert dispatcher.deliver() == 0  # 503: now 60 s
        world.clock.now += timedelta(seconds=31)
        assert dispatcher.deliver() == 0
        world.clock.now += timedelta(seconds=30)
        assert dispatcher.deliver() == len(new)
        assert dispatcher.deliver() == 0  # nothing new, nothing sent twice
    assert len(receiver.got) == 4
    docs = [_verify(h, b) for h, b in receiver.got]
    dealer_doc = next(d for d in docs if d["webhook"] == dealer_hook)
    assert [e["vpnid"] for e in dealer_doc["events"]] == ["EVO-100001"] * 3
    assert {e["kind"] for e in dealer_doc["events"]} == {
        "outside_assigned_region", "psu_voltage_mismatch", "fingerprint_changed"}
    assert dealer_doc["events"][0]["detail"]["country"] == "JP"
    assert all("city" not in e["detail"] for e in dealer_doc["events"])
    assert CITY_CANARY.encode() not in next(b for h, b in receiver.got
                                            if json.loads(b)["webhook"] == dealer_hook)
    full = [d for d in docs if d["webhook"] != dealer_hook]
    assert [len(d["events"]) for d in full] == [len(new)] * 3  # the same batch, retried
    assert {e["vpnid"] for e in full[-1]["events"]} == {"EVO-100001", "EVO-100002"}
    assert full[-1]["events"][0]["detail"]["city"] == CITY_CANARY
    assert [e["id"] for e in full[-1]["events"]] == sorted(e["id"] for e in full[-1]["events"])
    # A forged body does not verify.
    headers, body = receiver.got[-1]
    with pytest.raises(AssertionError):
        _verify(headers, body.replace(b"EVO-100001", b"EVO-100009"))
    state = alerts.listing(world.db)
    assert [(h["failures"], h["last_error"]) for h in state] == [(0, None), (0, None)]


def test_an_unreachable_receiver_backs_off_up_to_an_hour(world: World) -> None:
    with serve_on_loopback(Receiver({}).handler()) as port:
        pass  # the port is closed again: connections are refused
    alerts.add(world.db, f"http://127.0.0.1:{port}/gone", SECRET, None, world.clock.now)
    cursor = world.db.read("SELECT last_event_id FROM console_webhooks")[0]["last_event_id"]
    _abroad(world, "EVO-100001", 1)
    dispatcher = alerts.Dispatcher(world.db, world.clock)
    waits = []
    for _ in range(9):
        assert dispatcher.deliver() == 0
        hook = world.db.read("SELECT next_try_at, last_error FROM console_webhooks")[0]
        assert "Connection refused" in hook["last_error"]
        next_try = hook["next_try_at"]
        waits.append(int((parse_utc(next_try) - world.clock.now).total_seconds()))
        world.clock.now = parse_utc(next_try)
    assert waits == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    # Nothing was taken as delivered: the events wait for the receiver.
    assert world.db.read("SELECT last_event_id FROM console_webhooks")[0][
        "last_event_id"] == cursor
