"""Offline enrolment: the bundles ``evo-agent manufacture --offline`` writes, loaded by
``evo-registry import`` (format and checks: docs/protocol.md, "Enrolment bundle").

A line without a network writes one file per unit; the registry loads them later.  A bundle is
the exact body the unit would have sent to ``POST /v1/enroll``, signed by the unit's device key and
authenticated by the line's factory token (an HMAC in place of the bearer token).  Once both are
verified, the body goes through the live enrolment handler itself (``Registry.dispatch`` with that
factory token), so an imported unit passes exactly the checks of a unit enrolled online: schema,
trigger, VPNID, key, sales region, PSU variant, and "already enrolled" unless the unit was forced.
Loading the same bundle twice is not an error: the unit is reported unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from evo_registry import wire
from evo_registry.config import Settings
from evo_registry.errors import HttpError, RegistryError

LOG = logging.getLogger(__name__)

FORMAT = "evo-enrolment-bundle/1"
#: The request is at most MAX_EXPANDED bytes; base64 and the envelope add a third.
MAX_BUNDLE = wire.MAX_EXPANDED * 4 // 3 + 4096


class BundleRefused(RegistryError):
    """At least one bundle was refused (each is named with its reason)."""

    exit_code = 65  # EX_DATAERR


@dataclass(frozen=True)
class Outcome:
    """What became of one bundle."""

    path: str
    vpnid: str | None
    status: str  # imported | unchanged | refused
    reason: str = ""


def _b64(doc: dict[str, Any], key: str) -> bytes:
    value = doc.get(key)
    if not isinstance(value, str):
        raise HttpError(400, f"{key}: missing")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HttpError(400, f"{key}: not base64") from exc


def verify(data: bytes, factory_tokens: Sequence[str]) -> tuple[bytes, str, dict[str, Any]]:
    """Check a bundle; return the request body, the factory token that authenticates it, and the
    parsed request.  Raises HttpError with the reason."""
    if len(data) > MAX_BUNDLE:
        raise HttpError(413, f"bundle larger than {MAX_BUNDLE} bytes")
    try:
        envelope = wire.parse_json(data)
    except HttpError as exc:
        raise HttpError(400, f"not an enrolment bundle: {exc.reason}") from exc
    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
        raise HttpError(400, f"not an enrolment bundle (format {FORMAT!r} expected)")
    body = _b64(envelope, "request")
    if len(body) > wire.MAX_EXPANDED:
        raise HttpError(413, f"request larger than {wire.MAX_EXPANDED} bytes")
    mac = _b64(envelope, "factory_mac")
    token = next((t for t in factory_tokens if hmac.compare_digest(
        hmac.new(t.encode(), body, hashlib.sha256).digest(), mac)), None)
    if token is None:
        raise HttpError(401, "factory_mac: not made with a factory token of this registry")
    request = wire.parse_json(body)
    if not isinstance(request, dict) or not isinstance(request.get("public_key"), str):
        raise HttpError(400, "request: public_key missing")
    wire.public_key_bytes(request["public_key"])
    signature = envelope.get("signature")
    if not isinstance(signature, str):
        raise HttpError(401, "signature: missing")
    wire.verify_signature(request["public_key"], signature, body)
    if envelope.get("vpnid") != request.get("vpnid"):
        raise HttpError(400, "vpnid of the bundle differs from the request's")
    return body, token, request


def import_one(app: Any, path: Path) -> Outcome:
    """Verify one bundle and enrol it as the enrolment route does (``Registry.enroll_body``)."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_BUNDLE + 1)
    except OSError as exc:
        return Outcome(str(path), None, "refused", f"cannot be read: {exc.strerror}")
    vpnid: str | None = None
    try:
        body, _token, request = verify(data, app.settings.factory_tokens)
        vpnid = request.get("vpnid") if isinstance(request.get("vpnid"), str) else None
        status, _answer = app.enroll_body(body)  # authorised by the bundle's factory MAC
    except HttpError as exc:
        return Outcome(str(path), vpnid, "refused", exc.reason)
    if status == 200:
        return Outcome(str(path), vpnid, "unchanged", "enrolled before with this key")
    LOG.info("imported the enrolment of %s from %s", vpnid, path)
    return Outcome(str(path), vpnid, "imported")


def run_import(settings: Settings, paths: Sequence[str], out: TextIO) -> int:
    """Import bundles (files, or directories of ``*.evo-enrol.json``); print one line each."""
    from evo_registry.app import Registry
    from evo_registry.db import Database

    files: list[Path] = []
    for name in paths:
        p = Path(name)
        files += sorted(p.glob("*.evo-enrol.json")) if p.is_dir() else [p]
    db = Database(settings.database)
    try:
        db.migrate()
        app = Registry(settings, db=db)
        try:
            outcomes = [import_one(app, f) for f in files]
        finally:
            app.geo.close()
    finally:
        db.close()
    for o in outcomes:
        print(f"{o.status:<9} {o.vpnid or '-':<20} {o.path}" + (f": {o.reason}" if o.reason
                                                                  else ""), file=out)
    refused = [o for o in outcomes if o.status == "refused"]
    if refused or not outcomes:
        raise BundleRefused(f"{len(refused)} of {len(outcomes)} bundle(s) refused"
                            if outcomes else "no bundle found")
    return 0

