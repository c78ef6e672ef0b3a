"""The owner's objection, as the registry receives it (``POST /v1/objection``, docs/protocol.md).

``evo-agent opt-out`` (or ``[agent] enabled = false``) makes the unit send one last signed
message, ``evo-objection/1`` with ``"objects": true``; ``evo-agent opt-in`` sends the same message
with ``false``.  Objecting erases at once everything of the unit but its enrolment (what the
warranty needs, see ``evo_registry.retention``), marks the unit ``objected_at`` (shown in the API
and the console), keeps it out of the finder and makes the registry refuse its reports (403) until
the withdrawal arrives.

Messages of a unit are ordered by their ``sequence`` (the unit's own counter, shared with its
reports): one not newer than the last one applied changes nothing and is acknowledged (200) with
the state as it is, so a retry after a lost answer and a replayed old message are both harmless.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from evo_registry import retention, wire
from evo_registry.db import utc_text
from evo_registry.errors import HttpError, NotAuthentic
from evo_registry.store import Store

LOG = logging.getLogger(__name__)

SCHEMA = "evo-objection/1"
MAX_BODY = 4096
_KEYS = {"schema", "vpnid", "message_id", "sequence", "objects", "issued_at"}
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def check_message(doc: Any, vpnid: str) -> Mapping[str, Any]:
    """Return a valid objection message or raise 400 naming what is wrong."""
    if not isinstance(doc, dict):
        raise HttpError(400, "objection: a JSON object is needed")
    if set(doc) != _KEYS:
        missing, extra = sorted(_KEYS - set(doc)), sorted(set(doc) - _KEYS)
        raise HttpError(400, f"objection: keys missing {missing}, unknown {extra}")
    if doc["schema"] != SCHEMA:
        raise HttpError(400, f"objection: schema must be {SCHEMA}")
    if doc["vpnid"] != vpnid:
        raise HttpError(400, "objection: vpnid differs from the X-Evo-Vpnid header")
    if not isinstance(doc["message_id"], str) or not _UUID.match(doc["message_id"]):
        raise HttpError(400, "objection: message_id must be a lower-case UUID")
    seq = doc["sequence"]
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**63:
        raise HttpError(400, "objection: sequence must be an integer >= 0")
    if not isinstance(doc["objects"], bool):
        raise HttpError(400, "objection: objects must be true or false")
    if not isinstance(doc["issued_at"], str) or not _STAMP.match(doc["issued_at"]):
        raise HttpError(400, "objection: issued_at must be an RFC 3339 time")
    return doc


def handle(store: Store, *, content_type: str | None, content_encoding: str | None,
           vpnid: str | None, signature: str | None, body: bytes,
           now: datetime) -> tuple[int, dict[str, Any]]:
    """Answer ``POST /v1/objection``: (status, JSON document), or raise HttpError.

    Plain arguments (headers as strings, the body as bytes), so any HTTP layer can call it.
    """
    if wire.media_type(content_type) != "application/json":
        raise HttpError(415, "Content-Type must be application/json")
    if (content_encoding or "").strip().lower() != "gzip":
        raise HttpError(415, "Content-Encoding must be gzip")
    vpnid = (vpnid or "").strip()
    if not wire.VPNID.fullmatch(vpnid):
        raise HttpError(400, "X-Evo-Vpnid header missing or not a vpnid")
    if not (signature or "").strip():
        raise HttpError(401, "X-Evo-Signature header missing")
    if len(body) > MAX_BODY:
        raise HttpError(413, f"body larger than {MAX_BODY} bytes")
    wire.verify_signature(store.public_key(vpnid), str(signature).strip(), body)
    doc = check_message(wire.parse_json(wire.gunzip(body, MAX_BODY)), vpnid)
    return 200, apply(store, doc, now)


def apply(store: Store, doc: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """Apply a checked message to its unit; return the answer's document."""
    vpnid, sequence, objects = str(doc["vpnid"]), int(doc["sequence"]), bool(doc["objects"])
    with store.db.transaction() as tx:
        dev = tx.one("SELECT objected_at, objection_sequence FROM devices "  # noqa: S608
                     "WHERE vpnid = ?" + store.db.for_update, (vpnid,))
        if dev is None:
            raise NotAuthentic  # removed since its key was read
        last = dev["objection_sequence"]
        if last is not None and sequence <= int(last):
            state = "objected" if dev["objected_at"] is not None else "withdrawn"
            return {"status": state, "vpnid": vpnid, "changed": False}
        if objects:
            erased = retention.erase_objected(tx, vpnid)
            tx.run("UPDATE devices SET objected_at = ?, objection_sequence = ? WHERE vpnid = ?",
                   (dev["objected_at"] or utc_text(now), sequence, vpnid))
            LOG.info("%s objected: everything but the enrolment erased (%s reports, %s events)",
                     vpnid, erased["reports"], erased["events"])
        else:
            tx.run("UPDATE devices SET objected_at = NULL, objection_sequence = ? "
                   "WHERE vpnid = ?", (sequence, vpnid))
            LOG.info("%s withdrew its objection: its reports are taken again", vpnid)
    return {"status": "objected" if objects else "withdrawn", "vpnid": vpnid, "changed": True}
