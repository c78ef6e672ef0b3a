"""The ``evo-agent`` command: one entry point, verbs as sub-commands.

Exceptions become exit statuses here and nowhere else (see ``evo_agent.errors.EXIT_CODES``).
Modules are imported by the verb that needs them, so a quick verb stays quick on the appliance.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from evo_agent import __version__, cli_delivery, cli_manufacture, cli_objection
from evo_agent.errors import EXIT_CODES, EvoError, MissingModule, OutputError, UsageError

LOG = logging.getLogger("evo_agent")

NEVER_SENT = "RAW DATA: collected on this device, never sent. Only 'evo-agent inventory' leaves."


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits with 2; we raise for one exit table
        # main() prefixes "evo-agent: "; a verb's parser names the verb ("inventory: ...")
        verb = self.prog.removeprefix("evo-agent").strip()
        raise UsageError(f"{verb}: {message}" if verb else message)


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="read this file instead of /etc/evo-agent/agent.toml and agent.d/")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log what happens, to stderr")
    source = _Parser(add_help=False)
    source.add_argument("--from", dest="source", metavar="CAPTURE",
                        help="replay a capture (.tar.gz or directory) instead of this machine")

    p = _Parser(prog="evo-agent", description="Inventory agent of the 432 EVO music server.",
                parents=[common],
                epilog="Exit statuses: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()))
    p.add_argument("--version", action="version", version=f"evo-agent {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)

    inv = sub.add_parser("inventory", parents=[common, source],
                         help="print the report exactly as it would be sent")
    inv.add_argument("--json", action="store_true", help="the JSON document alone on stdout")
    inv.add_argument("--raw", action="store_true",
                     help="everything collected before filtering (never sent)")
    inv.add_argument("--trigger", choices=("boot", "daily", "manual", "manufacturing"),
                     default="manual", help=argparse.SUPPRESS)
    exp = sub.add_parser("explain", parents=[common, source],
                         help="each field with its value, its policy line and its purposes")
    exp.add_argument("--json", action="store_true", help="as JSON")
    cap = sub.add_parser("capture", parents=[common],
                         help="record everything the collectors read into a .tar.gz "
                              "(stays here)")
    cap.add_argument("-o", "--output", required=True, metavar="FILE.tar.gz")
    col = sub.add_parser("collectors", parents=[common, source],
                         help="each collector's status and time")
    col.add_argument("--json", action="store_true", help="as JSON")
    cli_delivery.add_verbs(sub, common)  # daemon, status, send, diff, sent, doctor
    cli_manufacture.add_verbs(sub, common)  # manufacture
    cli_objection.add_verbs(sub, common)  # opt-out, opt-in
    return p


def _verbs(parser: argparse.ArgumentParser) -> list[str]:
    """Return the verbs the parser knows, in the order of --help."""
    for action in parser._actions:  # argparse has no public accessor for its sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        parser = _parser()
        args = parser.parse_args(argv)
        _setup_logging(getattr(args, "verbose", False))
        if args.verb is None:
            raise UsageError(f"a verb is needed: {', '.join(_verbs(parser))}; "
                             "see 'evo-agent --help'")
        if getattr(args, "handler", None):  # verbs of evo_agent.cli_delivery
            return int(args.handler(args, sys.stdout))
        handler = {"inventory": _cmd_inventory, "explain": _cmd_explain,
                   "capture": _cmd_capture, "collectors": _cmd_collectors}[args.verb]
        return handler(args, sys.stdout)
    except ModuleNotFoundError as exc:
        return _fail(MissingModule((exc.name or "?").partition(".")[0]))
    except EvoError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `evo-agent inventory | head`: not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug: one line for the user, the traceback with -v
        LOG.debug("internal error", exc_info=True)
        return _fail(EvoError(f"internal error (a bug in evo-agent {__version__}): "
                              f"{type(exc).__name__}: {exc}; run with -v for the traceback"))


def _fail(exc: EvoError) -> int:
    print(f"evo-agent: {exc}", file=sys.stderr)
    return exc.exit_code


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="evo-agent: %(levelname)s: %(name)s: %(message)s", stream=sys.stderr)


# -- shared steps ------------------------------------------------------------------------------
def _load(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from evo_agent.collector import discover
    from evo_agent.config import load

    classes = discover()
    cfg = load(getattr(args, "config", None), classes)
    return cfg, classes


def _run(args: argparse.Namespace, trigger: str = "manual") -> Any:
    """Run the inventory pipeline on the host the configuration or --from names."""
    from evo_agent.report import inventory_report

    cfg, classes = _load(args)
    return inventory_report(cfg, source=args.source, classes=classes, trigger=trigger)


def _dump(doc: Any, out: TextIO) -> None:
    # one write: json.dump() writes each token, a system call each on an unbuffered stream
    out.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


# -- verbs -----------------------------------------------------------------------------------------
def _cmd_inventory(args: argparse.Namespace, out: TextIO) -> int:
    run = _run(args, args.trigger)
    inventory, report, dropped = run.inventory, run.report, run.dropped
    if args.raw:
        doc = {
            "never_sent": True,
            "notice": NEVER_SENT,
            "collectors": {
                name: {"status": o.status, "error": o.error_message, "raw": o.raw}
                for name, o in inventory.outcomes.items()
            },
        }
        if not args.json:
            print(f"== {NEVER_SENT} ==", file=out)
        _dump(doc, out)
        return 0
    if dropped:
        LOG.info("not sent (undeclared by the policy): %s", ", ".join(sorted(dropped)))
    if args.json:
        _dump(report, out)
    else:
        from evo_agent.render import report_table

        out.write(report_table(report))
    return 0


def _cmd_explain(args: argparse.Namespace, out: TextIO) -> int:
    from evo_agent.policy import load_policy
    from evo_agent.render import explain_rows, explain_text
    from evo_agent.report import inventory_report

    cfg, classes = _load(args)
    policy = load_policy()
    run = inventory_report(cfg, source=args.source, classes=classes, policy=policy)
    report, dropped = run.report, run.dropped
    rows = explain_rows(report, policy)
    if args.json:
        _dump({"policy_version": policy.version, "fields": rows,
               "derived_by_registry": [d.__dict__ for d in policy.derived],
               "not_sent": dict(sorted(dropped.items()))}, out)
    else:
        out.write(explain_text(rows, policy, dropped))
    return 0


def _cmd_capture(args: argparse.Namespace, out: TextIO) -> int:
    from evo_agent.hostroot import LiveHost, RecordingHost, pack_capture
    from evo_agent.report import inventory_report

    cfg, classes = _load(args)
    target = os.path.abspath(args.output)
    if not os.path.isdir(os.path.dirname(target)):
        raise OutputError(f"{args.output}: its directory does not exist")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="evo-capture-") as tmp:
        os.chmod(tmp, 0o700)
        host = RecordingHost(LiveHost("/"), tmp)
        report = inventory_report(cfg, host=host, classes=classes).report
        host.close()  # a collector abandoned at its deadline must not write while we pack
        # What the live run made of this capture, so a replay can be compared with it.
        meta = os.path.join(tmp, "evo-agent")
        os.makedirs(meta, exist_ok=True)
        with open(os.path.join(meta, "live-report.json"), "w", encoding="utf-8") as fh:
            _dump(report, fh)
        try:
            pack_capture(tmp, target)
        except OSError as exc:
            raise OutputError(f"{args.output}: cannot be written ({exc.strerror})") from None
    print(f"capture written to {args.output} (mode 0600; it holds raw values: keep it on the "
          "device unless support asks for it)", file=sys.stderr)
    return 0


def _cmd_collectors(args: argparse.Namespace, out: TextIO) -> int:
    from evo_agent.report import enabled_collectors, inventory_report

    cfg, classes = _load(args)
    collectors = enabled_collectors(cfg, classes, all_of_them=True)
    enabled = {c.name for c in enabled_collectors(cfg, classes)}
    inventory = inventory_report(cfg, source=args.source, classes=classes).inventory
    rows = []
    for c in collectors:
        o = inventory.outcomes.get(c.name)
        rows.append({
            "name": c.name,
            "description": c.description,
            "enabled": c.name in enabled,
            "status": o.status if o else "disabled",
            "duration_ms": o.duration_ms if o else None,
            "error": o.error_message if o else None,
            "module": type(c).__module__,
        })
    if args.json:
        _dump(rows, out)
        return 0
    for r in rows:
        ms = f"{r['duration_ms']} ms" if r["duration_ms"] is not None else "-"
        out.write(f"{r['name']:<10} {r['status']:<8} {ms:>8}  {r['description']}\n")
        if r["error"]:
            out.write(f"{'':<10} error: {r['error']}\n")
    return 0
