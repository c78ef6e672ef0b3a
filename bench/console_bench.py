"""Console benchmark: device page, search and inbox latency with a large fleet.

    python3 bench/console_bench.py [--devices 100000] [--reports-per-device 10]
        [--requests 400] [--backends postgresql,sqlite]

For each backend the database is filled in SQL (set-based inserts, not through the report route:
the reads are what is measured here) with ``--devices`` units and ``--reports-per-device``
reports each (about 1.6 KB of JSON, as an agent sends; one unit in a hundred has its rip drive
replaced half way, so its timeline has a change), 20 dealers sharing the units, one open event on
one unit in twenty and a resolved one on one in four.  Then a real uvicorn process serves the
console on 127.0.0.1 and this process, signed in as support and as a dealer through the login
form, times sequential requests on one keep-alive connection (each page also writes its row of
the audit trail, as in production): the device page of a random unit, a search (VPNID, motherboard
serial, MAC, NetBIOS name prefix, in turn), the inbox (all open events; one kind).  PostgreSQL is
Debian's, in a temporary directory, fsync off (it changes the fill time, not these reads).
Results go to stdout and bench/results/console-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from evo_registry.console import accounts  # noqa: E402
from evo_registry.db import Database  # noqa: E402
from tests.registry.conftest import base_report  # noqa: E402
from tests.registry.pgserver import pg_bin, postgres  # noqa: E402

SUPPORT_PW = "bench-support-pass"
DEALER_PW = "bench-dealer-pass"
DEALERS = 20


def make_app() -> Any:
    """The console alone, over the database named by EVO_CONSOLE_BENCH_DB (uvicorn --factory)."""
    from starlette.applications import Starlette

    from evo_registry import console
    from evo_registry.config import Settings

    url = os.environ["EVO_CONSOLE_BENCH_DB"]
    return Starlette(routes=[console.mount(Settings(database=url), Database(url))])


def _sql(dialect: str) -> dict[str, Callable[..., str]]:
    if dialect == "postgresql":
        return {"series": lambda: "(SELECT generate_series(1, ?) AS i) s",
                "pad": lambda x, w: f"lpad(({x})::text, {w}, '0')",
                "hex2": lambda x: f"lpad(to_hex({x}), 2, '0')"}
    return {"series": lambda: ("(WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 "
                               "FROM c WHERE i < ?) SELECT i FROM c) s"),
            "pad": lambda x, w: f"printf('%0{w}d', {x})",
            "hex2": lambda x: f"printf('%02x', {x})"}


def fill(db: Database, devices: int, per_device: int) -> dict[str, float]:
    """Fill a migrated database; return how long each part took (seconds)."""
    f = _sql(db.dialect)
    vpnid = "'EVO-' || " + f["pad"]("i", 6)
    mac = ("'70:85:c2:' || " + f["hex2"]("(i >> 16) & 255") + " || ':' || "
           + f["hex2"]("(i >> 8) & 255") + " || ':' || " + f["hex2"]("i & 255"))
    doc = base_report("@V@")
    doc["hardware"]["rip_drive"] = {"model": "HL-DT-ST DVDRAM GP57EB40", "serial": "K1@V@@R@"}
    doc["report_id"] = "@ID@"
    template = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with db.transaction() as tx:
        tx.run(
            "INSERT INTO devices (vpnid, public_key, enrolled_at, manufactured_at, model, "  # noqa: S608
            "sales_region, psu_variant, enrolment_report, fp_motherboard_serial, fp_mac, "
            "fp_boot_serial, fp_rip_serial, fp_cpu_model, cur_motherboard_serial, first_seen, "
            "last_seen, last_sequence, last_report_id, netbios_name, lan_ip, wan_ip, wan_key, "
            f"country, city) SELECT {vpnid}, 'AAAA', '2026-01-20T10:00:00.000000Z', "
            "'2026-01-15T10:00:00.000000Z', CASE WHEN i % 3 = 0 THEN '432 EVO Aeon' "
            "ELSE '432 EVO Mini' END, '[\"BE\",\"LU\",\"NL\"]', '230V', "
            f"replace(replace(replace(?, '@V@', {vpnid}), '@R@', 'R'), '@ID@', 'enrol'), "
            f"'MB-' || {vpnid} || '-01', {mac}, 'S6PD' || {vpnid} || 'B', 'K1' || {vpnid} || 'R', "
            f"'Intel(R) Celeron(R) J4125 CPU @ 2.00GHz', 'MB-' || {vpnid} || '-01', "
            "'2026-02-01T12:00:00.000000Z', "
            "'2026-' || " + f["pad"]("1 + i % 11", 2) + " || '-20T12:00:00.000000Z', "
            f"{per_device}, 'r-' || {vpnid} || '-' || {per_device}, 'EVO-ROOM-' || i, "
            "'192.168.1.20', '192.0.2.10', '192.0.2.10', CASE WHEN i % 7 = 0 THEN 'DE' "
            f"ELSE 'BE' END, 'Gent' FROM {f['series']()}", (template, devices))
    timings["devices_s"] = time.perf_counter() - start
    start = time.perf_counter()
    dev = f"((i - 1) / {per_device} + 1)"
    seq = f"((i - 1) % {per_device} + 1)"
    vp = "'EVO-' || " + f["pad"](dev, 6)
    chunk = 100_000
    for first in range(0, devices * per_device, chunk):
        count = min(chunk, devices * per_device - first)
        with db.transaction() as tx:
            received = ("'2026-' || " + f["pad"](f"1 + ({seq}) % 11", 2) + " || '-' || "
                        + f["pad"](f"10 + {seq}", 2) + " || 'T12:00:00.000000Z'")
            tx.run(
                "INSERT INTO reports (report_id, vpnid, sequence, report_trigger, "  # noqa: S608
                "collected_at, received_at, path, body) "
                f"SELECT 'r-' || {vp} || '-' || {seq}, {vp}, {seq}, 'daily', "
                f"'2026-02-01T09:00:00Z', {received}, "
                f"'https', replace(replace(replace(?, '@V@', {vp}), '@R@', "
                f"CASE WHEN ({dev}) % 100 = 0 AND {seq} > {per_device // 2} THEN 'NEW' "
                f"ELSE 'R' END), '@ID@', 'r-' || {vp} || '-' || {seq}) "
                f"FROM (SELECT i + ? AS i FROM {f['series']()}) t",
                (template, first, count))
    timings["reports_s"] = time.perf_counter() - start
    start = time.perf_counter()
    with db.transaction() as tx:
        for n in range(1, DEALERS + 1):
            accounts.add_dealer(tx, f"DLR-{n:02d}", f"Dealer {n}", ["BE"], datetime.now(
                timezone.utc))
        tx.run("INSERT INTO console_device_dealers (vpnid, dealer, assigned_at, assigned_by) "  # noqa: S608
               f"SELECT {vpnid}, 'DLR-' || " + f["pad"](f"1 + i % {DEALERS}", 2)
               + f", '2026-02-01T00:00:00.000000Z', 'bench' FROM {f['series']()}", (devices,))
        tx.run("INSERT INTO events (vpnid, kind, detail, first_at, last_at, occurrences, "
               f"resolved_at) SELECT {vpnid}, CASE WHEN i % 20 = 0 "
               "THEN 'outside_assigned_region' ELSE 'fingerprint_changed' END, "
               "'{\"country\":\"DE\",\"city\":\"Berlin\"}', '2026-03-01T00:00:00.000000Z', "
               "'2026-' || " + f["pad"]("1 + i % 11", 2) + " || '-02T00:00:00.000000Z', 1, "
               "CASE WHEN i % 20 = 0 THEN NULL ELSE '2026-11-01T00:00:00.000000Z' END "
               f"FROM {f['series']()} WHERE i % 20 = 0 OR i % 4 = 0", (devices,))
        now = datetime.now(timezone.utc)
        accounts.add_account(tx, "support", "support", None, password=SUPPORT_PW, now=now)
        accounts.add_account(tx, "dealer", "dealer", "DLR-01", password=DEALER_PW, now=now)
    with db.transaction() as tx:
        tx.run("ANALYZE")
    timings["rest_s"] = time.perf_counter() - start
    return {k: round(v, 1) for k, v in timings.items()}


@contextmanager
def serve(url: str) -> Iterator[str]:
    """Run the console in a uvicorn process on 127.0.0.1; yield its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "--app-dir",
                             str(REPO / "bench"), "console_bench:make_app", "--host",
                             "127.0.0.1", "--port", str(port), "--log-level", "warning",
                             "--no-access-log"], cwd=REPO,
                            env={**os.environ, "EVO_CONSOLE_BENCH_DB": url,
                                 "PYTHONPATH": str(REPO)})
    base = f"http://127.0.0.1:{port}/console"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(base + "/login", timeout=5)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the console did not start") from None
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(30)


