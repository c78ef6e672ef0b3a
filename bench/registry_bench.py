"""Registry benchmark: reports per second and latency, on SQLite and PostgreSQL, and the finder.

    python3 bench/registry_bench.py [--devices 4000] [--reports-per-device 5] [--clients 2]
        [--connections 16] [--rate 0] [--warmup 1] [--workers 2] [--server-threads 32]
        [--finder-devices 100000] [--backends sqlite,postgresql]

For each backend: a real `evo-registry serve` process (``--workers`` processes sharing the
socket) on 127.0.0.1; the load comes from this process's ``--clients`` child processes, each an
asyncio loop with ``--connections`` keep-alive connections (one device at a time per connection,
each device's reports in order, every report with its own UUID and a real Ed25519 signature the
registry verifies).  Requests are built (gzip, signed, HTTP bytes) before the clock starts, so
the load costs the shared 2 cores as little as it can.  Closed loop by default (each connection
sends when its last answer came: the rate the registry sustains with that many reports in flight);
``--rate R`` offers R reports/s in all (open loop) and counts each latency from the moment the
report was due, so a stall shows in p99 instead of slowing the load down.

PostgreSQL is Debian's, started here in a temporary directory with durable settings (fsync on),
and pgbench measures its plain insert rate, and that insert's p50/p99, on the same server in the
same run.  Latencies of the first ``--warmup`` seconds (1 by default) are reported apart.
Then the database is filled to ``--finder-devices`` devices and the finder page is timed.
Results go to stdout and bench/results/registry-<time>.json.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat  # noqa: E402

from evo_registry.db import Database, utc_text  # noqa: E402
from evo_registry.store import Enrolment, Store  # noqa: E402
from tests.registry.conftest import base_report  # noqa: E402
from tests.registry.pgserver import pg_bin, postgres  # noqa: E402

Work = list[tuple[str, bytes, str]]  # (vpnid, gzip body, signature)


def tree_cpu_seconds(pid: int) -> float:
    """Return the user+system CPU seconds of a process and its living children (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = (task / "children").read_text().split()
                todo += [int(k) for k in kids]
        except (OSError, IndexError, ValueError):
            continue
    return total


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def prepare(db_url: str, devices: int, per_device: int) -> list[Work]:
    """Enrol the devices and build their signed reports; return the work, one list per device."""
    db = Database(db_url)
    db.migrate()
    store = Store(db)
    now = datetime.now(timezone.utc)
    work: list[Work] = []
    for i in range(devices):
        vpnid = f"EVO-B{i:06d}"
        key = Ed25519PrivateKey.generate()
        pub = base64.b64encode(key.public_key().public_bytes(Encoding.Raw,
                                                             PublicFormat.Raw)).decode()
        template = base_report(vpnid)
        store.enroll(Enrolment(vpnid, pub, template, ("BE", "NL", "LU"), "230V",
                               now - timedelta(days=30)), now)
        items: Work = []
        for seq in range(1, per_device + 1):
            doc = dict(template, report_id=str(uuid.uuid4()), sequence=seq, trigger="daily")
            body = gzip.compress(json.dumps(doc).encode())
            items.append((vpnid, body, base64.b64encode(key.sign(body)).decode()))
        work.append(items)
    db.close()
    return work


@contextmanager
def registry(config: Path, workers: int, threads: int) -> Iterator[tuple[int, int]]:
    """Run `evo-registry serve` and yield its port and pid."""
    proc = subprocess.Popen([sys.executable, "-m", "evo_registry.cli", "serve", "--config",
                             str(config), "--listen", "127.0.0.1:0", "--workers", str(workers),
                             "--threads", str(threads)], cwd=REPO, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr is not None
    port = None
    accepting = 0
    while port is None or accepting < workers:  # every worker ready before the clock starts
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError("the registry did not start")
        m = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
        port = int(m.group(1)) if m else port
        accepting += "Application startup complete" in line  # uvicorn, once per worker
    # Keep reading its log so that it never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stderr or []], daemon=True).start()
    try:
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def _requests(items: Work) -> list[bytes]:
    """Return each report as the exact bytes of its HTTP request (built before the clock)."""
    out = []
    for vpnid, body, sig in items:
        head = ("POST /v1/reports HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: application/json\r\nContent-Encoding: gzip\r\n"
                f"X-Evo-Vpnid: {vpnid}\r\nX-Evo-Signature: {sig}\r\n"
                "X-Forwarded-For: 192.0.2.10\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        out.append(head.encode() + body)
    return out


async def _lane(port: int, requests: list[bytes], latencies: list[float],
                statuses: dict[int, int], schedule: list[float] | None = None, *,
                when: list[float] | None = None) -> None:
    """One keep-alive connection sending its devices' reports one after the other.

    With a ``schedule`` (open loop), request k is due at schedule[k] (perf_counter time): the
    lane waits for it if early, and its latency counts from that moment even when the lane is
    late because the server was slow, so a stall is not hidden (no coordinated omission).
    """
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for k, request in enumerate(requests):
        start = time.perf_counter()
        if schedule is not None:
            if schedule[k] > start:
                await asyncio.sleep(schedule[k] - start)
            start = schedule[k]
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        m = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
        await reader.readexactly(int(m.group(1)) if m else 0)
        latencies.append(time.perf_counter() - start)
        if when is not None:
            when.append(start)
        status = int(head[9:12])
        statuses[status] = statuses.get(status, 0) + 1
    writer.close()


def _client(port: int, per_lane: list[list[Work]], start_at: float, rate: float,
            out: Any) -> None:
    """One load process: an asyncio loop with one keep-alive connection per lane.

    ``rate`` > 0: open loop, this process sends ``rate`` reports per second in all, evenly
    spread over its lanes; 0: closed loop, each lane sends as soon as its last answer came.
    """
    import asyncio

    requests = [[r for items in devices for r in _requests(items)] for devices in per_lane]
    latencies: list[float] = []
    when: list[float] = []  # each request's start, seconds from ``start_at``
    statuses: dict[int, int] = {}

    async def main() -> None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        t0, lanes = time.perf_counter(), len(requests)
        schedules: list[list[float] | None] = [
            [t0 + (k * lanes + i) / rate for k in range(len(r))] if rate > 0 else None
            for i, r in enumerate(requests)]
        await asyncio.gather(*(_lane(port, r, latencies, statuses, sch, when=when)
                               for r, sch in zip(requests, schedules, strict=True)))
        # perf_counter times to seconds since start_at (both clocks tick at the same rate)
        offset = t0 - (time.time() - start_at - (time.perf_counter() - t0))
        when[:] = [w - offset for w in when]

    cpu0 = time.process_time()
    asyncio.run(main())
    statuses[-1] = int((time.process_time() - cpu0) * 1e6)  # the load's own CPU, microseconds
    out.put((latencies, statuses, when))


def load(port: int, work: list[Work], clients: int, lanes: int,
         rate: float = 0.0, *, warmup: float = 1.0) -> dict[str, Any]:
    """Send all the work from ``clients`` processes with ``lanes`` connections each.

    ``rate`` > 0 offers that many reports per second in all (open loop), else closed loop.
    The latencies of requests started in the first ``warmup`` seconds (each worker's first
    database connections, its writer thread starting) are reported apart, as wrk2 leaves out
    its calibration period; the rate counts every request.
    """
    slots = clients * lanes
    per_slot: list[list[Work]] = [work[i::slots] for i in range(slots)]
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    # The clients build their requests, then all start at the same moment.
    start_at = time.time() + 1.0 + 0.0005 * len(work)
    procs = [ctx.Process(target=_client, args=(port, per_slot[c * lanes:(c + 1) * lanes],
                                               start_at, rate / clients, out))
             for c in range(clients)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    elapsed = time.time() - start_at
    for p in procs:
        p.join()
    latencies = [x for lat, _s, _w in results for x in lat]
    starts = [x for _l, _s, w in results for x in w]
    statuses: dict[int, int] = {}
    for _lat, s, _w in results:
        for k, v in s.items():
            statuses[k] = statuses.get(k, 0) + v
    load_cpu_us = statuses.pop(-1)
    steady = [lat for t, lat in zip(starts, latencies, strict=True) if t >= warmup]
    early = [lat for t, lat in zip(starts, latencies, strict=True) if t < warmup]
    return {"mode": f"open loop, {rate:g}/s offered" if rate > 0 else "closed loop",
            "connections": slots, "requests": len(latencies), "seconds": round(elapsed, 2),
            "per_second": round(len(latencies) / elapsed, 1),
            "load_cpu_ms_per_report": round(load_cpu_us / 1000 / len(latencies), 3),
            "p50_ms": round(_percentile(steady, 0.50) * 1000, 2),
            "p99_ms": round(_percentile(steady, 0.99) * 1000, 2),
            "mean_ms": round(statistics.fmean(steady) * 1000, 2),
            "p99_all_ms": round(_percentile(latencies, 0.99) * 1000, 2),
            "warmup_s": warmup, "warmup_requests": len(early),
            "warmup_p99_ms": round(_percentile(early, 0.99) * 1000, 2) if early else None,
            "statuses": statuses, "by_second": _by_second(starts, latencies)}


def _by_second(starts: list[float], latencies: list[float]) -> list[dict[str, float]]:
    """Requests, p50, p99 and max latency (ms) of the requests started in each second: a
    stall of the server shows as one bad second, a saturated one as a drift."""
    buckets: dict[int, list[float]] = {}
    for t, lat in zip(starts, latencies, strict=True):
        buckets.setdefault(max(0, int(t)), []).append(lat)
    return [{"second": k, "n": len(v), "p50_ms": round(_percentile(v, 0.5) * 1000, 1),
             "p99_ms": round(_percentile(v, 0.99) * 1000, 1),
             "max_ms": round(max(v) * 1000, 1)} for k, v in sorted(buckets.items())]


def pgbench_inserts(pg: Any, db_url: str, clients: int, seconds: int) -> dict[str, Any]:
    """Return pgbench's rate of single-row inserts on the same server."""
    bindir = pg_bin()
    assert bindir is not None
    dbname = urllib.parse.urlsplit(db_url).path.lstrip("/")
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS pgbench_ins (id BIGSERIAL PRIMARY KEY, "
                     "k TEXT NOT NULL, v TEXT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT now())")
    script = Path(tempfile.mkstemp(suffix=".sql")[1])
    script.write_text("INSERT INTO pgbench_ins (k, v) VALUES (md5(random()::text), "
                      "repeat('x', 700));\n")
    logs = Path(tempfile.mkdtemp(prefix="pgbench-log-"))
    # -l: one line per transaction with its latency (µs, third field), for pgbench's own p99:
    # what a plain durable insert's tail is on this machine, in this run.
    out = subprocess.run([str(bindir / "pgbench"), "-n", "-h", str(pg.socket_dir), "-U", "evo",
                          "-c", str(clients), "-j", "2", "-T", str(seconds), "-f", str(script),
                          "-l", "--log-prefix", str(logs / "log"), dbname],
                         capture_output=True, text=True, check=True)
    script.unlink()
    latencies = [int(line.split()[2]) / 1e6 for f in logs.iterdir()
                 for line in f.read_text().splitlines() if line.strip()]
    shutil.rmtree(logs)
    m = re.search(r"tps = ([0-9.]+)", out.stdout)
    lat = re.search(r"latency average = ([0-9.]+) ms", out.stdout)
    return {"tps": float(m.group(1)) if m else None,
            "latency_avg_ms": float(lat.group(1)) if lat else None,
            "p50_ms": round(_percentile(latencies, 0.50) * 1000, 2) if latencies else None,
            "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2) if latencies else None,
            "clients": clients}


def fill(db_url: str, total: int, wans: int) -> list[str]:
    """Add devices up to ``total`` with recent reports from ``wans`` WAN IPs; return the IPs."""
    db = Database(db_url)
    now = datetime.now(timezone.utc)
    ips = [f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i in range(1, wans + 1)]
    rows = []
    for i in range(total):
        seen = utc_text(now - timedelta(hours=random.randint(0, 24 * 45)))  # noqa: S311
        rows.append((f"EVO-F{i:07d}", "AAAA", utc_text(now), utc_text(now), "432 EVO", '["BE"]',
                     "230V", "{}", seen, seen, f"EVO-{i:07d}"[:15], f"192.168.{i % 250}.{i % 200}",
                     ips[i % wans]))
    with db.transaction() as tx:
        for chunk in range(0, len(rows), 1000):
            for row in rows[chunk:chunk + 1000]:
                tx.run("INSERT INTO devices (vpnid, public_key, enrolled_at, manufactured_at, "
                       "model, sales_region, psu_variant, enrolment_report, first_seen, "
                       "last_seen, netbios_name, lan_ip, wan_ip, wan_key) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*row, row[-1]))
    if db.dialect == "postgresql":
        with db.transaction() as tx:
            tx.run("ANALYZE devices")
    db.close()
    return ips


def finder_latency(port: int, ips: list[str], requests: int, lanes: int) -> dict[str, Any]:
    """Time GET / from random homes over ``lanes`` keep-alive connections (one asyncio loop)."""
    import asyncio

    latencies: list[float] = []
    rnd = random.Random(7)  # noqa: S311 - not security
    heads = [(f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: {rnd.choice(ips)}"
              "\r\n\r\n").encode() for _ in range(requests)]

    async def lane(mine: list[bytes]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for head in mine:
            start = time.perf_counter()
            writer.write(head)
            answer = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"\r\ncontent-length: *(\d+)", answer, re.IGNORECASE)
            await reader.readexactly(int(m.group(1)) if m else 0)
            if not answer.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"finder answered {answer[:40]!r}")
            latencies.append(time.perf_counter() - start)
        writer.close()

    async def main() -> None:
        await asyncio.gather(*(lane(heads[i::lanes]) for i in range(lanes)))

    start = time.perf_counter()
    asyncio.run(main())
    elapsed = time.perf_counter() - start
    return {"requests": len(latencies), "connections": lanes,
            "per_second": round(len(latencies) / elapsed, 1),
            "p50_ms": round(_percentile(latencies, 0.5) * 1000, 2),
            "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2)}


def main() -> int:
    """Run the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=4000)
    ap.add_argument("--reports-per-device", type=int, default=5)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--connections", type=int, default=16, help="per client process")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="offer this many reports/s in all (open loop); 0: closed loop")
    ap.add_argument("--warmup", type=float, default=1.0,
                    help="seconds at the start whose latencies are reported apart")
    ap.add_argument("--finder-connections", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--server-threads", type=int, default=32)
    ap.add_argument("--finder-devices", type=int, default=100_000)
    ap.add_argument("--finder-requests", type=int, default=4000)
    ap.add_argument("--backends", default="sqlite,postgresql")
    args = ap.parse_args()

    results: dict[str, Any] = {"started": utc_text(datetime.now(timezone.utc)),
                               "args": vars(args), "cpus": os.cpu_count()}
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix="evo-bench-") as tmp, _database(backend, tmp) \
                as (db_url, pg):
            config = Path(tmp) / "registry.toml"
            config.write_text(f'database = "{db_url}"\ntrusted_proxies = ["127.0.0.1/32"]\n'
                              "rate_limit_reports = 1000000\n")
            t0 = time.perf_counter()
            work = prepare(db_url, args.devices, args.reports_per_device)
            print(f"[{backend}] prepared {args.devices} devices x {args.reports_per_device} "
                  f"reports in {time.perf_counter() - t0:.1f} s", flush=True)
            with registry(config, args.workers, args.server_threads) as (port, pid):
                pg_pid = _postmaster(pg)
                res0 = {"load_average_before": os.getloadavg()}
                cpu0, pg0 = tree_cpu_seconds(pid), tree_cpu_seconds(pg_pid) if pg_pid else 0.0
                res: dict[str, Any] = {**res0, "reports": load(port, work, args.clients,
                                                       args.connections, args.rate,
                                                       warmup=args.warmup)}
                n = res["reports"]["requests"]
                res["reports"]["registry_cpu_ms_per_report"] = round(
                    (tree_cpu_seconds(pid) - cpu0) * 1000 / n, 3)
                if pg_pid:
                    res["reports"]["postgres_cpu_ms_per_report"] = round(
                        (tree_cpu_seconds(pg_pid) - pg0) * 1000 / n, 3)
                res["load_average_after"] = os.getloadavg()
                shown = {k: v for k, v in res["reports"].items() if k != "by_second"}
                print(f"[{backend}] reports: {shown}", flush=True)
                print(f"[{backend}] p99 ms by second: "
                      f"{[b['p99_ms'] for b in res['reports']['by_second']]}", flush=True)
                if pg is not None:
                    res["pgbench_insert"] = pgbench_inserts(pg, db_url,
                                                            args.clients * args.connections, 10)
                    print(f"[{backend}] pgbench inserts: {res['pgbench_insert']}", flush=True)
                ips = fill(db_url, args.finder_devices - args.devices, args.finder_devices // 2)
                res["finder"] = finder_latency(port, ips, args.finder_requests,
                                               args.finder_connections)
                res["finder"]["devices"] = args.finder_devices
                print(f"[{backend}] finder: {res['finder']}", flush=True)
            results[backend] = res
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"registry-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written {path}")
    return 0


def _postmaster(pg: Any) -> int | None:
    if pg is None:
        return None
    pidfile = pg.socket_dir / "data" / "postmaster.pid"
    return int(pidfile.read_text().split()[0])


@contextmanager
def _database(backend: str, tmp: str) -> Iterator[tuple[str, Any]]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp}/registry.db", None
        return
    bindir = pg_bin()
    if bindir is None or shutil.which("pgbench", path=str(bindir)) is None:
        raise SystemExit("PostgreSQL absent: apt-get install postgresql postgresql-contrib")
    with postgres(bindir, durable=True) as pg:
        yield pg.create_database(), pg


if __name__ == "__main__":
    sys.exit(main())
