"""The login form and logout.

A failed login says only "wrong username or password" whatever the cause (unknown user, wrong
password, locked or disabled account), and is recorded in the audit trail with the typed name only
if it is an account's (a password typed in the wrong field is never written anywhere).
"""

from __future__ import annotations

import secrets
from urllib.parse import unquote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from evo_registry.console import accounts, audit, sessions
from evo_registry.console.web import PREFIX, Call, Console, client_address, is_https
from evo_registry.errors import DatabaseError

_LOGIN_COOKIE_S = 3600


def _next(text: str | None) -> str:
    """Return where to go after login: a console path only (no open redirect)."""
    target = unquote(text or "")
    if target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target \
            and "/login" not in target:
        return target
    return PREFIX + "/"




def login_page(console: Console, request: Request, status: int = 200,
               message: str = "") -> Response:
    """Return the login form with a fresh double-submit token."""
    token = secrets.token_urlsafe(24)
    response = console.render("login.html", {"login_csrf": token, "message": message,
                                              "next": _next(request.query_params.get("next"))},
                               status)
    response.set_cookie(sessions.LOGIN_COOKIE, token, max_age=_LOGIN_COOKIE_S, path=PREFIX,
                        httponly=True, samesite="lax", secure=is_https(request, console.trusted))
    return response


async def login(console: Console, request: Request) -> Response:
    """GET: the form; POST: check the password, open a session, set its cookie."""
    if request.method != "POST":
        return login_page(console, request)
    form = await request.form()
    given = form.get("csrf")
    expected = request.cookies.get(sessions.LOGIN_COOKIE)
    if not expected or not isinstance(given, str) or not sessions.same(expected, given):
        return login_page(console, request, 403, "The form expired: please sign in again.")
    username = str(form.get("username") or "").strip().lower()
    password = str(form.get("password") or "")
    address = client_address(request, console.trusted)
    # One address trying passwords on many accounts: each account's lock-out never trips.
    started = console.clock().timestamp()
    wait = console.failed_logins.retry_after(address or "", started)
    if wait:
        response = login_page(console, request, 429, "Too many failed sign-ins from your "
                              f"address: try again in {(wait + 59) // 60} minutes.")
        response.headers["Retry-After"] = str(wait)
        return response

    def check() -> str | None:
        now = console.clock()
        with console.db.transaction() as tx:
            account = accounts.authenticate(tx, username, password, now)
            if account is None:
                # The typed name only when it is an account's: a password typed in the
                # wrong field must not land in the trail.
                known = accounts.USERNAME.fullmatch(username) and tx.one(
                    "SELECT id FROM console_accounts WHERE username = ?", (username,))
                shown = username if known else "(unknown)"
                audit.record(tx, at=now, actor=shown, role="-", action="login_failed",
                             target=shown, address=address)
                return None
            audit.record(tx, at=now, actor=account.username, role=account.role,
                         action="login", target=account.username, address=address)
            sessions.expire(tx, now)  # everyone's dead sessions go when someone signs in
            return sessions.create(tx, account, now)

    try:
        token = await run_in_threadpool(check)
    except DatabaseError:
        return console.error(503, "database unavailable, try again later")
    if token is None:
        console.failed_logins.missed(address or "", started)
        return login_page(console, request, 401, "Wrong username or password.")
    response = RedirectResponse(_next(str(form.get("next") or "")), 303)
    response.set_cookie(sessions.COOKIE, token, path=PREFIX, httponly=True, samesite="lax",
                        secure=is_https(request, console.trusted))
    response.delete_cookie(sessions.LOGIN_COOKIE, path=PREFIX)
    return response


def logout(console: Console, call: Call) -> Response:
    """End the session (its cookie is worthless afterwards) and go back to the login form."""
    if call.session is None:
        return RedirectResponse(PREFIX + "/login", 303)
    with console.db.transaction() as tx:
        sessions.end(tx, call.session)
        audit.record(tx, at=console.clock(), actor=call.account.username,
                     role=call.account.role, action="logout", target=call.account.username,
                     address=call.address)
    response = RedirectResponse(PREFIX + "/login", 303)
    response.delete_cookie(sessions.COOKIE, path=PREFIX)
    return response
