"""Administration: accounts and roles, dealers and their regions, the audit trail.

Every change is written to the audit trail in the transaction that makes it.  A password set here
travels only in the POST body and is hashed at once; it is never in a page, a log or the trail.
"""

from __future__ import annotations

from starlette.responses import PlainTextResponse, Response

from evo_registry.console import accounts, alerts, audit
from evo_registry.console.export import to_csv, to_json
from evo_registry.console.web import Call, Console, int_arg, see_other
from evo_registry.errors import HttpError

ACCOUNT_ACTIONS = ("disable", "enable", "reset")


def accounts_page(console: Console, call: Call) -> Response:
    """GET: the accounts; POST: create one."""
    if call.request.method == "POST":
        f = call.form
        username = f.get("username", "").strip().lower()
        role = f.get("role", "")
        dealer = f.get("dealer", "").strip() or None
        with console.db.transaction() as tx:
            accounts.add_account(tx, username, role, dealer, password=f.get("password", ""),
                                 now=console.clock())
            audit.record(tx, at=console.clock(), actor=call.account.username,
                         role=call.account.role, action="account_add", target=username,
                         address=call.address, detail={"role": role, "dealer": dealer})
        return see_other("/admin/accounts")
    return console.render("accounts.html", {"rows": accounts.accounts(console.db),
                                            "roles": accounts.ROLES,
                                            "dealers": accounts.dealers(console.db)}, call=call)


def account_action(console: Console, call: Call) -> Response:
    """Disable, enable or reset the password of an account."""
    username = str(call.request.path_params["username"])
    action = str(call.request.path_params["action"])
    if action not in ACCOUNT_ACTIONS:
        raise HttpError(404, "no such action")
    with console.db.transaction() as tx:
        if action == "reset":
            accounts.reset_password(tx, username, call.form.get("password", ""))
        else:
            if username == call.account.username and action == "disable":
                raise HttpError(400, "an admin cannot disable their own account here")
            accounts.set_disabled(tx, username, action == "disable")
        audit.record(tx, at=console.clock(), actor=call.account.username,
                     role=call.account.role, action=f"account_{action}", target=username,
                     address=call.address)
    return see_other("/admin/accounts")


def dealers_page(console: Console, call: Call) -> Response:
    """GET: the dealers; POST: add one."""
    if call.request.method == "POST":
        code = call.form.get("code", "").strip().upper()
        regions = accounts.parse_regions(call.form.get("regions", ""))
        with console.db.transaction() as tx:
            accounts.add_dealer(tx, code, call.form.get("name", ""), regions, console.clock())
            audit.record(tx, at=console.clock(), actor=call.account.username,
                         role=call.account.role, action="dealer_add", target=code,
                         address=call.address, detail={"regions": regions})
        return see_other("/admin/dealers")
    return console.render("dealers.html", {"rows": accounts.dealers(console.db)}, call=call)


def dealer_regions(console: Console, call: Call) -> Response:
    """Replace a dealer's regions."""
    code = str(call.request.path_params["code"])
    regions = accounts.parse_regions(call.form.get("regions", ""))
    with console.db.transaction() as tx:
        old = accounts.set_dealer_regions(tx, code, regions)
        audit.record(tx, at=console.clock(), actor=call.account.username,
                     role=call.account.role, action="dealer_regions", target=code,
                     address=call.address, detail={"regions": regions, "previous": old})
    return see_other("/admin/dealers")


def _trail(console: Console, call: Call, limit: int) -> list[dict[str, object]]:
    before_text = call.arg("before")
    return audit.query(console.db, actor=call.arg("actor"), action=call.arg("action"),
                       target=call.arg("target"), limit=limit,
                       before=int_arg(before_text, 0, 1, 2**62) if before_text else None)


def audit_page(console: Console, call: Call) -> Response:
    """The audit trail, newest first, filtered by actor, action or target."""
    rows = _trail(console, call, 200)
    return console.render("audit.html", {"rows": rows, "actor": call.arg("actor"),
                                         "action": call.arg("action"),
                                         "target": call.arg("target")}, call=call)


def audit_export(console: Console, call: Call) -> Response:
    """The audit trail (filtered) as CSV or JSON."""
    fmt = str(call.request.path_params["fmt"])
    if fmt not in ("csv", "json"):
        raise HttpError(404, "exports are .csv or .json")
    rows = _trail(console, call, 100_000)
    console.record(call, "export", f"audit.{fmt}", {"rows": len(rows)})
    name = {"Content-Disposition": f'attachment; filename="evo-audit.{fmt}"'}
    if fmt == "csv":
        return PlainTextResponse(to_csv(audit.COLUMNS, rows), 200, name, "text/csv")
    return Response(to_json(rows), 200, name, "application/json")


def webhooks_page(console: Console, call: Call) -> Response:
    """GET: the webhooks; POST: add one (events opened from now on), or remove one."""
    if call.request.method == "POST":
        remove = call.form.get("remove", "")
        if remove:
            if not alerts.remove(console.db, int_arg(remove, 0, 1, 2**62)):
                raise HttpError(404, "no such webhook")
            console.record(call, "webhook_remove", remove)
        else:
            url = call.form.get("url", "").strip()
            dealer = call.form.get("dealer", "").strip() or None
            hook = alerts.add(console.db, url, call.form.get("secret", ""), dealer,
                              console.clock())
            console.record(call, "webhook_add", str(hook), {"url": url, "dealer": dealer})
        return see_other("/admin/webhooks")
    return console.render("webhooks.html", {"rows": alerts.listing(console.db),
                                            "dealers": accounts.dealers(console.db)}, call=call)


def my_account(console: Console, call: Call) -> Response:
    """GET: the own account page; POST: create an API token for scripts (shown once)."""
    token = None
    if call.request.method == "POST":
        with console.db.transaction() as tx:
            token = accounts.new_token(tx, call.account.username, console.clock())
            audit.record(tx, at=console.clock(), actor=call.account.username,
                         role=call.account.role, action="token_add",
                         target=call.account.username, address=call.address)
    return console.render("account.html", {"token": token}, call=call)