def _login(base: str, username: str, password: str) -> requests.Session:
    s = requests.Session()
    page = s.get(base + "/login", timeout=30).text
    marker = 'name="csrf" value="'
    token = page[page.index(marker) + len(marker):].split('"', 1)[0]
    r = s.post(base + "/login", data={"csrf": token, "username": username,
                                      "password": password}, timeout=30)
    if "/login" in r.url:
        raise RuntimeError(f"cannot sign in as {username}")
    return s


def _time(s: requests.Session, urls: list[str], warmup: int = 20) -> dict[str, float]:
    for url in urls[:warmup]:
        s.get(url, timeout=60)
    lat = []
    for url in urls:
        start = time.perf_counter()
        r = s.get(url, timeout=60)
        lat.append(time.perf_counter() - start)
        if r.status_code != 200:
            raise RuntimeError(f"{url}: {r.status_code}")
    lat.sort()
    return {"requests": len(lat), "p50_ms": round(statistics.median(lat) * 1000, 1),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1),
            "max_ms": round(lat[-1] * 1000, 1)}


def measure(base: str, devices: int, n: int) -> dict[str, Any]:
    """Time the pages; return the figures per page and role."""
    rnd = random.Random(4320)  # noqa: S311 - not security
    support = _login(base, "support", SUPPORT_PW)
    dealer = _login(base, "dealer", DEALER_PW)

    def unit() -> int:
        return rnd.randint(1, devices)

    def query(k: int) -> str:
        i = unit()
        return [f"EVO-{i:06d}", f"MB-EVO-{i:06d}-01",
                f"70:85:c2:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}",
                f"evo-room-{i}"][k % 4]

    own = [i for i in range(DEALERS, devices + 1, DEALERS)]  # DLR-01 has i % 20 == 0
    out = {
        "device_page_support": _time(support, [f"{base}/devices/EVO-{unit():06d}"
                                               for _ in range(n)]),
        "device_page_changed_timeline": _time(support, [
            f"{base}/devices/EVO-{100 * rnd.randint(1, devices // 100):06d}" for _ in range(n)]),
        "search_support": _time(support, [f"{base}/devices?q={query(k)}" for k in range(n)]),
        "inbox_open": _time(support, [f"{base}/events"] * n),
        "inbox_kind": _time(support, [f"{base}/events?kind=outside_assigned_region"] * n),
        "device_page_dealer": _time(dealer, [f"{base}/devices/EVO-{rnd.choice(own):06d}"
                                             for _ in range(n)]),
        "search_dealer": _time(dealer, [f"{base}/devices?q=EVO-{rnd.choice(own):06d}"
                                        for _ in range(n)]),
        "inbox_dealer": _time(dealer, [f"{base}/events"] * n),
    }
    support.close()
    dealer.close()
    return out


