"""``evo-agent daemon``: the resident process that the systemd unit runs (Type=notify).

Design: a small supervisor that sleeps.  The appliance plays music; the agent must cost it nothing
between reports.  The resident process imports neither psutil nor cryptography, ssl or the
collectors (pyudev only for its hot-plug monitor, see ``evo_agent.delivery.netlink``): it holds the
standard library's socket, selectors, signal, json and the pure modules ``schedule`` and
``outbox``.  Each report cycle runs in a short-lived child
(``python3 -m evo_agent.delivery cycle``, see ``evo_agent.delivery``) which does the heavy work,
prints one JSON line and exits, giving its memory back.  The config is validated the same way
(``describe``), so the collectors' option tables are never imported here either.

The loop waits in one ``select()`` for, and only for:

* the deadline of the next report (``evo_agent.delivery.schedule``; CLOCK_BOOTTIME based), on a
  CLOCK_BOOTTIME timerfd (``evo_agent.delivery.boottimer``), because ``select``'s timeout counts
  CLOCK_MONOTONIC, which stops during suspend, and the deadline does not (where no timerfd can be
  made, the sleep is capped at 15 minutes instead);
* the watchdog's interval, when systemd asks for pings;
* a signal (SIGTERM/SIGINT: stop the child, exit within seconds; SIGHUP: reload the config, a bad
  one is refused and the old one kept), through ``signal.set_wakeup_fd``;
* a request on the control socket (``evo_agent.delivery.control``);
* a netlink event (``evo_agent.delivery.netlink``, filtered in the kernel): the VPN interface came
  up or a default route appeared while a report waits for its retry -> the waiting report goes at
  once (at most once a minute); a report that fell due while the kernel had no route to the registry
  (``schedule.hold_for_network``) goes as soon as one appears;
* a hot-plug announcement from udev (usb, sound, block; the kernel drops all others before they
  wake us, see ``evo_agent.delivery.netlink``): once the devices settle, a child refreshes the local
  inventory that ``status`` shows (``state_dir/local.json``); it never sends early;
* the child's output, when a cycle is running.

No timer ticks otherwise: an idle daemon wakes for the watchdog only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import selectors
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from evo_agent.delivery import control, netlink, objection
from evo_agent.delivery.boottimer import BootTimer
from evo_agent.delivery.notify import Notifier
from evo_agent.delivery.outbox import Outbox, ensure_dir, state_error, writer_lock
from evo_agent.delivery.plan import (
    HOTPLUG_SETTLE,
    NET_KICK_INTERVAL,
    Action,
    KillChild,
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
from evo_agent.errors import ConfigError, StateError

LOG = logging.getLogger(__name__)

#: Time a stopping daemon gives its child before SIGKILL.
STOP_GRACE = 2.0
#: How long a control client may take to send its request line.
CLIENT_READ_TIMEOUT = 2.0
#: Device classes whose hot-plug refreshes the local inventory.
HOTPLUG_SUBSYSTEMS = frozenset({"usb", "sound", "block"})


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


@dataclass
class Cycle:
    """A running child."""

    proc: subprocess.Popen[bytes]
    trigger: str | None
    via: str
    started: float
    output: bytes = b""
    waiters: list[socket.socket] = field(default_factory=list)
    kind: str = "cycle"  # or "snapshot" (hot-plug refresh of the local inventory)
    killed: bool = False


class Daemon:
    """The resident process."""

    def __init__(self, config: str | None, *, python: str = sys.executable,
                 clock: Callable[[], Now] = read_clock,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.python = python
        self.clock = clock
        self.notifier = notifier or Notifier()
        self.sel = selectors.DefaultSelector()
        self.cycle: Cycle | None = None
        self.pending_sends: list[tuple[socket.socket, str]] = []
        self.last_result: dict[str, Any] | None = None
        self.kick = False
        #: no scheduled cycle before this (monotonic): a belt against spinning on odd failures
        self.hold_until = 0.0
        self.last_net_kick = -NET_KICK_INTERVAL
        self.stopping = False
        self.started_wall = time.time()
        self.next_ping = 0.0
        self.settings: Settings
        self.listener: socket.socket | None = None
        self.monitor: socket.socket | None = None
        #: the VPN interface's index the monitor's filter passes (None: no VPN; 0: absent)
        self.vpn_index: int | None = None
        self.network_wait_logged = False
        #: CLOCK_BOOTTIME when a due report was first found without a route to the registry
        self.network_wait_since: float | None = None
        #: the schedule's deadline as a CLOCK_BOOTTIME timerfd (None: select's timeout + cap)
        self.timer: BootTimer | None = None
        #: monotonic time of the pending hot-plug refresh, and why
        self.refresh_at: float | None = None
        self.refresh_reason = ""
        #: clients of a "refresh" request (evo-agent diff), answered when the snapshot is done
        self.refresh_waiters: list[socket.socket] = []
        #: the schedule state when state.json cannot be written (disk full): the backoff holds
        self.unsaved_state: State | None = None
        #: an objection or its withdrawal waits and goes now (evo_agent.delivery.objection)
        self.objection_due = False

    # -- configuration ---------------------------------------------------------------------------
    def _child_argv(self, action: str, *extra: str) -> list[str]:
        argv = [self.python, "-m", "evo_agent.delivery", action]
        if self.config:
            argv += ["--config", self.config]
        return argv + list(extra)

    def describe(self) -> Settings:
        """Validate the configuration in a child; raise ConfigError with its reason."""
        proc = subprocess.run(self._child_argv("describe"), capture_output=True, timeout=60,
                              check=False, env=_child_env())
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
            self._open_monitor()
        LOG.info("configuration reloaded from %s", ", ".join(new.sources) or "defaults")
        self._status()

    # -- main loop -------------------------------------------------------------------------------
    def run(self) -> int:
        """Run until SIGTERM; return the exit status."""
        try:
            self._apply(self.describe())
            self._open_control()
        except (ConfigError, StateError) as exc:
            LOG.error("%s", exc)
            return exc.exit_code
        except (subprocess.TimeoutExpired, OSError) as exc:
            LOG.error("cannot validate the configuration: %s", exc)
            return ConfigError.exit_code
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, lambda *_: None)
        self.sel.register(wake_r, selectors.EVENT_READ, "signal")
        if self.listener is not None:
            self.sel.register(self.listener, selectors.EVENT_READ, "control")
        self._open_monitor()
        self._open_hotplug()
        if self.clock is read_clock:  # an injected clock is not the kernel's CLOCK_BOOTTIME
            self.timer = BootTimer.create()
            if self.timer is not None:
                self.sel.register(self.timer, selectors.EVENT_READ, "timer")
        self.notifier.ready(self._status_line())
        LOG.info("started (pid %s), %s", os.getpid(), self._status_line())
        try:
            while not self.stopping:
                self._step()
        finally:
            self._shutdown()
        return 0

    def _open_monitor(self) -> None:
        if self.monitor is not None:
            self.sel.unregister(self.monitor)
            self.monitor.close()
            self.monitor = None
        name = self.settings.vpn_interface
        self.vpn_index = (netlink.ifindex(name) or 0) if name else None
        try:
            self.monitor = netlink.open_monitor(self.vpn_index)
            self.sel.register(self.monitor, selectors.EVENT_READ, "netlink")
        except OSError as exc:
            LOG.warning("no netlink events (%s): waiting reports go at their retry time only", exc)

    def _open_hotplug(self) -> None:
        if not netlink.udev_running():
            # libudev's rule: without udevd (a container) nothing announces devices; the kernel's
            # own uevents would wake the daemon for every device of the host
            LOG.info("no udev (no /run/udev/control, /dev not devtmpfs): hot-plug does not "
                     "refresh the local inventory")
            return
        try:
            self.sel.register(netlink.open_hotplug(HOTPLUG_SUBSYSTEMS), selectors.EVENT_READ,
                              "uevent")
        except OSError as exc:
            LOG.warning("no hot-plug events (%s): status shows the last collected inventory", exc)

    def _open_control(self) -> None:
        path = self.settings.control_socket
        with contextlib.suppress(control.NoDaemon, OSError, ValueError):
            control.request(path, {"op": "status"}, 1.0)
            raise StateError(f"{path}: another evo-agent daemon is running")
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.listener = control.listen(path)
            share_with_support(Path(path), 0o660)
        except OSError as exc:
            LOG.warning("no control socket at %s (%s): send --now will run standalone", path, exc)

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

    def _decide(self) -> Action:
        cycle = self.cycle
        enabled = self.settings.enabled
        mono = time.monotonic()
        loop = Loop(enabled=enabled,
                    objection_waiting=(not enabled and cycle is None
                                       and objection.waiting(self.settings.state_dir)),
                    objection_due=self.objection_due,
                    send_via=self.pending_sends[0][1] if self.pending_sends else None,
                    kick=self.kick, hold_until=self.hold_until, refresh_at=self.refresh_at,
                    child_started=cycle.started if cycle else None,
                    child_killed=bool(cycle and cycle.killed),
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
        if isinstance(action, StartCycle):
            waiters = [self.pending_sends.pop(0)[0]] if action.why == "manual" else []
            if action.why == "objection":
                self.objection_due = False
            elif action.why == "schedule":
                self.kick = False
            self._start_cycle(action.trigger, action.via, waiters)
        elif isinstance(action, StartSnapshot):
            self._start_snapshot()
        elif isinstance(action, KillChild) and self.cycle is not None:
            LOG.error("report cycle took longer than %.0f s: killed",
                      self.settings.cycle_deadline())
            self.cycle.proc.kill()
            self.cycle.killed = True
        elif isinstance(action, Sleep):
            if action.arm is not None and self.timer is not None:
                self.timer.set(action.arm)
            for key, _mask in self.sel.select(action.timeout):
                handler = {"signal": self._on_signal, "control": self._on_control,
                           "netlink": self._on_netlink, "child": self._on_child,
                           "uevent": self._on_uevent, "timer": self._on_timer}[key.data]
                handler(key.fileobj)
            self._ping()

    def _ping(self) -> None:
        if self.notifier.watchdog_interval and time.monotonic() >= self.next_ping:
            self.notifier.watchdog()
            self.next_ping = time.monotonic() + self.notifier.watchdog_interval

    # -- events ----------------------------------------------------------------------------------
    def _on_signal(self, sock: Any) -> None:
        with contextlib.suppress(BlockingIOError):
            for signum in sock.recv(64):
                if signum in (signal.SIGTERM, signal.SIGINT):
                    LOG.info("stopping on %s", signal.Signals(signum).name)
                    self.stopping = True
                elif signum == signal.SIGHUP:
                    self.reload()

    def _on_netlink(self, sock: Any) -> None:
        events = netlink.drain(sock)
        vpn = self.settings.vpn_interface
        for e in events:
            if e.kind == "new_link" and vpn and e.name == vpn and e.index != self.vpn_index:
                LOG.debug("VPN interface %s has index %s now", vpn, e.index)
                self.vpn_index = e.index
                try:
                    netlink.attach_filter(sock, netlink.route_filter(e.index))
                except OSError as exc:
                    LOG.warning("cannot filter netlink events for %s: %s", vpn, exc)
        relevant = [e for e in events if e.kind == "default_route"
                    or (e.kind == "link_up" and e.name == self.settings.vpn_interface)]
        if not relevant or self.cycle is not None or not self.settings.enabled:
            return
        due, now = self._due()
        if kick_on_network(due, now.boottime, time.monotonic(), self.last_net_kick):
            LOG.info("network event (%s %s): sending the waiting report now", relevant[0].kind,
                     relevant[0].name)
            self.last_net_kick = time.monotonic()
            self.kick = True

    def _on_timer(self, timer: Any) -> None:
        timer.clear()  # the loop looks at the schedule after every wakeup

    def _on_uevent(self, sock: Any) -> None:
        relevant = [e for e in netlink.drain_hotplug(sock)
                    if e.get("SUBSYSTEM") in HOTPLUG_SUBSYSTEMS | {"unknown"}]
        if relevant and self.settings.enabled:
            last = relevant[-1]
            self.refresh_reason = f"hot-plug: {last.get('ACTION')} {last.get('SUBSYSTEM')}"
            self.refresh_at = time.monotonic() + HOTPLUG_SETTLE  # debounce: restart the wait
            LOG.debug("hot-plug %s: local inventory refresh in %.0f s", self.refresh_reason,
                      HOTPLUG_SETTLE)

    def _start_snapshot(self) -> None:
        reason, self.refresh_at = self.refresh_reason, None
        waiters, self.refresh_waiters = self.refresh_waiters, []
        argv = self._child_argv("snapshot", "--reason", reason)
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    env=_child_env())
        except OSError as exc:
            LOG.error("cannot refresh the local inventory: %s", exc)
            for conn in waiters:
                self._answer(conn, {"ok": False, "error": str(exc), "exit_code": 70})
            return
        if proc.stdout is None:  # pragma: no cover - stdout=PIPE always gives one
            return
        os.set_blocking(proc.stdout.fileno(), False)
        self.cycle = Cycle(proc, None, "none", time.monotonic(), kind="snapshot",
                           waiters=waiters)
        self.sel.register(proc.stdout, selectors.EVENT_READ, "child")

    def _on_control(self, listener: Any) -> None:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        conn.settimeout(CLIENT_READ_TIMEOUT)
        try:
            line = conn.makefile("rb").readline(control.MAX_REQUEST)
            req = json.loads(line)
            op = req.get("op") if isinstance(req, dict) else None
        except (OSError, ValueError):
            conn.close()
            return
        if op == "status":
            self._answer(conn, {"ok": True, **self.status()})
        elif op == "refresh":  # evo-agent diff: collect now with the daemon's rights, keep locally
            if not self.settings.enabled:
                self._answer(conn, {"ok": False, "exit_code": 75,
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
                self._answer(conn, {"ok": False, "error": "sending needs root", "exit_code": 77})
            elif not self.settings.enabled:
                self._answer(conn, {"ok": False, "disabled": True, "exit_code": 75,
                                    "error": "opted out ([agent] enabled = false)"})
            elif via not in ("auto", "vpn", "https"):
                self._answer(conn, {"ok": False, "error": f"unknown path {via!r}", "exit_code": 64})
            else:
                self.pending_sends.append((conn, via))
        else:
            self._answer(conn, {"ok": False, "error": f"unknown request {op!r}", "exit_code": 64})

    def _answer(self, conn: socket.socket, doc: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            conn.settimeout(2.0)
            conn.sendall(json.dumps(doc).encode() + b"\n")
        conn.close()

    # -- cycles ----------------------------------------------------------------------------------
    def _start_cycle(self, trigger: str | None, via: str, waiters: list[socket.socket]) -> None:
        argv = self._child_argv("cycle", "--via", via)
        if trigger:
            argv += ["--trigger", trigger]
        LOG.info("report cycle: trigger %s, path %s", trigger, via)
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    env=_child_env())
        except OSError as exc:
            LOG.error("cannot start the report cycle: %s", exc)
            self._record_failure(f"cannot start the report cycle: {exc}")
            self.hold_until = time.monotonic() + NET_KICK_INTERVAL
            for conn in waiters:
                self._answer(conn, {"ok": False, "error": str(exc), "exit_code": 70})
            return
        if proc.stdout is None:  # pragma: no cover - stdout=PIPE always gives one
            raise OSError("no pipe from the report cycle")
        os.set_blocking(proc.stdout.fileno(), False)
        self.cycle = Cycle(proc, trigger, via, time.monotonic(), waiters=waiters)
        self.sel.register(proc.stdout, selectors.EVENT_READ, "child")
        self.notifier.status(f"sending a report ({trigger or 'waiting ones'})")

    def _on_child(self, pipe: Any) -> None:
        cycle = self.cycle
        if cycle is None:  # pragma: no cover - the pipe is registered only while a cycle runs
            return
        try:
            chunk = os.read(pipe.fileno(), 65536)
        except BlockingIOError:
            return
        if chunk:
            cycle.output += chunk[:65536]
            return
        self.sel.unregister(pipe)
        pipe.close()
        code = cycle.proc.wait()
        self.cycle = None
        try:
            result = json.loads(cycle.output.decode("utf-8", "replace").strip().splitlines()[-1])
        except (ValueError, IndexError):
            result = {"ok": False, "error": f"report cycle died (exit status {code})"}
        if not isinstance(result, dict):
            result = {"ok": False, "error": "report cycle gave no result"}
        if cycle.kind == "snapshot":
            LOG.info("local inventory refreshed (%s): %s", result.get("reason"),
                     "ok" if result.get("ok") else result.get("error"))
            for conn in cycle.waiters:
                self._answer(conn, result)
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
        result["trigger"] = cycle.trigger
        self.last_result = result
        fields = {"EVO_TRIGGER": cycle.trigger or "", "EVO_PATH": result.get("path") or "",
                  "EVO_STATUS": result.get("status") or ""}
        if result.get("ok"):
            LOG.info("report cycle done: acknowledged %s via %s",
                     ", ".join(result.get("acknowledged", [])) or "nothing", result.get("path"),
                     extra=fields)
        else:
            LOG.warning("report cycle failed: %s", result.get("error"), extra=fields)
        for conn in cycle.waiters:
            self._answer(conn, result)
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
                               "cycle_running": self.cycle is not None}
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
        if self.cycle is not None:
            self.cycle.proc.terminate()
            try:
                self.cycle.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.cycle.proc.kill()
                self.cycle.proc.wait()
            for conn in self.cycle.waiters:
                self._answer(conn, {"ok": False, "error": "the daemon is stopping",
                                    "exit_code": 75})
        for conn, _via in self.pending_sends:
            self._answer(conn, {"ok": False, "error": "the daemon is stopping", "exit_code": 75})
        for conn in self.refresh_waiters:
            self._answer(conn, {"ok": False, "error": "the daemon is stopping", "exit_code": 75})
        if self.listener is not None:
            self.listener.close()
            with contextlib.suppress(OSError):
                os.unlink(self.settings.control_socket)
        LOG.info("stopped")


#: Members of this group may run the read-only verbs (status, sent, diff, doctor).
SUPPORT_GROUP = "evo-support"


def share_with_support(path: Path, mode: int) -> None:
    """Give the support group read access (setgid on the state directory: new files inherit it)."""
    import grp

    try:
        gid = grp.getgrnam(SUPPORT_GROUP).gr_gid
    except KeyError:
        return  # no such group on this system: root only
    try:
        st = os.stat(path)
        # under the unit the group is already the service's primary group: no chown (a
        # privileged call its seccomp filter refuses)
        if st.st_gid != gid:
            os.chown(path, -1, gid)
        current = st.st_mode & 0o7777
        if os.getegid() == gid:
            # Group=evo-support (the unit): new files get the group anyway, so the setgid bit
            # is not needed, and RestrictSUIDSGID= refuses to set it (EPERM, logged at every
            # start in the appliance test's boots until this).
            mode &= ~stat.S_ISGID
            current &= ~stat.S_ISGID
        if current != mode:
            os.chmod(path, mode)
    except OSError as exc:
        LOG.warning("cannot share %s with group %s: %s", path, SUPPORT_GROUP, exc)


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


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The child is not the service: it must not talk to systemd's notify socket or watchdog.
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
    # Make the package importable by `python3 -m` from a source tree too.
    here = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def setup_logging(verbose: bool) -> None:
    """Log to the journal with structured fields when possible, else to stderr."""
    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger()
    root.setLevel(level)
    for old in list(root.handlers):  # the command line's stderr handler
        root.removeHandler(old)
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        try:
            from systemd.journal import JournalHandler

            root.addHandler(JournalHandler(SYSLOG_IDENTIFIER="evo-agent"))
            return
        except ImportError:
            pass
        # journald reads sd-daemon(3) "<N>" priority prefixes on stderr: no python3-systemd needed
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PrefixFormatter("%(name)s: %(message)s"))
        root.addHandler(handler)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("evo-agent: %(levelname)s: %(message)s"))
    root.addHandler(handler)


class _PrefixFormatter(logging.Formatter):
    _PRIORITY: ClassVar[dict[int, int]] = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4,
                                           logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self._PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


def main(config: str | None, verbose: bool = False) -> int:
    """Entry of ``evo-agent daemon``."""
    setup_logging(verbose)
    return Daemon(config).run()
