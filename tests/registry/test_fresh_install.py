"""A registry installed on a fresh machine: the SQLite database's directory is made for it."""

from __future__ import annotations

import io
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from evo_registry.cli import main


def test_migrate_makes_the_sqlite_directory(tmp_path: Path) -> None:
    where = tmp_path / "var" / "lib" / "evo-registry"
    out = io.StringIO()
    assert main(["migrate", "--database", f"sqlite://{where}/registry.db"], out) == 0
    assert (where / "registry.db").is_file()
    assert stat.S_IMODE(where.stat().st_mode) == 0o750
    assert "applied migrations" in out.getvalue()


def test_an_impossible_directory_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    proc = subprocess.run(
        [sys.executable, "-m", "evo_registry.cli", "migrate", "--database",
         f"sqlite://{tmp_path}/file/sub/registry.db"],
        capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 69, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{tmp_path}/file/sub" in lines[0] and "create it" in lines[0]


@pytest.mark.parametrize("extra", ["registry"])
def test_the_registry_extra_holds_no_test_tool(extra: str) -> None:
    import tomllib

    doc = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    names = {dep.split("[")[0].split(">")[0].split("=")[0].strip().lower()
             for dep in doc["project"]["optional-dependencies"][extra]}
    assert not names & {"pytest", "hypothesis", "schemathesis", "mmdb-writer", "mypy", "ruff"}
