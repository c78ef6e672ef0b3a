"""systemd's notify protocol, with the standard library: READY, STATUS, WATCHDOG, STOPPING.

A unit of Type=notify waits for READY=1; WatchdogSec= restarts the service unless WATCHDOG=1
arrives every so often.  The protocol is one datagram on the Unix socket named by $NOTIFY_SOCKET
(sd_notify(3)).  Not ``systemd.daemon.notify`` (python3-systemd, which the daemon does use for its
journal handler): it sends blocking, and with the receiver's queue full it hung for more than 5 s
(measured on Debian 12, python3-systemd 235, libsystemd 252), which would leave the daemon deaf to
SIGTERM; the datagram sent here never blocks.  Without $NOTIFY_SOCKET (run by hand, in tests)
every call does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket

LOG = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to the service manager, if there is one."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = dict(os.environ if environ is None else environ)
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self.address = address
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            # sd_watchdog_enabled(3): ping at half the timeout
            self.watchdog_interval = int(usec) / 2e6

    def send(self, *fields: str) -> bool:
        """Send KEY=value lines; return False when nobody listens."""
        if not self.address:
            return False
        message = "\n".join(fields).encode("utf-8", "replace")
        # Non-blocking: a datagram to a receiver whose queue is full blocks the sender, and a
        # daemon stuck in sendto() would miss SIGTERM (found by bench/daemon_bench.py, whose
        # stand-in for systemd stopped reading).  A lost ping is better than a hung daemon.
        with socket.socket(socket.AF_UNIX,
                           socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as s:
            try:
                s.sendto(message, self.address)
            except OSError as exc:
                LOG.debug("sd_notify to %s failed: %s", self.address, exc)
                return False
        return True

    def ready(self, status: str) -> None:
        """Tell systemd the service is up."""
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        """Update the one-line status shown by systemctl status."""
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        """Tell systemd we are alive."""
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        """Tell systemd we are shutting down."""
        with contextlib.suppress(OSError):
            self.send("STOPPING=1")
