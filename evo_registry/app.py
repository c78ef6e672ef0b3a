"""The registry's HTTP interface: a Starlette application (served by uvicorn, evo_registry.server).

``create_app`` builds it; its routes are the ones of ``openapi.json`` (a test keeps the two equal)
and another package may add its own (a ``Mount``) to ``app.routes``.  ``app.state.registry``
holds what the routes share: settings, database, store, GEO, clock and the group-commit writer.

The report route is a coroutine: it reads the body as it arrives (refusing it past 64 KiB, not
after), checks the signature before anything is inflated or parsed, then hands the report to the
writer and answers after COMMIT; only the key read waits on a thread (one read for the reports
that arrive together, ``KeyReader``).  Every other route is a
plain function (Starlette runs those in its thread pool, of ``threads`` threads): they do
blocking database reads and are rare.  A process holds no state that others need (rate limits,
de-duplication and events all live in the database).
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import json
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from evo_registry import enrol, pages, rules, wire
from evo_registry import finder as shared_finder
from evo_registry import objection as objections
from evo_registry.batch import GroupCommit
from evo_registry.config import Settings
from evo_registry.console import accounts, audit
from evo_registry.db import Database, Row, parse_utc, utc_text
from evo_registry.errors import DatabaseError, HttpError
from evo_registry.geo import Geo
from evo_registry.misses import Misses
from evo_registry.store import Limits, Outcome, Pending, Store

#: which console roles an account's API token needs for the routes of a shared token kind
_API_ROLES = {"support": ("support", "admin"), "factory": ("factory",)}
LOG = logging.getLogger(__name__)

Clock = Callable[[], datetime]
# The key under which the app's lifespan hands uvicorn's protocol its connection guard.
GUARD_STATE = "evo_registry.connection_guard"
_EVENT_ID = re.compile(r"[0-9]{1,18}")


class JsonResponse(JSONResponse):
    """JSON as the registry has always written it: UTF-8, one space of indent."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, indent=1).encode()


def json_response(status: int, doc: Any, headers: Mapping[str, str] | None = None) -> Response:
    """Return a JSON response."""
    return JsonResponse(doc, status, dict(headers or {}))


def _database_errors() -> tuple[type[BaseException], ...]:
    """Return the errors that mean "the database cannot be reached", not a bug."""
    errors: tuple[type[BaseException], ...] = (DatabaseError, sqlite3.OperationalError)
    try:
        import psycopg
    except ImportError:
        return errors
    return (*errors, psycopg.OperationalError)


