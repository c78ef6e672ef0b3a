"""Is the VPN a working tunnel, not just a link?  A recent handshake, or an answer through it.

A WireGuard or tun interface can be up, with its routes, while nothing comes back through it:
the peer is gone, the keys changed, the home's firewall drops UDP.  A report sent "over the VPN"
then waits for its connection timeout before falling back to HTTPS, and ``status`` says the VPN
is up when it is not.  So the VPN counts as up only when:

- WireGuard: its latest handshake is younger than ``HANDSHAKE_MAX_AGE`` (WireGuard renews it every
  two minutes while packets flow; the appliance's tunnel keeps them flowing with a persistent
  keepalive).  Reading it needs root (``wg``'s UAPI): ``send --now``, ``opt-out``, ``doctor`` as
  root; the daemon's cycle runs as its own user and asks the tunnel instead:
- any tunnel: the registry's VPN endpoint answers a TCP connection through it within
  ``ANSWER_TIMEOUT`` (a refused connection is an answer too: the tunnel carried it both ways).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

HANDSHAKE_MAX_AGE = 180.0  # seconds: WireGuard's REKEY_AFTER_TIME (120 s) and a margin
ANSWER_TIMEOUT = 3.0


def wireguard_handshake_age(interface: str, now: float | None = None) -> float | None:
    """Return the age of the newest handshake of a WireGuard interface, or None when unknown."""
    wg = shutil.which("wg")
    if wg is None or os.geteuid() != 0:
        return None
    try:
        done = subprocess.run([wg, "show", interface, "latest-handshakes"], capture_output=True,
                              timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None  # not a WireGuard interface
    stamps = [int(f[1]) for f in (line.split() for line in done.stdout.decode().splitlines())
              if len(f) == 2 and f[1].isdigit() and int(f[1]) > 0]
    if not stamps:
        return float("inf")  # never: no handshake yet
    return max(0.0, (now if now is not None else time.time()) - max(stamps))


def answers(address: str, port: int, timeout: float = ANSWER_TIMEOUT) -> tuple[bool, str]:
    """Return whether ``address:port`` answers a TCP connection within ``timeout``."""
    started = time.monotonic()
    try:
        with socket.create_connection((address, port), timeout=timeout):
            pass
    except ConnectionRefusedError:
        pass  # refused: the answer came back through the tunnel all the same
    except OSError as exc:
        return False, f"no answer from {address}:{port} through the tunnel ({exc})"
    return True, f"{address}:{port} answered in {(time.monotonic() - started) * 1000:.0f} ms"


def working(interface: str, address: str, port: int) -> tuple[bool, str]:
    """Return whether the tunnel through ``interface`` works now, and why (or why not)."""
    age = wireguard_handshake_age(interface)
    if age is not None and age <= HANDSHAKE_MAX_AGE:
        return True, f"WireGuard handshake {age:.0f} s ago"
    ok, why = answers(address, port)
    if age is not None and not ok:
        stale = "never" if age == float("inf") else f"{age:.0f} s ago"
        why = f"WireGuard handshake {stale}; {why}"
    return ok, why
