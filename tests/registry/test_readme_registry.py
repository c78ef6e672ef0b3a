"""The README's registry commands, as written, on this machine (a fresh venv, a real server).

The install line runs as is (less its apt part, which scripts/test.sh did) in a copy of the
repository; the serve line runs as is but for its address and database path, which move to a free
port and the test's directory (as root it would otherwise write /var/lib/evo-registry).
"""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO


def registry_commands() -> list[str]:
    section = (REPO / "README.md").read_text().split("## The registry", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_the_readme_registry_commands_serve(tmp_path: Path) -> None:
    install, serve = registry_commands()
    copy = tmp_path / "evo-agent"
    shutil.copytree(REPO, copy, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "__pycache__", "*.egg-info", "build", ".hypothesis", "*_cache",
        "tests", "bench"))
    steps = [s.strip() for s in install.split("&&") if not s.strip().startswith("apt-get")]
    subprocess.run(" && ".join(steps), shell=True, cwd=copy, check=True, timeout=900,
                   capture_output=True)
    venv = copy / ".venv-registry"
    assert not (venv / "bin" / "pytest").exists(), "the registry extra installs test tools"

    port = free_port()
    argv = shlex.split(serve.replace("/var/lib/evo-registry", str(tmp_path / "var-lib"))
                       .replace("127.0.0.1:8432", f"127.0.0.1:{port}"))
    assert argv[0] == ".venv-registry/bin/evo-registry" and argv[1] == "serve"
    proc = subprocess.Popen(argv, cwd=copy, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "the registry did not answer in 60 s"
                time.sleep(0.3)
        assert (tmp_path / "var-lib" / "registry.db").is_file()
    finally:
        proc.terminate()
        out = proc.communicate(timeout=60)[0]
    assert "Traceback" not in out, out
