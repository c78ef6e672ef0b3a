"""One report cycle: send what waits, collect, queue, send, acknowledge; and its child process.

The resident daemon (``evo_agent.daemon``) never collects nor sends itself: for each cycle it starts
``python3 -m evo_agent.delivery cycle ...`` and reads one JSON line of result.  That process
imports the collectors (psutil, pyudev... whatever they need), cryptography, ssl and http.client,
does the work and exits, returning its memory.  The daemon stays a small supervisor that sleeps,
and a cycle killed at any point (SIGKILL, power cut, watchdog) leaves only states that the outbox
protocol recovers from (``evo_agent.outbox``).  ``evo-agent send --now`` without a daemon runs the
same :func:`run_cycle` in its own process.

A cycle, under the state directory's writer lock:

1. opted out (``[agent] enabled = false`` or ``evo-agent opt-out``): the outbox is emptied, the
   objection is sent if the registry was not told yet (``evo_agent.objection``), nothing else;
   after an opt-in, the withdrawal of the objection is sent before any report;
2. temp files of an interrupted cycle are removed; the device key is created if absent;
3. waiting reports are sent oldest first, each removed only on 200/201;
4. a scheduled report (boot, daily) that finds a periodic report waiting is that report: the
   waiting one was collected for this same due time and failed, so the retry sends it rather
   than a second one (no double report after an outage); otherwise a new report is collected,
   queued (durably) and sent if the waiting ones went, or kept for the retry if they did not (it
   replaces a waiting periodic one); ``send --now`` always collects a fresh one;
5. the schedule state records success, or a failure with its backoff and the backend's
   Retry-After.

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

from evo_agent import objection
from evo_agent.config import DEFAULT_VPNID_FILE, Config
from evo_agent.errors import DeliveryError, EvoError, StateError
from evo_agent.outbox import Entry, Outbox, ensure_dir, prune, writer_lock
from evo_agent.schedule import Now, after_failure, after_success, load_state, read_clock, save_state

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

    def to_json(self) -> str:
        """Serialise as one line."""
        return json.dumps(asdict(self), sort_keys=True)


def vpnid_of(cfg: Config) -> str:
    """Return this device's VPNID as the identity collector would read it ('' when unset)."""
    opts = cfg.collectors.get("identity", {})
    path = str(opts.get("vpnid_file", DEFAULT_VPNID_FILE))
    try:
        return _host(cfg).read_attr(path) or ""
    except ValueError:
        return ""


def _host(cfg: Config) -> Any:
    from evo_agent.hostroot import LiveHost, ReplayHost

    root = str(cfg.values["agent"].get("host_root", "/"))
    # A root other than "/" is a capture (tests, or a technician replaying one): commands are
    # replayed from it, never run on this machine.
    return LiveHost("/") if root == "/" else ReplayHost(root)


def collect_report(cfg: Config, trigger: str) -> dict[str, Any]:
    """Collect the inventory and build the report as the privacy filter allows it."""
    from evo_agent.collector import discover
    from evo_agent.inventory import build_report, collect
    from evo_agent.policy import load_policy

    instances = []
    for name, cls in sorted(discover().items()):
        opts = dict(cfg.collectors.get(name, {}))
        if opts.pop("enabled", cls.default_enabled):
            instances.append(cls(opts, timeout=cfg.collector_timeout))
    inventory = collect(instances, _host(cfg), deadline=cfg.collector_timeout * 3)
    report, _dropped = build_report(inventory, load_policy(), trigger=trigger)
    return report


def _send(cfg: Config, entry: Entry, via: str, key: Any, *, clock: Callable[[], Now],
          result: CycleResult) -> bool:
    """Send one queued report; return True when acknowledged."""
    from evo_agent import signing, transport
    from evo_agent.translog import TransparencyLog

    delivery = cfg.values["delivery"]
    vpnid = entry.report.get("functional", {}).get("vpnid")
    if not vpnid:
        result.error = "the report has no VPNID (is the VPNID file provisioned?)"
        return False
    body = transport.gzip_body(entry.body)
    headers = {"X-Evo-Vpnid": str(vpnid), "X-Evo-Signature": signing.sign(key, body)}
    try:
        routes = transport.choose(delivery, via)
    except DeliveryError as exc:
        result.error = str(exc)
        return False
    for i, route in enumerate(routes):
        try:
            resp = transport.post(route, body, headers, ca_bundle=delivery["ca_bundle"],
                                  connect_timeout=delivery["connect_timeout"],
                                  total_timeout=delivery["total_timeout"])
        except (transport.TransportError, DeliveryError) as exc:
            LOG.warning("report %s via %s: %s", entry.report_id, route.path, exc)
            result.error, result.path, result.status = str(exc), route.path, None
            if i + 1 < len(routes):
                LOG.info("falling back from %s to %s", route.path, routes[i + 1].path)
            continue
        result.path, result.status = route.path, resp.status
        TransparencyLog(cfg.state_dir).record(
            entry.body, body, time=clock().wall, path=route.path, url=route.url,
            status=resp.status, report_id=entry.report_id, sequence=entry.sequence)
        if resp.status in (200, 201):
            Outbox(cfg.state_dir).acknowledge(entry)
            LOG.info("report %s (sequence %s) acknowledged via %s: %s", entry.report_id,
                     entry.sequence, route.path, resp.status,
                     extra={"EVO_REPORT_ID": entry.report_id, "EVO_SEQUENCE": entry.sequence,
                            "EVO_PATH": route.path, "EVO_STATUS": resp.status})
            result.acknowledged.append(entry.report_id)
            return True
        detail = resp.body[:200].decode("utf-8", "replace")
        result.error = f"registry answered {resp.status} via {route.path}: {detail}"
        result.retry_after = resp.retry_after()
        LOG.warning("report %s: %s", entry.report_id, result.error,
                    extra={"EVO_REPORT_ID": entry.report_id, "EVO_PATH": route.path,
                           "EVO_STATUS": resp.status})
        if resp.status in REJECTED:
            _set_aside(cfg.state_dir, entry)
        return False
    return False


