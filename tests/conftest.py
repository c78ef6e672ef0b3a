"""Shared fixtures: where the repository and the shared corpus are."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The shared corpus sits beside the repository (../shared), on developers' machines and in CI.
CORPUS = REPO.parent / "shared" / "corpus"
SHARED_POLICY = REPO.parent / "shared" / "policy" / "432evo-privacy-policy.txt"


@pytest.fixture(scope="session")
def corpus() -> Path:
    """Return the shared corpus directory; its absence is a broken checkout, not a skip."""
    assert CORPUS.is_dir(), f"the shared corpus is missing at {CORPUS} (shared/ goes beside)"
    return CORPUS
