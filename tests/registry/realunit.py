"""The real registry as a process (``evo-registry serve``) and an agent installation around it.

The faults tests drive the registry only through its command line and HTTP API (and read its
SQLite file to count what it stored), so they hold whichever HTTP server the registry uses.  A
fault proxy on loopback sits between the agent and the registry: it plays the home's router (it
adds the WAN address to X-Forwarded-For) and, on demand, the faults of a network: an error status,
an answer lost after the registry stored the report, raw garbage instead of HTTP.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from socketserver import StreamRequestHandler, ThreadingTCPServer
from typing import Any

from tests.delivery.fixtures import write_host_root
from tests.registry.conftest import FACTORY, HOME_A, SUPPORT, base_report

REPO = Path(__file__).resolve().parents[2]
VPNID = "EVO-FAULT-0001"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RegistryProcess:
    """``evo-registry serve`` on 127.0.0.1 with a SQLite database under ``directory``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.db = directory / "registry.db"
        self.port = free_port()
        config = directory / "registry.toml"
        config.write_text(
            f'database = "sqlite:///{self.db}"\nlisten = "127.0.0.1:{self.port}"\n'
            'trusted_proxies = ["127.0.0.1/32"]\n'
            f'factory_tokens = ["{FACTORY}"]\nsupport_tokens = ["{SUPPORT}"]\n'
            "rate_limit_reports = 1000000\nthreads = 4\n")
        self.log = (directory / "registry.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "evo_registry.cli", "serve",
                                      "--config", str(config)], cwd=REPO, stdout=self.log,
                                     stderr=subprocess.STDOUT,
                                     env=dict(os.environ, PYTHONPATH=str(REPO)))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"evo-registry exited {self.proc.returncode}: "
                                   + (directory / "registry.log").read_text())
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("evo-registry did not listen within 30 s")

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def enroll(self, vpnid: str, public_key: str) -> None:
        doc = {"vpnid": vpnid, "public_key": public_key, "report": base_report(vpnid),
               "sales_region": ["BE", "NL"], "psu_variant": "230V"}
        status, body = self.request("POST", "/v1/enroll", json.dumps(doc).encode(),
                                    {"Content-Type": "application/json",
                                     "Authorization": f"Bearer {FACTORY}"})
        assert status == 201, body

    def _query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30) as con:
            return list(con.execute(sql, args))

    def stored(self, vpnid: str = VPNID) -> dict[str, dict[str, Any]]:
        """Return the reports the registry holds for a device (report UUID -> report)."""
        return {rid: json.loads(body) for rid, body in self._query(
            "SELECT report_id, body FROM reports WHERE vpnid = ? AND report_trigger != "
            "'manufacturing'", vpnid)}

    def events(self, vpnid: str = VPNID) -> list[str]:
        return [k for (k,) in self._query("SELECT kind FROM events WHERE vpnid = ?", vpnid)]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class FaultProxy:
    """A reverse proxy on loopback: forwards to the registry with the home's WAN address in
    X-Forwarded-For, or misbehaves as ``mode`` says: "ok", "503", "lost" (forwards, then closes
    the connection without answering: the registry stored it), "slow" (forwards, answers after
    ``delay`` seconds, beyond the unit's total timeout), "garbage" (raw bytes, not HTTP),
    "big" (a 500 with a 20 KiB body of control bytes)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.mode = "ok"
        self.delay = 6.0
        self.requests = 0
        proxy = self

        class Handler(StreamRequestHandler):
            def handle(self) -> None:
                proxy._handle(self)

        ThreadingTCPServer.allow_reuse_address = True
        self.server = ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _handle(self, h: StreamRequestHandler) -> None:
        request_line = h.rfile.readline(65536).decode("latin-1").split()
        if len(request_line) < 2:
            return  # a connection without a request (doctor's reachability probe)
        headers: dict[str, str] = {}
        while True:
            line = h.rfile.readline(65536).decode("latin-1")
            if line in ("\r\n", "\n", ""):
                break
            k, _, v = line.partition(":")
            headers[k.strip()] = v.strip()
        body = h.rfile.read(int(headers.get("Content-Length", "0")))
        self.requests += 1
        mode = self.mode
        if mode == "garbage":
            h.wfile.write(b"\x00\x01\x1b[31mNOT HTTP\xff\xfe\r\n\r\n")
            return
        if mode == "503":
            h.wfile.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                          b"Connection: close\r\n\r\n")
            return
        if mode == "big":
            junk = bytes(range(32)) * 640
            h.wfile.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: "
                          + str(len(junk)).encode() + b"\r\nConnection: close\r\n\r\n" + junk)
            return
        fwd = {k: v for k, v in headers.items()
               if k.lower() not in ("host", "connection", "x-forwarded-for")}
        fwd["X-Forwarded-For"] = HOME_A
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream, timeout=30)
        try:
            conn.request(request_line[0], request_line[1], body=body, headers=fwd)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if mode == "lost":  # the registry has it; the unit never hears back
            return
        if mode == "slow":  # the registry has it; the answer comes after the unit gave up
            time.sleep(self.delay)
        head = [f"HTTP/1.1 {resp.status} {resp.reason}", f"Content-Length: {len(data)}",
                "Connection: close"]
        head += [f"{k}: {v}" for k, v in resp.getheaders()
                 if k.lower() not in ("connection", "transfer-encoding", "content-length")]
        h.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@dataclass
class Unit:
    """An agent installation: config, state directory and a replayed host root."""

    config: Path
    state_dir: Path
    host_root: Path

    @property
    def vpnid_file(self) -> Path:
        return self.host_root / "etc" / "evo-agent" / "identity" / "vpnid"

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``evo-agent ARGV --config CONFIG`` as its own process."""
        return subprocess.run([sys.executable, "-m", "evo_agent", *argv, "--config",
                               str(self.config)], cwd=REPO, capture_output=True, text=True,
                              timeout=timeout, check=False,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))

    @contextlib.contextmanager
    def daemon(self) -> Iterator[list[str]]:
        """Run ``evo-agent daemon``; the list yielded gets its stderr (the journal) when it
        stopped."""
        proc = subprocess.Popen([sys.executable, "-m", "evo_agent", "daemon", "--config",
                                 str(self.config)], cwd=REPO, stderr=subprocess.PIPE,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
        journal: list[str] = []
        try:
            yield journal
        finally:
            proc.terminate()
            journal.append(proc.communicate(timeout=30)[1].decode())

    def cycle(self, trigger: str | None = None) -> tuple[int, dict[str, Any], str]:
        """Run the daemon's cycle child once; return (exit status, its result, its stderr)."""
        argv = [sys.executable, "-m", "evo_agent.delivery", "cycle", "--config",
                str(self.config)]
        if trigger:
            argv += ["--trigger", trigger]
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120,
                              check=False, env=dict(os.environ, PYTHONPATH=str(REPO)))
        lines = proc.stdout.strip().splitlines()
        return proc.returncode, (json.loads(lines[-1]) if lines else {}), proc.stderr


def make_unit(directory: Path, url: str, vpnid: str = VPNID) -> Unit:
    root = write_host_root(directory / "host", vpnid)
    state = directory / "state"
    config = directory / "agent.toml"
    config.write_text(f'[agent]\nstate_dir = "{state}"\nhost_root = "{root}"\n'
                      f'control_socket = "{directory / "control.sock"}"\n'
                      f'[delivery]\nhttps_url = "{url}"\nca_bundle = ""\n'
                      "connect_timeout = 2.0\ntotal_timeout = 4.0\n")
    return Unit(config, state, root)


def public_key_of(state_dir: Path) -> str:
    from evo_agent.delivery import signing

    return signing.public_b64(signing.load_or_create(state_dir))

