"""One report cycle: send what waits, collect, queue, send, acknowledge; and its child process.

The resident daemon (``evo_agent.delivery.daemon``) never collects nor sends itself: for each
cycle it starts ``python3 -m evo_agent.delivery cycle ...`` and reads one JSON line of result.
That process imports the collectors (psutil, pyudev... whatever they need), cryptography, ssl and
http.client, does the work and exits, returning its memory.  The daemon stays a small supervisor
that sleeps, and a cycle killed at any point (SIGKILL, power cut, watchdog) leaves only states
that the outbox protocol recovers from (``evo_agent.delivery.outbox``).  ``evo-agent send --now``
without a daemon runs the same :func:`run_cycle` in its own process.

A cycle, under the state directory's writer lock:

1. opted out (``[agent] enabled = false`` or ``evo-agent opt-out``): the outbox is emptied, the
   objection is sent if the registry was not told yet (``evo_agent.delivery.objection``), nothing
   else;
2. temp files of an interrupted cycle are removed; the device key is created if absent on a unit
   that never used one (else the unit must be re-enrolled: nothing is sent);
3. the VPNID file must hold a VPNID, or nothing is collected nor sent (a report without one can
   never be accepted); after an opt-in, the withdrawal of the objection is sent before any report;
   a waiting report built under another VPNID (or none) is set aside in ``outbox/rejected/`` and a
   fresh one takes its place;
4. waiting reports are sent oldest first, each removed only on 200/201: the transparency log
   keeps its bytes before it goes (a full disk: not sent) and a line for every request that left;
5. a scheduled report (boot, daily) that finds a periodic report waiting is that report: the
   waiting one was collected for this same due time and failed, so the retry sends it rather
   than a second one (no double report after an outage); otherwise a new report is collected,
   queued (durably) and sent if the waiting ones went, or kept for the retry if they did not (it
   replaces a waiting periodic one); ``send --now`` always collects a fresh one;
6. the schedule state records success, or a failure with its backoff and the backend's
   Retry-After.  A state directory that cannot be written (disk full, read-only) fails the cycle
   with exit 74 and a message naming the file system; a report the registry acknowledged leaves
   the outbox all the same.

The child also answers ``describe``: the validated config values the daemon needs, so the daemon
never imports the collectors to validate ``[collectors.*]`` sections.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evo_agent.config import DEFAULT_VPNID_FILE, Config
from evo_agent.delivery import objection
from evo_agent.delivery.outbox import Entry, Outbox, ensure_dir, prune, state_error, writer_lock
from evo_agent.delivery.schedule import (
    Now,
    after_failure,
    after_nothing_waiting,
    after_success,
    load_state,
    read_clock,
    save_state,
)
from evo_agent.errors import DeliveryError, EvoError, StateError, printable

LOG = logging.getLogger(__name__)

#: Status codes meaning "these bytes will never be accepted": the report is set aside, not retried
#: (docs/protocol.md: invalid, too large, its UUID stored for another device, wrong media type).
#: 401 and 404 are retried: an enrolment or a re-enrolment may come later.
REJECTED = (400, 409, 413, 415)


@dataclass
class CycleResult:
    """What one cycle did (the child prints it as one JSON line)."""

    ok: bool
    acknowledged: list[str] = field(default_factory=list)
    path: str | None = None
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    queued: str | None = None
    disabled: bool = False
    #: what could not be written to the state directory (disk full, read-only), if anything
    state_error: str | None = None
    #: True once state.json records this cycle (else the daemon keeps its backoff in memory)
    state_saved: bool = False
    #: the exit status when not 0 or 75 (74: the state directory failed part of the cycle)
    exit_code: int | None = None

    def to_json(self) -> str:
        """Serialise as one line."""
        return json.dumps(asdict(self), sort_keys=True)


def vpnid_of(cfg: Config) -> str:
    """Return this device's VPNID as the identity collector would read it ('' when unset)."""
    from evo_agent.report import open_host

    try:
        with open_host(cfg) as host:
            return host.read_attr(_vpnid_file(cfg)) or ""
    except ValueError:
        return ""


def _vpnid_file(cfg: Config) -> str:
    return str(cfg.collectors.get("identity", {}).get("vpnid_file", DEFAULT_VPNID_FILE))


