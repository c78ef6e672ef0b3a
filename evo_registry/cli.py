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
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TextIO

from evo_registry import __version__, background, retention
from evo_registry.config import HTTP_SERVERS, Settings, load, parse_listen
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
            s.add_argument("--workers", type=int, help="processes sharing the socket")
            s.add_argument("--threads", type=int, help="threads per process")
            s.add_argument("--http-server", choices=HTTP_SERVERS,
                           help="asyncio (default: reports never wait for a thread) or waitress")
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
    return p


def _settings(args: argparse.Namespace) -> Settings:
    s = load(args.config)
    for key in ("database", "listen", "workers", "threads", "http_server", "wireguard_peers"):
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
        return serve(settings)
    except RegistryError as exc:
        print(f"evo-registry: {exc}", file=sys.stderr)
        return exc.exit_code


def _serve_socket(settings: Settings, sock: socket.socket) -> None:
    from evo_registry.app import Registry

    app = Registry(settings)
    background.start(settings)  # retention and vpn-sync (evo_registry.background)
    if settings.http_server == "asyncio":
        from evo_registry import aioserver

        aioserver.run(app, sock, settings.threads)
        return
    import waitress

    # 1 MiB: the largest body of any route (enrolment); reports stop at 64 KiB in the app.
    waitress.serve(app, sockets=[sock], threads=settings.threads,
                   max_request_body_size=1024 * 1024 + 1, ident="evo-registry",
                   clear_untrusted_proxy_headers=False)


def serve(settings: Settings) -> int:
    """Migrate, bind, and serve until stopped (several pre-forked workers if configured)."""
    db = Database(settings.database)
    applied = db.migrate()
    if applied:
        LOG.info("database %s migrated to %s", db.describe(), applied[-1])
    db.close()
    host, port = parse_listen(settings.listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise RegistryError(f"cannot listen on {settings.listen}: {exc.strerror}") from exc
    sock.listen(1024)
    LOG.info("evo-registry %s serving on %s:%s with %s worker(s)", __version__, host,
             sock.getsockname()[1], settings.workers)
    if settings.workers <= 1:
        _serve_socket(settings, sock)
        return 0
    children = []
    for _ in range(settings.workers):
        pid = os.fork()
        if pid == 0:  # child: its own connections, the shared listening socket
            try:
                _serve_socket(settings, sock)
            finally:
                os._exit(0)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for child in children:
        _pid, code = os.waitpid(child, 0)
        status = status or os.waitstatus_to_exitcode(code)
    return 0 if status in (0, -signal.SIGTERM, -signal.SIGINT) else 1


if __name__ == "__main__":
    sys.exit(main())
