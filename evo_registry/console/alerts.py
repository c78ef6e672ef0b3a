"""Alerts: new events sent to webhooks as signed JSON, in batches, retried with backoff.

Each webhook keeps a cursor (the last event id it took): a delivery sends the events opened since,
at most ``BATCH`` at a time, oldest first, and moves the cursor only when the receiver answered
2xx, so a receiver that is down gets everything once it is back (at least once: it de-duplicates
by event id).  A failure waits 30 s, then 60 s, 120 s ... up to an hour before the next try.  A
webhook bound to a dealer gets only the events of that dealer's units, without the city.

The body is signed like this: ``X-Evo-Signature: sha256=HEX`` where HEX is the HMAC-SHA256, under
the webhook's secret, of ``X-Evo-Timestamp`` + "." + the body; a receiver refuses an old timestamp
(replay) or a wrong signature.  The secret is kept in clear in the database: it is needed to sign.

Several registry processes may run the dispatcher: a webhook is leased by one of them (an UPDATE
that only one can win) for the time of a delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from evo_registry.console import devices
from evo_registry.db import Database, Row, utc_text
from evo_registry.errors import HttpError

LOG = logging.getLogger(__name__)
BATCH = 100
FIRST_RETRY = timedelta(seconds=30)
MAX_RETRY = timedelta(hours=1)
LEASE = timedelta(minutes=2)
TIMEOUT_S = 10.0
# What sends a signed body: (url, body, headers) -> HTTP status; urllib by default.
Post = Callable[[str, bytes, dict[str, str]], int]
Clock = Callable[[], datetime]


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Return the X-Evo-Signature header of a body."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def _urllib_post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, body, headers, method="POST")  # noqa: S310 - http(s) only, checked at creation
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:  # noqa: S310
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def add(db: Database, url: str, secret: str, dealer: str | None, now: datetime) -> int:
    """Add a webhook (it gets the events opened from now on); return its id."""
    if not url.startswith(("https://", "http://")) or len(url) > 2000:
        raise HttpError(400, "url: an http:// or https:// URL")
    if len(secret) < 16:
        raise HttpError(400, "secret: at least 16 characters")
    with db.transaction() as tx:
        if dealer and tx.one("SELECT code FROM console_dealers WHERE code = ?", (dealer,)) is None:
            raise HttpError(400, f"no dealer {dealer}")
        top = tx.one("SELECT MAX(id) AS m FROM events")
        row = tx.one("INSERT INTO console_webhooks (url, secret, dealer, created_at, "
                     "last_event_id) VALUES (?, ?, ?, ?, ?) RETURNING id",
                     (url, secret, dealer or None, utc_text(now),
                      int(top["m"]) if top and top["m"] is not None else 0))
    if row is None:
        raise AssertionError("INSERT ... RETURNING gave no row")
    return int(row["id"])


def listing(db: Database) -> list[Row]:
    """Return the webhooks (without their secrets)."""
    return db.read("SELECT id, url, dealer, created_at, last_event_id, failures, next_try_at, "
                   "last_error FROM console_webhooks ORDER BY id")


def remove(db: Database, hook_id: int) -> bool:
    """Delete a webhook; return False if there was none."""
    with db.transaction() as tx:
        return tx.run("DELETE FROM console_webhooks WHERE id = ?", (hook_id,)) > 0


class Dispatcher:
    """Delivers the events of every due webhook."""

    def __init__(self, db: Database, clock: Clock | None = None, post: Post | None = None) -> None:
        self.db = db
        self.clock: Clock = clock or (lambda: datetime.now(timezone.utc))
        self.post: Post = post or _urllib_post

    def run(self, stop: threading.Event, every_s: float = 30.0) -> None:
        """Deliver until ``stop`` is set (a thread of the server)."""
        while not stop.wait(every_s):
            try:
                self.deliver()
            except Exception:
                LOG.exception("webhook delivery failed; next try in %s s", every_s)

    def deliver(self) -> int:
        """Send one batch to each due webhook; return the number of events delivered."""
        sent = 0
        now = self.clock()
        for hook in self.db.read("SELECT id FROM console_webhooks WHERE next_try_at IS NULL "
                                 "OR next_try_at <= ? ORDER BY id", (utc_text(now),)):
            # A backlog goes out in consecutive full batches (a few per round at most).
            for _ in range(10):
                n = self._one(int(hook["id"]), now)
                sent += n
                if n < BATCH:
                    break
        return sent

    def _one(self, hook_id: int, now: datetime) -> int:
        with self.db.transaction() as tx:
            if tx.run("UPDATE console_webhooks SET lease_until = ? WHERE id = ? AND "
                      "(lease_until IS NULL OR lease_until < ?)",
                      (utc_text(now + LEASE), hook_id, utc_text(now))) == 0:
                return 0  # another process has it
            hook = tx.one("SELECT * FROM console_webhooks WHERE id = ?", (hook_id,))
        if hook is None:
            return 0
        events = self._events(hook)
        if not events:
            self._release(hook_id, None, ok=True, failures=0, now=now)
            return 0
        body = json.dumps({"webhook": hook_id, "sent_at": utc_text(now), "events": events},
                          ensure_ascii=False, separators=(",", ":")).encode()
        stamp = str(int(now.timestamp()))
        headers = {"Content-Type": "application/json", "X-Evo-Timestamp": stamp,
                   "X-Evo-Signature": sign(str(hook["secret"]), stamp, body),
                   "User-Agent": "evo-registry-alerts"}
        try:
            status = self.post(str(hook["url"]), body, headers)
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        if error is None:
            self._release(hook_id, int(events[-1]["id"]), ok=True, failures=0, now=now)
            return len(events)
        failures = int(hook["failures"]) + 1
        LOG.warning("webhook %s: %s (try %s)", hook_id, error, failures)
        self._release(hook_id, None, ok=False, failures=failures, now=now, error=error)
        return 0

    def _events(self, hook: Row) -> list[dict[str, Any]]:
        where: str = "1 = 1"
        params: tuple[Any, ...] = ()
        if hook["dealer"]:
            where = "e.vpnid IN (SELECT vpnid FROM console_device_dealers WHERE dealer = ?)"
            params = (hook["dealer"],)
        rows = self.db.read(
            "SELECT e.id, e.vpnid, e.kind, e.detail, e.first_at, e.last_at, e.occurrences "  # noqa: S608
            f"FROM events e WHERE e.id > ? AND {where} ORDER BY e.id LIMIT ?",
            (hook["last_event_id"], *params, BATCH))
        out = []
        for r in rows:
            detail = json.loads(r["detail"])
            if hook["dealer"]:
                detail = {k: v for k, v in detail.items()
                          if k not in devices.HIDDEN_FROM_DEALERS}
            out.append({**r, "detail": detail})
        return out

    def _release(self, hook_id: int, last: int | None, *, ok: bool, failures: int,
                 now: datetime, error: str | None = None) -> None:
        wait = min(FIRST_RETRY * 2 ** max(failures - 1, 0), MAX_RETRY)
        with self.db.transaction() as tx:
            tx.run("UPDATE console_webhooks SET lease_until = NULL, failures = ?, "
                   "next_try_at = ?, last_error = ?, "
                   "last_event_id = COALESCE(?, last_event_id) WHERE id = ?",
                   (failures, None if ok else utc_text(now + wait), error, last, hook_id))
