"""Helpers shared by the delivery tests and bench/daemon_bench.py (which runs without pytest)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

VPNID = "EVO-TEST-0042"


def write_host_root(root: Path, vpnid: str = VPNID) -> Path:
    """A minimal capture tree: what the identity collector reads."""
    (root / "etc" / "evo-agent" / "identity").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "evo-agent" / "identity" / "vpnid").write_text(vpnid + "\n")
    (root / "proc" / "sys" / "kernel").mkdir(parents=True, exist_ok=True)
    (root / "proc" / "sys" / "kernel" / "hostname").write_text("evo-living-room\n")
    return root


def write_config(path: Path, state_dir: Path, host_root: Path, https_url: str, *, ca: Path,
                 extra: str = "") -> Path:
    path.write_text(f"""
[agent]
state_dir = "{state_dir}"
host_root = "{host_root}"
control_socket = "{state_dir.parent / 'control.sock'}"
[delivery]
https_url = "{https_url}"
ca_bundle = "{ca}"
connect_timeout = 2.0
total_timeout = 3.0
{extra}
""")
    return path


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` on ``path`` (root only): a small file system a test can fill or
    remount read-only."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def launcher(*args: str, python: str = "/usr/bin/python3") -> list[str]:
    """``evo-agent ARGS`` as the .deb's launcher (debian/bin/evo-agent) runs it.

    Debian's ``python3 -I`` (no PYTHONPATH, no script directory on the path, and no evo_agent
    installed in its site-packages, unlike the tests' venv) with the code's directory put on
    ``sys.path`` by the launcher itself: run from anywhere, a process the agent starts (the
    daemon's cycle child, opt-out's sending child) must find the package by itself.
    """
    repo = str(Path(__file__).resolve().parents[2])
    code = (f"import sys; sys.path.insert(0, {repo!r}); from evo_agent.cli import main; "
            "sys.exit(main())")
    return [python, "-I", "-c", code, *args]
