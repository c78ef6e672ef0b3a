#!/usr/bin/env python3
"""Dump what every collector and the report give on every fixture, to compare two versions.

Why: a change made for speed must not change a single value.  This runs the whole pipeline (the
collector runner, every collector, the privacy filter) of the source tree it lives in over every
fixture the project has: the appliance capture built by tests/appliance.py (with and without the
fiber dongle), the trees under tests/data, the corpus' sysfs/procfs trees (node_exporter, procfs,
ghw), the checkbox udev databases laid out as trees by the tests' own builders (PCI/USB and block
devices), the alsa-info machines, the lsusb -v captures, every dmidecode text as a capture holding
only commands/dmidecode.txt, and the CLI's ``inventory --from`` outputs on the appliance; or
(``live``, run by the python that runs the agent) this machine.  Volatile values (durations, report
id, time) are masked.

    python3 bench/compare_outputs.py dump OUT.json          # in each source tree to compare
    /usr/bin/python3 bench/compare_outputs.py live OUT.json # this machine only (Debian's python
                                                            # has psutil and no pytest)
    python3 bench/compare_outputs.py diff OLD.json NEW.json # prints each difference; exit 1 if any
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CORPUS = REPO / "tests" / "data" / "corpus"


def _fixtures(tmp: Path) -> Iterator[tuple[str, Path]]:
    """Yield (name, root) of every replayable tree, building it under ``tmp`` when needed."""
    from tests.appliance import build_appliance
    from tests.ttar import unpack

    for dongle in (True, False):
        root = tmp / f"appliance-{dongle}"
        build_appliance(root, dongle=dongle)
        yield f"appliance dongle={dongle}", root
    for d in sorted((REPO / "tests/data").glob("*/*")):
        if d.is_dir():
            yield f"tests/data/{d.parent.name}/{d.name}", d
        elif d.suffix == ".ttar":
            root = tmp / f"data-{d.stem}"
            root.mkdir()
            unpack(d, root)
            yield f"tests/data/{d.parent.name}/{d.name}", root
    for ttar in sorted((CORPUS / "sysfs").glob("*/*.ttar")):
        root = tmp / f"ttar-{ttar.parent.name}-{ttar.stem}"
        root.mkdir()
        unpack(ttar, root)
        yield f"corpus/sysfs/{ttar.parent.name}/{ttar.name}", root
    for snap in sorted((CORPUS / "sysfs/ghw-snapshots").glob("*.tar.gz")):
        root = tmp / f"ghw-{snap.name}"
        root.mkdir()
        with tarfile.open(snap) as tar:
            for member in tar.getmembers():
                parts = member.name.split("/")
                if ".." in parts or member.name.startswith("/"):
                    continue
                if member.isdir() or member.isreg() or member.issym():
                    tar.extract(member, root, set_attrs=False)
        yield f"corpus/sysfs/ghw-snapshots/{snap.name}", root
    yield from _checkbox(tmp)
    yield from _alsa(tmp)
    yield from _lsusb(tmp)
    for text in sorted((CORPUS / "dmidecode_txt").rglob("*")):
        if text.is_file():
            root = tmp / "dmi" / re.sub(r"[^A-Za-z0-9_.-]", "_", str(text.relative_to(CORPUS)))
            (root / "commands").mkdir(parents=True)
            (root / "commands/dmidecode.txt").write_bytes(text.read_bytes())
            yield f"corpus/{text.relative_to(CORPUS)}", root


def _checkbox(tmp: Path) -> Iterator[tuple[str, Path]]:
    from tests.test_disks import tree_from_export_db
    from tests.test_pci_usb_udevdb import build_tree

    for export in sorted((CORPUS / "udev/checkbox").glob("*.txt")):
        root = tmp / f"udev-{export.stem}"
        build_tree(export, root)
        yield f"corpus/udev/checkbox/{export.name} (pci/usb tree)", root
        root = tmp / f"block-{export.stem}"
        root.mkdir()
        tree_from_export_db(export.read_text("utf-8", "replace"), root)
        yield f"corpus/udev/checkbox/{export.name} (block tree)", root


def _alsa(tmp: Path) -> Iterator[tuple[str, Path]]:
    from tests.test_alsa_cards import build_tree

    for info in sorted((CORPUS / "asound/hda-emu/alsa-info").iterdir()):
        root = tmp / f"alsa-{info.name}"
        try:
            build_tree(info, root)
        except Exception as exc:  # the test skips machines its builder cannot lay out
            print(f"skipped {info.name}: {exc}", file=sys.stderr)
            continue
        yield f"corpus/asound/hda-emu/alsa-info/{info.name}", root


def _lsusb(tmp: Path) -> Iterator[tuple[str, Path]]:
    from tests.test_usb_lsusb import VERBOSE, build_tree, parse_lsusb_v

    for path in VERBOSE:
        root = tmp / f"lsusb-{path.parent.name}-{path.name}"
        build_tree(parse_lsusb_v(path.read_text("utf-8", "replace")), root)
        yield f"corpus/lsusb/{path.parent.name}/{path.name}", root


def _run(host: Any) -> dict[str, Any]:
    """Run every collector (through the real runner) and the filter; mask volatile values."""
    from tests.appliance import collect_all

    inventory, report, dropped = collect_all(host)
    return {
        "outcomes": {name: {"status": o.status, "raw": o.raw, "error_code": o.error_code,
                            "error_message": o.error_message}
                     for name, o in inventory.outcomes.items()},
        "report": report,
        "dropped": dict(sorted(dropped.items())),
    }


def _cli(argv: list[str]) -> dict[str, Any]:
    """Run ``evo-agent ARGV`` in this process; return its status, stdout and stderr, masked."""
    from evo_agent.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    text = out.getvalue()
    text = re.sub(r'("duration_ms": )\d+', r"\1-", text)
    text = re.sub(r'("report_id": )"[^"]*"', r'\1"-"', text)
    text = re.sub(r'("collected_at": )"[^"]*"', r'\1"-"', text)
    text = re.sub(r" *\b\d+ ms\b", " - ms", text)
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", "-", text)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "-", text)
    return {"status": status, "stdout": text, "stderr": err.getvalue()}


def dump(out: Path, *, fixtures: bool = True) -> int:
    """Write every fixture's outputs (or only this machine's) to ``out``."""
    from evo_agent.hostroot import LiveHost, ReplayHost

    results: dict[str, Any] = {}
    if not fixtures:
        results["live"] = _run(LiveHost("/"))
        out.write_text(json.dumps(results, indent=1, sort_keys=True, default=str))
        return 0
    with tempfile.TemporaryDirectory(prefix="evo-compare-") as tmp:
        for name, root in _fixtures(Path(tmp)):
            results[name] = _run(ReplayHost(root))
            if name.startswith("appliance"):
                config = Path(tmp) / "agent.toml"
                config.write_text("")
                for argv in (["inventory", "--json"], ["inventory"], ["inventory", "--raw"],
                             ["explain", "--json"], ["collectors", "--json"]):
                    results[f"{name} cli {' '.join(argv)}"] = _cli(
                        [*argv, "--from", str(root), "--config", str(config)])
    out.write_text(json.dumps(results, indent=1, sort_keys=True, default=str))
    print(f"{len(results)} fixtures written to {out}")
    return 0


def _walk(a: Any, b: Any, where: str, report: Callable[[str], None]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                report(f"{where}/{key}: only in {'new' if key in b else 'old'}")
            else:
                _walk(a[key], b[key], f"{where}/{key}", report)
    elif a != b:
        report(f"{where}: {json.dumps(a)[:200]} != {json.dumps(b)[:200]}")


def diff(old: Path, new: Path) -> int:
    """Print every difference between two dumps; return 1 when there is one."""
    a, b = json.loads(old.read_text()), json.loads(new.read_text())
    found: list[str] = []
    _walk(a, b, "", found.append)
    for line in found[:200]:
        print(line)
    print(f"{len(a)} / {len(b)} fixtures compared, {len(found)} differences")
    return 1 if found else 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] in ("dump", "live"):
        return dump(Path(sys.argv[2]), fixtures=sys.argv[1] == "dump")
    if len(sys.argv) == 4 and sys.argv[1] == "diff":
        return diff(Path(sys.argv[2]), Path(sys.argv[3]))
    print(__doc__, file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main())
