"""The pages of support and dealers: search, device page, events, sales, entitlement, exports.

Each handler takes the console and the authorised call (see ``web.Console.endpoint``), records
what the audit trail needs, and returns a page, a file or a redirect.
"""

from __future__ import annotations

from starlette.responses import PlainTextResponse, RedirectResponse, Response

from evo_registry.console import dealers, devices, export, inbox
from evo_registry.console.web import PREFIX, Call, Console, int_arg, see_other
from evo_registry.errors import HttpError
from evo_registry.store import Store

MAX_DAYS = 3650


def home(console: Console, call: Call) -> Response:
    """Send each role to its first page."""
    if call.account.role == "factory":
        return RedirectResponse(PREFIX + "/entitlement", 303)
    if call.account.role == "dealer":
        return RedirectResponse(PREFIX + "/devices", 303)
    return RedirectResponse(PREFIX + "/events", 303)


def search(console: Console, call: Call) -> Response:
    """Search (support: every unit; dealer: its units; an empty search lists them)."""
    q = call.arg("q").strip()
    rows = devices.search(console.db, call.account, q)
    console.record(call, "search", q or "(all)", {"q": q, "results": len(rows)})
    return console.render("devices.html", {"title": "Units" if not q else f"Search: {q}",
                                           "q": q, "rows": rows, "days": None}, call=call)


def stale(console: Console, call: Call) -> Response:
    """List the units not seen for N days."""
    days = int_arg(call.arg("days"), 30, 1, MAX_DAYS)
    rows = devices.stale(console.db, call.account, days, console.clock())
    console.record(call, "stale", f"{days} days", {"days": days, "results": len(rows)})
    return console.render("devices.html", {"title": f"Not seen for {days} days", "q": "",
                                           "rows": rows, "days": days}, call=call)


def device(console: Console, call: Call) -> Response:
    """The device page (404 for a unit the account may not see, as for an unknown one)."""
    vpnid = str(call.request.path_params["vpnid"])
    data = devices.page(console.db, call.account, vpnid, console.settings.warranty_months,
                        console.clock())
    console.record(call, "view", vpnid)
    dealer_list = []
    if call.account.role in ("admin", "support"):
        dealer_list = [r["code"] for r in console.db.read(
            "SELECT code FROM console_dealers ORDER BY code")]
    return console.render("device.html", {**data, "dealers": dealer_list}, call=call)


def report(console: Console, call: Call) -> Response:
    """One stored report, as JSON, to download."""
    vpnid = str(call.request.path_params["vpnid"])
    report_id = str(call.request.path_params["report_id"])
    body = devices.report_body(console.db, call.account, vpnid, report_id)
    console.record(call, "download_report", vpnid, {"report_id": report_id})
    return Response(body, 200, {"Content-Disposition":
                                f'attachment; filename="{vpnid}-{report_id}.json"'},
                    "application/json")


def assign(console: Console, call: Call) -> Response:
    """Assign a unit to a dealer (support)."""
    vpnid = str(call.request.path_params["vpnid"])
    dealers.assign(console.db, call.account, vpnid, call.form.get("dealer", "").strip(),
                   now=console.clock(), address=call.address)
    return see_other(f"/devices/{vpnid}")


def erase(console: Console, call: Call) -> Response:
    """Erase a unit's WAN IP and location (the owner's request under the policy)."""
    vpnid = devices.check_vpnid(str(call.request.path_params["vpnid"]))
    redacted = Store(console.db).erase_personal_data(vpnid)
    console.record(call, "erase", vpnid, {"events_redacted": redacted})
    return see_other(f"/devices/{vpnid}")


def events(console: Console, call: Call) -> Response:
    """The events inbox, filtered by kind; open ones, or resolved ones."""
    kind = call.arg("kind")
    resolved = call.arg("state") == "resolved"
    rows = inbox.events(console.db, call.account, kind=kind, resolved=resolved)
    return console.render("events.html", {"rows": rows, "kind": kind, "kinds": inbox.KINDS,
                                          "resolved": resolved}, call=call)


def resolve(console: Console, call: Call) -> Response:
    """Resolve an event with a comment."""
    event_id = int_arg(str(call.request.path_params["event_id"]), 0, 1, 2**62)
    inbox.resolve(console.db, call.account, event_id, call.form.get("comment", ""),
                  now=console.clock(), address=call.address)
    back = call.form.get("back", "")
    return see_other(back if back.startswith("/devices/") else "/events")


