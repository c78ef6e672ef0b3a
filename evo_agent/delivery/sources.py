"""The daemon's event sources: each owns one descriptor that the loop's ``select`` waits on, and
turns its readiness into plain values for the daemon.

* ``Signals``: SIGTERM, SIGINT, SIGHUP (and SIGCHLD) through ``signal.set_wakeup_fd``;
* ``ControlServer``: the control socket (``evo_agent.delivery.control``), one request line in;
* ``RouteMonitor``: a default route appearing, the VPN link coming up (rtnetlink);
* ``HotplugMonitor``: udev's announcements for usb, sound and block devices;
* ``Child``: a ``python3 -m evo_agent.delivery`` child, its pipe and the one JSON line it prints;
* the schedule's CLOCK_BOOTTIME timer is ``evo_agent.delivery.boottimer.BootTimer``.

Netlink and udev are filtered in the kernel (``evo_agent.delivery.netlink``): what the daemon
ignores never wakes it.  Every source has ``fileno()``, so the selector takes the object itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from evo_agent.delivery import control, netlink
from evo_agent.delivery.service import share_with_support
from evo_agent.errors import StateError

LOG = logging.getLogger(__name__)

#: How long a control client may take to send its request line.
CLIENT_READ_TIMEOUT = 2.0
#: Time a stopping daemon gives its child before SIGKILL.
STOP_GRACE = 2.0


class Signals:
    """Signals as bytes on a socket pair: the handlers do nothing, the loop reads the numbers."""

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, lambda *_: None)

    def fileno(self) -> int:
        """Return the descriptor the loop waits on."""
        return self._read.fileno()

    def read(self) -> bytes:
        """Return the numbers of the signals that arrived."""
        try:
            return self._read.recv(64)
        except BlockingIOError:
            return b""


class ControlServer:
    """The control socket: one client at a time, one JSON line in, one JSON line out."""

    def __init__(self, path: str, sock: socket.socket) -> None:
        self.path = path
        self.sock = sock

    @classmethod
    def open(cls, path: str) -> ControlServer | None:
        """Listen at ``path`` (None when it cannot, logged); StateError if a daemon answers."""
        with contextlib.suppress(control.NoDaemon, OSError, ValueError):
            control.request(path, {"op": "status"}, 1.0)
            raise StateError(f"{path}: another evo-agent daemon is running")
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            sock = control.listen(path)
            share_with_support(Path(path), 0o660)
        except OSError as exc:
            LOG.warning("no control socket at %s (%s): send --now will run standalone", path, exc)
            return None
        return cls(path, sock)

    def fileno(self) -> int:
        """Return the listening socket's descriptor."""
        return self.sock.fileno()

    def accept(self, enabled: bool) -> tuple[str, socket.socket, str] | None:
        """Return a request the daemon acts on: ("status" | "refresh" | "send", client, path).

        The others are answered here: malformed, unknown, refused (``send`` needs root, checked
        with SO_PEERCRED), or asking for what an opted-out daemon does not do.
        """
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return None
        conn.settimeout(CLIENT_READ_TIMEOUT)  # a silent client must not stall the daemon
        try:
            req = json.loads(conn.makefile("rb").readline(control.MAX_REQUEST))
            op = req.get("op") if isinstance(req, dict) else None
        except (OSError, ValueError):
            conn.close()
            return None
        if op == "status" or (op == "refresh" and enabled):
            return op, conn, ""
        if op == "refresh":
            answer(conn, {"ok": False, "exit_code": 75,
                          "error": "opted out ([agent] enabled = false): no collection"})
        elif op == "send":
            try:
                uid = control.peer_uid(conn)
            except OSError:
                uid = -1
            via = req.get("via", "auto")
            LOG.info("send requested by uid %s (via %s)", uid, via)
            if uid != 0:
                answer(conn, {"ok": False, "error": "sending needs root", "exit_code": 77})
            elif not enabled:
                answer(conn, {"ok": False, "disabled": True, "exit_code": 75,
                              "error": "opted out ([agent] enabled = false)"})
            elif via not in ("auto", "vpn", "https"):
                answer(conn, {"ok": False, "error": f"unknown path {via!r}", "exit_code": 64})
            else:
                return op, conn, via
        else:
            answer(conn, {"ok": False, "error": f"unknown request {op!r}", "exit_code": 64})
        return None

    def close(self) -> None:
        """Stop listening and remove the socket file."""
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def answer(conn: socket.socket, doc: dict[str, Any]) -> None:
    """Send a control client its answer and hang up (a client that left is no error)."""
    with contextlib.suppress(OSError):
        conn.settimeout(2.0)
        conn.sendall(json.dumps(doc).encode() + b"\n")
    conn.close()


