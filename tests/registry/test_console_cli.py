"""``evo-registry user ...`` and ``evo-registry dealer ...`` on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from evo_registry.cli import main
from evo_registry.console import accounts
from evo_registry.db import Database
from evo_registry.store import Store
from tests.registry.consoleenv import Clock, _unit

REPO = Path(__file__).resolve().parents[2]


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def test_users_and_dealers_from_the_command_line(db_url: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "pw"
    secret.write_text("a-long-enough-password\n")
    db = ("--database", db_url)
    assert _run("dealer", "add", "DLR-A", "--name", "Hifi Gent", "--region", "be,nl,LU", *db) \
        == (0, "dealer DLR-A: add done\n")
    code, out = _run("user", "add", "Dana", "--role", "dealer", "--dealer", "DLR-A",
                     "--password-file", str(secret), *db)
    assert (code, out) == (0, "user dana: add done\n")
    assert _run("user", "list", *db) == (0, "dana\tdealer\tDLR-A\tactive\n")
    assert _run("dealer", "list", *db) == (0, "DLR-A\tHifi Gent\tBE,LU,NL\t0 unit(s)\n")
    code, token = _run("user", "token", "dana", *db)
    assert code == 0 and token.startswith("evo_")
    assert _run("user", "disable", "dana", *db)[0] == 0
    assert _run("user", "list", *db)[1] == "dana\tdealer\tDLR-A\tdisabled\n"
    secret.write_text("another-long-password")
    assert _run("user", "reset", "dana", "--password-file", str(secret), *db)[0] == 0
    assert _run("dealer", "regions", "DLR-A", "--region", "DE", *db)[0] == 0

    database = Database(db_url)
    try:
        _unit(Store(database), "EVO-100001", Clock().now, "EVO-X")
        assert _run("dealer", "assign", "DLR-A", "EVO-100001", *db) == \
            (0, "dealer DLR-A: 1 unit(s) assigned\n")
        with database.transaction() as tx:
            assert accounts.authenticate(tx, "dana", "another-long-password", Clock().now) \
                is None  # disabled
        trail = [(r["actor"].startswith("cli:"), r["action"], r["target"]) for r in
                 database.read("SELECT actor, action, target FROM console_audit ORDER BY id")]
        text = str(database.read("SELECT * FROM console_accounts"))
    finally:
        database.close()
    assert trail == [(True, "dealer_add", "DLR-A"), (True, "account_add", "dana"),
                     (True, "token_add", "dana"), (True, "account_disable", "dana"),
                     (True, "account_reset", "dana"), (True, "dealer_regions", "DLR-A"),
                     (True, "assign", "EVO-100001")]
    assert "another-long-password" not in text and "a-long-enough-password" not in text
    assert "password" not in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (("user", "add", "x", "--role", "dealer", "--password-file", "PW"),
     "user add: dealer: needed for the dealer role, and only for it"),
    (("user", "add", "x", "--role", "support", "--password-file", "PW"),
     "user add: password: at least 12 characters"),
    (("user", "add", "x", "--role", "support"), "--password-file is needed"),
    (("user", "add", "x", "--role", "support", "--password-file", "/nonexistent"),
     "/nonexistent: cannot read: No such file or directory"),
    (("dealer", "add", "D1", "--name", "n", "--region", "XX1"),
     "dealer add: regions: ISO 3166-1 alpha-2 country codes, like BE,NL,LU"),
    (("user", "disable", "nobody"), "user disable: no account nobody"),
    (("dealer", "assign", "D9", "EVO-1"), "dealer assign: unknown unit"),
])
def test_bad_input_is_one_line_and_exit_65(tmp_path: Path, argv: tuple[str, ...],
                                           message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    short = tmp_path / "short"
    short.write_text("short")
    args = [a.replace("PW", str(short)) for a in argv]
    code, _out = _run(*args, "--database", f"sqlite:///{tmp_path / 'r.db'}")
    assert code == 65
    assert capsys.readouterr().err == f"evo-registry: {message}\n"


def test_the_installed_command_has_the_verbs(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "evo_registry.cli", "dealer", "list",
                          "--database", f"sqlite:///{tmp_path / 'r.db'}"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    assert (out.returncode, out.stdout) == (0, "")
    assert "applying migration 3" in out.stderr


def test_prune_deletes_the_audit_trail_after_the_retention_period(db_url: str) -> None:
    from datetime import datetime, timedelta, timezone

    from evo_registry.console import audit

    database = Database(db_url)
    database.migrate()
    now = datetime.now(timezone.utc)
    try:
        with database.transaction() as tx:
            for age in (800, 10):
                audit.record(tx, at=now - timedelta(days=age), actor="a", role="support",
                             action="view", target=f"EVO-{age}", address=None)
        code, out = _run("prune", "--database", db_url, "--retention-days", "730")
        assert code == 0 and "'audit': 1" in out
        assert [r["target"] for r in database.read("SELECT target FROM console_audit")] == \
            ["EVO-10"]
    finally:
        database.close()
