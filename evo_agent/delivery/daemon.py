"""``evo-agent daemon``: the resident process that the systemd unit runs (Type=notify).

Design: a small supervisor that sleeps.  The appliance plays music; the agent must cost it nothing
between reports.  The resident process imports neither psutil nor cryptography, ssl or the
collectors (pyudev only for its hot-plug monitor): it holds the standard library's socket,
selectors, signal, json and the pure modules ``plan``, ``schedule`` and ``outbox``.  Each report
cycle runs in a short-lived child (``python3 -m evo_agent.delivery cycle``) which does the heavy
work, prints one JSON line and exits, giving its memory back; the config is validated by a child
too (``evo_agent.delivery.settings``).

The loop asks ``plan.next_action`` what to do: start a child, kill an overdue one, or wait in one
``select()`` on the event sources (``evo_agent.delivery.sources``: signals, the control socket,
route and hot-plug events, the child's pipe) and on the schedule's deadline, a CLOCK_BOOTTIME
timerfd (``evo_agent.delivery.boottimer``: ``select``'s own timeout stops during suspend, the
schedule does not).  Each event changes what the daemon knows, then it asks again:

* SIGTERM/SIGINT: stop the child, exit within seconds; SIGHUP: reload the config (a bad one is
  refused and the old one kept);
* the control socket: status, send now, refresh the local inventory (``evo-agent diff``);
* the VPN link or a default route appearing: a report waiting for its retry goes at once (at most
  once a minute); one that fell due without a route to the registry goes as soon as there is one;
* a hot-plug announcement (usb, sound, block): once the devices settle, a child refreshes the
  local inventory that ``status`` shows (``state_dir/local.json``); nothing is sent early.

No timer ticks otherwise: an idle daemon wakes for the watchdog only.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from evo_agent.delivery import objection, plan, sources
from evo_agent.delivery.boottimer import BootTimer
from evo_agent.delivery.notify import Notifier
from evo_agent.delivery.outbox import Outbox, ensure_dir, writer_lock
from evo_agent.delivery.schedule import Due, Now, read_clock
from evo_agent.delivery.service import setup_logging, share_with_support
from evo_agent.delivery.settings import Settings, describe
from evo_agent.delivery.sources import Child, ControlServer, answer, child_argv
from evo_agent.delivery.timetable import Timetable
from evo_agent.errors import ConfigError, StateError

LOG = logging.getLogger(__name__)
STOPPING = {"ok": False, "error": "the daemon is stopping", "exit_code": 75}


class Daemon:
    """The resident process."""

    def __init__(self, config: str | None, *, python: str = sys.executable,
                 clock: Callable[[], Now] = read_clock,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.python = python
        self.clock = clock
        self.notifier = notifier or Notifier()
        self.settings: Settings
        self.timetable = Timetable(clock, on_network_wait=self._status)
        self.sel = selectors.DefaultSelector()
        self.stopping = False
        self.started_wall = time.time()
        self.next_ping = 0.0
        self.last_result: dict[str, Any] | None = None
        #: the sources that may be missing (no control socket, no netlink, no timerfd)
        self.control: ControlServer | None = None
        self.routes: sources.RouteMonitor | None = None
        self.timer: BootTimer | None = None
        self.child: Child | None = None
        #: what the sources asked for (see ``plan.Loop``)
        self.pending_sends: list[tuple[socket.socket, str]] = []
        self.objection_due = False
        self.kick = False
        self.last_net_kick = -plan.NET_KICK_INTERVAL
        self.hold_until = 0.0
        self.refresh_at: float | None = None
        self.refresh_reason = ""
        #: clients of a "refresh" request (evo-agent diff), answered when the snapshot is done
        self.refresh_waiters: list[socket.socket] = []

    # -- configuration ---------------------------------------------------------------------------
    def _apply(self, settings: Settings) -> None:
        ensure_dir(settings.state_dir)
        if os.statvfs(settings.state_dir).f_flag & os.ST_RDONLY:
            raise StateError(f"{settings.state_dir}: the file system holding it is mounted "
                             "read-only")
        if not os.access(settings.state_dir, os.W_OK | os.X_OK):
            raise StateError(f"{settings.state_dir}: not writable by uid {os.geteuid()} (the "
                             "unit's StateDirectory= makes it the service user's)")
        self.settings = settings
        share_with_support(settings.state_dir, 0o2750)
        if not settings.enabled:
            with writer_lock(settings.state_dir):
                dropped = Outbox(settings.state_dir).purge()
                objection.prepare(settings.state_dir, settings.vpnid, objects=True)
            LOG.warning("opted out: no collection, no delivery; %s waiting report(s) deleted",
                        dropped)
        # The objection (or its withdrawal) goes at once, not at the next scheduled report.
        self.objection_due = objection.waiting(settings.state_dir)

    def reload(self) -> None:
        """SIGHUP: take a new configuration if it is valid, else keep the old one."""
        try:
            new = describe(self.python, self.config)
        except (ConfigError, subprocess.TimeoutExpired, OSError) as exc:
            LOG.error("configuration reload refused, keeping the previous one: %s", exc)
            self._status()
            return
        old_vpn = self.settings.vpn_interface
        if new.control_socket != self.settings.control_socket:
            LOG.warning("control_socket changed to %s: takes effect at the next restart",
                        new.control_socket)
        try:
            self._apply(new)
        except StateError as exc:
            LOG.error("configuration reload refused, keeping the previous one: %s", exc)
            return
        if new.vpn_interface != old_vpn:
            self._open_routes()
        LOG.info("configuration reloaded from %s", ", ".join(new.sources) or "defaults")
        self._status()

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> int:
        """Run until SIGTERM; return the exit status."""
        try:
            self._apply(describe(self.python, self.config))
            self.control = ControlServer.open(self.settings.control_socket)
        except (ConfigError, StateError) as exc:
            LOG.error("%s", exc)
            return exc.exit_code
        except (subprocess.TimeoutExpired, OSError) as exc:
            LOG.error("cannot validate the configuration: %s", exc)
            return ConfigError.exit_code
        self._watch(sources.Signals(), self._on_signal)
        self._watch(self.control, self._on_control)
        self._open_routes()
        self._watch(sources.HotplugMonitor.open(), self._on_hotplug)
        if self.clock is read_clock:  # an injected clock is not the kernel's CLOCK_BOOTTIME
            self.timer = BootTimer.create()
            self._watch(self.timer, BootTimer.clear)  # the loop looks at the schedule anyway
        self.notifier.ready(self.timetable.line(self.settings))
        LOG.info("started (pid %s), %s", os.getpid(), self.timetable.line(self.settings))
        try:
            while not self.stopping:
                self._step()
        finally:
            self._shutdown()
        return 0

    def _watch(self, source: Any, handler: Callable[[Any], None]) -> None:
        if source is not None:
            self.sel.register(source, selectors.EVENT_READ, handler)

    def _open_routes(self) -> None:
        if self.routes is not None:
            self.sel.unregister(self.routes)
            self.routes.close()
        self.routes = sources.RouteMonitor.open(self.settings.vpn_interface)
        self._watch(self.routes, self._on_routes)

    def _decide(self) -> plan.Action:
        child, enabled, mono = self.child, self.settings.enabled, time.monotonic()
        loop = plan.Loop(enabled=enabled,
                         objection_waiting=(not enabled and child is None
                                            and objection.waiting(self.settings.state_dir)),
                         objection_due=self.objection_due,
                         send_via=self.pending_sends[0][1] if self.pending_sends else None,
                         kick=self.kick, hold_until=self.hold_until, refresh_at=self.refresh_at,
                         child_started=child.started if child else None,
                         child_killed=bool(child and child.killed),
                         child_deadline=self.settings.cycle_deadline(),
                         watchdog_interval=self.notifier.watchdog_interval,
                         next_ping=self.next_ping, has_timer=self.timer is not None)
        action = plan.next_action(loop, mono)
        if isinstance(action, plan.ReadSchedule):  # only then: it reads state.json and routes
            due, now = self._due()
            action = plan.next_action(replace(loop, due=due, boottime=now.boottime), mono)
        return action

    def _step(self) -> None:
        action = self._decide()
        if isinstance(action, plan.Sleep):
            if action.arm is not None and self.timer is not None:
                self.timer.set(action.arm)
            for key, _mask in self.sel.select(action.timeout):
                key.data(key.fileobj)
            if self.notifier.watchdog_interval and time.monotonic() >= self.next_ping:
                self.notifier.watchdog()
                self.next_ping = time.monotonic() + self.notifier.watchdog_interval
        elif isinstance(action, plan.StartCycle):
            waiters = [self.pending_sends.pop(0)[0]] if action.why == "manual" else []
            if action.why == "objection":
                self.objection_due = False
            elif action.why == "schedule":
                self.kick = False
            self._start("cycle", "--via", action.via,
                        *(["--trigger", action.trigger] if action.trigger else []),
                        trigger=action.trigger, via=action.via, waiters=waiters)
        elif isinstance(action, plan.StartSnapshot):
            reason, self.refresh_at = self.refresh_reason, None
            waiters, self.refresh_waiters = self.refresh_waiters, []
            self._start("snapshot", "--reason", reason, waiters=waiters)
        elif isinstance(action, plan.KillChild) and self.child is not None:
            LOG.error("report cycle took longer than %.0f s: killed",
                      self.settings.cycle_deadline())
            self.child.kill()

    def _due(self) -> tuple[Due, Now]:
        return self.timetable.due(self.settings)

    # -- events ----------------------------------------------------------------------------------
    def _on_signal(self, signals: sources.Signals) -> None:
        for signum in signals.read():
            if signum in (signal.SIGTERM, signal.SIGINT):
                LOG.info("stopping on %s", signal.Signals(signum).name)
                self.stopping = True
            elif signum == signal.SIGHUP:
                self.reload()

    def _on_routes(self, routes: sources.RouteMonitor) -> None:
        relevant = routes.read()
        if not relevant or self.child is not None or not self.settings.enabled:
            return
        due, now = self._due()
        if plan.kick_on_network(due, now.boottime, time.monotonic(), self.last_net_kick):
            LOG.info("network event (%s %s): sending the waiting report now", relevant[0].kind,
                     relevant[0].name)
            self.last_net_kick = time.monotonic()
            self.kick = True

    def _on_hotplug(self, hotplug: sources.HotplugMonitor) -> None:
        reason = hotplug.read()
        if reason and self.settings.enabled:
            self.refresh_reason = reason
            self.refresh_at = time.monotonic() + plan.HOTPLUG_SETTLE  # each event restarts it
            LOG.debug("%s: local inventory refresh in %.0f s", reason, plan.HOTPLUG_SETTLE)

    def _on_control(self, server: ControlServer) -> None:
        request = server.accept(self.settings.enabled)
        if request is None:
            return
        op, conn, via = request
        if op == "status":
            answer(conn, {"ok": True, **self.status()})
        elif op == "send":
            self.pending_sends.append((conn, via))
        else:  # refresh (evo-agent diff): collect now with the daemon's rights, keep locally
            self.refresh_waiters.append(conn)
            self.refresh_reason = "asked by evo-agent diff"
            self.refresh_at = time.monotonic()

    # -- children --------------------------------------------------------------------------------
    def _start(self, action: str, *args: str, trigger: str | None = None, via: str = "none",
               waiters: list[socket.socket]) -> None:
        if action == "cycle":
            LOG.info("report cycle: trigger %s, path %s", trigger, via)
        try:
            self.child = Child.spawn(child_argv(self.python, self.config, action, *args),
                                     time.monotonic(), kind=action, trigger=trigger, via=via,
                                     waiters=waiters)
        except OSError as exc:
            if action == "cycle":
                error = f"cannot start the report cycle: {exc}"
                LOG.error("%s", error)
                self.timetable.record_failure(self.settings, error)
                self.hold_until = time.monotonic() + plan.NET_KICK_INTERVAL
            else:
                LOG.error("cannot refresh the local inventory: %s", exc)
            for conn in waiters:
                answer(conn, {"ok": False, "error": str(exc), "exit_code": 70})
            return
        self.sel.register(self.child, selectors.EVENT_READ, self._on_child)
        if action == "cycle":
            self.notifier.status(f"sending a report ({trigger or 'waiting ones'})")

    def _on_child(self, child: Child) -> None:
        result = child.read()
        if result is None:
            return
        self.sel.unregister(child)
        child.close()
        self.child = None
        if child.kind == "snapshot":
            LOG.info("local inventory refreshed (%s): %s", result.get("reason"),
                     "ok" if result.get("ok") else result.get("error"))
            for conn in child.waiters:
                answer(conn, result)
            return
        self.timetable.after_cycle(self.settings, result)
        if not result.get("ok"):
            self.hold_until = time.monotonic() + plan.NET_KICK_INTERVAL
        if result.get("disabled") and self.settings.enabled:
            LOG.info("the configuration now says enabled = false: reloading it")
            self.reload()
        result["finished_wall"] = time.time()
        result["trigger"] = child.trigger
        self.last_result = result
        fields = {"EVO_TRIGGER": child.trigger or "", "EVO_PATH": result.get("path") or "",
                  "EVO_STATUS": result.get("status") or ""}
        if result.get("ok"):
            LOG.info("report cycle done: acknowledged %s via %s",
                     ", ".join(result.get("acknowledged", [])) or "nothing", result.get("path"),
                     extra=fields)
        else:
            LOG.warning("report cycle failed: %s", result.get("error"), extra=fields)
        for conn in child.waiters:
            answer(conn, result)
        self._status()

    # -- status ----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Return what the daemon knows (the control socket's status answer)."""
        return {"pid": os.getpid(), "started": self.started_wall,
                "enabled": self.settings.enabled, "config": self.settings.sources,
                "last_cycle": self.last_result, "cycle_running": self.child is not None,
                **self.timetable.status(self.settings)}

    def _status(self) -> None:
        self.notifier.status(self.timetable.line(self.settings))

    def _shutdown(self) -> None:
        self.notifier.stopping()
        waiters = [conn for conn, _via in self.pending_sends] + self.refresh_waiters
        if self.child is not None:
            self.child.stop()
            waiters = self.child.waiters + waiters
        for conn in waiters:
            answer(conn, STOPPING)
        if self.control is not None:
            self.control.close()
        LOG.info("stopped")


def main(config: str | None, verbose: bool = False) -> int:
    """Entry of ``evo-agent daemon``."""
    setup_logging(verbose)
    return Daemon(config).run()