def _set_aside(state_dir: Path, entry: Entry) -> None:
    target = ensure_dir(state_dir / "outbox" / "rejected") / entry.path.name
    os.replace(entry.path, target)
    prune(target.parent)
    LOG.error("report %s refused by the registry: kept in %s, not retried", entry.report_id,
              target)


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
        box.recover()
        from evo_agent import signing

        key = signing.load_or_create(cfg.state_dir)
        result = CycleResult(ok=True)
        objection.prepare(cfg.state_dir, vpnid_of(cfg), objects=False)  # after an opt-in
        result.ok = objection.deliver(cfg, via, key, clock=clock, result=result)  # goes first
        waiting = box.pending()
        if trigger in ("boot", "daily") and any(e.kind == "periodic" for e in waiting):
            trigger = None  # the retry of the report that waits (step 4)
        for entry in waiting if result.ok else []:
            if not _send(cfg, entry, via, key, clock=clock, result=result):
                result.ok = False
                break
        if trigger is not None:
            entry = box.enqueue(report if report is not None else collect_report(cfg, trigger))
            result.queued = entry.report_id
            if result.ok:
                result.ok = _send(cfg, entry, via, key, clock=clock, result=result)
        state_file = cfg.state_dir / "state.json"
        state = load_state(state_file)
        now = clock()
        if result.ok and result.acknowledged:
            state = after_success(state, now, result.path or "?")
        elif not result.ok:
            state = after_failure(state, now, result.error or "failed", draw(),
                                  result.retry_after)
        save_state(state_file, state)
        return result


def _tell_objection(cfg: Config, via: str, clock: Callable[[], Now],
                    draw: Callable[[], float]) -> CycleResult:
    """The cycle of an opted-out unit: send the objection if the registry was not told yet."""
    result = CycleResult(ok=False, disabled=True, error="opted out ([agent] enabled = false "
                         "or evo-agent opt-out): nothing is collected")
    objection.prepare(cfg.state_dir, vpnid_of(cfg), objects=True)
    if not objection.waiting(cfg.state_dir):
        return result
    from evo_agent import signing

    told = objection.deliver(cfg, via, signing.load_or_create(cfg.state_dir), clock=clock,
                             result=result)
    state_file = cfg.state_dir / "state.json"
    result.ok = told
    if told:
        result.error = None
        save_state(state_file, after_success(load_state(state_file), clock(), result.path or "?"))
    else:
        save_state(state_file, after_failure(load_state(state_file), clock(),
                                             result.error or "failed", draw(),
                                             result.retry_after))
    return result


LOCAL_INVENTORY = "local.json"


def snapshot(cfg: Config, reason: str) -> dict[str, Any]:
    """Collect the inventory now and keep it locally (``status`` shows it); nothing is sent."""
    import time

    from evo_agent.outbox import atomic_write
    from evo_agent.translog import TransparencyLog

    if not objection.enabled(cfg):
        return {"ok": False, "reason": reason, "error": "opted out: nothing is collected"}
    report = collect_report(cfg, "manual")
    last = TransparencyLog(cfg.state_dir).last_acknowledged()
    differences = None
    if last is not None:
        from evo_agent.cli_delivery import diff_reports

        differences = len(diff_reports(json.loads(last[1]), report))
    doc = {"time": time.time(), "reason": reason, "differences_from_sent": differences,
           "report": report}
    atomic_write(ensure_dir(cfg.state_dir) / LOCAL_INVENTORY,
                 json.dumps(doc, sort_keys=True).encode())
    return {"ok": True, "reason": reason, "differences_from_sent": differences}


def describe(cfg: Config) -> dict[str, Any]:
    """Return what the daemon needs of a validated configuration."""
    from evo_agent.schedule import splay

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
        from evo_agent.daemon import setup_logging

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
    return 0 if result.ok else DeliveryError.exit_code


if __name__ == "__main__":
    sys.exit(child_main())
