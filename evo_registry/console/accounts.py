"""Accounts, roles and dealers: who may use the console, and how they prove it.

Passwords are hashed with Argon2id (argon2-cffi, its default parameters); neither a password nor
an API token is ever stored or logged in clear (tokens are stored as their SHA-256: they are long
random strings, so a fast hash is enough).  After ``MAX_FAILURES`` wrong passwords in a row an
account is locked for ``LOCKOUT``; a locked account is refused even with the right password, and
the answer does not say which of the two happened.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import argon2

from evo_registry import rules
from evo_registry.db import Cursor, Database, Row, parse_utc, utc_text
from evo_registry.errors import HttpError

ROLES = ("admin", "support", "dealer", "factory")
MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=15)
MIN_PASSWORD = 12
USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
DEALER_CODE = re.compile(r"^[A-Z0-9][A-Z0-9_-]{0,31}$")
TOKEN_PREFIX = "evo_"  # noqa: S105 - the prefix of API tokens, not a secret

_HASHER = argon2.PasswordHasher()
# Verified against when the username is unknown, so that the answer takes as long as for a
# known one (no probing of which accounts exist by timing).
_DUMMY = _HASHER.hash("not a password of anyone")


@dataclass(frozen=True)
class Account:
    """A signed-in person (or script): what the console decides access on."""

    id: int
    username: str
    role: str
    dealer: str | None


def _account(row: Row) -> Account:
    return Account(int(row["id"]), str(row["username"]), str(row["role"]), row["dealer"])


def digest(secret: str) -> str:
    """Return the stored form of a session id or API token."""
    return hashlib.sha256(secret.encode()).hexdigest()


def check_password(password: str) -> str:
    """Return a password fit to be set, or raise HttpError 400."""
    if len(password) < MIN_PASSWORD:
        raise HttpError(400, f"password: at least {MIN_PASSWORD} characters")
    if "\x00" in password or len(password) > 1024:
        raise HttpError(400, "password: no NUL, at most 1024 characters")
    return password


def parse_regions(text: str | Sequence[str]) -> list[str]:
    """Return country codes from ``BE,NL,LU`` (or a list), or raise HttpError 400."""
    codes = text.split(",") if isinstance(text, str) else list(text)
    out = sorted({c.strip().upper() for c in codes if c.strip()})
    if not out or not all(rules.valid_country(c) for c in out):
        raise HttpError(400, "regions: ISO 3166-1 alpha-2 country codes, like BE,NL,LU")
    return out


# ---- dealers -------------------------------------------------------------------------------
def add_dealer(tx: Cursor, code: str, name: str, regions: Sequence[str], now: datetime) -> None:
    """Create a dealer; HttpError 400 on a bad code or name, 409 when the code exists."""
    if not DEALER_CODE.fullmatch(code):
        raise HttpError(400, "dealer code: upper-case letters, digits, - and _ (at most 32)")
    name = name.strip()
    if not name or len(name) > 200 or "\x00" in name:
        raise HttpError(400, "dealer name: 1 to 200 characters")
    if tx.one("SELECT code FROM console_dealers WHERE code = ?", (code,)):
        raise HttpError(409, f"dealer {code} exists")
    tx.run("INSERT INTO console_dealers (code, name, regions, created_at) VALUES (?, ?, ?, ?)",
           (code, name, json.dumps(list(regions)), utc_text(now)))


def set_dealer_regions(tx: Cursor, code: str, regions: Sequence[str]) -> list[str]:
    """Replace a dealer's regions; return the old ones (HttpError 404 for an unknown dealer)."""
    row = tx.one("SELECT regions FROM console_dealers WHERE code = ?", (code,))
    if row is None:
        raise HttpError(404, f"no dealer {code}")
    tx.run("UPDATE console_dealers SET regions = ? WHERE code = ?", (json.dumps(list(regions)),
                                                                     code))
    old: list[str] = json.loads(row["regions"])
    return old


def dealers(db: Database) -> list[Row]:
    """Return every dealer with its regions (a list) and number of assigned units."""
    rows = db.read("SELECT c.code, c.name, c.regions, c.created_at, "
                   "(SELECT COUNT(*) FROM console_device_dealers a WHERE a.dealer = c.code) "
                   "AS units FROM console_dealers c ORDER BY c.code")
    return [{**r, "regions": json.loads(r["regions"])} for r in rows]


