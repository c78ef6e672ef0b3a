"""The owner's objection: tell the registry, stop collecting, keep nothing queued.

Opting out is the owner's right (the policy).  Two ways lead to it: ``evo-agent opt-out`` (root),
which leaves the marker ``state_dir/opted-out``, or ``[agent] enabled = false`` in the
configuration.  Either way the unit stops collecting, deletes every waiting report at once
("nothing queued before is sent afterwards"), and sends one last signed message, the objection
(``evo-objection/1``, docs/protocol.md), so that the registry erases what it holds of the unit but
its enrolment.  ``evo-agent opt-in`` (or ``enabled = true`` again) sends its withdrawal before any
report, since the registry refuses reports while the objection stands.

``state_dir/objection.json`` keeps the last message and whether the registry acknowledged it.  It
waits there like a report in the outbox (on disk before any attempt, gone from the queue only on
200) and goes before every report; a newer decision replaces an unsent message (opt-out then
opt-in while offline sends only the withdrawal: harmless if the registry never heard of the
objection).  Messages carry the next number of the report sequence, so the registry can tell a
newer decision from a replayed older one.

Light imports only: the resident daemon reads :func:`waiting` and :func:`prepare`s messages;
signing and sending happen in the cycle child (:func:`deliver`).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evo_agent.delivery.outbox import Outbox, atomic_write
from evo_agent.errors import StateError

if TYPE_CHECKING:
    from collections.abc import Callable

    from evo_agent.config import Config
    from evo_agent.delivery.cycle import CycleResult
    from evo_agent.delivery.schedule import Now

LOG = logging.getLogger(__name__)

SCHEMA = "evo-objection/1"
PATH = "/v1/objection"
MARKER = "opted-out"
MESSAGE = "objection.json"


def opted_out(state_dir: Path) -> bool:
    """Return True when the owner ran ``evo-agent opt-out`` (and not ``opt-in`` since)."""
    return (state_dir / MARKER).exists()


def enabled(cfg: Config) -> bool:
    """Return True when the unit may collect and report: configured so, and no opt-out."""
    return bool(cfg.enabled) and not opted_out(cfg.state_dir)


def load(state_dir: Path) -> dict[str, Any] | None:
    """Return the last objection message with its state, or None when there never was one."""
    try:
        doc = json.loads((state_dir / MESSAGE).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        LOG.error("%s unreadable (%s): the objection is made again", state_dir / MESSAGE, exc)
        return {"objects": None, "acknowledged": False}
    return doc if isinstance(doc, dict) else None


def waiting(state_dir: Path) -> bool:
    """Return True when a message waits for the registry's acknowledgement."""
    doc = load(state_dir)
    return doc is not None and not doc.get("acknowledged") and "message" in doc


def prepare(state_dir: Path, vpnid: str, objects: bool) -> bool:
    """Queue the message for the unit's decision if the registry was not told it yet.

    Called under the writer lock.  Objecting, or withdrawing, also empties the outbox: whatever
    waits there was queued before the decision.  Returns True when a message was queued.
    """
    doc = load(state_dir)
    if doc is None and not objects:
        return False  # never objected: nothing to withdraw
    if doc is not None and doc.get("objects") is objects:
        return False  # queued or told already
    dropped = Outbox(state_dir).purge()
    if dropped:
        LOG.warning("%s: %s waiting report(s) deleted, none will be sent",
                    "opted out" if objects else "opted in", dropped)
    if not vpnid:
        LOG.error("no VPNID: the registry cannot be told of the %s",
                  "objection" if objects else "withdrawal")
        return False
    message = {"schema": SCHEMA, "vpnid": vpnid, "message_id": str(uuid.uuid4()),
               "sequence": Outbox(state_dir).next_sequence(), "objects": objects,
               "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _save(state_dir, {"objects": objects, "message": message, "acknowledged": False})
    LOG.info("%s queued for the registry (sequence %s)",
             "objection" if objects else "withdrawal of the objection", message["sequence"])
    return True


def _save(state_dir: Path, doc: dict[str, Any]) -> None:
    atomic_write(state_dir / MESSAGE, json.dumps(doc, sort_keys=True).encode())


def deliver(cfg: Config, via: str, key: Any, *, clock: Callable[[], Now],
            result: CycleResult) -> bool:
    """Send the waiting message, if any; return True when none waits any more."""
    doc = load(cfg.state_dir)
    if doc is None or doc.get("acknowledged") or "message" not in doc:
        return True
    from evo_agent.delivery import signing, transport
    from evo_agent.delivery.translog import TransparencyLog
    from evo_agent.errors import DeliveryError

    delivery = cfg.values["delivery"]
    message = doc["message"]
    raw = json.dumps(message, sort_keys=True, separators=(",", ":")).encode()
    body = transport.gzip_body(raw)
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip",
               "X-Evo-Vpnid": str(message["vpnid"]), "X-Evo-Signature": signing.sign(key, body)}
    try:
        routes = transport.choose(delivery, via)
    except DeliveryError as exc:
        result.error = f"objection not sent: {exc}"
        return False
    for route in routes:
        try:
            resp = transport.exchange(route.url, PATH, body, headers,
                                      ca_bundle=delivery["ca_bundle"],
                                      connect_timeout=delivery["connect_timeout"],
                                      total_timeout=delivery["total_timeout"],
                                      plain_ok=route.path == "vpn")
        except (transport.TransportError, DeliveryError) as exc:
            LOG.warning("objection via %s: %s", route.path, exc)
            result.error, result.path, result.status = f"objection not sent: {exc}", \
                route.path, None
            continue
        result.path, result.status = route.path, resp.status
        TransparencyLog(cfg.state_dir).record(
            raw, body, time=clock().wall, path=route.path, url=route.url, status=resp.status,
            report_id=str(message["message_id"]), sequence=int(message["sequence"]))
        if resp.status == 200:
            _save(cfg.state_dir, {**doc, "acknowledged": True})
            LOG.info("the registry acknowledged the %s via %s",
                     "objection" if message["objects"] else "withdrawal", route.path)
            return True
        result.error = (f"objection: registry answered {resp.status} via {route.path}: "
                        f"{transport.answer_detail(resp)}")
        result.retry_after = resp.retry_after()
        LOG.warning("%s", result.error)
        return False
    return False


def decide(state_dir: Path, objects: bool) -> None:
    """Record the owner's decision (``evo-agent opt-out`` / ``opt-in``), as root."""
    marker = state_dir / MARKER
    if objects:
        atomic_write(marker, f"opted out at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
                             f"by uid {os.getuid()}\n".encode())
        return
    try:
        marker.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StateError(f"{marker}: cannot be removed ({exc.strerror})") from None
