"""``evo-registry user ...`` and ``evo-registry dealer ...``: accounts and dealers from a shell.

    evo-registry user add NAME --role ROLE [--dealer CODE] --password-file FILE
    evo-registry user list | disable NAME | enable NAME | reset NAME --password-file FILE
    evo-registry user token NAME        (prints a new API token for the account's scripts)
    evo-registry dealer add CODE --name NAME --region BE,NL,LU
    evo-registry dealer list | regions CODE --region BE,NL
    evo-registry dealer assign CODE VPNID...

Passwords are read from a file (``-`` for standard input), never from the command line where
``ps`` and the shell's history would show them.  Every change is in the audit trail, made by
``cli:<login name>``.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from evo_registry.config import Settings
from evo_registry.console import accounts, audit, dealers
from evo_registry.console.accounts import Account
from evo_registry.db import Cursor, Database
from evo_registry.errors import HttpError, RegistryError

COMMANDS = ("user", "dealer")


class ConsoleCliError(RegistryError):
    """A refused account or dealer change (the message names what is wrong)."""

    exit_code = 65  # EX_DATAERR


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``user`` and ``dealer`` commands to evo-registry's parser."""
    for name, text in (("user", "console accounts"), ("dealer", "dealers and their regions")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", help="TOML settings file (see evo_registry/config.py)")
        p.add_argument("--database", help="sqlite:///PATH or postgresql://... URL")
        p.add_argument("action", choices=("add", "list", "disable", "enable", "reset", "token")
                       if name == "user" else ("add", "list", "regions", "assign"))
        p.add_argument("name", nargs="?", help="username" if name == "user" else "dealer code")
        if name == "user":
            p.add_argument("--role", choices=accounts.ROLES)
            p.add_argument("--dealer", help="the dealer of a dealer account")
            p.add_argument("--password-file", help="file holding the password ('-': stdin)")
        else:
            p.add_argument("--name", dest="dealer_name", help="the dealer's name")
            p.add_argument("--region", help="country codes, like BE,NL,LU")
            p.add_argument("vpnids", nargs="*", help="units to assign (assign)")


def _password(path: str | None) -> str:
    if not path:
        raise ConsoleCliError("--password-file is needed")
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConsoleCliError(f"{path}: cannot read: {exc.strerror}") from exc
    return text.rstrip("\r\n")


def _need(value: str | None, what: str) -> str:
    if not value:
        raise ConsoleCliError(f"{what} is needed")
    return value


def run(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Run a ``user`` or ``dealer`` command; return the exit status."""
    db = Database(settings.database)
    try:
        db.migrate()
        return _run(args, db, out)
    except HttpError as exc:
        raise ConsoleCliError(f"{args.command} {args.action}: {exc.reason}") from exc
    finally:
        db.close()


def _run(args: argparse.Namespace, db: Database, out: TextIO) -> int:
    now = datetime.now(timezone.utc)
    actor = f"cli:{getpass.getuser()}"

    def trail(tx: Cursor, action: str, target: str, detail: dict[str, object]) -> None:
        audit.record(tx, at=now, actor=actor, role="cli", action=action, target=target,
                     address=None, detail=detail)

    if args.command == "user":
        if args.action == "list":
            for a in accounts.accounts(db):
                state = "disabled" if a["disabled"] else "active"
                print(f"{a['username']}\t{a['role']}\t{a['dealer'] or '-'}\t{state}", file=out)
            return 0
        name = _need(args.name, "NAME").lower()
        with db.transaction() as tx:
            if args.action == "add":
                role = _need(args.role, "--role")
                accounts.add_account(tx, name, role, args.dealer,
                                     password=_password(args.password_file), now=now)
                trail(tx, "account_add", name, {"role": role, "dealer": args.dealer})
            elif args.action == "reset":
                accounts.reset_password(tx, name, _password(args.password_file))
                trail(tx, "account_reset", name, {})
            elif args.action == "token":
                print(accounts.new_token(tx, name, now), file=out)
                trail(tx, "token_add", name, {})
                return 0
            else:
                accounts.set_disabled(tx, name, args.action == "disable")
                trail(tx, f"account_{args.action}", name, {})
        print(f"user {name}: {args.action} done", file=out)
        return 0
    if args.action == "list":
        for d in accounts.dealers(db):
            print(f"{d['code']}\t{d['name']}\t{','.join(d['regions'])}\t{d['units']} unit(s)",
                  file=out)
        return 0
    code = _need(args.name, "CODE").upper()
    if args.action == "assign":
        cli = Account(0, actor, "cli", None)
        for vpnid in args.vpnids:
            dealers.assign(db, cli, vpnid, code, now=now, address=None)
        print(f"dealer {code}: {len(args.vpnids)} unit(s) assigned", file=out)
        return 0
    regions = accounts.parse_regions(_need(args.region, "--region"))
    with db.transaction() as tx:
        if args.action == "add":
            accounts.add_dealer(tx, code, _need(args.dealer_name, "--name"), regions, now)
            trail(tx, "dealer_add", code, {"regions": regions})
        else:
            old = accounts.set_dealer_regions(tx, code, regions)
            trail(tx, "dealer_regions", code, {"regions": regions, "previous": old})
    print(f"dealer {code}: {args.action} done", file=out)
    return 0
