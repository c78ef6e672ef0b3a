#!/usr/bin/env python3
"""Time `evo-agent manufacture` from the start of the command to the verdict (goal: < 2 s).

The registry is `evo-registry serve` on 127.0.0.1 (a free port, SQLite in a temporary directory);
the units are the captures of tests/manufacture/units.py (a good unit and one without a rip
drive), replayed with --from.  Each case runs --runs times as a new process; "verdict" is the
time from spawning the command to its first line of output (PASS/FAIL), "exit" to its exit.
Every run of the first case enrols a new VPNID with a new state directory (a real first
enrolment: key created, POST /v1/enroll); the second case is the same unit run again (nothing
sent).  "live" runs against this machine, whatever its verdict (this sandbox has no DMI table).

    python3 bench/manufacture_bench.py [--runs 5] [--python /usr/bin/python3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.manufacture import units  # noqa: E402

FACTORY = "bench-factory-token"


def start_registry(work: Path) -> tuple[subprocess.Popen[str], int]:
    """Start `evo-registry serve` on a free loopback port; return it and its port."""
    cfg = work / "registry.toml"
    cfg.write_text(f'database = "sqlite:///{work / "registry.db"}"\nlisten = "127.0.0.1:0"\n'
                   f'factory_tokens = ["{FACTORY}"]\nthreads = 4\n')
    proc = subprocess.Popen([sys.executable, "-m", "evo_registry.cli", "serve", "--config",
                             str(cfg)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, int(m.group(1))
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit("evo-registry did not start")


def station(work: Path, name: str, url: str) -> Path:
    """Write a station config with its own state directory; return the config's path."""
    root = work / name
    root.mkdir()
    (root / "token").write_text(FACTORY + "\n")
    cfg = root / "agent.toml"
    cfg.write_text(
        f'[agent]\nstate_dir = "{root / "state"}"\n[collectors.identity]\n'
        f'vpnid_file = "{root / "vpnid"}"\n[manufacture]\nexpected_audio = "HDA Intel PCH"\n'
        f'min_ram_bytes = 8589934592\nsales_region = ["BE", "NL"]\npsu_variant = "230V"\n'
        f'registry_url = "{url}"\nfactory_token_file = "{root / "token"}"\n')
    return cfg


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, str, int]:
    """Run once; return seconds to the first output line, seconds to exit, that line, status."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    verdict = time.monotonic() - start
    proc.stdout.read()
    code = proc.wait()
    return verdict, time.monotonic() - start, first.strip(), code


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--python", default=sys.executable, help="the Python that runs evo-agent")
    args = ap.parse_args()

    env = {**os.environ, "PYTHONPATH": str(REPO), "LC_ALL": "C.UTF-8"}
    work = Path(tempfile.mkdtemp(prefix="evo-manufacture-bench-"))
    registry, port = start_registry(work)
    url = f"http://127.0.0.1:{port}"
    try:
        good = units.build(work / "good-unit")
        faulty = units.build(work / "no-rip-unit", units.NO_RIP_DRIVE)
        agent = [args.python, "-m", "evo_agent", "manufacture"]
        again_cfg = station(work, "again", url)
        subprocess.run([*agent, "--config", str(again_cfg), "--from", str(good), "--vpnid",
                        "EVO-BENCH-AGAIN"], env=env, check=True, capture_output=True)
        offline = work / "bundles"
        offline.mkdir()
        counter = iter(range(10**6))

        def first_enrolment() -> list[str]:
            n = next(counter)
            cfg = station(work, f"first-{n}", url)
            return [*agent, "--config", str(cfg), "--from", str(good), "--vpnid",
                    f"EVO-BENCH-{n:05d}"]

        def offline_bundle() -> list[str]:
            n = next(counter)
            cfg = station(work, f"offline-{n}", url)
            return [*agent, "--config", str(cfg), "--from", str(good), "--vpnid",
                    f"EVO-BENCH-{n:05d}", "--offline", str(offline)]

        cases = [
            ("good unit, first enrolment (key, POST)", first_enrolment),
            ("good unit, run again (nothing sent)",
             lambda: [*agent, "--config", str(again_cfg), "--from", str(good), "--vpnid",
                      "EVO-BENCH-AGAIN"]),
            ("unit without rip drive (FAIL)",
             lambda: [*agent, "--config", str(station(work, f"fail-{next(counter)}", url)),
                      "--from", str(faulty), "--vpnid", "EVO-BENCH-FAIL"]),
            ("good unit, offline bundle", offline_bundle),
            ("live: this machine",
             lambda: [*agent, "--config", str(station(work, f"live-{next(counter)}", url)),
                      "--vpnid", f"EVO-BENCH-LIVE-{next(counter)}"]),
        ]
        print(f"evo-agent manufacture, {args.runs} runs each, python {args.python}, "
              f"registry {url} (evo-registry serve, SQLite)")
        print(f"{'case':<44} {'verdict median':>14} {'min':>6} {'max':>6} {'exit median':>12}"
              "  status  first line")
        for name, make in cases:
            timed(make(), env)  # warm-up (page cache, .pyc)
            runs = [timed(make(), env) for _ in range(args.runs)]
            verdicts = [r[0] for r in runs]
            exits = [r[1] for r in runs]
            codes = sorted({r[3] for r in runs})
            print(f"{name:<44} {statistics.median(verdicts):>13.3f}s {min(verdicts):>5.3f}s "
                  f"{max(verdicts):>5.3f}s {statistics.median(exits):>11.3f}s  "
                  f"{','.join(map(str, codes)):>6}  {runs[-1][2][:60]}")
        # where the time goes, from the verdict document of one more first enrolment
        out = subprocess.run([*first_enrolment(), "--json"], env=env, capture_output=True,
                             text=True, check=False)
        doc = json.loads(out.stdout)
        print(f"in-process duration_ms of one first enrolment (JSON): {doc['duration_ms']} "
              f"(exit {doc['exit_code']})")
    finally:
        registry.send_signal(signal.SIGTERM)
        try:
            registry.wait(20)
        except subprocess.TimeoutExpired:
            registry.kill()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
