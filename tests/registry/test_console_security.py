"""The console's security, against a real uvicorn on loopback over SQLite and PostgreSQL.

No session -> login; no CSRF token -> refused; a dealer reaches nothing of another dealer's by
URL, search or export, and never a WAN IP or city; passwords are neither logged nor stored in
clear; a ``<script>`` planted in a NetBIOS name is text on every page; lock-out and logout work.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests

from evo_registry import console
from evo_registry.config import Settings
from evo_registry.db import Database
from tests.registry.consoleenv import (
    CITY_CANARY,
    PASSWORDS,
    SCRIPT_NAME,
    WAN_CANARY,
    World,
    csrf_of,
    login,
    served,
)


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Iterator[World]:
    with served(db_url, tmp_path) as w:
        yield w


def _routes() -> list[tuple[str, str]]:
    """Every (method, path) of the console, with sample values for its parameters."""
    mount = console.mount(Settings(), Database("sqlite:///unused.db"))
    sample = {"vpnid": "EVO-100001", "report_id": "x", "fmt": "csv", "event_id": "1",
              "username": "ada.admin", "action": "disable", "code": "DLR-A"}
    out = []
    for route in mount.routes:
        path = re.sub(r"\{(\w+)\}", lambda m: sample[m.group(1)], route.path)  # type: ignore[attr-defined]
        for method in sorted(route.methods - {"HEAD"}):  # type: ignore[attr-defined]
            out.append((method, path))
    return out


def test_every_route_without_a_session_goes_to_login(world: World) -> None:
    open_routes = {"/login", "/console.css"}
    checked = 0
    for method, path in _routes():
        if path in open_routes:
            continue
        r = world.client().request(method, world.url + path, timeout=30,
                                   allow_redirects=False)
        assert r.status_code == 303, (method, path, r.status_code)
        assert r.headers["location"].startswith("/console/login?next="), (method, path)
        checked += 1
    assert checked >= 20
    # A stale or forged cookie is no session either.
    r = world.client().get(world.url + "/devices", cookies={"evo_console": "forged"}, timeout=30,
                     allow_redirects=False)
    assert r.status_code == 303


def test_posts_without_the_csrf_token_are_refused(world: World) -> None:
    s = login(world, "sam.support")
    event = world.db.read("SELECT id FROM events WHERE resolved_at IS NULL")[0]["id"]
    for token in (None, "wrong"):
        data = {"comment": "fixed"} | ({"csrf": token} if token else {})
        r = s.post(f"{world.url}/events/{event}/resolve", data=data, timeout=30,
                   allow_redirects=False)
        assert r.status_code == 403
        assert "CSRF" in r.text
    assert world.db.read("SELECT resolved_at FROM events WHERE id = ?",
                         (event,))[0]["resolved_at"] is None
    # With the token it goes through (the check is not refusing everything).
    token = csrf_of(s, f"{world.url}/events")
    r = s.post(f"{world.url}/events/{event}/resolve", data={"csrf": token, "comment": "fixed"},
               timeout=30, allow_redirects=False)
    assert r.status_code == 303
    assert world.db.read("SELECT resolved_at FROM events WHERE id = ?",
                         (event,))[0]["resolved_at"] is not None
    # The login form too: a POST without the double-submit token signs nobody in.
    r = world.client().post(f"{world.url}/login", data={"username": "sam.support",
                                                  "password": PASSWORDS["sam.support"]},
                      timeout=30, allow_redirects=False)
    assert r.status_code == 403
    assert "evo_console=" not in r.headers.get("set-cookie", "")
    # Logging out is a POST: without the token the session stays.
    r = s.post(f"{world.url}/logout", timeout=30, allow_redirects=False)
    assert r.status_code == 403
    assert s.get(f"{world.url}/devices", timeout=30, allow_redirects=False).status_code == 200


def test_a_dealer_sees_only_its_units(world: World) -> None:
    s = login(world, "dana.dealer")
    own = s.get(f"{world.url}/devices/EVO-100001", timeout=30)
    assert own.status_code == 200
    assert "EVO-LIVING" in own.text
    other = s.get(f"{world.url}/devices/EVO-100002", timeout=30)
    unknown = s.get(f"{world.url}/devices/EVO-999999", timeout=30)
    assert other.status_code == unknown.status_code == 404
    assert other.text == unknown.text
    # By search: VPNID, motherboard serial, NetBIOS name of the other dealer's unit.
    for q in ("EVO-100002", "MB-EVO-100002-01", "evo-studio", "EVO-1000"):
        page = s.get(f"{world.url}/devices", params={"q": q}, timeout=30).text
        found = re.findall(r'<tr class="unit"><td><a href="[^"]+">([^<]+)</a>', page)
        assert found == (["EVO-100001"] if q == "EVO-1000" else []), q
    # By export, both formats.
    rows = s.get(f"{world.url}/devices/export.json", timeout=30).json()
    assert [r["vpnid"] for r in rows] == ["EVO-100001"]
    assert "city" not in rows[0] and "country" not in rows[0]
    assert rows[0]["motherboard_serial"] == "MB-EVO-100001-01"
    csv_text = s.get(f"{world.url}/devices/export.csv", params={"q": "EVO-100002"},
                     timeout=30).text
    assert "EVO-100002" not in csv_text
    # A report of the other unit, its sale, its events.
    rid = world.db.read("SELECT report_id FROM reports WHERE vpnid = 'EVO-100002'")[0]["report_id"]
    assert s.get(f"{world.url}/devices/EVO-100002/reports/{rid}.json",
                 timeout=30).status_code == 403
    token = csrf_of(s, f"{world.url}/sales")
    r = s.post(f"{world.url}/sales", data={"csrf": token, "vpnid": "EVO-100002",
                                          "sold_on": "2026-11-01"}, timeout=30)
    assert r.status_code == 404
    assert world.db.read("SELECT * FROM console_sales") == []
    events = s.get(f"{world.url}/events", timeout=30).text
    assert "EVO-100002" not in events and "EVO-100003" not in events
    # Support sees all three (the filter is the scope, not an empty database).
    support = login(world, "sam.support")
    rows = support.get(f"{world.url}/devices/export.json", timeout=30).json()
    assert [r["vpnid"] for r in rows] == ["EVO-100001", "EVO-100002", "EVO-100003"]


def test_a_dealer_never_gets_the_wan_ip_or_city(world: World) -> None:
    s = login(world, "dana.dealer")
    pages = [s.get(world.url + p, timeout=30).text for p in (
        "/devices", "/devices/EVO-100001", "/events", "/devices/stale?days=1", "/fleet",
        "/devices/export.csv", "/devices/export.json", "/entitlement?vpnid=EVO-100001")]
    for text in pages:
        assert WAN_CANARY not in text
        assert CITY_CANARY not in text
    # The event of the unit abroad is listed (country, not city).
    assert "outside_assigned_region" in pages[2]
    assert "JP" in pages[2]
    # Support does see them (the canaries are really in the data).
    support = login(world, "sam.support").get(f"{world.url}/devices/EVO-100001", timeout=30)
    assert WAN_CANARY in support.text and CITY_CANARY in support.text


def _database_text(db: Database) -> str:
    tables = ("console_accounts", "console_sessions", "console_tokens", "console_audit",
              "console_dealers", "console_event_notes")
    return json.dumps({t: db.read(f"SELECT * FROM {t}") for t in tables},  # noqa: S608
                      default=str)


def test_passwords_are_never_logged_or_stored_in_clear(world: World,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fresh = "brand-new-password-77"
    reset = "reset-password-for-bert-88"
    admin = login(world, "ada.admin")
    token = csrf_of(admin, f"{world.url}/admin/accounts")
    r = admin.post(f"{world.url}/admin/accounts", data={
        "csrf": token, "username": "nina.support", "role": "support", "dealer": "",
        "password": fresh}, timeout=30)
    assert r.status_code == 200 and "nina.support" in r.text
    r = admin.post(f"{world.url}/admin/accounts/bert.dealer/reset",
                   data={"csrf": token, "password": reset}, timeout=30)
    assert r.status_code == 200
    login(world, "nina.support", fresh)
    login(world, "bert.dealer", reset)
    # A password typed in the username field, and a wrong password.
    bad = world.client()
    form_token = csrf_of(bad, f"{world.url}/login")
    bad.post(f"{world.url}/login", data={"csrf": form_token, "username": fresh,
                                         "password": "x"}, timeout=30)
    form_token = csrf_of(bad, f"{world.url}/login")
    bad.post(f"{world.url}/login", data={"csrf": form_token, "username": "ada.admin",
                                         "password": "admin-password-typo"}, timeout=30)
    stored = _database_text(world.db)
    logged = caplog.text
    for secret in (*PASSWORDS.values(), fresh, reset, "admin-password-typo"):
        assert secret not in stored
        assert secret not in logged
    hashes = [r["password_hash"] for r in world.db.read(
        "SELECT password_hash FROM console_accounts")]
    assert hashes and all(h.startswith("$argon2id$") for h in hashes)
    trail = [r["action"] for r in world.db.read("SELECT action FROM console_audit")]
    assert trail.count("login_failed") == 2


def test_script_in_a_netbios_name_is_text_everywhere(world: World) -> None:
    escaped = "&lt;script&gt;"
    admin = login(world, "ada.admin")
    support = login(world, "sam.support")
    support.get(f"{world.url}/devices", params={"q": SCRIPT_NAME}, timeout=30)
    pages = {
        "search": support.get(f"{world.url}/devices", params={"q": "EVO-100003"}, timeout=30),
        "list": support.get(f"{world.url}/devices", timeout=30),
        "device": support.get(f"{world.url}/devices/EVO-100003", timeout=30),
        "bad search": support.get(f"{world.url}/devices", params={"q": SCRIPT_NAME}, timeout=30),
        "audit": admin.get(f"{world.url}/admin/audit", timeout=30),
        "entitlement": support.get(f"{world.url}/entitlement",
                                   params={"vpnid": SCRIPT_NAME}, timeout=30),
    }
    pages["stale"] = support.get(f"{world.url}/devices/stale?days=2", timeout=30)
    for name, page in pages.items():
        assert page.status_code == 200, name
        assert "<script" not in page.text.lower(), name
        assert escaped in page.text, name
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert world.db.read("SELECT netbios_name FROM devices WHERE vpnid = 'EVO-100003'")[0][
        "netbios_name"] == SCRIPT_NAME


def test_lockout_after_repeated_failures(world: World) -> None:
    s = world.client()
    for _ in range(5):
        token = csrf_of(s, f"{world.url}/login")
        r = s.post(f"{world.url}/login", data={"csrf": token, "username": "sam.support",
                                               "password": "not-the-password"},
                   timeout=30, allow_redirects=False)
        assert r.status_code == 401
    token = csrf_of(s, f"{world.url}/login")
    r = s.post(f"{world.url}/login", data={"csrf": token, "username": "sam.support",
                                           "password": PASSWORDS["sam.support"]},
               timeout=30, allow_redirects=False)
    assert r.status_code == 401  # locked: the right password is refused too
    world.clock.now += timedelta(minutes=16)
    login(world, "sam.support")


def test_failed_logins_from_one_address_are_bounded(world: World) -> None:
    """One password tried on many accounts never trips an account's lock-out: the address's
    failures are bounded too (20 an hour), whatever the accounts."""
    def attempt(address: str, username: str, password: str) -> requests.Response:
        s = world.client()
        s.headers["X-Forwarded-For"] = address
        token = csrf_of(s, f"{world.url}/login")
        return s.post(f"{world.url}/login", data={"csrf": token, "username": username,
                                                  "password": password},
                      timeout=30, allow_redirects=False)

    names = [*PASSWORDS, "nobody.here"]
    for n in range(20):  # at most 4 per account: no account locks
        assert attempt("203.0.113.7", names[n % len(names)], "Summer2026!").status_code == 401
    refused = attempt("203.0.113.7", "sam.support", PASSWORDS["sam.support"])
    assert refused.status_code == 429 and "Too many failed sign-ins" in refused.text
    assert int(refused.headers["retry-after"]) == 3600
    assert "evo_console" not in refused.cookies
    # another address is not held up; the accounts are not locked
    assert attempt("198.51.100.9", "sam.support",
                   PASSWORDS["sam.support"]).status_code == 303
    world.clock.now += timedelta(minutes=61)
    assert attempt("203.0.113.7", "dana.dealer", PASSWORDS["dana.dealer"]).status_code == 303


def test_logout_and_disabling_end_sessions(world: World) -> None:
    s = login(world, "sam.support")
    cookie = s.cookies.get("evo_console")
    assert cookie
    r = s.post(f"{world.url}/logout", data={"csrf": csrf_of(s, f"{world.url}/devices")},
               timeout=30, allow_redirects=False)
    assert r.status_code == 303
    again = world.client().get(f"{world.url}/devices", cookies={"evo_console": cookie}, timeout=30,
                         allow_redirects=False)
    assert again.status_code == 303
    dealer = login(world, "dana.dealer")
    admin = login(world, "ada.admin")
    token = csrf_of(admin, f"{world.url}/admin/accounts")
    admin.post(f"{world.url}/admin/accounts/dana.dealer/disable", data={"csrf": token},
               timeout=30)
    assert dealer.get(f"{world.url}/devices", timeout=30,
                      allow_redirects=False).status_code == 303


def test_session_cookie_flags_and_no_open_redirect(world: World) -> None:
    s = world.client()
    token = csrf_of(s, f"{world.url}/login")
    r = s.post(f"{world.url}/login", data={"csrf": token, "username": "sam.support",
                                           "password": PASSWORDS["sam.support"],
                                           "next": "//evil.example/x"},
               timeout=30, allow_redirects=False)
    assert r.headers["location"] == "/console/"
    cookie = r.headers["set-cookie"]
    assert "evo_console=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Path=/console" in cookie and "Secure" not in cookie
    # Behind the TLS proxy (a trusted proxy, 127.0.0.1, says X-Forwarded-Proto: https): Secure.
    t = world.client()
    token = csrf_of(t, f"{world.url}/login")
    r = t.post(f"{world.url}/login", data={"csrf": token, "username": "sam.support",
                                           "password": PASSWORDS["sam.support"]},
               headers={"X-Forwarded-Proto": "https"}, timeout=30, allow_redirects=False)
    assert "Secure" in r.headers["set-cookie"]
    # and the audit trail has the address the proxy vouches for, not the proxy's
    u = world.client()
    token = csrf_of(u, f"{world.url}/login")
    u.post(f"{world.url}/login", data={"csrf": token, "username": "sam.support",
                                       "password": PASSWORDS["sam.support"]},
           headers={"X-Forwarded-For": "198.51.100.23"}, timeout=30, allow_redirects=False)
    rows = world.db.read("SELECT address FROM console_audit WHERE action = 'login' "
                         "ORDER BY id DESC LIMIT 1")
    assert rows[0]["address"] == "198.51.100.23"


def test_api_tokens_are_scoped_to_the_role(world: World) -> None:
    s = login(world, "dana.dealer")
    page = s.post(f"{world.url}/account", data={"csrf": csrf_of(s, f"{world.url}/account")},
                  timeout=30).text
    token = re.search(r"<code>(evo_[A-Za-z0-9_-]+)</code>", page)
    assert token
    bearer = {"Authorization": f"Bearer {token.group(1)}"}
    api = world.client()
    rows = api.get(f"{world.url}/devices/export.json", headers=bearer, timeout=30).json()
    assert [r["vpnid"] for r in rows] == ["EVO-100001"]
    assert api.get(f"{world.url}/admin/audit", headers=bearer, timeout=30,
                        allow_redirects=False).status_code == 403
    r = api.get(f"{world.url}/devices/export.json",
                headers={"Authorization": "Bearer evo_wrong"}, timeout=30)
    assert r.status_code == 401
    assert world.db.read("SELECT COUNT(*) AS n FROM console_tokens")[0]["n"] == 1
    assert token.group(1) not in _database_text(world.db)


def test_sessions_end_after_eight_idle_hours(world: World) -> None:
    s = login(world, "sam.support")
    for hours, status in ((7, 200), (7, 200), (8.1, 303)):
        world.clock.now += timedelta(hours=hours)
        r = s.get(f"{world.url}/devices", timeout=30, allow_redirects=False)
        assert r.status_code == status, hours