def vpnid_problem(cfg: Config) -> tuple[str, str | None]:
    """Return (the VPNID a report would carry, what is wrong with the VPNID file or None)."""
    from evo_agent.policy import CLEANERS

    raw = vpnid_of(cfg)
    where = _vpnid_file(cfg)
    if not raw:
        return "", f"the VPNID file {where} is missing or empty"
    value = CLEANERS["vpnid"](raw)
    if value != raw:
        return "", (f"the VPNID file {where} holds {printable(raw, 40)!r}, not a VPNID "
                    "(letters, digits, '-' and '_', at most 64)")
    return str(value), None


def collect_report(cfg: Config, trigger: str) -> dict[str, Any]:
    """Collect the inventory and build the report as the privacy filter allows it."""
    from evo_agent.report import inventory_report

    return inventory_report(cfg, trigger=trigger).report


def _send(cfg: Config, entry: Entry, via: str, key: Any, *, clock: Callable[[], Now],
          result: CycleResult) -> bool:
    """Send one queued report; return True when acknowledged."""
    from evo_agent.delivery import signing, transport
    from evo_agent.delivery.translog import TransparencyLog

    delivery = cfg.values["delivery"]
    vpnid = entry.report.get("functional", {}).get("vpnid")
    body = transport.gzip_body(entry.body)
    headers = {"X-Evo-Vpnid": str(vpnid), "X-Evo-Signature": signing.sign(key, body)}
    try:
        routes = transport.choose(delivery, via)
    except DeliveryError as exc:
        result.error = str(exc)
        return False
    log = TransparencyLog(cfg.state_dir)
    try:
        log.keep(entry.body)  # what the log cannot show does not leave
    except (OSError, StateError) as exc:
        raise _state_failure(log.dir, exc, f"report {entry.report_id} not sent") from None

    def record(route: transport.Route, status: int | None, error: str | None = None) -> None:
        try:
            log.record(entry.body, body, time=clock().wall, path=route.path, url=route.url,
                       status=status, report_id=entry.report_id, sequence=entry.sequence,
                       error=error)
        except (OSError, StateError) as exc:
            problem = _state_failure(log.index, exc, "the transparency log misses a request")
            LOG.error("report %s: %s", entry.report_id, problem)
            result.exit_code, result.state_error = problem.exit_code, str(problem)

    for i, route in enumerate(routes):
        try:
            resp = transport.post(route, body, headers, ca_bundle=delivery["ca_bundle"],
                                  connect_timeout=delivery["connect_timeout"],
                                  total_timeout=delivery["total_timeout"])
        except (transport.TransportError, DeliveryError) as exc:
            LOG.warning("report %s via %s: %s", entry.report_id, route.path, exc)
            result.error, result.path, result.status = str(exc), route.path, None
            if isinstance(exc, transport.TransportError) and exc.sent:
                record(route, None, str(exc))  # the registry may hold it: the log shows it
            if i + 1 < len(routes):
                LOG.info("falling back from %s to %s", route.path, routes[i + 1].path)
            continue
        result.path, result.status = route.path, resp.status
        record(route, resp.status)
        if resp.status in (200, 201):
            Outbox(cfg.state_dir).acknowledge(entry)
            LOG.info("report %s (sequence %s) acknowledged via %s: %s", entry.report_id,
                     entry.sequence, route.path, resp.status,
                     extra={"EVO_REPORT_ID": entry.report_id, "EVO_SEQUENCE": entry.sequence,
                            "EVO_PATH": route.path, "EVO_STATUS": resp.status})
            result.acknowledged.append(entry.report_id)
            return True
        result.error = (f"registry answered {resp.status} via {route.path}: "
                        f"{transport.answer_detail(resp)}")
        result.retry_after = resp.retry_after()
        LOG.warning("report %s: %s", entry.report_id, result.error,
                    extra={"EVO_REPORT_ID": entry.report_id, "EVO_PATH": route.path,
                           "EVO_STATUS": resp.status})
        if resp.status in REJECTED:
            _set_aside(cfg.state_dir, entry)
        return False
    return False


def _state_failure(path: Path, exc: OSError | StateError, doing: str) -> StateError:
    """Return the StateError for a write of the state directory that failed while ``doing``."""
    err = exc if isinstance(exc, StateError) else state_error(path, exc)
    return StateError(f"{doing}: {err}")


def _set_aside(state_dir: Path, entry: Entry, why: str = "refused by the registry") -> None:
    target = ensure_dir(state_dir / "outbox" / "rejected") / entry.path.name
    os.replace(entry.path, target)
    prune(target.parent)
    LOG.error("report %s %s: kept in %s, not retried", entry.report_id, why, target)