class RouteMonitor:
    """Default routes and the VPN interface's link, following the interface's index."""

    def __init__(self, vpn_interface: str) -> None:
        self.vpn = vpn_interface
        #: the VPN interface's index the filter passes (None: no VPN; 0: absent)
        self.vpn_index = (netlink.ifindex(vpn_interface) or 0) if vpn_interface else None
        self.sock = netlink.open_monitor(self.vpn_index)

    @classmethod
    def open(cls, vpn_interface: str) -> RouteMonitor | None:
        """Return a monitor, or None where netlink refuses one (logged)."""
        try:
            return cls(vpn_interface)
        except OSError as exc:
            LOG.warning("no netlink events (%s): waiting reports go at their retry time only", exc)
            return None

    def fileno(self) -> int:
        """Return the netlink socket's descriptor."""
        return self.sock.fileno()

    def read(self) -> list[netlink.Event]:
        """Return the events that may let a waiting report go: a default route, the VPN up."""
        events = netlink.drain(self.sock)
        for e in events:
            # a VPN interface created (again) gets a new index: the filter must pass that one
            if e.kind == "new_link" and self.vpn and e.name == self.vpn \
                    and e.index != self.vpn_index:
                LOG.debug("VPN interface %s has index %s now", self.vpn, e.index)
                self.vpn_index = e.index
                try:
                    netlink.attach_filter(self.sock, netlink.route_filter(e.index))
                except OSError as exc:
                    LOG.warning("cannot filter netlink events for %s: %s", self.vpn, exc)
        return [e for e in events
                if e.kind == "default_route" or (e.kind == "link_up" and e.name == self.vpn)]

    def close(self) -> None:
        """Release the socket."""
        self.sock.close()


class HotplugMonitor:
    """udev's announcements of the devices whose hot-plug changes the local inventory."""

    SUBSYSTEMS = frozenset({"usb", "sound", "block"})

    def __init__(self, monitor: Any) -> None:
        self.monitor = monitor

    @classmethod
    def open(cls) -> HotplugMonitor | None:
        """Return a monitor, or None where udev announces nothing or refuses (logged)."""
        if not netlink.udev_running():
            # libudev's rule: without udevd (a container) nothing announces devices; the kernel's
            # own uevents would wake the daemon for every device of the host
            LOG.info("no udev (no /run/udev/control, /dev not devtmpfs): hot-plug does not "
                     "refresh the local inventory")
            return None
        try:
            return cls(netlink.open_hotplug(cls.SUBSYSTEMS))
        except OSError as exc:
            LOG.warning("no hot-plug events (%s): status shows the last collected inventory", exc)
            return None

    def fileno(self) -> int:
        """Return the udev monitor's descriptor."""
        return int(self.monitor.fileno())

    def read(self) -> str | None:
        """Return why to refresh the local inventory (the last announcement), or None."""
        relevant = [e for e in netlink.drain_hotplug(self.monitor)
                    if e.get("SUBSYSTEM") in self.SUBSYSTEMS | {"unknown"}]
        if not relevant:
            return None
        return f"hot-plug: {relevant[-1].get('ACTION')} {relevant[-1].get('SUBSYSTEM')}"


def child_argv(python: str, config: str | None, action: str, *extra: str) -> list[str]:
    """Return the command of a ``python3 -m evo_agent.delivery`` child."""
    return [python, "-m", "evo_agent.delivery", action, *(["--config", config] if config else []),
            *extra]


def child_env() -> dict[str, str]:
    """Return the environment of a child."""
    env = dict(os.environ)
    # The child is not the service: it must not talk to systemd's notify socket or watchdog.
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
    # The child imports the package from where this process did: the launcher
    # (debian/bin/evo-agent, python3 -I) puts that directory on sys.path, which no child inherits.
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def result_of(output: bytes, code: int, stderr: bytes = b"") -> dict[str, Any]:
    """Return a child's result: the last line of its output, one JSON object."""
    try:
        result = json.loads(output.decode("utf-8", "replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        said = stderr.decode("utf-8", "replace").strip().splitlines()
        return {"ok": False, "error": f"report cycle died (exit status {code}"
                                      f"{': ' + said[-1] if said else ''})"}
    if not isinstance(result, dict):
        return {"ok": False, "error": "report cycle gave no result"}
    return result


class Child:
    """A running child: a report cycle or a snapshot, read until it prints its one JSON line."""

    def __init__(self, proc: subprocess.Popen[bytes], started: float, *, kind: str = "cycle",
                 trigger: str | None = None, via: str = "none",
                 waiters: list[socket.socket] | None = None) -> None:
        if proc.stdout is None:  # pragma: no cover - stdout=PIPE always gives one
            raise OSError("no pipe from the child")
        self.proc, self.pipe, self.started = proc, proc.stdout, started
        self.kind, self.trigger, self.via = kind, trigger, via
        #: control clients answered with the result (``send --now``, ``diff``)
        self.waiters = waiters or []
        self.output = b""
        self.killed = False
        os.set_blocking(self.pipe.fileno(), False)

    @classmethod
    def spawn(cls, argv: list[str], started: float, **kw: Any) -> Child:
        """Start ``argv`` with its output on a pipe (OSError when it cannot start)."""
        return cls(subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    env=child_env()), started, **kw)

    def fileno(self) -> int:
        """Return the pipe's descriptor."""
        return self.pipe.fileno()

    def read(self) -> dict[str, Any] | None:
        """Read what the pipe holds; at its end, reap the child and return its result."""
        try:
            chunk = os.read(self.pipe.fileno(), 65536)
        except BlockingIOError:
            return None
        if chunk:
            self.output += chunk
            return None
        return result_of(self.output, self.proc.wait())

    def close(self) -> None:
        """Close the pipe (after the loop stopped watching it)."""
        self.pipe.close()

    def kill(self) -> None:
        """SIGKILL it (past its deadline); its pipe then ends."""
        self.proc.kill()
        self.killed = True

    def stop(self) -> None:
        """SIGTERM it, and SIGKILL it if it is still there after ``STOP_GRACE``."""
        self.proc.terminate()
        try:
            self.proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
