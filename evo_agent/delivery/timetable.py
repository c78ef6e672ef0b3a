"""The schedule as the resident daemon keeps it: ``state.json``, or the newer state it could not
write, and how long a due report has waited for a route to the registry.

``schedule`` decides from values; this reads them: the clock, the state file and the kernel's
routes (``Settings.network_up``).  A full disk must not reset the backoff, so a failure that
cannot be written is kept here in memory, and ``status`` shows it.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from evo_agent.delivery.outbox import state_error, writer_lock
from evo_agent.delivery.schedule import (
    Due,
    Now,
    State,
    after_failure,
    hold_for_network,
    load_state,
    next_due,
    save_state,
)
from evo_agent.delivery.settings import Settings
from evo_agent.errors import StateError

LOG = logging.getLogger(__name__)


class Timetable:
    """When the next report is due, for the settings the daemon has at the time of asking."""

    def __init__(self, clock: Callable[[], Now], on_network_wait: Callable[[], None]) -> None:
        self.clock = clock
        #: called when a due report starts waiting for a route (the status line changes)
        self.on_network_wait = on_network_wait
        #: the schedule state when state.json cannot be written (disk full): the backoff holds
        self.unsaved: State | None = None
        #: CLOCK_BOOTTIME when a due report was first found without a route to the registry
        self.wait_since: float | None = None
        self.wait_logged = False

    def state(self, settings: Settings) -> State:
        """Return the schedule state: state.json, or the newer one it could not take."""
        if self.unsaved is not None:
            return self.unsaved
        return load_state(settings.state_dir / "state.json")

    def due(self, settings: Settings) -> tuple[Due, Now]:
        """Return the next report and the clocks it was read at; held while there is no route."""
        now = self.clock()
        due = next_due(self.state(settings), now, settings.splay)
        if due.at <= now.boottime:  # due: is there a route to the registry at all?
            up = settings.network_up()
            if up:
                self.wait_since = None
            elif self.wait_since is None:
                self.wait_since = now.boottime
            due = hold_for_network(due, up, self.wait_since or now.boottime)
            if due.network_wait and not self.wait_logged:
                self.wait_logged = True  # before the callback, whose status line comes back here
                LOG.info("%s report due, but no route to the registry: waiting for one",
                         due.trigger)
                self.on_network_wait()
            elif not due.network_wait:
                self.wait_logged = False
        return due, now

    def record_failure(self, settings: Settings, error: str) -> None:
        """Count a failed attempt the child could not record (it died, or the disk is full)."""
        path = settings.state_dir / "state.json"
        state = after_failure(self.state(settings), self.clock(), error,
                              random.random())  # noqa: S311 - jitter
        try:
            with writer_lock(settings.state_dir, wait=False):
                save_state(path, state)
            self.unsaved = None
        except (OSError, StateError) as exc:
            self.unsaved = state
            LOG.error("cannot record the failed attempt (%s): its backoff is kept in memory",
                      exc if isinstance(exc, StateError) else state_error(path, exc))

    def after_cycle(self, settings: Settings, result: dict[str, Any]) -> None:
        """Take a cycle child's result: state.json is current, or its failure is counted here."""
        if result.get("state_saved"):
            self.unsaved = None
        elif not result.get("ok") and settings.enabled:
            # The child died, failed before it could record the attempt, or could not write
            # state.json (a full disk): record it here, so it backs off like any failure
            # instead of spinning.
            self.record_failure(settings, str(result.get("error")))

    def status(self, settings: Settings) -> dict[str, Any]:
        """Return the schedule's part of the daemon's status answer."""
        doc: dict[str, Any] = {}
        if settings.enabled:
            due, now = self.due(settings)
            doc["next_due"] = {"wall": due.wall(now), "trigger": due.trigger,
                               "reason": due.reason}
        if self.unsaved is not None:  # state.json is behind: what the daemon knows
            doc["unsaved_state"] = json.loads(self.unsaved.to_json())
        return doc

    def line(self, settings: Settings) -> str:
        """Return the status line systemd shows."""
        if not settings.enabled:
            return "opted out: no collection, no delivery"
        state = self.state(settings)
        due, now = self.due(settings)
        last = (f"last report {_fmt(state.success_wall)} via {state.success_path}"
                if state.success_wall else "no report delivered yet")
        wait = ", waiting for a route to the registry" if due.network_wait else ""
        return f"{last}; next ({due.trigger}) {_fmt(due.wall(now))}{wait}"


def _fmt(wall: float | None) -> str:
    if wall is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wall))
