"""Login sessions kept in the database: revocable (logout, a disabled account) and shared by
every registry process.

The browser holds a random session id in an HttpOnly, SameSite=Lax cookie (Secure when the request
came over https); the database holds only its SHA-256, so a copy of the database signs nobody in.
Each session has its own CSRF token, put in every form and checked on every POST.  Before login
there is no session: the login form carries a token matched against a short-lived cookie
(double submit), so a login cannot be forged from another site either.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from evo_registry.console.accounts import Account, digest
from evo_registry.db import Cursor, Database, parse_utc, utc_text

COOKIE = "evo_console"
LOGIN_COOKIE = "evo_console_login"
IDLE = timedelta(hours=8)
ABSOLUTE = timedelta(days=7)
# last_at is written at most this often (not on every page view).
TOUCH_EVERY = timedelta(minutes=5)


@dataclass(frozen=True)
class Session:
    """A live session: who, and the CSRF token its forms carry."""

    account: Account
    csrf: str
    token_hash: str


def create(tx: Cursor, account: Account, now: datetime) -> str:
    """Open a session; return the id for the cookie."""
    token = secrets.token_urlsafe(32)
    stamp = utc_text(now)
    tx.run("INSERT INTO console_sessions (token_hash, account_id, csrf, created_at, last_at) "
           "VALUES (?, ?, ?, ?, ?)", (digest(token), account.id, secrets.token_urlsafe(32),
                                      stamp, stamp))
    return token


def lookup(db: Database, token: str, now: datetime) -> tuple[Session | None, bool]:
    """Return the live session of a cookie (None: unknown, expired, account disabled), and
    whether its last use should be written (``touch``).  One read."""
    rows = db.read("SELECT s.csrf, s.created_at, s.last_at, a.id, a.username, a.role, a.dealer "
                   "FROM console_sessions s JOIN console_accounts a ON a.id = s.account_id "
                   "WHERE s.token_hash = ? AND a.disabled = 0", (digest(token),))
    if not rows:
        return None, False
    row = rows[0]
    last = parse_utc(row["last_at"])
    if now - last > IDLE or now - parse_utc(row["created_at"]) > ABSOLUTE:
        return None, False
    account = Account(int(row["id"]), str(row["username"]), str(row["role"]), row["dealer"])
    return Session(account, str(row["csrf"]), digest(token)), now - last > TOUCH_EVERY


def touch(tx: Cursor, session: Session, now: datetime) -> None:
    """Record a session's last use (the idle timeout counts from it)."""
    tx.run("UPDATE console_sessions SET last_at = ? WHERE token_hash = ?",
           (utc_text(now), session.token_hash))


def expire(tx: Cursor, now: datetime) -> int:
    """Delete the sessions past their idle or absolute limit; return how many."""
    return tx.run("DELETE FROM console_sessions WHERE last_at < ? OR created_at < ?",
                  (utc_text(now - IDLE), utc_text(now - ABSOLUTE)))


def end(tx: Cursor, session: Session) -> None:
    """Log out: the cookie's id is worthless from now on."""
    tx.run("DELETE FROM console_sessions WHERE token_hash = ?", (session.token_hash,))


def same(expected: str, given: str | None) -> bool:
    """Compare a CSRF token in constant time (a missing one never matches)."""
    return bool(given) and hmac.compare_digest(expected.encode(), str(given).encode())
