"""Inside the appliance VM: run the agent, gather the evidence, send it all out, power off.

Test only: the appliance test puts this file and evo-vm-probe.service into the image; the .deb
never ships them.  It runs with the guest's Debian python (3.11, Debian's libraries), as root,
after udev has settled and the network is configured, and writes ONE JSON document to the
virtio-serial port given as argv[1].  Each step is timed and its failure recorded, so one broken
step never hides the others; the host side (test_appliance.py) does all the asserting.
"""

# ruff: noqa: S606 - runs the guest's own tools (evo-agent, systemctl, udevadm) from PATH
import json
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

RESULTS: dict[str, Any] = {"steps": {}}
CONFIG_FILE = "/usr/local/lib/evo-vm/probe.json"


def sh(argv: list[str], timeout: float = 300,
       env: dict[str, str] | None = None) -> tuple[int, str, str, float]:
    """Run a command; return (status, stdout, stderr, wall seconds)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += f"\n[probe: killed after {timeout} s]"
    return proc.returncode, out, err, time.monotonic() - t0


def measured(argv: list[str], timeout: float = 300) -> dict[str, Any]:
    """Run a command and return its own wall time, CPU time and peak RSS (from wait4)."""
    t0 = time.monotonic()
    r, w = os.pipe()
    e_r, e_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.dup2(w, 1)
        os.dup2(e_w, 2)
        os.close(r)
        os.close(e_r)
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    os.close(w)
    os.close(e_w)
    chunks: list[bytes] = []
    errs: list[bytes] = []
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(r, selectors.EVENT_READ, chunks)
    sel.register(e_r, selectors.EVENT_READ, errs)
    open_fds = 2
    while open_fds:
        for key, _ in sel.select(timeout):
            data = os.read(key.fd, 65536)
            if not data:
                sel.unregister(key.fd)
                os.close(key.fd)
                open_fds -= 1
            else:
                key.data.append(data)
    _, status, ru = os.wait4(pid, 0)
    return {
        "status": os.waitstatus_to_exitcode(status),
        "stdout": b"".join(chunks).decode("utf-8", "replace"),
        "stderr": b"".join(errs).decode("utf-8", "replace"),
        "wall_s": round(time.monotonic() - t0, 3),
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
        "max_rss_kib": ru.ru_maxrss,
    }


def step(name: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Decorator: run the function now, record its result, time and any exception."""
    def wrap(fn: Callable[[], Any]) -> Callable[[], Any]:
        t0 = time.monotonic()
        try:
            value = fn()
            RESULTS["steps"][name] = {"ok": True, "s": round(time.monotonic() - t0, 3)}
            if value is not None:
                RESULTS[name] = value
        except Exception:
            RESULTS["steps"][name] = {"ok": False, "s": round(time.monotonic() - t0, 3),
                                      "error": traceback.format_exc()}
        return fn
    return wrap


def text(argv: list[str], timeout: float = 120) -> dict[str, Any]:
    """Run a command; return its status and output."""
    status, out, err, _ = sh(argv, timeout)
    return {"status": status, "stdout": out, "stderr": err}


