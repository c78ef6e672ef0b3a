"""The example config file documents every setting with its default, and loads as is."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from evo_registry.config import Settings, load

EXAMPLE = Path(__file__).resolve().parents[2] / "evo_registry" / "registry.example.toml"


def test_the_example_loads_to_the_defaults() -> None:
    assert load(EXAMPLE) == Settings()


def test_the_example_names_every_setting() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    named = set(re.findall(r"^#? ?([a-z_]+) = ", text, re.MULTILINE))
    assert named == {f.name for f in dataclasses.fields(Settings)}
