"""The delivery verbs of ``evo-agent``: daemon, status, send, diff, sent, doctor.

Kept apart from ``evo_agent.cli`` so that the inventory verbs and these evolve without touching
each other; ``cli`` calls :func:`add_verbs`.  Technicians run these over the VPN by SSH.  The verbs
that only read (status, diff, sent, doctor) work for members of the ``evo-support`` group, which
may read the state directory and connect to the control socket; ``send`` and ``daemon`` change state
and need root.  Each use is logged to the journal (through syslog(3), which journald collects, so
no extra library is loaded).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from evo_agent.delivery import objection
from evo_agent.errors import DeliveryError, EvoError, NotPermitted, StateError

if TYPE_CHECKING:  # tomllib stays out of the resident daemon's memory
    from evo_agent.config import Config

READ_TIMEOUT = 5.0


def add_verbs(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the delivery verbs to ``evo-agent``'s sub-parsers."""
    d = sub.add_parser("daemon", parents=[common],
                       help="run the delivery service (what the systemd unit runs)")
    d.set_defaults(handler=cmd_daemon)
    st = sub.add_parser("status", parents=[common],
                        help="daemon state, last attempt and success, next due, outbox, VPN")
    st.add_argument("--json", action="store_true", help="as JSON")
    st.set_defaults(handler=cmd_status)
    se = sub.add_parser("send", parents=[common],
                        help="send a report now (through the daemon if it runs); needs root")
    se.add_argument("--now", action="store_true", required=True,
                    help="collect and send a report now")
    se.add_argument("--via", choices=("vpn", "https"), help="use this path only (no fallback)")
    se.set_defaults(handler=cmd_send)
    di = sub.add_parser("diff", parents=[common],
                        help="this inventory against the last report sent, field by field")
    di.add_argument("--json", action="store_true", help="as JSON")
    di.set_defaults(handler=cmd_diff)
    sn = sub.add_parser("sent", parents=[common],
                        help="the transparency log: what left this device, byte for byte")
    sn.add_argument("count", nargs="?", type=int, default=10, metavar="N",
                    help="the last N entries (default 10)")
    sn.add_argument("--bytes", action="store_true",
                    help="also print the exact bytes of each report")
    sn.add_argument("--json", action="store_true", help="as JSON")
    sn.set_defaults(handler=cmd_sent)
    do = sub.add_parser("doctor", parents=[common],
                        help="check config, key, clock, DNS, VPN, TLS and disk; say how to fix")
    do.add_argument("--json", action="store_true", help="as JSON")
    do.set_defaults(handler=cmd_doctor)


def _audit(verb: str) -> None:
    import syslog

    syslog.openlog("evo-agent", syslog.LOG_PID, syslog.LOG_DAEMON)
    syslog.syslog(syslog.LOG_INFO, f"evo-agent {verb} run by uid {os.getuid()}")


def _config(args: argparse.Namespace) -> Config:
    from evo_agent.config import load

    return load(getattr(args, "config", None))


def _dump(doc: Any, out: TextIO) -> None:
    json.dump(doc, out, indent=2, ensure_ascii=False, default=str)
    out.write("\n")


def _fmt(wall: float | None) -> str:
    if wall is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wall))


# -- daemon, send --------------------------------------------------------------------------------
def cmd_daemon(args: argparse.Namespace, out: TextIO) -> int:
    """Run the resident service."""
    from evo_agent.delivery import daemon

    # The unit runs it as the system user evo-agent (units/evo-agent.service): what it needs is
    # write access to the state directory, which it checks when it starts.
    return daemon.main(getattr(args, "config", None), getattr(args, "verbose", False))