def main() -> int:
    """Run the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--reports-per-device", type=int, default=10)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--backends", default="postgresql,sqlite")
    args = ap.parse_args()
    results: dict[str, Any] = {"devices": args.devices,
                               "reports": args.devices * args.reports_per_device,
                               "cpus": os.cpu_count(), "backends": {}}
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix="evo-console-bench-") as tmp:
            if backend == "postgresql":
                bindir = pg_bin()
                if bindir is None:
                    print("PostgreSQL absent: skipped", file=sys.stderr)
                    continue
                with postgres(bindir) as server:
                    url = server.create_database()
                    results["backends"][backend] = run(url, args)
            else:
                if os.geteuid() == 0:
                    shutil.chown(tmp, "root")
                results["backends"][backend] = run(f"sqlite:///{tmp}/registry.db", args)
    print(json.dumps(results, indent=1))
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (out / f"console-{stamp}.json").write_text(json.dumps(results, indent=1))
    return 0


def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fill one database and measure the console over it."""
    db = Database(url)
    db.migrate()
    filled = fill(db, args.devices, args.reports_per_device)
    db.close()
    print(f"{url.split(':', maxsplit=1)[0]}: filled in {filled}", file=sys.stderr, flush=True)
    with serve(url) as base:
        return {"fill": filled, **measure(base, args.devices, args.requests)}


if __name__ == "__main__":
    sys.exit(main())
