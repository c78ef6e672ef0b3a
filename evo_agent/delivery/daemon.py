"""``evo-agent daemon``: the resident process that the systemd unit runs (Type=notify).

Design: a small supervisor that sleeps.  The appliance plays music; the agent must cost it nothing
between reports.  The resident process imports neither psutil nor cryptography, ssl or the
collectors (pyudev only for its hot-plug monitor, see ``evo_agent.delivery.netlink``): it holds the
standard library's socket, selectors, signal, json and the pure modules ``plan``, ``schedule``
and ``outbox``.  Each report cycle runs in a short-lived child
(``python3 -m evo_agent.delivery cycle``, see ``evo_agent.delivery.cycle``) which does the heavy
work, prints one JSON line and exits, giving its memory back.  The config is validated the same
way (``describe``), so the collectors' option tables are never imported here either.

The loop asks ``plan.next_action`` what to do next: start a child, kill an overdue one, or wait
in one ``select()`` on the event sources (``evo_agent.delivery.sources``) and on the schedule's
deadline.  That deadline is a CLOCK_BOOTTIME timerfd (``evo_agent.delivery.boottimer``), because
``select``'s timeout counts CLOCK_MONOTONIC, which stops during suspend, and the deadline does
not.  What the sources bring:

* a signal: SIGTERM/SIGINT stop the child and exit within seconds; SIGHUP reloads the config (a
  bad one is refused and the old one kept);
* a request on the control socket (``evo_agent.delivery.control``): status, send now, refresh;
* a default route or the VPN link appearing while a report waits for its retry: the waiting
  report goes at once (at most once a minute); a report that fell due while the kernel had no
  route to the registry (``schedule.hold_for_network``) goes as soon as one appears;
* a hot-plug announcement from udev (usb, sound, block): once the devices settle, a child
  refreshes the local inventory that ``status`` shows (``state_dir/local.json``); it never sends
  early;
* the child's output, when one runs.

No timer ticks otherwise: an idle daemon wakes for the watchdog only.
"""

from __future__ import annotations

import json
import logging
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from evo_agent.delivery import control, netlink, objection
from evo_agent.delivery.boottimer import BootTimer
from evo_agent.delivery.notify import Notifier
from evo_agent.delivery.outbox import Outbox, ensure_dir, state_error, writer_lock
from evo_agent.delivery.plan import (
    HOTPLUG_SETTLE,
    NET_KICK_INTERVAL,
    Action,
    Loop,
    ReadSchedule,
    Sleep,
    StartCycle,
    StartSnapshot,
    kick_on_network,
    next_action,
)
from evo_agent.delivery.schedule import (
    Due,
    Now,
    State,
    after_failure,
    hold_for_network,
    load_state,
    next_due,
    read_clock,
    save_state,
)
from evo_agent.delivery.service import setup_logging, share_with_support
from evo_agent.delivery.sources import (
    Child,
    ControlServer,
    HotplugMonitor,
    RouteMonitor,
    Signals,
    answer,
    child_argv,
    child_env,
)
from evo_agent.errors import ConfigError, StateError

LOG = logging.getLogger(__name__)
STOPPING = {"ok": False, "error": "the daemon is stopping", "exit_code": 75}


