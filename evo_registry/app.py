"""The registry's HTTP interface: a plain WSGI application (served by ``aioserver`` or waitress).

No framework: the API is small, and WSGI keeps each request a plain function of its environ that
any server can run, in as many processes as wanted.  The process holds no state that others need
(rate limits, de-duplication and events all live in the database; its cache of device keys is
checked again against the locked device row before anything is stored).  The routes are listed
once in ``ROUTES`` and documented in ``openapi.json`` (a test keeps the two equal).
"""

from __future__ import annotations

import hmac
import importlib.resources
import json
import logging
import re
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs

from evo_registry import enrol, pages, rules, wire
from evo_registry import finder as shared_finder
from evo_registry import objection as objections
from evo_registry.batch import GroupCommit
from evo_registry.config import Settings
from evo_registry.db import Database, Row, parse_utc, utc_text
from evo_registry.errors import DatabaseError, HttpError
from evo_registry.geo import Geo
from evo_registry.store import Limits, Outcome, Pending, Store

LOG = logging.getLogger(__name__)

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
Clock = Callable[[], datetime]


@dataclass
class Response:
    """What a handler returns."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] | None = None


def json_response(status: int, doc: Any, headers: dict[str, str] | None = None) -> Response:
    """Return a JSON response."""
    return Response(status, json.dumps(doc, ensure_ascii=False, indent=1).encode(),
                    "application/json", headers)


_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized",
            403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
            411: "Length Required", 413: "Content Too Large", 415: "Unsupported Media Type",
            429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}
# Pages carry no script and load nothing from elsewhere.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _database_down(exc: BaseException) -> bool:
    """Return True for errors that mean "the database cannot be reached", not a bug."""
    if isinstance(exc, DatabaseError | sqlite3.OperationalError):
        return True
    try:
        import psycopg
    except ImportError:
        return False
    return isinstance(exc, psycopg.OperationalError)


class Registry:
    """The WSGI application over one store."""

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
                             timedelta(seconds=settings.rate_limit_window_s))
        self.writer = GroupCommit(self.store, self.limits)
        self.routes: list[tuple[str, re.Pattern[str], Callable[..., Response]]] = [
            ("GET", re.compile(r"^/$"), self.finder),
            ("POST", re.compile(r"^/v1/reports$"), self.post_report),
            ("POST", re.compile(r"^/v1/enroll$"), self.enroll),
            ("POST", re.compile(r"^/v1/objection$"), self.objection),
            ("GET", re.compile(r"^/v1/devices/(?P<vpnid>[^/]+)$"), self.get_device),
            ("DELETE", re.compile(r"^/v1/devices/(?P<vpnid>[^/]+)/personal-data$"),
             self.erase),
            ("GET", re.compile(r"^/v1/devices/(?P<vpnid>[^/]+)/registration-form\.pdf$"),
             self.registration_form),
            ("POST", re.compile(r"^/v1/events/(?P<event_id>[0-9]{1,18})/resolve$"),
             self.resolve_event),
            ("GET", re.compile(r"^/support$"), self.support_page),
            ("GET", re.compile(r"^/openapi\.json$"), self.openapi),
            ("GET", re.compile(r"^/healthz$"), self.health),
        ]

    def close(self) -> None:
        """Stop the writer (after storing what is queued) and close the GEO database."""
        self.writer.close()
        self.geo.close()

    # ---- WSGI ------------------------------------------------------------------------------
    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        """Serve one request."""
        try:
            response = self.dispatch(environ)
        except HttpError as exc:
            response = json_response(exc.status, {"error": exc.reason}, exc.headers)
        except Exception as exc:
            response = self.failure(environ, exc)
        headers = [("Content-Type", response.content_type),
                   ("Content-Length", str(len(response.body)))]
        headers += list((response.headers or {}).items())
        reason = _REASONS.get(response.status, "")
        start_response(f"{response.status} {reason}", headers)
        if str(environ.get("REQUEST_METHOD", "")).upper() == "HEAD":
            return []  # same headers (and Content-Length) as GET, no body
        return [response.body]

    @staticmethod
    def failure(environ: Environ, exc: BaseException) -> Response:
        """Return the answer to an unexpected error: 503 when the database is down, else 500."""
        if _database_down(exc):
            # The agent retries 5xx with backoff; Retry-After spares a restarting database.
            LOG.warning("database unavailable on %s %s: %s", environ.get("REQUEST_METHOD"),
                        environ.get("PATH_INFO"), exc)
            return json_response(503, {"error": "database unavailable, retry later"},
                                 {"Retry-After": "60"})
        LOG.error("internal error on %s %s", environ.get("REQUEST_METHOD"),
                  environ.get("PATH_INFO"), exc_info=exc)
        return json_response(500, {"error": "internal error"})

    def dispatch(self, environ: Environ) -> Response:
        """Find the handler of a request and run it."""
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        path = str(environ.get("PATH_INFO", "/")) or "/"
        allowed = []
        for verb, pattern, handler in self.routes:
            m = pattern.match(path)
            if not m:
                continue
            if verb == method or (verb == "GET" and method == "HEAD"):
                return handler(environ, **m.groupdict())
            allowed.append(verb)
        if allowed:
            raise HttpError(405, f"method {method} not allowed here",
                            {"Allow": ", ".join(sorted(set(allowed)))})
        raise HttpError(404, "no such resource")

    # ---- helpers ---------------------------------------------------------------------------
    def wan_ip(self, environ: Environ) -> str | None:
        """Return the WAN IP of the request (see wire.client_address)."""
        return wire.client_address(environ.get("REMOTE_ADDR"),
                                   environ.get("HTTP_X_FORWARDED_FOR"), self.trusted)

    @staticmethod
    def _bearer(environ: Environ) -> str | None:
        auth = str(environ.get("HTTP_AUTHORIZATION", ""))
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def _authorize(self, environ: Environ, *kinds: str) -> None:
        token = self._bearer(environ)
        if token is None:
            raise HttpError(401, "a bearer token is needed", {"WWW-Authenticate": "Bearer"})
        for kind in kinds:
            for good in getattr(self.settings, f"{kind}_tokens"):
                if hmac.compare_digest(token.encode(), good.encode()):
                    return
        raise HttpError(401, "token not accepted here", {"WWW-Authenticate": "Bearer"})

    @staticmethod
    def read_body(environ: Environ, limit: int) -> bytes:
        length_text = environ.get("CONTENT_LENGTH") or ""
        if length_text:
            if not str(length_text).isdigit():
                raise HttpError(400, "Content-Length is not a number")
            if int(length_text) > limit:
                raise HttpError(413, f"body larger than {limit} bytes")
        stream = environ["wsgi.input"]
        want = int(length_text) if length_text else limit + 1
        body = bytearray()
        while len(body) < want:
            chunk = stream.read(min(65536, want - len(body)))
            if not chunk:
                break
            body += chunk
        if len(body) > limit:
            raise HttpError(413, f"body larger than {limit} bytes")
        return bytes(body)

    @staticmethod
    def _vpnid(vpnid: str) -> str:
        if not wire.VPNID.match(vpnid):
            raise HttpError(400, "not a vpnid")
        return vpnid

    # ---- POST /v1/reports ------------------------------------------------------------------
    def post_report(self, environ: Environ) -> Response:
        """Take one signed gzip report (docs/protocol.md)."""
        vpnid, signature = self.report_headers(environ)
        body = self.read_body(environ, wire.MAX_COMPRESSED)
        key = self.store.public_key(vpnid)
        item = self.check_report(environ, vpnid, signature, body, key)
        return self.report_response(item, self.writer.submit(item))

    def report_headers(self, environ: Environ) -> tuple[str, str]:
        """Check the headers of a report; return its VPNID and signature."""
        if wire.media_type(environ.get("CONTENT_TYPE")) != "application/json":
            raise HttpError(415, "Content-Type must be application/json")
        if str(environ.get("HTTP_CONTENT_ENCODING", "")).strip().lower() != "gzip":
            raise HttpError(415, "Content-Encoding must be gzip")
        vpnid = str(environ.get("HTTP_X_EVO_VPNID", "")).strip()
        if not vpnid:
            raise HttpError(400, "X-Evo-Vpnid header missing")
        if not wire.VPNID.match(vpnid):
            raise HttpError(400, "X-Evo-Vpnid is not a vpnid")
        signature = str(environ.get("HTTP_X_EVO_SIGNATURE", "")).strip()
        if not signature:
            raise HttpError(401, "X-Evo-Signature header missing")
        return vpnid, signature

    def check_report(self, environ: Environ, vpnid: str, signature: str, body: bytes,
                     key: str | None) -> Pending:
        """Verify, decompress and validate a report; return it ready to be stored.

        The signature first: a sender without the device's key never makes the registry inflate
        or parse anything (1 KiB of gzip can expand to the 1 MiB limit, and the reason of a
        refused document walks all of it).  ``key`` None (not enrolled) is refused like a wrong
        signature, after the same work.  The writer checks the signature again if the key it
        reads under the device's row lock is another one (re-enrolled meanwhile).
        """
        wire.verify_signature(key, signature, body)
        doc = wire.parse_json(wire.gunzip(body))
        reason = wire.schema_errors(doc)
        if reason:
            raise HttpError(400, reason)
        if doc["functional"]["vpnid"] != vpnid:
            raise HttpError(400, "functional/vpnid differs from the X-Evo-Vpnid header")
        path = str(environ.get("HTTP_X_EVO_PATH", "")).strip().lower()
        path_value = path if path in ("vpn", "https") else None
        wan_ip = self.wan_ip(environ)
        via_vpn = wan_ip is not None and wire.in_networks(wan_ip, self.vpn)
        if via_vpn:
            # Through the VPN the registry sees the tunnel address, not the home's WAN IP: the
            # device is seen (on the VPN); its WAN IP comes from the VPN server's records
            # (evo_registry.vpnsync), its last known one and location stay until then.
            wan_ip = None
        location = self.geo.lookup(wan_ip)
        return Pending(doc, vpnid, wan_ip, location, self.clock(), path_value, key,
                       signature, body, via_vpn)

    def report_response(self, item: Pending, outcome: Outcome) -> Response:
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
    def objection(self, environ: Environ) -> Response:
        """Take an owner's objection or its withdrawal (evo_registry.objection.handle)."""
        body = self.read_body(environ, objections.MAX_BODY)
        status, doc = objections.handle(
            self.store, content_type=environ.get("CONTENT_TYPE"),
            content_encoding=environ.get("HTTP_CONTENT_ENCODING"),
            vpnid=environ.get("HTTP_X_EVO_VPNID"), signature=environ.get("HTTP_X_EVO_SIGNATURE"),
            body=body, now=self.clock())
        return json_response(status, doc)

    # ---- POST /v1/enroll -------------------------------------------------------------------
    def enroll(self, environ: Environ) -> Response:
        """Enrol a unit from the manufacturing line."""
        self._authorize(environ, "factory")
        if wire.media_type(environ.get("CONTENT_TYPE")) != "application/json":
            raise HttpError(415, "Content-Type must be application/json")
        body = self.read_body(environ, wire.MAX_EXPANDED)
        now = self.clock()
        enrolment, override = enrol.parse(wire.parse_json(body), now)
        changed = self.store.enroll(enrolment, now, override)
        vpnid = enrolment.vpnid
        return json_response(201 if changed else 200,
                             {"status": "enrolled" if changed else "unchanged", "vpnid": vpnid,
                                   "registration_form":
                                       f"/v1/devices/{vpnid}/registration-form.pdf"})

    # ---- support ---------------------------------------------------------------------------
    def get_device(self, environ: Environ, vpnid: str) -> Response:
        """Return everything support may see of one device."""
        self._authorize(environ, "support")
        dev, events, reports, latest = self.store.device(self._vpnid(vpnid))
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

    def erase(self, environ: Environ, vpnid: str) -> Response:
        """Erase the WAN IP and derived location of a device."""
        self._authorize(environ, "support")
        redacted = self.store.erase_personal_data(self._vpnid(vpnid))
        LOG.info("erased the WAN IP and location of %s (%s events redacted)", vpnid, redacted)
        return json_response(200, {"status": "erased", "vpnid": vpnid})

    def resolve_event(self, environ: Environ, event_id: str) -> Response:
        """Close an open event."""
        self._authorize(environ, "support")
        if not self.store.resolve_event(int(event_id), self.clock()):
            raise HttpError(404, "no such open event")
        return json_response(200, {"status": "resolved", "id": int(event_id)})

    def support_page(self, environ: Environ) -> Response:
        """List the devices with open events (HTML)."""
        self._authorize(environ, "support")
        html = pages.support(self.store.open_events())
        return Response(200, html.encode(), "text/html; charset=utf-8", dict(_PAGE_HEADERS))

    def registration_form(self, environ: Environ, vpnid: str) -> Response:
        """Return the registration form of a unit (PDF)."""
        self._authorize(environ, "factory", "support")
        dev, _events, _reports, _latest = self.store.device(self._vpnid(vpnid))
        from evo_registry import form

        pdf = form.render(dev)
        return Response(200, pdf, "application/pdf",
                        {"Content-Disposition": f'inline; filename="{vpnid}-registration.pdf"',
                         "Cache-Control": "no-store"})

    # ---- public ----------------------------------------------------------------------------
    def finder(self, environ: Environ) -> Response:
        """List the visitor's own devices: those whose latest WAN IP is the visitor's."""
        visitor = self.wan_ip(environ)
        rows = (self.store.finder(visitor, self.clock(), self.settings.finder_days)
                if visitor else [])
        return self.finder_page(rows, environ)

    def finder_page(self, rows: list[Row], environ: Environ | None = None) -> Response:
        """Return the finder page of the visitor's address (its ``rows``).

        On a shared address (evo_registry.finder) it asks for the VPNID (``?vpnid=``).
        """
        query = parse_qs(str((environ or {}).get("QUERY_STRING", "")))
        asked = (query.get("vpnid") or [""])[0][:64] or None
        shown, ask = shared_finder.select(rows, asked, self.settings.finder_shared_units)
        html = pages.finder(shown, self.settings.finder_days, ask, asked)
        headers = dict(_PAGE_HEADERS)
        # The VPNID form submits to this page.
        headers["Content-Security-Policy"] = headers["Content-Security-Policy"].replace(
            "form-action 'none'", "form-action 'self'")
        return Response(200, html.encode(), "text/html; charset=utf-8", headers)

    def openapi(self, environ: Environ) -> Response:
        """Serve the OpenAPI document kept in the package."""
        text = importlib.resources.files("evo_registry").joinpath("openapi.json").read_bytes()
        return Response(200, text, "application/json")

    def health(self, environ: Environ) -> Response:
        """Answer 200 when the database answers."""
        try:
            version = self.db.schema_version()
        except Exception as exc:
            LOG.warning("health check: database unavailable: %s", exc)
            raise HttpError(503, "database unavailable") from exc
        return json_response(200, {"status": "ok", "schema_version": version})