def read(path: str) -> str | None:
    """Return a file's stripped text, or None."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None


def main() -> None:
    """Run every step, send the results, power off."""
    port = sys.argv[1]
    # On the console (StandardOutput=journal+console): the host's hang watch ends here.
    print("evo-vm-probe: started", flush=True)
    cfg = json.loads(read(CONFIG_FILE) or "{}")
    # The reboots in the delivery check only need the delivery steps (evo.probe=delivery); the
    # factory's boots (evo.probe=factory) only the units' state: nothing is sent then.
    words = (read("/proc/cmdline") or "").split()
    mode = next((w.split("=", 1)[1] for w in words if w.startswith("evo.probe=")), "full")
    full = mode == "full"
    RESULTS["full"] = full
    RESULTS["mode"] = mode
    RESULTS["started_monotonic"] = time.monotonic()

    @step("system_running")
    def _() -> Any:
        return text(["systemctl", "is-system-running", "--wait"], 300)

    @step("udev_settle")
    def _() -> Any:
        return text(["udevadm", "settle", "--timeout=120"], 150)

    @step("network")
    def _() -> Any:
        # networkd configures the static addresses; wait for both (bounded) before the inventory.
        want = set(cfg.get("guest_ips", []))
        deadline = time.monotonic() + 60
        while True:
            addrs = json.loads(sh(["ip", "-j", "addr"])[1] or "[]")
            have = {a["local"] for link in addrs for a in link.get("addr_info", [])}
            if want <= have or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        result = {"ip_addr": addrs, "ip_route": json.loads(sh(["ip", "-j", "route"])[1] or "[]"),
                  "waited_for": sorted(want), "missing": sorted(want - have)}
        # Reach the test's listener on the host side of the namespace, over each LAN.
        import socket

        reach = {}
        for peer in cfg.get("peers", []):
            try:
                with socket.create_connection((peer, cfg["echo_port"]), timeout=10) as s:
                    s.sendall(b"evo-vm hello\n")
                    reach[peer] = s.recv(100).decode("ascii", "replace").strip()
            except OSError as exc:
                reach[peer] = f"error: {exc}"
        result["reach"] = reach
        return result

    if cfg.get("delivery_wait_s") and mode in ("full", "delivery", "objection"):
        @step("delivery")
        def _() -> Any:
            # The daemon sends the boot report once the network is up: wait (bounded) until
            # `evo-agent status` shows a success and an empty outbox.
            deadline = time.monotonic() + cfg["delivery_wait_s"]
            polls = 0
            while True:
                polls += 1
                status = text(["evo-agent", "status", "--json"], 60)
                try:
                    doc = json.loads(status["stdout"])
                except ValueError:
                    doc = None
                done = bool(doc and doc["last_success"]["time"] and doc["outbox_depth"] == 0)
                if done or time.monotonic() > deadline:
                    break
                time.sleep(2)
            return {"status": status, "doc": doc, "done": done, "polls": polls,
                    "waited_s": round(time.monotonic() - RESULTS["started_monotonic"], 1)}

    if mode == "objection":
        @step("opt_out")
        def _() -> Any:
            return opt_out()

    if mode == "optedout":
        @step("opted_out")
        def _() -> Any:
            return opted_out(cfg)

    if full:
        @step("inventory_runs")
        def _() -> Any:
            return [measured(["evo-agent", "inventory", "--json"])
                    for _ in range(cfg.get("runs", 3))]

        @step("inventory_raw")
        def _() -> Any:
            return measured(["evo-agent", "inventory", "--raw", "--json"])

        @step("collectors")
        def _() -> Any:
            return measured(["evo-agent", "collectors", "--json"])

    if full:
        @step("hotplug")
        def _() -> Any:
            return hotplug()

    @step("units")
    def _() -> Any:
        out: dict[str, dict[str, Any]] = {}
        for unit in ("evo-agent.service", "evo-agent-manufacture.service"):
            show = sh(["systemctl", "show", unit, "--no-pager", "-p",
                       "ActiveState,SubState,Result,ExecMainStatus,NRestarts,ConditionResult,"
                       "UnitFileState,User,Group,MemoryMax,Nice,CPUSchedulingPolicy,IOSchedulingClass,"
                       "MainPID,ExecMainStartTimestampMonotonic,ActiveEnterTimestampMonotonic,"
                       "MemoryCurrent,CPUUsageNSec"])[1]
            out[unit] = {
                "show": dict(line.split("=", 1) for line in show.splitlines() if "=" in line),
                "journal": sh(["journalctl", "-b", "-u", unit, "-o", "cat", "--no-pager"])[1],
                "security": text(["systemd-analyze", "security", unit, "--no-pager"]),
            }
            m = re.search(r"Overall exposure level for \S+: ([0-9.]+)",
                          out[unit]["security"]["stdout"])
            out[unit]["exposure"] = float(m.group(1)) if m else None
            pid = out[unit]["show"].get("MainPID", "0")
            if pid != "0":
                status = read(f"/proc/{pid}/status") or ""
                out[unit]["proc_status"] = {k: v.strip() for k, _, v in
                                            (line.partition(":") for line in status.splitlines())
                                            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}
        return out

    @step("boot")
    def _() -> Any:
        return {
            "analyze": text(["systemd-analyze", "time", "--no-pager"]),
            "blame": sh(["systemd-analyze", "blame", "--no-pager"])[1].splitlines()[:25],
            "critical_chain": text(["systemd-analyze", "critical-chain", "multi-user.target",
                                    "--no-pager"]),
            "evo_units": [line.strip() for line in
                          sh(["systemd-analyze", "blame", "--no-pager"])[1].splitlines()
                          if "evo-agent" in line],
            "failed": text(["systemctl", "--failed", "--no-legend", "--no-pager"]),
            "cmdline": read("/proc/cmdline"),
            "kernel": read("/proc/sys/kernel/osrelease"),
        }

    if not full:
        RESULTS["finished_monotonic"] = time.monotonic()
        send(port, cfg)
        return

    @step("package")
    def _() -> Any:
        return {
            "dpkg": text(["dpkg-query", "-W", "-f",
                          "${Package} ${Version} ${Status}\n${Conffiles}\n", "evo-agent"]),
            "user": text(["getent", "passwd", "evo-agent"]),
            "state_dir": text(["ls", "-ld", "/var/lib/evo-agent"]),
            "python": sys.version,
            "libs": text(["dpkg-query", "-W", "python3-psutil", "python3-pyudev",
                          "python3-systemd", "python3-cryptography", "dmidecode"]),
        }

    @step("evidence")
    def _() -> Any:
        # Ground truth as the guest sees it, for the report when a value does not match.
        usb: dict[str, dict[str, str]] = {}
        for dev in sorted(os.listdir("/sys/bus/usb/devices")):
            base = f"/sys/bus/usb/devices/{dev}"
            if os.path.exists(f"{base}/idVendor"):
                usb[dev] = {k: read(f"{base}/{k}") or "" for k in
                            ("idVendor", "idProduct", "manufacturer", "product")}
        pci: dict[str, dict[str, str | None]] = {}
        for dev in sorted(os.listdir("/sys/bus/pci/devices")):
            base = f"/sys/bus/pci/devices/{dev}"
            pci[dev] = {k: read(f"{base}/{k}") for k in ("vendor", "device", "class")}
            pci[dev]["driver"] = os.path.basename(os.path.realpath(f"{base}/driver")) \
                if os.path.exists(f"{base}/driver") else None
            # The names udev itself gives the device: its hwdb lookup uses the full modalias,
            # subsystem IDs included ("... (QEMU Virtual Machine)" for the q35 host bridge).
            props = sh(["udevadm", "info", "--query=property", f"--path={base}"])[1]
            for line in props.splitlines():
                if line.startswith(("ID_VENDOR_FROM_DATABASE=", "ID_MODEL_FROM_DATABASE=")):
                    key, _, value = line.partition("=")
                    pci[dev][key] = value
        hwdb = {}
        for p in pci.values():
            vendor, device = (p["vendor"] or "")[2:].upper(), (p["device"] or "")[2:].upper()
            key = f"pci:v0000{vendor}d0000{device}"
            hwdb[key] = sh(["systemd-hwdb", "query", key])[1]
        for u in usb.values():
            key = f"usb:v{u['idVendor'].upper()}p{u['idProduct'].upper()}"
            hwdb[key] = sh(["systemd-hwdb", "query", key])[1]
        disks = {}
        for name in ("sda", "sr0"):
            disks[name] = sh(["udevadm", "info", "--query=property", f"--name=/dev/{name}"])[1]
        return {
            "dmidecode": sh(["dmidecode"])[1],
            "asound_cards": read("/proc/asound/cards"),
            "usb": usb, "pci": pci, "hwdb": hwdb, "disks": disks,
            "cpuinfo_model": sorted({line.split(":", 1)[1].strip()
                                     for line in (read("/proc/cpuinfo") or "").splitlines()
                                     if line.startswith("model name")}),
            "nproc": os.cpu_count(),
            "meminfo_total": (read("/proc/meminfo") or "").splitlines()[:1],
        }

    if cfg.get("bench_runs"):
        @step("bench")
        def _() -> Any:
            return text([sys.executable, "/usr/local/lib/evo-vm/bench/inventory_bench.py",
                         "--runs", str(cfg["bench_runs"]), "--python", sys.executable], 3600)

    RESULTS["finished_monotonic"] = time.monotonic()
    send(port, cfg)


def _switches(pid: str) -> int:
    """Return the context switches of all of a process's threads so far (its wake-ups)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        for line in (read(f"/proc/{pid}/task/{task}/status") or "").splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def hotplug() -> dict[str, Any]:
    """What the daemon listens to, seen from the kernel, and what a udev event does to it.

    Its netlink sockets (/proc/net/netlink rows whose inode is one of its fds: protocol 15 is
    NETLINK_KOBJECT_UEVENT, Groups the multicast groups: 2 is udevd's monitor, 1 the kernel's),
    the clocks of its timerfds (7 = CLOCK_BOOTTIME), its wake-ups while udevd announces events
    of subsystems it filters out (tty, mem), and its refresh after a sound "change" event.
    """
    pid = sh(["systemctl", "show", "-p", "MainPID", "--value", "evo-agent.service"])[1].strip()
    fds = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
    inodes = {t[len("socket:["):-1] for t in fds.values() if t.startswith("socket:[")}
    netlink = []
    for line in (read("/proc/net/netlink") or "").splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 10 and cols[9] in inodes:
            netlink.append({"protocol": int(cols[1]), "groups": cols[3]})
    clockids = []
    for fd, target in fds.items():
        if target == "anon_inode:[timerfd]":
            m = re.search(r"clockid:\s*(\d+)", read(f"/proc/{pid}/fdinfo/{fd}") or "")
            if m:
                clockids.append(int(m.group(1)))
    # Events the daemon's filter drops in the kernel: it should hardly wake up.
    before = _switches(pid)
    trig = sh(["udevadm", "trigger", "--verbose", "--action=change", "--subsystem-match=tty",
               "--subsystem-match=mem"])
    sh(["udevadm", "settle", "--timeout=60"])
    time.sleep(2)
    filtered = {"events": len(trig[1].split()), "wakeups": _switches(pid) - before}
    # A sound "change" event: the daemon refreshes its local inventory after HOTPLUG_SETTLE.
    # Watched by reading the file the refresh writes, every 2 s, for up to 240 s: the daemon
    # and its child run at idle CPU priority (SCHED_IDLE), and a first version, which ran
    # journalctl every second for 90 s, saw nothing while the journal had the line soon after.
    local = "/var/lib/evo-agent/local.json"
    t_wall = time.time()
    sound = sh(["udevadm", "trigger", "--verbose", "--action=change",
                "--subsystem-match=sound"])
    t0 = time.monotonic()
    snapshot: dict[str, Any] = {}
    while time.monotonic() - t0 < 240:
        time.sleep(2)
        try:
            with open(local, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        if doc.get("time", 0) > t_wall:
            snapshot = {"reason": doc.get("reason"), "after_s": round(doc["time"] - t_wall, 1)}
            break
    refreshed = ""
    for _ in range(15):  # the daemon logs once its child has exited
        refreshed = next((line for line in sh(["journalctl", "-u", "evo-agent.service", "-o",
                                               "cat", "--no-pager"])[1].splitlines()
                          if "local inventory refreshed" in line), "")
        if refreshed or not snapshot:
            break
        time.sleep(3)
    return {"pid": pid, "netlink": netlink, "timerfd_clockids": clockids,
            "filtered": filtered, "sound_events": len(sound[1].split()),
            "snapshot": snapshot, "refreshed": refreshed,
            "refresh_s": round(time.monotonic() - t0, 1)}


STATE_DIR = "/var/lib/evo-agent"


def agent_state() -> dict[str, Any]:
    """What the unit keeps of its decision and what waits: marker, objection.json, outbox."""
    try:
        objection = json.loads(read(f"{STATE_DIR}/objection.json") or "null")
    except ValueError:
        objection = "unreadable"
    outbox = f"{STATE_DIR}/outbox"
    waiting = sorted(n for n in os.listdir(outbox) if n.endswith(".json")) \
        if os.path.isdir(outbox) else []
    status = text(["evo-agent", "status", "--json"], 60)
    try:
        status_doc = json.loads(status["stdout"])
    except ValueError:
        status_doc = None
    return {"marker": os.path.exists(f"{STATE_DIR}/opted-out"), "objection": objection,
            "outbox": waiting, "status": text(["evo-agent", "status"], 60),
            "status_doc": status_doc,
            "journal": sh(["journalctl", "-b", "-u", "evo-agent.service", "-o", "cat",
                           "--no-pager"])[1]}


def _journal_has(needle: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in sh(["journalctl", "-b", "-u", "evo-agent.service", "-o", "cat",
                         "--no-pager"])[1]:
            return True
        time.sleep(1)
    return False


def opt_out() -> dict[str, Any]:
    """The owner objects (after this boot's report went): `evo-agent opt-out` as root."""
    result = text(["evo-agent", "opt-out"], 300)
    # the verb tells the running daemon (SIGHUP); it says so in the journal when it has read it
    heard = _journal_has("opted out: no collection, no delivery", 60)
    return {"opt_out": result, "daemon_heard": heard, **agent_state()}


def opted_out(cfg: dict[str, Any]) -> dict[str, Any]:
    """A boot of an opted-out unit: nothing may leave it until the owner opts in again.

    Waits until the boot report would have been due (the unit's boot splay, given by the host,
    plus a margin), looks, then `evo-agent opt-in` and waits for the report that follows.
    """
    quiet_until = float(cfg.get("opted_out_quiet_s", 120))
    while time.clock_gettime(time.CLOCK_BOOTTIME) < quiet_until:
        time.sleep(1)
    before = {"boottime_s": round(time.clock_gettime(time.CLOCK_BOOTTIME), 1), **agent_state()}
    asked = time.time()
    result = text(["evo-agent", "opt-in"], 300)
    # opted in: the daemon reads the decision (SIGHUP) and sends this boot's report
    deadline = time.monotonic() + float(cfg.get("delivery_wait_s", 420))
    while True:
        after = agent_state()
        doc = after["status_doc"] or {}
        last = (doc.get("last_success") or {}).get("time")
        if (last and last >= asked and doc.get("outbox_depth") == 0) \
                or time.monotonic() > deadline:
            break
        time.sleep(2)
    return {"before": before, "opt_in": result, "after": after}


def send(port: str, cfg: dict[str, Any]) -> None:
    """Write the results to the virtio port, then power off."""
    data = (json.dumps(RESULTS) + "\n").encode()
    # A virtio port takes a write in pieces (32 KiB at a time here): loop until all is out.
    # (fsync on a port is EINVAL; close() waits for nothing, so the host reads to the newline.)
    fd = os.open(port, os.O_WRONLY)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    if cfg.get("poweroff", True):
        subprocess.run(["systemctl", "poweroff", "--no-block"], check=False)


if __name__ == "__main__":
    main()