def cmd_send(args: argparse.Namespace, out: TextIO) -> int:
    """Send a report now; exit 0 only when the registry acknowledged it."""
    from evo_agent.delivery import control
    from evo_agent.delivery.outbox import Outbox, writer_lock

    _audit("send --now")
    if os.geteuid() != 0:
        raise NotPermitted("evo-agent send: needs root (it writes the outbox); use sudo")
    cfg = _config(args)
    via = args.via or "auto"
    sock = str(cfg.values["agent"]["control_socket"])
    timeout = cfg.collector_timeout * 3 + cfg.values["delivery"]["total_timeout"] * 4 + 60
    try:
        result = control.request(sock, {"op": "send", "via": via}, timeout)
        how = "through the daemon"
    except control.NoDaemon:
        if not objection.enabled(cfg):
            with writer_lock(cfg.state_dir):  # nothing queued before the opt-out is sent after
                Outbox(cfg.state_dir).purge()
            raise DeliveryError("not sent: opted out ([agent] enabled = false or "
                                "evo-agent opt-out)") from None
        result = standalone_cycle(cfg, via)
        how = "standalone (no daemon runs)"
    except (OSError, ValueError) as exc:
        raise DeliveryError(f"the daemon did not answer: {exc}") from None
    if result.get("ok") and result.get("acknowledged"):
        print(f"acknowledged via {result.get('path')} ({how}): "
              f"{', '.join(result['acknowledged'])}", file=out)
        return 0
    code = int(result.get("exit_code") or DeliveryError.exit_code)
    if code == NotPermitted.exit_code:
        raise NotPermitted(f"not sent: {result.get('error')}")
    if code == StateError.exit_code:  # disk full, read-only, device key gone
        gone = result.get("acknowledged") or []
        raise StateError(f"{result.get('error')}"
                         + (f" (acknowledged before that: {', '.join(gone)})" if gone else ""))
    raise DeliveryError(f"not acknowledged ({how}): {result.get('error')}")


