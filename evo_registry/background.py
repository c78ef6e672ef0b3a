"""What ``serve`` does besides answering requests: retention, and the VPN server's records.

One daemon thread in ``serve``'s process (:func:`start`), beside uvicorn's workers: the pruner
every ``prune_interval_s`` (the first time a minute after start, once the first requests were
served), and ``vpn-sync`` every ``vpn_sync_interval_s`` when a VPN is configured (``vpn_networks``
or the VPN server's files).  Both are idempotent, so several hosts may all run them.  A failure is
logged and tried again at the next turn: the registry keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from evo_registry import retention, silence, vpnsync
from evo_registry.config import Settings
from evo_registry.db import Database
from evo_registry.store import Store

LOG = logging.getLogger(__name__)
FIRST_PRUNE_S = 60.0


def run_periodic(settings: Settings, stop: threading.Event,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
    """Prune and sync until ``stop`` is set."""
    db = Database(settings.database)
    store = Store(db)
    # With only vpn_networks (no VPN server's files), the turn still raises vpn_unused events.
    syncing = bool(settings.openvpn_status or settings.wireguard_dump or settings.vpn_networks)
    start = time.monotonic()
    next_prune = start + min(FIRST_PRUNE_S, settings.prune_interval_s)
    next_sync = start if syncing else float("inf")
    try:
        while not stop.wait(max(0.0, min(next_prune, next_sync) - time.monotonic())):
            now = time.monotonic()
            if now >= next_sync:
                next_sync = now + settings.vpn_sync_interval_s
                try:
                    LOG.info("vpn-sync: %s", vpnsync.run(settings, store=store, now=clock()))
                except Exception:
                    LOG.exception("vpn-sync failed; next try in %s s", settings.vpn_sync_interval_s)
            if now >= next_prune:
                next_prune = now + settings.prune_interval_s
                try:
                    gone = retention.prune(store, clock(),
                                           timedelta(days=settings.retention_days))
                    LOG.info("retention: pruned %s", gone)
                    LOG.info("silent units: %s",
                             silence.watch(store, clock(), settings.not_seen_days))
                except Exception:
                    LOG.exception("retention pruning failed; next try in %s s",
                                  settings.prune_interval_s)
    finally:
        db.close()


def start(settings: Settings) -> threading.Event:
    """Start the thread; return the event that stops it."""
    stop = threading.Event()
    threading.Thread(target=run_periodic, args=(settings, stop), name="evo-periodic",
                     daemon=True).start()
    return stop
