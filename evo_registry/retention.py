"""Nothing is kept longer than it may be: retention, and what an objection erases.

``Store.prune`` deletes old reports, resolved events and stale WAN IPs.  What a device row keeps of
its last report (NetBIOS name, LAN addresses) and its open events would otherwise stay for ever
once a unit is never seen again; so :func:`prune` also erases, for a unit not seen (by a report or
on the VPN) for the retention period, its functional data and its open events.  A unit whose
owner objected keeps only its enrolment (what the warranty needs): :func:`erase_objected` is what
the objection does at once, and the pruner applies it again to every objected unit (idempotent),
so nothing that slipped in meanwhile survives a pruning.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from evo_registry.db import Cursor, utc_text
from evo_registry.store import Store

# The functional data of a unit (the policy's "functional data") and the WAN IP with what
# derives from it.
_FUNCTIONAL = ("netbios_name = NULL, lan_ip = NULL, lan_ip_secondary = NULL, wan_ip = NULL, "
               "wan_key = NULL, country = NULL, city = NULL, wan_source = NULL, "
               "wan_seen_at = NULL")
# Besides, of an objected unit: what its reports said and when it was seen.  The enrolment
# columns (key, region, PSU, fingerprint enrolled, manufacturing date, model) stay.
_SEEN = ("cur_motherboard_serial = NULL, first_seen = NULL, last_seen = NULL, "
         "last_report_id = NULL, last_sequence = NULL, vpn_seen_at = NULL")


def erase_objected(tx: Cursor, vpnid: str) -> dict[str, int]:
    """Erase everything of a unit but its enrolment; return how many rows went."""
    reports = tx.run("DELETE FROM reports WHERE vpnid = ?", (vpnid,))
    events = tx.run("DELETE FROM events WHERE vpnid = ?", (vpnid,))
    tx.run(f"UPDATE devices SET {_FUNCTIONAL}, {_SEEN} WHERE vpnid = ?",  # noqa: S608
           (vpnid,))
    return {"reports": reports, "events": events}


def prune(store: Store, now: datetime, retention: timedelta) -> dict[str, int]:
    """Apply the retention period; return how many rows of each kind were deleted or erased."""
    gone = store.prune(now, retention)
    cutoff = utc_text(now - retention)
    with store.db.transaction() as tx:
        unseen = [str(r["vpnid"]) for r in tx.query(
            "SELECT vpnid FROM devices WHERE objected_at IS NULL "
            "AND COALESCE(last_seen, enrolled_at) < ? "
            "AND (vpn_seen_at IS NULL OR vpn_seen_at < ?) "
            "AND (netbios_name IS NOT NULL OR lan_ip IS NOT NULL OR lan_ip_secondary IS NOT NULL "
            "OR wan_ip IS NOT NULL OR EXISTS (SELECT 1 FROM events e WHERE e.vpnid = "
            "devices.vpnid AND e.resolved_at IS NULL))", (cutoff, cutoff))]
        for vpnid in unseen:
            gone["events"] += tx.run("DELETE FROM events WHERE vpnid = ? AND resolved_at IS NULL",
                                     (vpnid,))
            tx.run(f"UPDATE devices SET {_FUNCTIONAL} WHERE vpnid = ?", (vpnid,))  # noqa: S608
        gone["functional"] = len(unseen)
        objected = [str(r["vpnid"]) for r in tx.query(
            "SELECT vpnid FROM devices WHERE objected_at IS NOT NULL AND (last_seen IS NOT NULL "
            "OR wan_ip IS NOT NULL OR netbios_name IS NOT NULL OR lan_ip IS NOT NULL "
            "OR lan_ip_secondary IS NOT NULL OR vpn_seen_at IS NOT NULL "
            "OR EXISTS (SELECT 1 FROM reports r WHERE r.vpnid = devices.vpnid) "
            "OR EXISTS (SELECT 1 FROM events e WHERE e.vpnid = devices.vpnid))")]
        for vpnid in objected:
            erased = erase_objected(tx, vpnid)
            gone["reports"] += erased["reports"]
            gone["events"] += erased["events"]
        gone["objected"] = len(objected)
    # the console's audit trail is kept for the same period
    from evo_registry.console import audit

    gone["audit"] = audit.prune(store.db, now, retention)
    return gone