def sales(console: Console, call: Call) -> Response:
    """GET: the form; POST: record a sale (VPNID, date)."""
    if call.request.method == "POST":
        vpnid = call.form.get("vpnid", "").strip()
        dealers.record_sale(console.db, call.account, vpnid,
                            dealers.parse_date(call.form.get("sold_on", "")),
                            now=console.clock(), address=call.address)
        return see_other(f"/devices/{vpnid}")
    return console.render("sale.html", {"vpnid": call.arg("vpnid"),
                                        "today": console.clock().date().isoformat()}, call=call)


def entitlement(console: Console, call: Call) -> Response:
    """Answer "is this unit entitled to free support?" for any VPNID (or the form's QR code)."""
    vpnid = call.arg("vpnid").strip()
    answer = None
    if vpnid:
        answer, _w = dealers.entitlement(console.db, vpnid, console.settings.warranty_months,
                                         console.clock().date())
        console.record(call, "entitlement", vpnid[:64], {"answer": answer})
    return console.render("entitlement.html", {"vpnid": vpnid, "answer": answer}, call=call)


def export_devices(console: Console, call: Call) -> Response:
    """The filtered device list as CSV or JSON (columns by role)."""
    fmt = str(call.request.path_params["fmt"])
    q = call.arg("q")
    days_text = call.arg("days")
    days = int_arg(days_text, 30, 1, MAX_DAYS) if days_text else None
    rows = export.rows(console.db, call.account, q, days,
                       months=console.settings.warranty_months, now=console.clock())
    console.record(call, "export", f"devices.{fmt}", {"q": q, "days": days, "rows": len(rows)})
    name = f'attachment; filename="evo-units.{fmt}"'
    if fmt == "csv":
        return PlainTextResponse(export.to_csv(export.columns(call.account), rows), 200,
                                 {"Content-Disposition": name}, "text/csv")
    if fmt == "json":
        return Response(export.to_json(rows), 200, {"Content-Disposition": name},
                        "application/json")
    raise HttpError(404, "exports are .csv or .json")


FORMS_LIMIT = 500


def forms(console: Console, call: Call) -> Response:
    """GET without a batch: the form; with one: its registration forms as one PDF.

    A batch is a list of VPNIDs, or the units enrolled on one day (the line's production of that
    day), at most ``FORMS_LIMIT``.
    """
    vpnids = [v.strip() for v in call.arg("vpnids").replace("\n", ",").split(",") if v.strip()]
    day = call.arg("enrolled_on").strip()
    if not vpnids and not day:
        return console.render("forms.html", {}, call=call)
    if vpnids:
        if len(vpnids) > FORMS_LIMIT or not all(devices.VPNID_TEXT.fullmatch(v) for v in vpnids):
            raise HttpError(400, f"vpnids: at most {FORMS_LIMIT} VPNIDs, separated by commas")
        marks = ", ".join("?" * len(vpnids))
        rows = console.db.read(f"SELECT * FROM devices WHERE vpnid IN ({marks}) "  # noqa: S608
                               "ORDER BY vpnid", vpnids)
        missing = sorted(set(vpnids) - {r["vpnid"] for r in rows})
        if missing:
            raise HttpError(404, f"unknown unit(s): {', '.join(missing[:10])}")
        label = f"{len(rows)} units"
    else:
        start = dealers.parse_date(day)
        # Stored times are fixed-width text: a day is from "YYYY-MM-DDT" to "YYYY-MM-DDU".
        rows = console.db.read("SELECT * FROM devices WHERE enrolled_at >= ? AND "
                               "enrolled_at < ? ORDER BY vpnid LIMIT ?",
                               (f"{start.isoformat()}T", f"{start.isoformat()}U",
                                FORMS_LIMIT + 1))
        if not rows:
            raise HttpError(404, f"no unit enrolled on {start.isoformat()}")
        if len(rows) > FORMS_LIMIT:
            raise HttpError(400, f"more than {FORMS_LIMIT} units that day: list VPNIDs")
        label = f"enrolled on {start.isoformat()}"
    from evo_registry import form

    pdf = form.render_batch(rows, f"432 EVO registration forms, {label}")
    console.record(call, "forms", label, {"vpnids": [r["vpnid"] for r in rows]})
    return Response(pdf, 200, {"Content-Disposition":
                               'inline; filename="evo-registration-forms.pdf"'},
                    "application/pdf")


def fleet(console: Console, call: Call) -> Response:
    """Counts by model, country, agent version and open events, on one page."""
    counts = export.fleet(console.db, call.account)
    total = sum(int(r["n"]) for r in counts["model"])
    return console.render("fleet.html", {"counts": counts, "total": total}, call=call)
