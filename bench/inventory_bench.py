#!/usr/bin/env python3
"""Time `evo-agent inventory --json` (live and replayed) beside the tools a user would pick instead.

Each command runs --runs times (after one warm-up run) under GNU time (/usr/bin/time, Debian
package `time`); the median wall time, the median CPU time (user + system, children included) and
the largest peak RSS (of the largest single process) are printed.  Tools that are not installed
are listed as such.  hw-probe runs
with -save into a temporary directory and never -upload.

    python3 bench/inventory_bench.py [--runs 5] [--python /usr/bin/python3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, float, int, int]:
    """Run argv once under /usr/bin/time; return wall s, CPU s, peak RSS in KiB, exit status.

    GNU time is a small C program, so the peak RSS it reports is the tool's own, not that of a
    forked copy of this Python process (which is what wait4 from here would report for a short
    command).
    """
    with tempfile.NamedTemporaryFile("r") as out:
        proc = subprocess.run(["/usr/bin/time", "-q", "-o", out.name, "-f", "%e %U %S %M %x",
                               *argv],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                              stdin=subprocess.DEVNULL, check=False)
        fields = out.read().split()
    wall, user, system, rss, code = fields[-5:]
    del proc
    return float(wall), float(user) + float(system), int(rss), int(code)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--python", default=sys.executable, help="the Python that runs evo-agent")
    args = ap.parse_args()

    env = {**os.environ, "PYTHONPATH": str(REPO), "LC_ALL": "C"}
    work = Path(tempfile.mkdtemp(prefix="evo-bench-"))
    capture = work / "capture.tar.gz"
    subprocess.run([args.python, "-m", "evo_agent", "capture", "-o", str(capture)], env=env,
                   check=True, capture_output=True)
    agent = [args.python, "-m", "evo_agent"]
    (work / "hw-probe").mkdir()  # hw-probe refuses to create it
    candidates: list[tuple[str, list[str]]] = [
        ("evo-agent inventory --json (live)", [*agent, "inventory", "--json"]),
        ("evo-agent inventory --json (replay)", [*agent, "inventory", "--json", "--from",
                                                 str(capture)]),
        ("lshw -json", ["lshw", "-json"]),
        ("inxi -Fxz -c0", ["inxi", "-Fxz", "-c0"]),
        ("hw-probe -all -save DIR", ["hw-probe", "-all", "-save", str(work / "hw-probe")]),
        ("fusioninventory-inventory", ["fusioninventory-inventory"]),
        ("dmidecode", ["dmidecode"]),
        ("python3 -c pass", [args.python, "-c", "pass"]),
    ]
    print(f"# {args.runs} runs each after a warm-up; python {args.python}; "
          f"{os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M:%S')}")
    print(f"{'command':<40} {'wall med (s)':>12} {'cpu med (s)':>12} {'peak RSS (MB)':>14} status")
    for label, argv in candidates:
        if shutil.which(argv[0]) is None and not os.path.exists(argv[0]):
            print(f"{label:<40} {'not installed':>12}")
            continue
        measure(argv, env)  # warm-up: page cache, Perl/Python bytecode
        walls, cpus, rss, codes = [], [], [], set()
        for _ in range(args.runs):
            wall, cpu, peak, code = measure(argv, env)
            walls.append(wall)
            cpus.append(cpu)
            rss.append(peak)
            codes.add(code)
        print(f"{label:<40} {statistics.median(walls):>12.3f} {statistics.median(cpus):>12.3f} "
              f"{max(rss) / 1024:>14.1f} {','.join(map(str, sorted(codes)))}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