@dataclass
class Settings:
    """What the daemon knows of a validated configuration (from the ``describe`` child)."""

    enabled: bool
    state_dir: Path
    control_socket: str
    vpn_interface: str
    vpnid: str
    collector_timeout: float
    total_timeout: float
    sources: list[str] = field(default_factory=list)
    #: (boot, daily) splay, computed by the child (SHA-256 would load libcrypto here)
    splay: tuple[float, float] = (0.0, 0.0)
    #: the hosts of the registry's endpoints (vpn_url, https_url; "" when not configured)
    vpn_host: str = ""
    https_host: str = ""

    @classmethod
    def from_describe(cls, doc: dict[str, Any]) -> Settings:
        """Build from the child's JSON."""
        values = doc["values"]
        return cls(bool(doc["enabled"]), Path(doc["state_dir"]),
                   str(values["agent"]["control_socket"]),
                   str(values["delivery"]["vpn_interface"]), str(doc.get("vpnid") or ""),
                   float(values["collectors"]["timeout"]),
                   float(values["delivery"]["total_timeout"]), list(doc.get("sources", [])),
                   (float(doc["splay"][0]), float(doc["splay"][1])),
                   _host(str(values["delivery"].get("vpn_url", ""))),
                   _host(str(values["delivery"].get("https_url", ""))))

    def network_up(self) -> bool:
        """Return True when the kernel has a route to one of the registry's endpoints."""
        if not self.vpn_host and not self.https_host:
            return True  # nothing to wait for: the attempt itself says what is missing
        try:
            if self.vpn_host and self.vpn_interface and netlink.link_up(self.vpn_interface):
                return netlink.can_reach(self.vpn_host) or bool(
                    self.https_host and netlink.can_reach(self.https_host))
            return bool(self.https_host) and netlink.can_reach(self.https_host)
        except OSError as exc:  # cannot tell: do not hold the report on a netlink hiccup
            LOG.debug("route check failed: %s", exc)
            return True

    def cycle_deadline(self) -> float:
        """Return how long a cycle child may run before it is killed."""
        return self.collector_timeout * 3 + self.total_timeout * 4 + 30


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
        self.sel = selectors.DefaultSelector()
        self.stopping = False
        self.started_wall = time.time()
        self.next_ping = 0.0
        #: the sources that may be missing (no control socket, no netlink, no timerfd)
        self.control: ControlServer | None = None
        self.routes: RouteMonitor | None = None
        self.timer: BootTimer | None = None
        self.child: Child | None = None
        #: what the sources asked for (see ``plan.Loop``)
        self.pending_sends: list[tuple[socket.socket, str]] = []
        self.objection_due = False
        self.kick = False
        self.last_net_kick = -NET_KICK_INTERVAL
        self.hold_until = 0.0
        self.refresh_at: float | None = None
        self.refresh_reason = ""
        #: clients of a "refresh" request (evo-agent diff), answered when the snapshot is done
        self.refresh_waiters: list[socket.socket] = []
        self.last_result: dict[str, Any] | None = None
        #: the schedule state when state.json cannot be written (disk full): the backoff holds
        self.unsaved_state: State | None = None
        #: CLOCK_BOOTTIME when a due report was first found without a route to the registry
        self.network_wait_since: float | None = None
        self.network_wait_logged = False

    # -- configuration ---------------------------------------------------------------------------
    def describe(self) -> Settings:
        """Validate the configuration in a child; raise ConfigError with its reason."""
        proc = subprocess.run(child_argv(self.python, self.config, "describe"),
                              capture_output=True, timeout=60, check=False, env=child_env())
        try:
            doc = json.loads(proc.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
        except (ValueError, IndexError):
            err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise ConfigError(self.config, None, "validation failed: "
                              + (err[-1] if err else f"exit {proc.returncode}")) from None
        if not doc.get("ok"):  # the child's message names the file and the key already
            raise ConfigError.relayed(str(doc.get("error")))
        return Settings.from_describe(doc)

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
            new = self.describe()
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
            self._apply(self.describe())
            self.control = ControlServer.open(self.settings.control_socket)
        except (ConfigError, StateError) as exc:
            LOG.error("%s", exc)
            return exc.exit_code
        except (subprocess.TimeoutExpired, OSError) as exc:
            LOG.error("cannot validate the configuration: %s", exc)
            return ConfigError.exit_code
        self._watch(Signals(), self._on_signal)
        self._watch(self.control, self._on_control)
        self._open_routes()
        self._watch(HotplugMonitor.open(), self._on_hotplug)
        if self.clock is read_clock:  # an injected clock is not the kernel's CLOCK_BOOTTIME
            self.timer = BootTimer.create()
            self._watch(self.timer, BootTimer.clear)
        self.notifier.ready(self._status_line())
        LOG.info("started (pid %s), %s", os.getpid(), self._status_line())
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
        self.routes = RouteMonitor.open(self.settings.vpn_interface)
        self._watch(self.routes, self._on_routes)

    def _decide(self) -> Action:
        child, enabled, mono = self.child, self.settings.enabled, time.monotonic()
        loop = Loop(enabled=enabled,
                    objection_waiting=(not enabled and child is None
                                       and objection.waiting(self.settings.state_dir)),
                    objection_due=self.objection_due,
                    send_via=self.pending_sends[0][1] if self.pending_sends else None,
                    kick=self.kick, hold_until=self.hold_until, refresh_at=self.refresh_at,
                    child_started=child.started if child else None,
                    child_killed=bool(child and child.killed),
                    child_deadline=self.settings.cycle_deadline(),
                    watchdog_interval=self.notifier.watchdog_interval, next_ping=self.next_ping,
                    has_timer=self.timer is not None)
        action = next_action(loop, mono)
        if isinstance(action, ReadSchedule):  # only then: it reads state.json and the routes
            due, now = self._due()
            action = next_action(replace(loop, due=due, boottime=now.boottime), mono)
        return action

    def _step(self) -> None:
        action = self._decide()
        if isinstance(action, Sleep):
            if action.arm is not None and self.timer is not None:
                self.timer.set(action.arm)
            for key, _mask in self.sel.select(action.timeout):
                key.data(key.fileobj)
            if self.notifier.watchdog_interval and time.monotonic() >= self.next_ping:
                self.notifier.watchdog()
                self.next_ping = time.monotonic() + self.notifier.watchdog_interval
        elif isinstance(action, StartCycle):
            waiters = [self.pending_sends.pop(0)[0]] if action.why == "manual" else []
            if action.why == "objection":
                self.objection_due = False
            elif action.why == "schedule":
                self.kick = False
            self._start("cycle", "--via", action.via,
                        *(["--trigger", action.trigger] if action.trigger else []),
                        trigger=action.trigger, via=action.via, waiters=waiters)
        elif isinstance(action, StartSnapshot):
            reason, self.refresh_at = self.refresh_reason, None
            waiters, self.refresh_waiters = self.refresh_waiters, []
            self._start("snapshot", "--reason", reason, waiters=waiters)
        elif self.child is not None:  # KillChild
            LOG.error("report cycle took longer than %.0f s: killed",
                      self.settings.cycle_deadline())
            self.child.kill()

    def _due(self) -> tuple[Due, Now]:
        now = self.clock()
        due = next_due(self._state(), now, self.settings.splay)
        if due.at <= now.boottime:  # due: is there a route to the registry at all?
            up = self.settings.network_up()
            if up:
                self.network_wait_since = None
            elif self.network_wait_since is None:
                self.network_wait_since = now.boottime
            due = hold_for_network(due, up, self.network_wait_since or now.boottime)
            if due.network_wait and not self.network_wait_logged:
                self.network_wait_logged = True  # before _status(), which comes back here
                LOG.info("%s report due, but no route to the registry: waiting for one",
                         due.trigger)
                self._status()
            elif not due.network_wait:
                self.network_wait_logged = False
        return due, now

    # -- events ----------------------------------------------------------------------------------
    def _on_signal(self, signals: Signals) -> None:
        for signum in signals.read():
            if signum in (signal.SIGTERM, signal.SIGINT):
                LOG.info("stopping on %s", signal.Signals(signum).name)
                self.stopping = True
            elif signum == signal.SIGHUP:
                self.reload()

    def _on_routes(self, routes: RouteMonitor) -> None:
        relevant = routes.read()
        if not relevant or self.child is not None or not self.settings.enabled:
            return
        due, now = self._due()
        if kick_on_network(due, now.boottime, time.monotonic(), self.last_net_kick):
            LOG.info("network event (%s %s): sending the waiting report now", relevant[0].kind,
                     relevant[0].name)
            self.last_net_kick = time.monotonic()
            self.kick = True

    def _on_hotplug(self, hotplug: HotplugMonitor) -> None:
        reason = hotplug.read()
        if reason and self.settings.enabled:
            self.refresh_reason = reason
            self.refresh_at = time.monotonic() + HOTPLUG_SETTLE  # debounce: restart the wait
            LOG.debug("%s: local inventory refresh in %.0f s", reason, HOTPLUG_SETTLE)

    def _on_control(self, server: ControlServer) -> None:
        request = server.accept()
        if request is None:
            return
        conn, req = request
        op = req.get("op")
        if op == "status":
            answer(conn, {"ok": True, **self.status()})
        elif op == "refresh":  # evo-agent diff: collect now with the daemon's rights, keep locally
            if not self.settings.enabled:
                answer(conn, {"ok": False, "exit_code": 75,
                              "error": "opted out ([agent] enabled = false): no collection"})
            else:
                self.refresh_waiters.append(conn)
                self.refresh_reason = "asked by evo-agent diff"
                self.refresh_at = time.monotonic()
        elif op == "send":
            try:
                uid = control.peer_uid(conn)
            except OSError:
                uid = -1
            via = req.get("via", "auto")
            LOG.info("send requested by uid %s (via %s)", uid, via)
            if uid != 0:
                answer(conn, {"ok": False, "error": "sending needs root", "exit_code": 77})
            elif not self.settings.enabled:
                answer(conn, {"ok": False, "disabled": True, "exit_code": 75,
                              "error": "opted out ([agent] enabled = false)"})
            elif via not in ("auto", "vpn", "https"):
                answer(conn, {"ok": False, "error": f"unknown path {via!r}", "exit_code": 64})
            else:
                self.pending_sends.append((conn, via))
        else:
            answer(conn, {"ok": False, "error": f"unknown request {op!r}", "exit_code": 64})

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
                LOG.error("cannot start the report cycle: %s", exc)
                self._record_failure(f"cannot start the report cycle: {exc}")
                self.hold_until = time.monotonic() + NET_KICK_INTERVAL
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
        if result.get("state_saved"):
            self.unsaved_state = None
        elif not result.get("ok") and self.settings.enabled:
            # The child died, failed before it could record the attempt, or could not write
            # state.json (a full disk): record it here, so it backs off like any failure
            # instead of spinning.
            self._record_failure(str(result.get("error")))
        if not result.get("ok"):
            self.hold_until = time.monotonic() + NET_KICK_INTERVAL
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

    def _state(self) -> State:
        """Return the schedule state: state.json, or the newer one it could not take."""
        if self.unsaved_state is not None:
            return self.unsaved_state
        return load_state(self.settings.state_dir / "state.json")

    def _record_failure(self, error: str) -> None:
        path = self.settings.state_dir / "state.json"
        state = after_failure(self._state(), self.clock(), error,
                              random.random())  # noqa: S311 - jitter
        try:
            with writer_lock(self.settings.state_dir, wait=False):
                save_state(path, state)
            self.unsaved_state = None
        except (OSError, StateError) as exc:
            self.unsaved_state = state
            LOG.error("cannot record the failed attempt (%s): its backoff is kept in memory",
                      exc if isinstance(exc, StateError) else state_error(path, exc))

    # -- status ----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Return what the daemon knows (the control socket's status answer)."""
        doc: dict[str, Any] = {"pid": os.getpid(), "started": self.started_wall,
                               "enabled": self.settings.enabled,
                               "config": self.settings.sources, "last_cycle": self.last_result,
                               "cycle_running": self.child is not None}
        if self.settings.enabled:
            due, now = self._due()
            doc["next_due"] = {"wall": due.wall(now), "trigger": due.trigger,
                               "reason": due.reason}
        if self.unsaved_state is not None:  # state.json is behind: what the daemon knows
            doc["unsaved_state"] = json.loads(self.unsaved_state.to_json())
        return doc

    def _status_line(self) -> str:
        if not self.settings.enabled:
            return "opted out: no collection, no delivery"
        state = self._state()
        due, now = self._due()
        last = (f"last report {_fmt(state.success_wall)} via {state.success_path}"
                if state.success_wall else "no report delivered yet")
        wait = ", waiting for a route to the registry" if due.network_wait else ""
        return f"{last}; next ({due.trigger}) {_fmt(due.wall(now))}{wait}"

    def _status(self) -> None:
        self.notifier.status(self._status_line())

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


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def _fmt(wall: float | None) -> str:
    if wall is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wall))


def main(config: str | None, verbose: bool = False) -> int:
    """Entry of ``evo-agent daemon``."""
    setup_logging(verbose)
    return Daemon(config).run()