def _set_aside_stale(state_dir: Path, waiting: list[Entry], vpnid: str) -> list[Entry]:
    """Set aside the waiting reports built under another VPNID (or none); return the others."""
    keep = []
    for entry in waiting:
        theirs = entry.report.get("functional", {}).get("vpnid")
        if theirs == vpnid:
            keep.append(entry)
            continue
        built = f"VPNID {printable(str(theirs), 40)!r}" if theirs else "no VPNID"
        _set_aside(state_dir, entry, f"was built with {built} and this unit's VPNID is now "
                   f"{vpnid!r}: the registry could never accept it")
    return keep


def run_cycle(cfg: Config, *, trigger: str | None, via: str = "auto",
              clock: Callable[[], Now] = read_clock,
              draw: Callable[[], float] = random.random, wait_lock: bool = True,
              report: dict[str, Any] | None = None) -> CycleResult:
    """Run one delivery cycle (see the module docstring); ``trigger`` None sends only what waits.

    ``report``: one collected beforehand (``send --now`` as root collects with root's rights, then
    writes the state directory as its owner); else the cycle collects when a trigger is given.
    """
    with writer_lock(cfg.state_dir, wait=wait_lock):
        box = Outbox(cfg.state_dir)
        if not objection.enabled(cfg):
            dropped = box.purge()
            if dropped:
                LOG.warning("opted out: %s waiting report(s) deleted, none will be sent", dropped)
            return _tell_objection(cfg, via, clock, draw)
        result = CycleResult(ok=True)
        retry_only = trigger is None
        try:
            box.recover()
            _deliver(cfg, box, result, trigger=trigger, via=via, clock=clock, report=report)
        except (StateError, OSError) as exc:  # disk full, read-only, key gone: backed off
            _failed_state(cfg, result, exc)
        state_file = cfg.state_dir / "state.json"
        state = load_state(state_file)
        now = clock()
        if result.ok and result.acknowledged:
            state = after_success(state, now, result.path or "?")
        elif not result.ok:
            state = after_failure(state, now, result.error or "failed", draw(),
                                  result.retry_after)
        elif retry_only:
            state = after_nothing_waiting(state)
        try:
            save_state(state_file, state)
            result.state_saved = True
        except OSError as exc:
            problem = state_error(state_file, exc)
            LOG.error("%s", problem)
            result.exit_code, result.state_error = problem.exit_code, str(problem)
            if result.error is None:
                result.error = str(problem)
        if result.exit_code is not None:
            result.ok = False  # the caller says the exit status; acknowledged ones are gone
        return result


def _failed_state(cfg: Config, result: CycleResult, exc: StateError | OSError) -> None:
    """Mark the cycle failed by the state directory (disk full, read-only, key gone)."""
    problem = exc if isinstance(exc, StateError) else state_error(
        Path(exc.filename or cfg.state_dir), exc)
    result.ok, result.error, result.exit_code = False, str(problem), problem.exit_code
    result.state_error = str(problem)


def _deliver(cfg: Config, box: Outbox, result: CycleResult, *, trigger: str | None, via: str,
             clock: Callable[[], Now], report: dict[str, Any] | None) -> None:
    """Steps 2 to 5 of the module docstring; a StateError stops them."""
    from evo_agent.delivery import signing

    key = signing.load_for_sending(cfg.state_dir)
    vpnid, problem = vpnid_problem(cfg)
    if problem is not None:
        result.ok, result.error = False, f"nothing collected nor sent: {problem}"
        return
    objection.prepare(cfg.state_dir, vpnid, objects=False)  # after an opt-in
    result.ok = objection.deliver(cfg, via, key, clock=clock, result=result)  # goes first
    waiting = _set_aside_stale(cfg.state_dir, box.pending(), vpnid)
    if trigger in ("boot", "daily") and any(e.kind == "periodic" for e in waiting):
        trigger = None  # the retry of the report that waits (step 5)
    for entry in waiting if result.ok else []:
        if not _send(cfg, entry, via, key, clock=clock, result=result):
            result.ok = False
            break
    if trigger is not None:
        entry = box.enqueue(report if report is not None else collect_report(cfg, trigger))
        result.queued = entry.report_id
        if result.ok:
            result.ok = _send(cfg, entry, via, key, clock=clock, result=result)