async def read_body(request: Request, limit: int) -> bytes:
    """Return the body, refusing it with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    # uvicorn's parser has checked the digits; a huge number is refused before int() reads it.
    if declared is not None and (len(declared) > 12 or int(declared) > limit):
        raise HttpError(413, f"body larger than {limit} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise HttpError(413, f"body larger than {limit} bytes")
    except ClientDisconnect as exc:
        raise HttpError(400, "the client left before the end of the body") from exc
    return bytes(body)


class KeyReader:
    """The enrolled keys of the reports that arrive together, read in one query.

    Each unit reports once a day, so a key cache would miss.  With one read per report, each its
    own trip to a thread and to the database, the bench measured 0.83 ms of registry CPU per
    report; with this reader (and gc.freeze, added together) 0.54 ms, on the same loaded machine
    (bench/registry_results.md).  The VPNIDs asked for while a read is under way go in the next
    one.  One reader per event loop.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._waiting: dict[str, list[asyncio.Future[str | None]]] = {}
        self._reading = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def key(self, vpnid: str) -> str | None:
        """Return the enrolled key of a VPNID, or None."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str | None] = loop.create_future()
        self._waiting.setdefault(vpnid, []).append(future)
        if not self._reading:
            self._reading = True
            loop.call_soon(self._start)  # after this turn: the others of the turn join
        return await future

    def _start(self) -> None:
        waiting, self._waiting = self._waiting, {}
        task = asyncio.get_running_loop().create_task(self._read(waiting))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, waiting: dict[str, list[asyncio.Future[str | None]]]) -> None:
        try:
            sql, params = self.store.keys_query(sorted(waiting))
            rows = await run_in_threadpool(self.store.db.read, sql, params)
            keys = {str(r["vpnid"]): str(r["public_key"]) for r in rows}
        except Exception as exc:  # every waiter gets it: 503 when the database is down
            for futures in waiting.values():
                for f in futures:
                    if not f.done():
                        f.set_exception(exc)
        else:
            for vpnid, futures in waiting.items():
                for f in futures:
                    if not f.done():
                        f.set_result(keys.get(vpnid))
        finally:
            if self._waiting:
                self._start()
            else:
                self._reading = False


class Registry:
    """What the routes share, and the routes themselves."""

    def __init__(self, settings: Settings, db: Database | None = None, geo: Geo | None = None,
                 clock: Clock | None = None) -> None:
        self.settings = settings
        self.db = db or Database(settings.database)
        self.store = Store(self.db)
        self.geo = geo or Geo(settings.geo_database)
        self.clock: Clock = clock or (lambda: datetime.now(timezone.utc))
        self.trusted = settings.networks()
        self.vpn = settings.vpn()
        self.limits = Limits(settings.rate_limit_reports,
                             timedelta(seconds=settings.rate_limit_window_s),
                             settings.stored_bytes_per_day)
        self.writer = GroupCommit(self.store, self.limits)
        self._key_readers: dict[asyncio.AbstractEventLoop, KeyReader] = {}
        self.wrong_vpnids = Misses(settings.finder_wrong_vpnids_per_hour, 3600)

    async def public_key(self, vpnid: str) -> str | None:
        """Return the enrolled key of a VPNID (read with the others of this turn), or None."""
        loop = asyncio.get_running_loop()
        reader = self._key_readers.get(loop)
        if reader is None:
            reader = self._key_readers[loop] = KeyReader(self.store)
        return await reader.key(vpnid)

    def routes(self) -> list[Route]:
        """Return the routes of openapi.json (GET routes answer HEAD too)."""
        return [
            Route("/", self.finder, methods=["GET"]),
            Route("/v1/reports", self.post_report, methods=["POST"]),
            Route("/v1/enroll", self.enroll, methods=["POST"]),
            Route("/v1/objection", self.objection, methods=["POST"]),
            Route("/v1/devices/{vpnid}", self.get_device, methods=["GET"]),
            Route("/v1/devices/{vpnid}/personal-data", self.erase, methods=["DELETE"]),
            Route("/v1/devices/{vpnid}/registration-form.pdf", self.registration_form,
                  methods=["GET"]),
            Route("/v1/events/{event_id}/resolve", self.resolve_event, methods=["POST"]),
            Route("/support", self.support_page, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/healthz", self.health, methods=["GET"]),
        ]

    def close(self) -> None:
        """Stop the writer (after storing what is queued) and close the GEO database."""
        self.writer.close()
        self.geo.close()

    # ---- errors ----------------------------------------------------------------------------
    def exception_handlers(self) -> dict[Any, Callable[..., Any]]:
        """Return the answers to refusals, unknown routes and an unreachable database."""
        handlers: dict[Any, Callable[..., Any]] = {
            HttpError: self._refused,
            HTTPException: self._routing,
            Exception: self._failure,
        }
        for kind in _database_errors():
            handlers[kind] = self._database_down
        return handlers

    @staticmethod
    def _refused(_request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HttpError):
            raise TypeError(exc)
        return json_response(exc.status, {"error": exc.reason}, exc.headers)

    @staticmethod
    def _routing(_request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):
            raise TypeError(exc)
        if exc.status_code == 405:
            reason = "method not allowed here"
        elif exc.status_code == 404:
            reason = "no such resource"
        else:
            reason = exc.detail
        return json_response(exc.status_code, {"error": reason}, exc.headers)

    @staticmethod
    def _database_down(request: Request, exc: Exception) -> Response:
        # The agent retries 5xx with backoff; Retry-After spares a restarting database.
        LOG.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
        return json_response(503, {"error": "database unavailable, retry later"},
                             {"Retry-After": "60"})

    @staticmethod
    def _failure(request: Request, exc: Exception) -> Response:
        LOG.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return json_response(500, {"error": "internal error"})

    # ---- helpers ---------------------------------------------------------------------------
    def wan_ip(self, request: Request) -> str | None:
        """Return the WAN IP of the request (see wire.client_address)."""
        # Only X-Forwarded-For itself: ASGI passes header names as sent, so X_Forwarded_For is
        # another header, never merged into this one.
        forwarded = ", ".join(request.headers.getlist("x-forwarded-for")) or None
        peer = request.client.host if request.client else None
        return wire.client_address(peer, forwarded, self.trusted)

    def _authorize(self, request: Request, *kinds: str) -> None:
        """Accept the line's shared tokens of ``kinds``, or the API token of an account whose
        role may do the same (console accounts: support and admin for "support", factory for
        "factory"); a use by an account is written to the audit trail."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise HttpError(401, "a bearer token is needed", {"WWW-Authenticate": "Bearer"})
        for kind in kinds:
            for good in getattr(self.settings, f"{kind}_tokens"):
                if hmac.compare_digest(token.encode(), good.encode()):
                    return
        if token.startswith(accounts.TOKEN_PREFIX):
            account = accounts.token_account(self.db, token)
            if account is not None and account.role in {
                    role for kind in kinds for role in _API_ROLES[kind]}:
                with self.db.transaction() as tx:
                    audit.record(tx, at=datetime.now(timezone.utc), actor=account.username,
                                 role=account.role, action=f"api {request.method}",
                                 target=request.url.path, address=self.wan_ip(request))
                return
        raise HttpError(401, "token not accepted here", {"WWW-Authenticate": "Bearer"})

    @staticmethod
    def _vpnid(request: Request) -> str:
        vpnid = str(request.path_params["vpnid"])
        if not wire.VPNID.fullmatch(vpnid):
            raise HttpError(400, "not a vpnid")
        return vpnid

    # ---- POST /v1/reports ------------------------------------------------------------------
    async def post_report(self, request: Request) -> Response:
        """Take one signed gzip report (docs/protocol.md)."""
        vpnid, signature = self.report_headers(request)
        body = await read_body(request, wire.MAX_COMPRESSED)
        key = await self.public_key(vpnid)  # None (not enrolled): 401 like a wrong signature
        item = self.check_report(request, vpnid, signature, body, key)
        return self.report_response(item, await self.writer.submit_async(item))

    @staticmethod
    def report_headers(request: Request) -> tuple[str, str]:
        """Check the headers of a report; return its VPNID and signature."""
        headers = request.headers
        if wire.media_type(headers.get("content-type")) != "application/json":
            raise HttpError(415, "Content-Type must be application/json")
        if headers.get("content-encoding", "").strip().lower() != "gzip":
            raise HttpError(415, "Content-Encoding must be gzip")
        vpnid = headers.get("x-evo-vpnid", "").strip()
        if not vpnid:
            raise HttpError(400, "X-Evo-Vpnid header missing")
        if not wire.VPNID.fullmatch(vpnid):
            raise HttpError(400, "X-Evo-Vpnid is not a vpnid")
        signature = headers.get("x-evo-signature", "").strip()
        if not signature:
            raise HttpError(401, "X-Evo-Signature header missing")
        return vpnid, signature

    def check_report(self, request: Request, vpnid: str, signature: str, body: bytes,
                     key: str | None) -> Pending:
        """Verify, decompress and validate a report; return it ready to be stored.

        The signature first: a sender without the device's key never makes the registry inflate
        or parse anything (1 KiB of gzip can expand to the 1 MiB limit, and the reason of a
        refused document walks all of it).  ``key`` None (not enrolled) is refused like a wrong
        signature, after the same work.  The writer checks the signature again if the key it
        reads under the device's row lock is another one (re-enrolled meanwhile).
        """
        wire.verify_signature(key, signature, body)
        doc = wire.storable_report(wire.parse_json(wire.gunzip(body)))
        if doc["functional"]["vpnid"] != vpnid:
            raise HttpError(400, "functional/vpnid differs from the X-Evo-Vpnid header")
        path = request.headers.get("x-evo-path", "").strip().lower()
        path_value = path if path in ("vpn", "https") else None
        wan_ip = self.wan_ip(request)
        via_vpn = wan_ip is not None and wire.in_networks(wan_ip, self.vpn)
        if via_vpn:
            # Through the VPN the registry sees the tunnel address, not the home's WAN IP: the
            # device is seen (on the VPN); its WAN IP comes from the VPN server's records
            # (evo_registry.vpnsync), its last known one and location stay until then.
            wan_ip = None
        location = self.geo.lookup(wan_ip)
        return Pending(doc, vpnid, wan_ip, location, self.clock(), path_value, key,
                       signature, body, via_vpn)

    @staticmethod
    def report_response(item: Pending, outcome: Outcome) -> Response:
        """Return the answer to a report from what the writer made of it."""
        if isinstance(outcome, HttpError):
            raise outcome
        if outcome.duplicate:
            return json_response(200, {"status": "duplicate", "report_id": outcome.report_id})
        if outcome.events:
            LOG.info("report %s of %s raised %s", outcome.report_id, item.vpnid,
                     ", ".join(outcome.events))
        return json_response(201, {"status": "accepted", "report_id": outcome.report_id})

    # ---- POST /v1/objection ----------------------------------------------------------------
    async def objection(self, request: Request) -> Response:
        """Take an owner's objection or its withdrawal (evo_registry.objection.handle)."""
        body = await read_body(request, objections.MAX_BODY)
        headers = request.headers
        status, doc = await run_in_threadpool(
            objections.handle, self.store, content_type=headers.get("content-type"),
            content_encoding=headers.get("content-encoding"),
            vpnid=headers.get("x-evo-vpnid"), signature=headers.get("x-evo-signature"),
            body=body, now=self.clock())
        return json_response(status, doc)

    # ---- POST /v1/enroll -------------------------------------------------------------------
    async def enroll(self, request: Request) -> Response:
        """Enrol a unit from the manufacturing line."""
        self._authorize(request, "factory")
        if wire.media_type(request.headers.get("content-type")) != "application/json":
            raise HttpError(415, "Content-Type must be application/json")
        body = await read_body(request, wire.MAX_EXPANDED)
        status, doc = await run_in_threadpool(self.enroll_body, body)
        return json_response(status, doc)

    def enroll_body(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Enrol the unit of an enrolment request's body (authorised by the caller)."""
        now = self.clock()
        enrolment, override = enrol.parse(wire.parse_json(body), now)
        changed = self.store.enroll(enrolment, now, override)
        vpnid = enrolment.vpnid
        return (201 if changed else 200,
                {"status": "enrolled" if changed else "unchanged", "vpnid": vpnid,
                 "registration_form": f"/v1/devices/{vpnid}/registration-form.pdf"})

    # ---- support ---------------------------------------------------------------------------
    def get_device(self, request: Request) -> Response:
        """Return everything support may see of one device."""
        self._authorize(request, "support")
        dev, events, reports, latest = self.store.device(self._vpnid(request))
        enrolled = {p: dev[f"fp_{p}"] for p in rules.PARTS}
        latest_doc = json.loads(latest["body"]) if latest else None
        reported = rules.fingerprint(latest_doc) if latest_doc else {}
        check = rules.compare_fingerprints(enrolled, reported)
        made = parse_utc(dev["manufactured_at"])
        doc = {
            "vpnid": dev["vpnid"],
            "model": dev["model"],
            "enrolled_at": dev["enrolled_at"],
            "manufactured_at": dev["manufactured_at"],
            "warranty_end": utc_text(rules.add_months(made, self.settings.warranty_months)),
            "sales_region": json.loads(dev["sales_region"]),
            "psu_variant": dev["psu_variant"],
            "first_seen": dev["first_seen"],
            "last_seen": dev["last_seen"],
            "wan_ip": dev["wan_ip"],
            "wan_source": dev["wan_source"],
            "wan_seen_at": dev["wan_seen_at"],
            "vpn_seen_at": dev["vpn_seen_at"],
            "objected": dev["objected_at"] is not None,
            "objected_at": dev["objected_at"],
            "country": dev["country"],
            "city": dev["city"],
            "fingerprint": {"status": check.status if latest_doc else "no_report",
                            "changed": list(check.changed), "enrolled": enrolled,
                            "latest": reported or None},
            "events": [{**e, "detail": json.loads(e["detail"])} for e in events],
            "reports": reports,
            "latest_report": latest_doc,
        }
        return json_response(200, doc)

    def erase(self, request: Request) -> Response:
        """Erase the WAN IP and derived location of a device."""
        self._authorize(request, "support")
        vpnid = self._vpnid(request)
        redacted = self.store.erase_personal_data(vpnid)
        LOG.info("erased the WAN IP and location of %s (%s events redacted)", vpnid, redacted)
        return json_response(200, {"status": "erased", "vpnid": vpnid})

    def resolve_event(self, request: Request) -> Response:
        """Close an open event."""
        self._authorize(request, "support")
        event_id = str(request.path_params["event_id"])
        if not _EVENT_ID.fullmatch(event_id):
            raise HttpError(404, "no such resource")
        if not self.store.resolve_event(int(event_id), self.clock()):
            raise HttpError(404, "no such open event")
        return json_response(200, {"status": "resolved", "id": int(event_id)})

    def support_page(self, request: Request) -> Response:
        """List the devices with open events (HTML)."""
        self._authorize(request, "support")
        return pages.render(request, "support.html", {"rows": self.store.open_events()})

    def registration_form(self, request: Request) -> Response:
        """Return the registration form of a unit (PDF)."""
        self._authorize(request, "factory", "support")
        vpnid = self._vpnid(request)
        dev, _events, _reports, _latest = self.store.device(vpnid)
        from evo_registry import form

        return Response(form.render(dev), 200, {
            "Content-Disposition": f'inline; filename="{vpnid}-registration.pdf"',
            "Cache-Control": "no-store"}, media_type="application/pdf")

    # ---- public ----------------------------------------------------------------------------
    def finder(self, request: Request) -> Response:
        """List the visitor's own devices: those whose latest WAN IP is the visitor's."""
        visitor = self.wan_ip(request)
        rows: list[Row] = (self.store.finder(visitor, self.clock(), self.settings.finder_days)
                           if visitor else [])
        # On a shared address (evo_registry.finder) the page asks for the VPNID (``?vpnid=``).
        asked = request.query_params.get("vpnid", "")[:64] or None
        shown, ask = shared_finder.select(rows, asked, self.settings.finder_shared_units)
        context = {"rows": shown, "days": self.settings.finder_days, "ask_vpnid": ask,
                   "asked": asked, "wait_minutes": 0}
        if ask and asked and visitor:
            now = self.clock().timestamp()
            wait = self.wrong_vpnids.retry_after(visitor, now)
            if wait:
                context.update(rows=[], asked=None, wait_minutes=(wait + 59) // 60)
                return pages.render(request, "finder.html", context, status=429,
                                    headers={"Retry-After": str(wait)})
            if not shown:
                self.wrong_vpnids.missed(visitor, now)
        return pages.render(request, "finder.html", context,
                            form_action="'self'")  # the VPNID form submits to this page

    @staticmethod
    def openapi(_request: Request) -> Response:
        """Serve the OpenAPI document kept in the package."""
        text = importlib.resources.files("evo_registry").joinpath("openapi.json").read_bytes()
        return Response(text, 200, media_type="application/json")

    def health(self, _request: Request) -> Response:
        """Answer 200 when the database answers."""
        try:
            version = self.db.schema_version()
        except Exception as exc:
            LOG.warning("health check: database unavailable: %s", exc)
            raise HttpError(503, "database unavailable") from exc
        return json_response(200, {"status": "ok", "schema_version": version})


def create_app(settings: Settings | None = None, *, registry: Registry | None = None,
               guard: Any = None) -> Starlette:
    """Return the registry's ASGI application.

    Given a ``registry``, its owner closes it; else one is built from ``settings`` and closed
    when the server stops.  ``guard`` (evo_registry.server.ConnectionGuard) is handed to the
    server's protocol through the lifespan state.
    """
    owned: Registry | None = None
    if registry is None:
        if settings is None:
            raise ValueError("create_app needs settings or a registry")
        registry = owned = Registry(settings)
    reg = registry

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[dict[str, Any]]:
        import anyio.to_thread

        # Starlette's thread pool runs the blocking routes: each thread keeps a database
        # connection, so its size is the process's number of connections (plus the writer's).
        anyio.to_thread.current_default_thread_limiter().total_tokens = reg.settings.threads
        try:
            yield {GUARD_STATE: guard} if guard is not None else {}
        finally:
            if owned is not None:
                owned.close()
                owned.db.close()

    from evo_registry import console

    app = Starlette(routes=[*reg.routes(), console.mount(reg.settings, reg.db)],
                    exception_handlers=reg.exception_handlers(), lifespan=lifespan)
    app.state.registry = reg
    app.state.settings = reg.settings
    app.state.db = reg.db
    app.state.store = reg.store
    return app
