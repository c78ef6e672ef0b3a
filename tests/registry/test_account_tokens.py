"""Per-account API tokens on the registry's JSON API, and the console in the served registry.

The registry as ``serve`` runs it (tests/registry/conftest.Server: uvicorn on 127.0.0.1, the
app of evo_registry.app.create_app), on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime, timezone

from evo_registry.console import accounts
from evo_registry.db import Database
from tests.registry.conftest import Device, Server, enroll

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


def _token(db: Database, username: str, role: str, dealer: str | None = None) -> str:
    with db.transaction() as tx:
        if dealer:
            accounts.add_dealer(tx, dealer, "A dealer", ["BE"], NOW)
        accounts.add_account(tx, username, role, dealer, password="a-long-password-1",  # noqa: S106 - a test account
                             now=NOW)
        return accounts.new_token(tx, username, NOW)


def test_a_support_accounts_token_reads_a_device_and_is_audited(server: Server) -> None:
    device = Device("EVO-300001")
    assert enroll(server, device).status == 201
    token = _token(server.app.db, "sam.support", "support")
    r = server.request("GET", "/v1/devices/EVO-300001",
                       headers={"Authorization": f"Bearer {token}"})
    assert r.status == 200, r.body
    trail = server.app.db.read("SELECT actor, role, action, target FROM console_audit")
    assert {"actor": "sam.support", "role": "support", "action": "api GET",
            "target": "/v1/devices/EVO-300001"} in trail


def test_other_roles_and_unknown_tokens_are_refused(server: Server) -> None:
    device = Device("EVO-300002")
    assert enroll(server, device).status == 201
    db = server.app.db
    for token in (_token(db, "dana.dealer", "dealer", "DLR-A"),
                  _token(db, "fay.factory", "factory"),
                  accounts.TOKEN_PREFIX + "not-a-token-of-anyone"):
        r = server.request("GET", "/v1/devices/EVO-300002",
                           headers={"Authorization": f"Bearer {token}"})
        assert r.status == 401, (token[:8], r.body)


def test_a_disabled_accounts_token_stops_working(server: Server) -> None:
    device = Device("EVO-300003")
    assert enroll(server, device).status == 201
    db = server.app.db
    token = _token(db, "sue.support", "support")
    headers = {"Authorization": f"Bearer {token}"}
    assert server.request("GET", "/v1/devices/EVO-300003", headers=headers).status == 200
    with db.transaction() as tx:
        accounts.set_disabled(tx, "sue.support", True)
    assert server.request("GET", "/v1/devices/EVO-300003", headers=headers).status == 401


def test_the_served_registry_has_the_console(server: Server) -> None:
    r = server.request("GET", "/console/login")
    assert r.status == 200 and b'name="username"' in r.body and b'name="password"' in r.body
    r = server.request("GET", "/console/devices/EVO-300001")
    assert r.status == 303
    assert r.headers["location"].startswith("/console/login?next=/console/devices/EVO-300001")
