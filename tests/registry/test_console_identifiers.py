"""Identifiers are matched whole: a trailing newline or a valid prefix is not an identifier."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from evo_registry.console import accounts, devices
from evo_registry.db import Database
from evo_registry.errors import HttpError
from tests.registry.consoleenv import World, login, served

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("vpnid", ["EVO-100001\n", "not a vpnid", "EVO-1/../x", ""])
def test_a_malformed_vpnid_in_a_url_is_an_unknown_unit(vpnid: str) -> None:
    with pytest.raises(HttpError) as refused:
        devices.check_vpnid(vpnid)
    assert refused.value.status == 404


def test_names_with_a_trailing_newline_are_refused(database: Database) -> None:
    with database.transaction() as tx, pytest.raises(HttpError) as refused:
        accounts.add_dealer(tx, "DLR-A\n", "A dealer", ["BE"], NOW)
    assert refused.value.status == 400
    with database.transaction() as tx, pytest.raises(HttpError) as refused:
        accounts.add_account(tx, "sam\n", "support", None,
                             password="a-long-password-1",  # noqa: S106 - a test account
                             now=NOW)
    assert refused.value.status == 400
    assert database.read("SELECT COUNT(*) AS n FROM console_accounts")[0]["n"] == 0


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Iterator[World]:
    with served(db_url, tmp_path) as w:
        yield w


def test_the_device_page_shows_an_objection_and_the_vpn(world: World) -> None:
    s = login(world, "sam.support")
    page = s.get(f"{world.url}/devices/EVO-100001", timeout=30).text
    assert 'id="objection"' not in page and 'id="vpn-seen">never<' in page
    with world.db.transaction() as tx:
        tx.run("UPDATE devices SET objected_at = ?, vpn_seen_at = ? WHERE vpnid = ?",
               ("2026-11-20T10:00:00Z", "2026-11-19T09:00:00Z", "EVO-100001"))
    page = s.get(f"{world.url}/devices/EVO-100001", timeout=30).text
    assert "the owner objected on 2026-11-20" in page
    assert 'id="vpn-seen">2026-11-19T09:00:00Z<' in page