def _tell_objection(cfg: Config, via: str, clock: Callable[[], Now],
                    draw: Callable[[], float]) -> CycleResult:
    """The cycle of an opted-out unit: send the objection if the registry was not told yet."""
    result = CycleResult(ok=False, disabled=True, error="opted out ([agent] enabled = false "
                         "or evo-agent opt-out): nothing is collected")
    try:
        objection.prepare(cfg.state_dir, vpnid_of(cfg), objects=True)
        if not objection.waiting(cfg.state_dir):
            return result
        from evo_agent.delivery import signing

        told = objection.deliver(cfg, via, signing.load_for_sending(cfg.state_dir), clock=clock,
                                 result=result)
        state_file = cfg.state_dir / "state.json"
        result.ok = told
        if told:
            result.error = None
            state = after_success(load_state(state_file), clock(), result.path or "?")
        else:
            state = after_failure(load_state(state_file), clock(), result.error or "failed",
                                  draw(), result.retry_after)
        save_state(state_file, state)
        result.state_saved = True
    except (StateError, OSError) as exc:  # disk full, read-only, key gone: backed off
        _failed_state(cfg, result, exc)
    return result


LOCAL_INVENTORY = "local.json"


def snapshot(cfg: Config, reason: str) -> dict[str, Any]:
    """Collect the inventory now and keep it locally (``status`` shows it); nothing is sent."""
    import time

    from evo_agent.delivery.outbox import atomic_write
    from evo_agent.delivery.translog import TransparencyLog

    if not objection.enabled(cfg):
        return {"ok": False, "reason": reason, "error": "opted out: nothing is collected"}
    report = collect_report(cfg, "manual")
    last = TransparencyLog(cfg.state_dir).last_acknowledged()
    differences = None
    if last is not None:
        from evo_agent.report import diff_reports

        differences = len(diff_reports(json.loads(last[1]), report))
    doc = {"time": time.time(), "reason": reason, "differences_from_sent": differences,
           "report": report}
    path = ensure_dir(cfg.state_dir) / LOCAL_INVENTORY
    try:
        atomic_write(path, json.dumps(doc, sort_keys=True).encode())
    except OSError as exc:
        return {"ok": False, "reason": reason, "error": str(state_error(path, exc)),
                "exit_code": StateError.exit_code}
    return {"ok": True, "reason": reason, "differences_from_sent": differences}


def describe(cfg: Config) -> dict[str, Any]:
    """Return what the daemon needs of a validated configuration."""
    from evo_agent.delivery.schedule import splay

    vpnid = vpnid_of(cfg)
    return {"ok": True, "enabled": objection.enabled(cfg), "state_dir": str(cfg.state_dir),
            "values": cfg.values, "vpnid": vpnid, "splay": list(splay(vpnid)),
            "sources": [str(p) for p in cfg.sources]}


def child_main(argv: Sequence[str] | None = None) -> int:
    """Entry of ``python3 -m evo_agent.delivery``: one JSON line on stdout."""
    p = argparse.ArgumentParser(prog="evo_agent.delivery")
    p.add_argument("action", choices=("cycle", "describe", "snapshot"))
    p.add_argument("--reason", default="")
    p.add_argument("--config")
    p.add_argument("--trigger", choices=("boot", "daily", "manual", "manufacturing"))
    p.add_argument("--via", choices=("auto", "vpn", "https"), default="auto")
    args = p.parse_args(argv)
    from evo_agent.config import load

    if os.environ.get("JOURNAL_STREAM"):  # started by the daemon under systemd
        from evo_agent.delivery.service import setup_logging

        setup_logging(False)
    else:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="evo-agent[cycle]: %(levelname)s: %(message)s")
    try:
        cfg = load(args.config)
        if args.action == "describe":
            print(json.dumps(describe(cfg)), flush=True)
            return 0
        if args.action == "snapshot":
            print(json.dumps(snapshot(cfg, args.reason)), flush=True)
            return 0
        ensure_dir(cfg.state_dir)
        result = run_cycle(cfg, trigger=args.trigger, via=args.via)
    except (EvoError, StateError) as exc:
        print(json.dumps({"ok": False, "error": str(exc), "exit_code": exc.exit_code}),
              flush=True)
        return exc.exit_code
    print(result.to_json(), flush=True)
    return 0 if result.ok else result.exit_code or DeliveryError.exit_code

