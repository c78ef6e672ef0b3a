"""``evo-registry``: serve the registry, migrate its database, prune old history.

    evo-registry serve --listen 127.0.0.1:8432 --database postgresql://... [--config FILE]
    evo-registry migrate --database URL
    evo-registry prune --database URL [--retention-days 730]
    evo-registry import --database URL BUNDLE|DIR...   (offline enrolments, evo_registry.bundles)
    evo-registry vpn-sync --database URL [FILE|-]...   (WAN IPs from the VPN, evo_registry.vpnsync)

Errors become exit statuses here and nowhere else (``RegistryError.exit_code``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TextIO

from evo_registry import __version__, background, retention
from evo_registry.config import Settings, load
from evo_registry.db import Database
from evo_registry.errors import RegistryError
from evo_registry.store import Store

LOG = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evo-registry", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"evo-registry {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("serve", "serve the HTTP API and pages"),
                       ("migrate", "create or upgrade the database schema"),
                       ("prune", "delete history older than the retention period"),
                       ("import", "enrol units from offline enrolment bundles"),
                       ("vpn-sync", "take units' WAN IPs from the VPN server's records")):
        s = sub.add_parser(name, help=text)
        s.add_argument("--config", help="TOML settings file (see evo_registry/config.py)")
        s.add_argument("--database", help="sqlite:///PATH or postgresql://... URL")
        if name == "serve":
            s.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:8432)")
            s.add_argument("--workers", type=int,
                           help="processes sharing the socket (restarted if one dies)")
            s.add_argument("--threads", type=int, help="threads per process")
        if name == "prune":
            s.add_argument("--retention-days", type=int)
        if name == "import":
            s.add_argument("bundles", nargs="+", metavar="BUNDLE", help="files or directories")
        if name == "vpn-sync":
            s.add_argument("sources", nargs="*", metavar="FILE",
                           help="OpenVPN status files, `wg show all dump` outputs, - for stdin "
                                "(default: the configured ones)")
            s.add_argument("--wireguard-peers", metavar="FILE",
                           help="lines '<public key> <VPNID>' (default: configured)")
    # The console's accounts and dealers (evo_registry/console/cli.py).
    from evo_registry.console import cli as console_cli

    console_cli.add_parsers(sub)
    return p


def _settings(args: argparse.Namespace) -> Settings:
    s = load(args.config)
    for key in ("database", "listen", "workers", "threads", "wireguard_peers"):
        value = getattr(args, key, None)
        if value is not None:
            setattr(s, key, value)
    if getattr(args, "retention_days", None):
        s.retention_days = args.retention_days
    return s


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; return the exit status."""
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = _settings(args)
        if args.command == "migrate":
            db = Database(settings.database)
            try:
                applied = db.migrate()
            finally:
                db.close()
            print(f"applied migrations: {applied or 'none (up to date)'}", file=out)
            return 0
        if args.command == "prune":
            db = Database(settings.database)
            try:
                db.migrate()
                gone = retention.prune(Store(db), datetime.now(timezone.utc),
                                       timedelta(days=settings.retention_days))
            finally:
                db.close()
            print(f"pruned: {gone}", file=out)
            return 0
        if args.command == "vpn-sync":
            from evo_registry import vpnsync

            db = Database(settings.database)
            try:
                db.migrate()
            finally:
                db.close()
            print(f"vpn-sync: {vpnsync.run(settings, args.sources or None)}", file=out)
            return 0
        if args.command == "import":
            from evo_registry.bundles import run_import

            return run_import(settings, args.bundles, out)
        if args.command in ("user", "dealer"):
            from evo_registry.console import cli as console_cli

            return console_cli.run(args, settings, out)
        return serve(settings, logging.DEBUG if args.verbose else logging.INFO)
    except RegistryError as exc:
        print(f"evo-registry: {exc}", file=sys.stderr)
        return exc.exit_code


def _alerts(settings: Settings, stop: threading.Event) -> None:
    """Send new events to the configured webhooks until stopped (evo_registry.console.alerts)."""
    from evo_registry.console.alerts import Dispatcher

    Dispatcher(Database(settings.database)).run(stop)


def serve(settings: Settings, level: int = logging.INFO) -> int:
    """Migrate, then serve until stopped (evo_registry.server), with retention and vpn-sync
    (evo_registry.background) in this process."""
    from evo_registry import server

    db = Database(settings.database)
    applied = db.migrate()
    if applied:
        LOG.info("database %s migrated to %s", db.describe(), applied[-1])
    db.close()
    stop = background.start(settings)
    threading.Thread(target=_alerts, args=(settings, stop), daemon=True).start()
    try:
        return server.run(settings, level)
    finally:
        stop.set()


if __name__ == "__main__":
    sys.exit(main())
