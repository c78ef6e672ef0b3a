"""``evo-registry serve`` as a real process (and several on one PostgreSQL), migrate, prune."""

from __future__ import annotations

import http.client
import io
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from evo_registry.cli import main
from evo_registry.db import Database
from evo_registry.store import Store
from tests.registry.conftest import FACTORY, SUPPORT, Device

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, db_url: str, geo_db: Path, **extra: object) -> Path:
    lines = [f'database = "{db_url}"', f'geo_database = "{geo_db}"',
             'trusted_proxies = ["127.0.0.1/32"]', f'factory_tokens = ["{FACTORY}"]',
             f'support_tokens = ["{SUPPORT}"]', "threads = 4"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    path = tmp_path / "registry.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def _serving(args: list[str], accepting: int = 0) -> Iterator[int]:
    """Run ``evo-registry`` with ``args``; yield its port once ``accepting`` workers accept."""
    proc = subprocess.Popen([sys.executable, "-m", "evo_registry.cli", *args],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        port = None
        while time.monotonic() < deadline and (port is None or accepting > 0):
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            m = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
            accepting -= "accepting connections" in line
        assert port and accepting <= 0, f"the server did not start (status {proc.poll()})"
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr:
            proc.stderr.close()


def _post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize(("workers", "http"), [(1, "asyncio"), (3, "asyncio"), (2, "waitress")])
def test_serve_process_takes_reports(tmp_path: Path, db_url: str, geo_db: Path,
                                     workers: int, http: str) -> None:
    cfg = _config(tmp_path, db_url, geo_db)
    with _serving(["serve", "--config", str(cfg), "--listen", "127.0.0.1:0",
                   "--workers", str(workers), "--http-server", http]) as port:
        dev = Device("EVO-500001")
        status, body = _post(port, "/v1/enroll", json.dumps(dev.enrolment()).encode(),
                             {"Content-Type": "application/json",
                              "Authorization": f"Bearer {FACTORY}"})
        assert status == 201, body
        statuses = []
        docs = [dev.report() for _ in range(6)]
        for doc in docs + docs:  # every report twice: several processes, one count
            raw, headers = dev.wire(doc)
            headers["X-Forwarded-For"] = "192.0.2.77"
            statuses.append(_post(port, "/v1/reports", raw, headers)[0])
        assert statuses == [201] * 6 + [200] * 6
    db = Database(db_url)
    store = Store(db)
    assert store.counts()["reports"] == 6
    row = store.device(dev.vpnid)[0]
    assert (row["wan_ip"], row["country"], row["city"]) == ("192.0.2.77", "BE", "Gent")
    db.close()


def test_migrate_and_prune_commands(tmp_path: Path, db_url: str) -> None:
    out = io.StringIO()
    assert main(["migrate", "--database", db_url], out=out) == 0
    assert "applied migrations: [1, 2, 3]" in out.getvalue()
    out = io.StringIO()
    assert main(["migrate", "--database", db_url], out=out) == 0
    assert "up to date" in out.getvalue()
    out = io.StringIO()
    assert main(["prune", "--database", db_url, "--retention-days", "1"], out=out) == 0
    assert "'reports': 0" in out.getvalue()


def test_bad_config_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('colour = "red"\n')
    assert main(["migrate", "--config", str(cfg)]) == 78
    assert "unknown key 'colour'" in capsys.readouterr().err
    cfg.write_text("trusted_proxies = [\"not-a-net\"]\n")
    assert main(["migrate", "--config", str(cfg)]) == 78
    cfg.write_text("threads = 0\n")
    assert main(["migrate", "--config", str(cfg)]) == 78
    cfg.write_text('http_server = "gunicorn"\n')
    assert main(["migrate", "--config", str(cfg)]) == 78
    assert "http_server" in capsys.readouterr().err
    cfg.write_text('report_writer = "process"\n')
    assert main(["migrate", "--config", str(cfg)]) == 78
    assert "report_writer" in capsys.readouterr().err


def test_listen_in_use_is_a_clear_error(tmp_path: Path, geo_db: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code = main(["serve", "--database", f"sqlite:///{tmp_path / 'r.db'}", "--listen",
                     f"127.0.0.1:{port}"])
    assert code == 70
    assert "cannot listen" in capsys.readouterr().err


def test_unit_file_runs_the_command() -> None:
    unit = (REPO / "units" / "evo-registry.service").read_text()
    assert "ExecStart=/usr/bin/evo-registry serve --config %d/registry.toml" in unit
    assert "LoadCredential=registry.toml:/etc/evo-registry/registry.toml" in unit
    assert "DynamicUser=yes" in unit
    verify = shutil.which("systemd-analyze")
    if verify is None:
        pytest.skip("systemd-analyze absent")
    res = subprocess.run([verify, "verify", "--man=no", str(REPO / "units" /
                                                          "evo-registry.service")],
                         capture_output=True, text=True, check=False)
    # The binary is not installed here: that one complaint is expected, nothing else.
    problems = [line for line in res.stderr.splitlines()
                if line.strip() and "/usr/bin/evo-registry" not in line]
    assert not problems, res.stderr


def _owners(port: int) -> list[int]:
    """Return the pid owning each established server-side connection of ``port`` (via ss)."""
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return [int(m) for m in re.findall(r"pid=(\d+)", out)]


def _burst(port: int, n: int) -> list[socket.socket]:
    """Open ``n`` connections at once (non-blocking connects, then wait for all)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
    for s in socks:
        s.settimeout(30)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    for s in socks:
        assert s.recv(100).startswith(b"HTTP/1.1 200 "), "a connection was not served"
    return socks


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_workers_share_a_burst_of_connections(tmp_path: Path, db_url: str,
                                              geo_db: Path) -> None:
    """A burst of keep-alive connections is spread over the real worker processes.

    asyncio's own server accepted a whole burst in the first worker to wake: in the bench all
    32 connections went to one of two workers.  Sixteen connections opened at once must be held
    by both workers.  How they spread depends on which worker gets the CPU when (a worker that
    gets none during a burst takes none), so up to three bursts are tried, and the old server
    passed this now and then; the exact check of the mechanism is test_aioserver's
    test_one_connection_accepted_per_turn_of_the_loop, which the old server always fails."""
    if shutil.which("ss") is None:
        pytest.fail("ss (iproute2) is needed to see which process holds a connection")
    cfg = _config(tmp_path, db_url, geo_db)
    seen = []
    with _serving(["serve", "--config", str(cfg), "--listen", "127.0.0.1:0",
                   "--workers", "2"], accepting=2) as port:
        for _ in range(3):
            socks = _burst(port, 16)
            try:
                owners = _owners(port)
            finally:
                for s in socks:
                    s.close()
            assert len(owners) == 16, owners
            counts = sorted(owners.count(pid) for pid in set(owners))
            seen.append(counts)
            if len(counts) == 2:
                break
            time.sleep(0.5)  # the closed connections are gone before the next burst
    print("connections per worker, each burst:", seen)
    assert len(seen[-1]) == 2, seen
