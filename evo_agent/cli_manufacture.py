"""The ``evo-agent manufacture`` verb: the manufacturing line's check and enrolment of a unit.

Kept apart from ``evo_agent.cli`` (which calls :func:`add_verbs`) so the line's verb and the
inventory verbs evolve without touching each other.  The work is in ``evo_agent.manufacture``;
this module parses the command line and prints the verdict: a short text whose first line is
PASS or FAIL for the operator (and the serial console the station reads), or ``--json``.  The exit
statuses (``evo_agent.errors.EXIT_CODES``) tell the line's scripts what happened: 0 pass and
enrolled (or bundle written), 10 the unit fails a check, 11 already enrolled, 69 registry
unreachable, 76 enrolment refused, 64 usage error.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

HELP = "check this unit against the bill of materials, give it its VPNID and key, enrol it"


def add_verbs(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``manufacture`` to ``evo-agent``'s sub-parsers."""
    m = sub.add_parser("manufacture", parents=[common], help=HELP, description=HELP + ".")
    who = m.add_mutually_exclusive_group(required=True)
    who.add_argument("--vpnid", metavar="ID", help="the VPNID printed on the unit's label")
    who.add_argument("--from-cmdline", action="store_true",
                     help="take the VPNID from the kernel command line: evo.vpnid=ID, or "
                          "evo.vpnid_file=PATH (a file the line provides)")
    m.add_argument("--registry", metavar="URL",
                   help="the registry to enrol with (default: [manufacture] registry_url)")
    m.add_argument("--factory-token-file", metavar="FILE",
                   help="the line's factory token (default: [manufacture] factory_token_file)")
    m.add_argument("--offline", metavar="DIR",
                   help="write a signed enrolment bundle into DIR instead of sending it "
                        "(load it later with 'evo-registry import')")
    m.add_argument("--force", action="store_true",
                   help="re-enrol a unit that is enrolled already (override; logged)")
    m.add_argument("--json", action="store_true", help="the verdict as JSON on stdout")
    m.add_argument("--from", dest="source", metavar="CAPTURE",
                   help="check a capture (.tar.gz or directory) instead of this machine")
    m.set_defaults(handler=cmd_manufacture)


def cmd_manufacture(args: argparse.Namespace, out: TextIO) -> int:
    """Run the verb; print the verdict, then raise the error that gives the exit status."""
    from evo_agent import manufacture
    from evo_agent.config import load

    cfg = load(getattr(args, "config", None))
    req = manufacture.Request(
        vpnid=args.vpnid, from_cmdline=args.from_cmdline, registry=args.registry,
        token_file=args.factory_token_file, offline=args.offline, force=args.force,
        source=args.source)
    result = manufacture.run(cfg, req)
    if args.json:
        json.dump(result.doc, out, indent=2, ensure_ascii=False)
        out.write("\n")
    else:
        out.write(manufacture.verdict_text(result.doc))
    out.flush()
    if result.error is not None:
        raise result.error
    return 0
