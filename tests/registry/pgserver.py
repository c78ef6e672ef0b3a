"""A throw-away PostgreSQL server from Debian's package, for the tests and the bench.

initdb/pg_ctl run as an unprivileged user (initdb refuses root) in a temporary directory; the
server listens only on a unix socket in that directory, so it collides with nothing.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def pg_bin() -> Path | None:
    """Return the directory of pg_ctl and initdb, or None when PostgreSQL is not installed."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    for cand in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (cand / "pg_ctl").exists():
            return cand
    return None


@dataclass
class PgServer:
    """A running throw-away server."""

    socket_dir: Path
    user: str
    counter: Iterator[int] = field(default_factory=itertools.count)
    # How to run pg_ctl on it again (restart, stop, start).
    bindir: Path | None = None
    run_as: dict[str, Any] = field(default_factory=dict)
    options: str = ""

    def url(self, dbname: str) -> str:
        """Return the URL of a database on this server."""
        return f"postgresql://{self.user}@/{dbname}?host={self.socket_dir}"

    def create_database(self) -> str:
        """Create an empty database and return its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self.counter)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def restart(self) -> None:
        """Restart the server (fast shutdown: every connection is closed by the server)."""
        self._pg_ctl("-m", "fast", "restart")

    def stop(self) -> None:
        """Stop the server (fast shutdown)."""
        self._pg_ctl("-m", "fast", "stop")

    def start(self) -> None:
        """Start the server again, with the options it first had."""
        self._pg_ctl("-o", self.options, "start")

    def _pg_ctl(self, *args: str) -> None:
        if self.bindir is None:
            raise RuntimeError("no pg_ctl known for this server")
        env = {**os.environ, "LC_ALL": "C.UTF-8", "TZ": "UTC"}
        subprocess.run([str(self.bindir / "pg_ctl"), "-D", str(self.socket_dir / "data"),
                        "-l", str(self.socket_dir / "log"), "-w", "-t", "60", *args],
                       check=True, capture_output=True, env=env, cwd=self.socket_dir,
                       **self.run_as)


@contextmanager
def postgres(bindir: Path, durable: bool = False) -> Iterator[PgServer]:
    """Run a server for the duration of the block (fsync off unless ``durable``)."""
    base = Path(tempfile.mkdtemp(prefix="evo-pg-"))
    data = base / "data"
    kwargs: dict[str, Any] = {}
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(base, nobody.pw_uid, nobody.pw_gid)
        kwargs = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    env = {**os.environ, "LC_ALL": "C.UTF-8", "TZ": "UTC"}
    subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "evo", "--auth=trust",
                    "-E", "UTF8", "--no-sync"], check=True, capture_output=True, env=env,
                   cwd=base, **kwargs)
    opts = f"-c listen_addresses='' -c unix_socket_directories='{base}' -c max_connections=200"
    if not durable:
        opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l",
                    str(base / "log"), "-w", "-t", "60", "start"], check=True,
                   capture_output=True, env=env, cwd=base, **kwargs)
    try:
        yield PgServer(base, "evo", bindir=bindir, run_as=kwargs, options=opts)
    finally:
        subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                        "stop"], check=False, capture_output=True, env=env, cwd=base, **kwargs)
        shutil.rmtree(base, ignore_errors=True)
