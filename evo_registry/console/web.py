"""The console's request handling in one place: who is asking, may they, and the page back.

Every route goes through ``Console.endpoint``: no session (and no API token) -> 303 to the login
form; a role not allowed -> 403; a POST of a session without its CSRF token -> 403; then the
handler runs in Starlette's thread pool (the database calls block) and its ``HttpError`` becomes
an error page with that status.  Pages are Jinja2 templates with auto-escaping on: everything a
device sent is text, never markup.  Pages carry no script and load nothing from elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from evo_registry import wire
from evo_registry.config import Settings
from evo_registry.console import accounts, audit, sessions
from evo_registry.console.accounts import Account
from evo_registry.console.sessions import Session
from evo_registry.db import Database
from evo_registry.errors import DatabaseError, HttpError
from evo_registry.misses import Misses

LOG = logging.getLogger(__name__)
PREFIX = "/console"
Clock = Callable[[], datetime]
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def client_address(request: Request, trusted: Sequence[Any]) -> str | None:
    """Return the client's address: the peer, or what a trusted proxy says it is."""
    forwarded = ", ".join(request.headers.getlist("x-forwarded-for")) or None
    peer = request.client.host if request.client else None
    return wire.client_address(peer, forwarded, trusted)


def is_https(request: Request, trusted: Sequence[Any]) -> bool:
    """Return whether the browser's connection is TLS (here, or at a trusted TLS proxy)."""
    if request.url.scheme == "https":
        return True
    peer = request.client.host if request.client else None
    return (wire.in_networks(peer, trusted)
            and request.headers.get("x-forwarded-proto", "").strip().lower() == "https")


@dataclass(frozen=True)
class Call:
    """One authorised request, as a handler sees it."""

    request: Request
    account: Account
    session: Session | None
    form: Mapping[str, str] = field(default_factory=dict)
    #: the registry's trusted proxies, whose X-Forwarded-For names the client
    trusted: Sequence[Any] = ()

    @property
    def address(self) -> str | None:
        """Return the client's address (through the trusted proxies, as the API sees it)."""
        return client_address(self.request, self.trusted)

    def arg(self, name: str, default: str = "") -> str:
        """Return a query parameter."""
        return str(self.request.query_params.get(name, default))


Handler = Callable[["Console", Call], Response]


class Console:
    """The console over one database: its settings, clock, templates and request guard."""

    def __init__(self, settings: Settings, db: Database, clock: Clock | None = None) -> None:
        self.settings = settings
        self.db = db
        self.clock: Clock = clock or (lambda: datetime.now(timezone.utc))
        self.trusted = settings.networks()
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("evo_registry.console", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
            lstrip_blocks=True)
        self.env.globals["P"] = PREFIX
        self.failed_logins = Misses(settings.console_failed_logins_per_hour, 3600)

    # ---- pages -----------------------------------------------------------------------------
    def render(self, name: str, context: Mapping[str, Any], status: int = 200,
               call: Call | None = None) -> HTMLResponse:
        """Return a page from a template."""
        ctx = {"me": call.account if call else None,
               "csrf": call.session.csrf if call and call.session else "", **context}
        return HTMLResponse(self.env.get_template(name).render(ctx), status, dict(HEADERS))

    def error(self, status: int, reason: str, call: Call | None = None) -> HTMLResponse:
        """Return the error page."""
        return self.render("error.html", {"status": status, "reason": reason}, status, call)

    def record(self, call: Call, action: str, target: str,
               detail: Mapping[str, Any] | None = None) -> None:
        """Write a row of the audit trail in its own transaction (views, searches, exports)."""
        # Pipelined on PostgreSQL: the insert travels with the COMMIT (one round trip).
        with self.db.transaction(pipeline=True) as tx:
            audit.record(tx, at=self.clock(), actor=call.account.username,
                         role=call.account.role, action=action, target=target,
                         address=call.address, detail=detail)

    # ---- who is asking ---------------------------------------------------------------------
    def identify(self, request: Request) -> tuple[Account, Session | None] | HttpError | None:
        """Return the account of a session cookie or API token; None: nobody signed in."""
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        now = self.clock()
        if scheme.lower() == "bearer" and token.strip():
            account = accounts.token_account(self.db, token.strip())
            if account is None:
                return HttpError(401, "API token not accepted")
            return account, None
        cookie = request.cookies.get(sessions.COOKIE)
        if not cookie:
            return None
        session, touch = sessions.lookup(self.db, cookie, now)
        if session is None:
            return None
        if touch:
            # Written at most every few minutes: a page view is otherwise a pure read.
            with self.db.transaction() as tx:
                sessions.touch(tx, session, now)
        return session.account, session

    def endpoint(self, handler: Handler, roles: Sequence[str],
                 ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a handler with the checks every console route makes."""
        async def run(request: Request) -> Response:
            try:
                who = await run_in_threadpool(self.identify, request)
            except DatabaseError as exc:
                LOG.warning("console: database unavailable: %s", exc)
                return self.error(503, "database unavailable, try again later")
            if isinstance(who, HttpError):
                return Response(who.reason + "\n", who.status, {"WWW-Authenticate": "Bearer"},
                                "text/plain")
            if who is None:
                target = request.url.path
                if request.url.query:
                    target += "?" + request.url.query
                return RedirectResponse(f"{PREFIX}/login?next={quote(target, safe='/')}", 303)
            account, session = who
            call = Call(request, account, session, trusted=self.trusted)
            if account.role not in roles:
                return self.error(403, "not for your role", call)
            if request.method == "POST":
                form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
                call = Call(request, account, session, form, self.trusted)
                if session is not None and not sessions.same(session.csrf, form.get("csrf")):
                    return self.error(403, "the form's CSRF token is missing or wrong: "
                                           "reload the page and try again", call)
            try:
                response: Response = await run_in_threadpool(handler, self, call)
            except HttpError as exc:
                return self.error(exc.status, exc.reason, call)
            except DatabaseError as exc:
                LOG.warning("console: database unavailable: %s", exc)
                return self.error(503, "database unavailable, try again later", call)
            for key, value in HEADERS.items():
                response.headers.setdefault(key, value)
            return response

        run.__name__ = handler.__name__
        return run


def see_other(path: str) -> RedirectResponse:
    """Return the redirect after a successful form (POST -> GET)."""
    return RedirectResponse(PREFIX + path, 303)


def int_arg(text: str, default: int, low: int, high: int) -> int:
    """Return an integer query parameter within bounds, or HttpError 400."""
    if not text:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise HttpError(400, f"a whole number from {low} to {high} is needed")
    return int(text)