# ---- accounts ------------------------------------------------------------------------------
def add_account(tx: Cursor, username: str, role: str, dealer: str | None, *, password: str,
                now: datetime) -> int:
    """Create an account; return its id.  HttpError 400 on bad input, 409 when it exists."""
    if not USERNAME.fullmatch(username):
        raise HttpError(400, "username: lower-case letters, digits, . _ @ - (at most 64)")
    if role not in ROLES:
        raise HttpError(400, f"role: one of {', '.join(ROLES)}")
    if (role == "dealer") != bool(dealer):
        raise HttpError(400, "dealer: needed for the dealer role, and only for it")
    if dealer and tx.one("SELECT code FROM console_dealers WHERE code = ?", (dealer,)) is None:
        raise HttpError(400, f"dealer: no dealer {dealer}")
    if tx.one("SELECT id FROM console_accounts WHERE username = ?", (username,)):
        raise HttpError(409, f"account {username} exists")
    hashed = _HASHER.hash(check_password(password))
    row = tx.one("INSERT INTO console_accounts (username, role, dealer, password_hash, "
                 "created_at) VALUES (?, ?, ?, ?, ?) RETURNING id",
                 (username, role, dealer or None, hashed, utc_text(now)))
    if row is None:
        raise AssertionError("INSERT ... RETURNING gave no row")
    return int(row["id"])


def accounts(db: Database) -> list[Row]:
    """Return every account (without its password hash)."""
    return db.read("SELECT id, username, role, dealer, disabled, failures, locked_until, "
                   "created_at FROM console_accounts ORDER BY username")


def _end_access(tx: Cursor, account_id: int) -> None:
    tx.run("DELETE FROM console_sessions WHERE account_id = ?", (account_id,))
    tx.run("DELETE FROM console_tokens WHERE account_id = ?", (account_id,))


def _account_id(tx: Cursor, username: str) -> int:
    row = tx.one("SELECT id FROM console_accounts WHERE username = ?", (username,))
    if row is None:
        raise HttpError(404, f"no account {username}")
    return int(row["id"])


def set_disabled(tx: Cursor, username: str, disabled: bool) -> None:
    """Disable (ending its sessions and tokens) or enable an account."""
    account_id = _account_id(tx, username)
    tx.run("UPDATE console_accounts SET disabled = ?, failures = 0, locked_until = NULL "
           "WHERE id = ?", (int(disabled), account_id))
    if disabled:
        _end_access(tx, account_id)


def reset_password(tx: Cursor, username: str, password: str) -> None:
    """Set a new password, unlock the account, and end its sessions and tokens."""
    account_id = _account_id(tx, username)
    tx.run("UPDATE console_accounts SET password_hash = ?, failures = 0, locked_until = NULL "
           "WHERE id = ?", (_HASHER.hash(check_password(password)), account_id))
    _end_access(tx, account_id)


def authenticate(tx: Cursor, username: str, password: str, now: datetime) -> Account | None:
    """Return the account when the password is right and the account usable, else None.

    Counts failures and locks the account after ``MAX_FAILURES`` in a row.
    """
    row = tx.one("SELECT * FROM console_accounts WHERE username = ?", (username.lower(),))
    if row is None:
        # Same work as for a real account, so the timing does not tell whether it exists.
        with contextlib.suppress(argon2.exceptions.VerificationError):
            _HASHER.verify(_DUMMY, password)
        return None
    locked = row["locked_until"] is not None and parse_utc(row["locked_until"]) > now
    good = False
    with contextlib.suppress(argon2.exceptions.VerificationError,
                             argon2.exceptions.InvalidHashError):
        good = _HASHER.verify(row["password_hash"], password)
    if good and not locked and not row["disabled"]:
        if _HASHER.check_needs_rehash(row["password_hash"]):
            tx.run("UPDATE console_accounts SET password_hash = ? WHERE id = ?",
                   (_HASHER.hash(password), row["id"]))
        tx.run("UPDATE console_accounts SET failures = 0, locked_until = NULL WHERE id = ?",
               (row["id"],))
        return _account(row)
    if not good and not locked:
        failures = int(row["failures"]) + 1
        until = utc_text(now + LOCKOUT) if failures >= MAX_FAILURES else None
        tx.run("UPDATE console_accounts SET failures = ?, locked_until = ? WHERE id = ?",
               (0 if until else failures, until, row["id"]))
    return None


# ---- API tokens ----------------------------------------------------------------------------
def new_token(tx: Cursor, username: str, now: datetime) -> str:
    """Create an API token for an account (scoped to its role); return it (shown once)."""
    account_id = _account_id(tx, username)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    tx.run("INSERT INTO console_tokens (token_hash, account_id, created_at) VALUES (?, ?, ?)",
           (digest(token), account_id, utc_text(now)))
    return token


def token_account(db: Database, token: str) -> Account | None:
    """Return the enabled account of an API token, or None."""
    rows = db.read("SELECT a.* FROM console_tokens t JOIN console_accounts a "
                   "ON a.id = t.account_id WHERE t.token_hash = ? AND a.disabled = 0",
                   (digest(token),))
    return _account(rows[0]) if rows else None
