"""The checks of an enrolment request (POST /v1/enroll, docs/protocol.md).

Offline bundles (``evo_registry.bundles``) go through the live handler, hence through these same
checks: an offline line can never enrol what the live endpoint would refuse.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from evo_registry import rules, wire
from evo_registry.errors import HttpError
from evo_registry.store import Enrolment, region_list

BUNDLE_FORMAT = "evo-enrolment-bundle/1"
_KEYS = {"vpnid", "public_key", "report", "sales_region", "psu_variant", "manufactured_at",
         "override", "model", "dealer"}
# A dealer's code in the console (evo_registry/console/accounts.py: DEALER_CODE).
_DEALER = re.compile(r"^[A-Z0-9][A-Z0-9_-]{0,31}$")


def _parse_rfc3339(text: Any) -> datetime:
    if not isinstance(text, str):
        raise HttpError(400, "manufactured_at: an RFC 3339 timestamp is needed")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise HttpError(400, f"manufactured_at: not RFC 3339: {text[:40]!r}") from exc
    if moment.tzinfo is None:
        raise HttpError(400, "manufactured_at: the time zone is missing")
    return moment.astimezone(timezone.utc)


def parse(doc: Any, now: datetime) -> tuple[Enrolment, bool]:
    """Check an enrolment request (docs/protocol.md); return it and its override flag, or 400."""
    if not isinstance(doc, dict):
        raise HttpError(400, "body: a JSON object is needed")
    unknown = set(doc) - _KEYS
    if unknown:
        raise HttpError(400, f"unknown keys: {', '.join(sorted(unknown))}")
    vpnid = doc.get("vpnid")
    if not isinstance(vpnid, str) or not wire.VPNID.fullmatch(vpnid):
        raise HttpError(400, "vpnid: missing or not a vpnid")
    if not isinstance(doc.get("public_key"), str):
        raise HttpError(400, "public_key: base64 of the 32-byte Ed25519 key is needed")
    wire.public_key_bytes(doc["public_key"])
    try:
        report = wire.storable_report(doc.get("report"))
    except HttpError as exc:
        raise HttpError(400, f"report: {exc.reason}") from exc
    if report["trigger"] != "manufacturing":
        raise HttpError(400, "report: trigger must be \"manufacturing\"")
    if report["functional"]["vpnid"] != vpnid:
        raise HttpError(400, "report: functional/vpnid differs from vpnid")
    regions = doc.get("sales_region")
    region = region_list(regions if isinstance(regions, list) else [])
    psu = doc.get("psu_variant")
    if not isinstance(psu, str) or rules.parse_psu_variant(psu) is None:
        raise HttpError(400, "psu_variant: like \"230V\", \"120V\", \"100V\" or \"100-240V\"")
    made = _parse_rfc3339(doc["manufactured_at"]) if "manufactured_at" in doc else now
    model = doc.get("model")
    if model is not None and not (isinstance(model, str) and 0 < len(model) <= 64
                                  and "\x00" not in model):
        raise HttpError(400, "model: a string of at most 64 characters, without NUL")
    override = doc.get("override", False)
    if not isinstance(override, bool):
        raise HttpError(400, "override: true or false")
    dealer = doc.get("dealer")
    if dealer is not None and not (isinstance(dealer, str) and _DEALER.match(dealer)):
        raise HttpError(400, "dealer: a dealer code (upper-case letters, digits, - and _)")
    return (Enrolment(vpnid, doc["public_key"].strip(), report, region, psu.strip().upper(),
                      made, model, dealer), override)
