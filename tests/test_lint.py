"""The code is typed (mypy --strict) and clean (ruff), as the style guide asks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize("tool", [
    [sys.executable, "-m", "ruff", "check", "--no-cache", "."],
    [sys.executable, "-m", "mypy", "--strict", "--no-incremental"],
])
def test_lint(tool: list[str]) -> None:
    module = tool[2]
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                           check=False)
    if probe.returncode:
        pytest.fail(f"{module} is not installed: scripts/test.sh installs it with the test extra")
    proc = subprocess.run(tool, cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