def standalone_cycle(cfg: Config, via: str) -> dict[str, Any]:
    """Run a manual cycle here; as root, write the state directory as its owner (the daemon's user).

    Files that root created in the daemon's state directory would lock the daemon out of them (an
    index it must append to, a key it must read).  So root collects (with root's rights, like the
    daemon's capability) and a child that has dropped to the directory's owner does the writing.
    """
    from evo_agent.delivery.cycle import run_cycle

    try:
        st = cfg.state_dir.stat()
    except FileNotFoundError:
        st = None
    if st is None or os.geteuid() != 0 or st.st_uid == 0:
        return run_cycle(cfg, trigger="manual", via=via).__dict__
    import gzip  # noqa: F401 - imported before the drop: the child may not read root's paths
    import http.client  # noqa: F401
    import ssl  # noqa: F401

    from evo_agent.delivery import signing, translog, transport  # noqa: F401
    from evo_agent.delivery.cycle import collect_report

    report = collect_report(cfg, "manual")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the owner, run the cycle, report on the pipe
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(st.st_gid)
            os.setuid(st.st_uid)
            doc: dict[str, Any] = run_cycle(cfg, trigger="manual", via=via,
                                            report=report).__dict__
        except EvoError as exc:
            doc = {"ok": False, "error": str(exc), "exit_code": exc.exit_code}
        except BaseException as exc:  # anything must reach the parent
            doc = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "exit_code": 70}
        with os.fdopen(w, "wb") as fh:
            fh.write(json.dumps(doc).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    try:
        answer = json.loads(data)
    except ValueError:
        answer = {"ok": False, "error": "the sending process died", "exit_code": 70}
    return answer if isinstance(answer, dict) else {"ok": False, "error": "no result"}


# -- status --------------------------------------------------------------------------------------
def status_doc(cfg: Config) -> dict[str, Any]:
    """Return everything `status` shows."""
    from evo_agent.delivery import control, transport
    from evo_agent.delivery.cycle import vpnid_of
    from evo_agent.delivery.outbox import Outbox
    from evo_agent.delivery.schedule import State, load_state, next_due, read_clock

    state = load_state(cfg.state_dir / "state.json")
    try:
        daemon: dict[str, Any] | None = control.request(
            str(cfg.values["agent"]["control_socket"]), {"op": "status"}, READ_TIMEOUT)
    except (control.NoDaemon, OSError, ValueError):
        daemon = None
    try:
        pending = Outbox(cfg.state_dir).pending()
        depth: int | str = len(pending)
    except OSError as exc:
        depth = f"unreadable: {exc.strerror}"
    delivery = cfg.values["delivery"]
    vpn_ok, vpn_why = transport.vpn_state(delivery["vpn_url"], delivery["vpn_interface"])
    now = read_clock()
    due = next_due(state, now, vpnid_of(cfg))
    next_doc = {"time": due.wall(now), "trigger": due.trigger, "reason": due.reason}
    theirs = daemon.get("next_due") if daemon else None
    if isinstance(theirs, dict) and {"wall", "trigger", "reason"} <= set(theirs):
        # the running daemon knows more (e.g. that the report waits for a route)
        next_doc = {"time": theirs["wall"], "trigger": theirs["trigger"],
                    "reason": theirs["reason"]}
    unsaved = daemon.get("unsaved_state") if daemon else None
    if isinstance(unsaved, dict):  # state.json could not take the daemon's latest (disk full)
        with contextlib.suppress(ValueError, TypeError):
            state = State.from_json(json.dumps(unsaved).encode())
    try:
        local = json.loads((cfg.state_dir / "local.json").read_bytes())
        local_doc: dict[str, Any] | None = {k: local.get(k) for k in
                                            ("time", "reason", "differences_from_sent")}
    except (OSError, ValueError, AttributeError):
        local_doc = None
    enabled = objection.enabled(cfg)
    return {
        "enabled": enabled,
        # where reports go; none configured means nothing can be delivered
        "destinations": [url for url in (delivery["vpn_url"], delivery["https_url"]) if url],
        # the owner's objection or its withdrawal, waiting for the registry
        # (evo_agent.delivery.objection)
        "objection_waiting": objection.waiting(cfg.state_dir),
        "daemon": {"running": daemon is not None,
                   **({k: daemon.get(k) for k in ("pid", "started", "cycle_running")}
                      if daemon else {})},
        "last_attempt": {"time": state.attempt_wall, "result": state.attempt_result},
        "last_success": {"time": state.success_wall, "path": state.success_path},
        "consecutive_failures": state.failures,
        "next_due": (next_doc if enabled else None),
        "outbox_depth": depth,
        "vpn": {"usable": vpn_ok, "detail": vpn_why},
        "local_inventory": local_doc,
        "state_dir": str(cfg.state_dir),
        "disk": disk_state(cfg.state_dir),
        "problems": problems(cfg),
    }


#: Free space below which the state directory's file system counts as full (a report, its copy in
#: the transparency log and the state files need a few hundred KiB) or low.
DISK_FULL = 1 << 20
DISK_LOW = 50 << 20


def disk_state(state_dir: Path) -> dict[str, Any]:
    """Return the free space of the state directory's file system and what it means."""
    try:
        st = os.statvfs(state_dir)
    except OSError as exc:
        return {"level": "fail", "detail": f"{state_dir}: {exc.strerror}", "free_bytes": None}
    free = st.f_bavail * st.f_frsize
    where = f"the file system holding {state_dir}"
    if st.f_flag & os.ST_RDONLY:
        level, detail = "fail", f"{where} is mounted read-only: nothing can be queued or sent"
    elif free < DISK_FULL:
        level, detail = "fail", (f"{where} is full ({free >> 10} KiB free): reports are not "
                                 "queued nor sent until space is freed")
    elif free < DISK_LOW:
        level, detail = "warn", f"{free >> 20} MiB free in {where}"
    else:
        level, detail = "ok", f"{free >> 20} MiB free in {where}"
    return {"level": level, "detail": detail, "free_bytes": free}


def problems(cfg: Config) -> list[str]:
    """Return what stops delivery now and needs a person: disk, device key, VPNID."""
    from evo_agent.delivery import signing
    from evo_agent.delivery.cycle import vpnid_problem

    out = []
    if cfg.state_dir.is_dir():
        disk = disk_state(cfg.state_dir)
        if disk["level"] == "fail":
            out.append(str(disk["detail"]))
        used = None if signing.key_path(cfg.state_dir).exists() else \
            signing.used_before(cfg.state_dir)
        if used is not None:
            out.append(signing.missing_key_message(cfg.state_dir, used))
    problem = vpnid_problem(cfg)[1]
    if problem is not None:
        out.append(f"{problem}: nothing is collected nor sent")
    return out


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    """Show the delivery state."""
    _audit("status")
    doc = status_doc(_config(args))
    if args.json:
        _dump(doc, out)
        return 0
    d = doc["daemon"]
    rows = [
        ("delivery", ("OPTED OUT (enabled = false or evo-agent opt-out)" if not doc["enabled"]
                      else "enabled, to " + " then ".join(doc["destinations"])
                      if doc["destinations"]
                      else "NOT CONFIGURED: no vpn_url or https_url in [delivery]")),
        ("daemon", f"running (pid {d['pid']})" if d["running"] else "not running"),
        ("last attempt", f"{_fmt(doc['last_attempt']['time'])}: "
                         f"{doc['last_attempt']['result'] or '-'}"),
        ("last success", f"{_fmt(doc['last_success']['time'])}"
                         + (f" via {doc['last_success']['path']}"
                            if doc["last_success"]["path"] else "")),
        ("next due", f"{_fmt(doc['next_due']['time'])} ({doc['next_due']['trigger']}: "
                     f"{doc['next_due']['reason']})" if doc["next_due"] else "-"),
        ("outbox", f"{doc['outbox_depth']} waiting"),
        ("vpn", ("usable: " if doc["vpn"]["usable"] else "not used: ") + doc["vpn"]["detail"]),
    ]
    disk = doc["disk"]
    if disk["level"] != "ok":
        rows.append(("disk", disk["detail"]))
    local = doc["local_inventory"]
    if local:
        differ = local.get("differences_from_sent")
        rows.append(("inventory", f"refreshed {_fmt(local.get('time'))} ({local.get('reason')})"
                     + (f", {differ} field(s) differ from the last report sent"
                        if differ is not None else "")))
    rows += [("PROBLEM", p) for p in doc["problems"]]
    for k, v in rows:
        out.write(f"{k + ':':<14}{v}\n")
    return 0


# -- diff, sent ----------------------------------------------------------------------------------
def current_report(cfg: Config) -> tuple[dict[str, Any], str]:
    """Return the inventory as of now, and who collected it.

    The daemon collects it when it runs (with its rights: a technician's own account may not
    read what the daemon reads, e.g. the SMBIOS table, and would see false differences); else
    this process collects it.
    """
    from evo_agent.delivery import control
    from evo_agent.delivery.cycle import LOCAL_INVENTORY, collect_report

    try:
        answer = control.request(str(cfg.values["agent"]["control_socket"]), {"op": "refresh"},
                                 cfg.collector_timeout * 3 + 30)
    except control.NoDaemon:
        return collect_report(cfg, "manual"), f"collected by this process (uid {os.getuid()})"
    except (OSError, ValueError) as exc:
        raise EvoError(f"the daemon did not answer: {exc}") from None
    if not answer.get("ok"):
        raise DeliveryError(f"the daemon could not collect: {answer.get('error')}")
    doc = json.loads((cfg.state_dir / LOCAL_INVENTORY).read_bytes())
    return doc["report"], "collected by the daemon"


def cmd_diff(args: argparse.Namespace, out: TextIO) -> int:
    """Compare this inventory with the last report the registry acknowledged."""
    from evo_agent.delivery.translog import TransparencyLog
    from evo_agent.report import diff_reports

    _audit("diff")
    cfg = _config(args)
    last = TransparencyLog(cfg.state_dir).last_acknowledged()
    if last is None:
        # A unit that has not delivered yet (new, offline, opted out) is in a normal state.
        note = ("nothing to compare with: no report was acknowledged yet (or the transparency "
                "log no longer holds it); see 'evo-agent sent'")
        if args.json:
            _dump({"compared_with": None, "current": None, "differences": None, "note": note},
                  out)
        else:
            out.write(note + "\n")
        return 0
    entry, data = last
    now, who = current_report(cfg)
    rows = diff_reports(json.loads(data), now)
    if args.json:
        _dump({"compared_with": entry, "current": who, "differences": rows}, out)
        return 0
    out.write(f"compared with report {entry['report_id']} sent {_fmt(entry.get('time'))}; "
              f"current inventory {who}\n")
    if not rows:
        out.write("no difference\n")
    for r in rows:
        out.write(f"{r['field']}: {json.dumps(r['sent'])} -> {json.dumps(r['now'])}\n")
    return 0


def cmd_sent(args: argparse.Namespace, out: TextIO) -> int:
    """Show the transparency log."""
    from evo_agent.delivery.translog import TransparencyLog

    _audit("sent")
    cfg = _config(args)
    log = TransparencyLog(cfg.state_dir)
    entries = log.entries()[-max(args.count, 0):] if args.count > 0 else []
    if args.json:
        docs = []
        for e in entries:
            doc = dict(e)
            if args.bytes:
                data = log.content(e)
                doc["content"] = data.decode("utf-8") if data is not None else None
            docs.append(doc)
        _dump(docs, out)
        return 0
    if not entries:
        out.write("nothing was sent from this device (or the log was emptied)\n")
    for e in entries:
        status = e.get("status") if e.get("status") is not None else "no answer"
        out.write(f"{_fmt(e.get('time'))}  {status}  {e.get('path'):<5}  "
                  f"seq {e.get('sequence')}  {e.get('report_id')}  sha256 {e.get('sha256')}  "
                  f"{e.get('bytes')} bytes -> {e.get('url')}\n")
        if args.bytes:
            data = log.content(e)
            out.write((data.decode("utf-8") if data is not None else "(no longer kept)") + "\n")
    return 0


# -- doctor --------------------------------------------------------------------------------------
def _check(rows: list[dict[str, str]], name: str, level: str, detail: str, fix: str = "") -> None:
    rows.append({"check": name, "result": level, "detail": detail, "fix": fix})


def _tls_probe(url: str, ca_bundle: str, timeout: float) -> tuple[str, str, str]:
    import socket
    import ssl
    from urllib.parse import urlsplit

    from evo_agent.delivery.transport import tls_context

    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            if parts.scheme != "https":
                return "ok", f"{host}:{port} reachable (plain http: VPN or loopback only)", ""
            with tls_context(ca_bundle).wrap_socket(raw, server_hostname=host) as tls:
                cert = tls.getpeercert() or {}
    except ssl.SSLCertVerificationError as exc:
        return "fail", f"{url}: certificate not trusted ({exc.verify_message})", \
            "check [delivery] ca_bundle and the clock"
    except (OSError, EvoError) as exc:
        return "fail", f"{url}: {exc}", "check the network, the firewall and the URL"
    not_after = str(cert.get("notAfter", ""))
    days = (ssl.cert_time_to_seconds(not_after) - time.time()) / 86400 if not_after else None
    if days is not None and days < 14:
        return "warn", f"{url}: certificate expires in {days:.0f} days", \
            "tell the registry operators"
    return "ok", f"{url}: TLS verified, certificate valid {days:.0f} more days" \
        if days is not None else f"{url}: TLS verified", ""


def doctor_rows(args: argparse.Namespace) -> list[dict[str, str]]:
    """Run every check."""
    from evo_agent.delivery import control

    rows: list[dict[str, str]] = []
    try:
        cfg = _config(args)
    except EvoError as exc:
        _check(rows, "config", "fail", str(exc), "fix the file and key named above")
        return rows
    _check(rows, "config", "ok", ", ".join(str(p) for p in cfg.sources) or "built-in defaults")
    enabled = objection.enabled(cfg)
    _check(rows, "enabled", "ok" if enabled else "warn",
           "delivery enabled" if enabled else "opted out: nothing is collected or sent",
           "" if enabled else "evo-agent opt-in, with [agent] enabled = true, to report again")
    _check_state_dir(rows, cfg.state_dir)
    _check_vpnid(rows, cfg)
    _check_clock(rows)
    _check_endpoints(rows, cfg)
    try:
        control.request(str(cfg.values["agent"]["control_socket"]), {"op": "status"},
                        READ_TIMEOUT)
        _check(rows, "daemon", "ok", "running")
    except (control.NoDaemon, OSError, ValueError):
        _check(rows, "daemon", "warn", "not running", "systemctl start evo-agent")
    return rows


def _check_state_dir(rows: list[dict[str, str]], sd: Path) -> None:
    from evo_agent.delivery import signing

    if not sd.is_dir():
        _check(rows, "state dir", "fail", f"{sd} does not exist", "start the daemon once "
               "(it creates it), or mkdir -m 750 it")
    else:
        disk = disk_state(sd)
        _check(rows, "disk space", str(disk["level"]), str(disk["detail"]),
               "" if disk["level"] == "ok" else "free space on that file system (or remount "
               "it read-write)")
        key = signing.key_path(sd)
        try:
            problem = signing.mode_problem(key)
            if problem:
                _check(rows, "device key", "fail", problem, f"chmod 600 {key}")
            elif not os.access(key, os.R_OK):  # a support account: the key is not for it
                _check(rows, "device key", "warn", f"{key}: mode 0600, owner uid "
                       f"{key.stat().st_uid}; its content is not readable by uid {os.getuid()}",
                       "run doctor as root to check the key itself")
            else:
                signing.load(key)
                _check(rows, "device key", "ok", f"{key}: Ed25519, mode 0600")
        except FileNotFoundError:
            used = signing.used_before(sd)
            if used is not None:
                _check(rows, "device key", "fail", signing.missing_key_message(sd, used),
                       "re-enrol the unit (evo-agent manufacture --force) or restore the key")
            else:
                _check(rows, "device key", "warn", f"{key} absent",
                       "start the daemon once: it creates the key (then enrol it)")
        except EvoError as exc:
            _check(rows, "device key", "fail", str(exc), "re-create the key and re-enrol")


def _check_vpnid(rows: list[dict[str, str]], cfg: Config) -> None:
    from evo_agent.delivery.cycle import vpnid_problem

    vpnid, problem = vpnid_problem(cfg)
    if problem is None:
        _check(rows, "VPNID", "ok", vpnid)
    else:
        _check(rows, "VPNID", "fail", problem,
               "write the VPNID printed on the unit's label there (evo-agent manufacture)")


def _check_clock(rows: list[dict[str, str]]) -> None:
    year = time.gmtime().tm_year
    synced = Path("/run/systemd/timesync/synchronized").exists()
    if year < 2024:
        _check(rows, "clock", "fail", f"the clock says {year}", "check NTP: timedatectl status")
    else:
        _check(rows, "clock", "ok" if synced else "warn",
               time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
               + (", NTP synchronised" if synced else ", NTP sync not confirmed"),
               "" if synced else "timedatectl status; systemctl status systemd-timesyncd")


def _check_endpoints(rows: list[dict[str, str]], cfg: Config) -> None:
    import socket

    from evo_agent.delivery import transport

    delivery = cfg.values["delivery"]
    ca = delivery["ca_bundle"]
    if ca and not Path(ca).is_file():
        _check(rows, "CA bundle", "fail", f"{ca} does not exist", "install the registry CA there")
    for name in ("vpn_url", "https_url"):
        url = delivery[name]
        if not url:
            _check(rows, name, "warn", "not configured", f"set [delivery] {name}")
            continue
        host = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
        try:
            socket.getaddrinfo(host, None)
            _check(rows, f"DNS {host}", "ok", "resolves")
        except OSError as exc:
            _check(rows, f"DNS {host}", "fail", str(exc), "check /etc/resolv.conf and the VPN")
            continue
        if name == "vpn_url" and not transport.vpn_state(url, delivery["vpn_interface"])[0]:
            continue  # reported by the VPN check
        level, detail, fix = _tls_probe(url, ca, delivery["connect_timeout"])
        _check(rows, f"reach {name}", level, detail, fix)
    vpn_ok, why = transport.vpn_state(delivery["vpn_url"], delivery["vpn_interface"])
    _check(rows, "VPN", "ok" if vpn_ok else "warn", why,
           "" if vpn_ok else "systemctl status of the VPN service; ip route get <endpoint>")


def cmd_doctor(args: argparse.Namespace, out: TextIO) -> int:
    """Check everything delivery depends on."""
    _audit("doctor")
    rows = doctor_rows(args)
    if args.json:
        _dump(rows, out)
    else:
        for r in rows:
            out.write(f"{r['result'].upper():<5} {r['check']:<16} {r['detail']}\n")
            if r["fix"]:
                out.write(f"{'':<22}fix: {r['fix']}\n")
    return 1 if any(r["result"] == "fail" for r in rows) else 0

