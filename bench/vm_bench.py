#!/usr/bin/env python3
"""The inventory benchmark inside the appliance VM (QEMU TCG, Debian 12, Debian's libraries).

Why: the appliance runs Debian's python3 and libraries on modest hardware; figures from a
developer's machine with PyPI's libraries say little about it.  This boots the same appliance as
the appliance test (tests/vm), with lshw, inxi, hw-probe, fusioninventory-agent and GNU time
added to the system, and runs bench/inventory_bench.py there against the installed agent.  It
prints that table, the agent's own runs, the exposure of the units and the boot timing.

    sudo python3 bench/vm_bench.py [--runs 3] [--out DIR]

Root is needed (debootstrap, chroot, network namespace); tests/vm/install-deps.sh installs the
tools.  Expect about ten minutes under TCG on two cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.vm import vmlib

TOOLS = ("time", "lshw", "inxi", "hw-probe", "fusioninventory-agent")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="keep the artefacts here")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="evo-vm-bench-"))
    ev = vmlib.appliance_run(out, extra_packages=TOOLS, bench_runs=args.runs, timeout=3600)
    guest = ev.get("guest")
    if not guest:
        print("the VM sent no results; console tail:\n" + ev["console_tail"][-3000:])
        return 1
    print(guest.get("bench", {}).get("stdout", "no bench output: "
                                     + json.dumps(guest["steps"].get("bench"))))
    for r in guest["inventory_runs"]:
        print(f"evo-agent inventory --json (installed): wall {r['wall_s']} s, cpu {r['cpu_s']} s, "
              f"peak RSS {r['max_rss_kib'] / 1024:.1f} MB, status {r['status']}")
    print("exposure:", {u: v["exposure"] for u, v in guest["units"].items()})
    print(guest["boot"]["analyze"]["stdout"].strip())
    print("artefacts:", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
