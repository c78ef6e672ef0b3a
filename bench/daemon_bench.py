"""Measure the resident daemon: start to READY, idle memory (RSS, PSS), idle wakeups, CPU per cycle.

Run with the interpreter the appliance uses (Debian's): ``/usr/bin/python3 bench/daemon_bench.py
[--idle SECONDS]`` (default 600, the issue's "10 idle minutes").  It starts the registry test
server on 127.0.0.1 with a throw-away CA, an agent config under a temp dir replaying a tiny
capture, and the real ``evo-agent daemon`` with a notify socket and WatchdogSec=30 s
(``--watchdog-usec 0``: none); it waits for READY and the boot report, then counts the daemon's
context switches (each wakeup from sleep is one voluntary switch) while idle.  Meanwhile it counts,
on unfiltered sockets of the same network namespace, the kernel uevents, udev announcements and
rtnetlink link/route messages that happened: what would have woken a daemon without the in-kernel
filters.  Prints one JSON document.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evo_agent.delivery import signing  # noqa: E402
from tests.delivery.fixtures import VPNID, write_config, write_host_root  # noqa: E402
from tests.delivery.pki import make_pki  # noqa: E402
from tests.delivery.server import RegistryServer  # noqa: E402


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
            out[key] = int(value.split()[0])
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            out["Pss"] = int(line.split()[1])
    return out


def main() -> int:
    """Run the measurement in a temp dir that is removed afterwards."""
    p = argparse.ArgumentParser()
    p.add_argument("--idle", type=float, default=600.0)
    p.add_argument("--watchdog-usec", type=int, default=30_000_000)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="evo-bench-"))
    try:
        return measure(tmp, args.idle, args.watchdog_usec)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class HostEvents:
    """Count netlink multicasts in this namespace on unfiltered sockets, in a thread."""

    GROUPS = (("kernel_uevents", 15, 1), ("udev_announcements", 15, 2),
              ("rtnetlink_link_route", 0, 0x1 | 0x40 | 0x400))

    def __init__(self) -> None:
        self.counts = dict.fromkeys((name for name, _, _ in self.GROUPS), 0)
        self.socks = {}
        for name, proto, groups in self.GROUPS:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind((0, groups))
            self.socks[s] = name
        self.counting = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        for s in self.socks:
            sel.register(s, selectors.EVENT_READ)
        while True:
            for key, _ in sel.select():
                with contextlib.suppress(OSError):  # ENOBUFS: count one at least
                    key.fileobj.recv(65536)  # type: ignore[union-attr]
                if self.counting:
                    self.counts[self.socks[key.fileobj]] += 1  # type: ignore[index]


def _cycle_cost(cfg: Path, env: dict[str, str]) -> dict[str, float]:
    """CPU of one report cycle, in its own process as the daemon runs it."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    c0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "evo_agent.delivery", "cycle", "--config", str(cfg),
                    "--trigger", "manual"], env=env, cwd=REPO, check=True, capture_output=True)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"cycle_cpu_s": round((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), 3),
            "cycle_wall_s": round(time.monotonic() - c0, 3), "cycle_maxrss_kib": r1.ru_maxrss}


def measure(tmp: Path, idle_for: float, watchdog_usec: int = 30_000_000) -> int:
    """Start the daemon under ``tmp`` and print the figures."""
    pki = make_pki(tmp / "pki", "bench")
    srv = RegistryServer((pki.cert_pem, pki.key_pem))
    cfg = write_config(tmp / "agent.toml", tmp / "state", write_host_root(tmp / "root"), srv.url,
                       ca=pki.ca_pem)
    srv.registry.enroll(VPNID, signing.public_b64(signing.load_or_create(tmp / "state")))
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(str(tmp / "notify"))
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp / "notify"), PYTHONPATH=str(REPO))
    if watchdog_usec:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    host = HostEvents()
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "evo_agent", "daemon", "--config", str(cfg)],
                            env=env, stderr=subprocess.DEVNULL, cwd=REPO)
    ns.settimeout(30)
    ready = None
    while ready is None:
        if b"READY=1" in ns.recv(4096):
            ready = time.monotonic() - t0
    pings: list[float] = []

    def listen() -> None:  # systemd reads every notification; so must its stand-in
        ns.settimeout(None)
        while True:
            try:
                msg = ns.recv(4096)
            except OSError:
                return
            if b"WATCHDOG=1" in msg:
                pings.append(time.monotonic())

    threading.Thread(target=listen, daemon=True).start()
    end = time.monotonic() + 60
    while not srv.registry.stored and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(1.0)  # let the cycle child exit and the daemon settle
    before = _status(proc.pid)
    t_idle = time.monotonic()
    pings_before = len(pings)
    host.counting = True
    time.sleep(idle_for)
    after = _status(proc.pid)
    host.counting = False
    idle = time.monotonic() - t_idle
    pings_idle = len(pings) - pings_before
    t_term = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    sigterm_exit = time.monotonic() - t_term
    cycle = _cycle_cost(cfg, env)
    srv.stop()
    doc = {
        "python": sys.version.split()[0], "executable": sys.executable,
        "start_to_ready_s": round(ready, 3),
        "idle_rss_kib": after["VmRSS"], "idle_pss_kib": after["Pss"],
        "peak_rss_kib": after["VmHWM"],
        "idle_seconds": round(idle, 1),
        "idle_wakeups": after["voluntary_ctxt_switches"] - before["voluntary_ctxt_switches"],
        "idle_involuntary_switches": after["nonvoluntary_ctxt_switches"]
        - before["nonvoluntary_ctxt_switches"],
        "watchdog_pings_seen": pings_idle,
        "watchdog_pings_expected": int(idle // (watchdog_usec / 2e6)) if watchdog_usec else 0,
        "host_events_during_idle": host.counts,
        "sigterm_to_exit_s": round(sigterm_exit, 3),
        **cycle,
    }
    print(json.dumps(doc, indent=1))
    ns.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
