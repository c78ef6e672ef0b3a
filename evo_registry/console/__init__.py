"""The back office: a console for 432 EVO support, its dealers, the factory and admins.

``mount(settings, db)`` returns the Starlette ``Mount`` of ``/console``; the routes are listed once
below with the roles that may use each.  Modules: ``accounts`` (people, roles, dealers, tokens),
``sessions`` (cookies, CSRF), ``audit`` (the trail), ``devices``/``timeline``/``warranty`` (what
is read about units), ``inbox`` (events), ``dealers`` (assignment, sales, entitlement), ``export``
(CSV, JSON, fleet counts), ``alerts`` (webhooks), ``web`` (the guard every route goes
through), ``login``, ``pages`` and ``admin`` (the handlers), ``cli`` (``evo-registry user|dealer``).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from datetime import datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from evo_registry.config import Settings
from evo_registry.console import admin, login, pages
from evo_registry.console.web import PREFIX, Console
from evo_registry.db import Database

STAFF = ("admin", "support")
READERS = ("admin", "support", "dealer")
EVERYONE = ("admin", "support", "dealer", "factory")
_CSS = importlib.resources.files("evo_registry.console").joinpath("templates/console.css")


def mount(settings: Settings, db: Database,
          clock: Callable[[], datetime] | None = None) -> Mount:
    """Return the console's routes under /console (``clock``: for tests)."""
    c = Console(settings, db, clock)
    get, post, both = ["GET"], ["POST"], ["GET", "POST"]

    async def login_route(request: Request) -> Response:
        return await login.login(c, request)

    async def css(_request: Request) -> Response:
        return Response(_CSS.read_bytes(), 200, {"Cache-Control": "max-age=3600"}, "text/css")

    routes = [
        Route("/login", login_route, methods=both),
        Route("/console.css", css, methods=get),
        Route("/logout", c.endpoint(login.logout, EVERYONE), methods=post),
        Route("/", c.endpoint(pages.home, EVERYONE), methods=get),
        Route("/devices", c.endpoint(pages.search, READERS), methods=get),
        Route("/devices/stale", c.endpoint(pages.stale, READERS), methods=get),
        Route("/devices/export.{fmt}", c.endpoint(pages.export_devices, READERS), methods=get),
        Route("/devices/{vpnid}", c.endpoint(pages.device, READERS), methods=get),
        Route("/devices/{vpnid}/reports/{report_id}.json", c.endpoint(pages.report, STAFF),
              methods=get),
        Route("/devices/{vpnid}/assign", c.endpoint(pages.assign, STAFF), methods=post),
        Route("/devices/{vpnid}/erase", c.endpoint(pages.erase, STAFF), methods=post),
        Route("/events", c.endpoint(pages.events, READERS), methods=get),
        Route("/events/{event_id}/resolve", c.endpoint(pages.resolve, STAFF), methods=post),
        Route("/sales", c.endpoint(pages.sales, READERS), methods=both),
        Route("/entitlement", c.endpoint(pages.entitlement, EVERYONE), methods=get),
        Route("/forms.pdf", c.endpoint(pages.forms, ("admin", "support", "factory")),
              methods=get),
        Route("/fleet", c.endpoint(pages.fleet, READERS), methods=get),
        Route("/account", c.endpoint(admin.my_account, EVERYONE), methods=both),
        Route("/admin/accounts", c.endpoint(admin.accounts_page, ("admin",)), methods=both),
        Route("/admin/accounts/{username}/{action}", c.endpoint(admin.account_action,
                                                                ("admin",)), methods=post),
        Route("/admin/dealers", c.endpoint(admin.dealers_page, ("admin",)), methods=both),
        Route("/admin/dealers/{code}/regions", c.endpoint(admin.dealer_regions, ("admin",)),
              methods=post),
        Route("/admin/webhooks", c.endpoint(admin.webhooks_page, ("admin",)), methods=both),
        Route("/admin/audit", c.endpoint(admin.audit_page, ("admin",)), methods=get),
        Route("/admin/audit.{fmt}", c.endpoint(admin.audit_export, ("admin",)), methods=get),
    ]
    return Mount(PREFIX, routes=routes)
