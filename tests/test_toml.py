"""evo_agent.toml gives tomllib's answer, with or without tomllib."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import tomllib
from hypothesis import given, settings
from hypothesis import strategies as st

from evo_agent import toml
from evo_agent.policy import load_policy
from tests.conftest import REPO


def _tomllib(text: str) -> object:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return "error"


def _ours(text: str) -> object:
    try:
        return toml.loads(text)
    except ValueError:
        return "error"


def test_the_shipped_agent_toml_is_read_without_tomllib() -> None:
    text = (REPO / "config/agent.toml").read_text("utf-8")
    assert toml.headers_only(text) == tomllib.loads(text)
    assert toml.headers_only(text) is not None


@pytest.mark.parametrize("text", [
    "", "\n", "# c\n[agent]\n", "[a.b]\n[a]\n", "[a]\n[a.b]\n", "[a]\r\n#x\r\n[b]\r\n",
    "  [a]  \n\t# x\n", "[a]\n[a]\n", "[a.b]\n[a.b]\n", "[ a ]\n", "[a] # c\n", "[a]\nk = 1\n",
    "# \x85[b]\n", "# x\u2028[b]\n", "# x\x0c[b]\n", "#\x7f\n", "[a]\r[b]\n", "\ufeff[a]\n",
    "[\"q\"]\n", "[a..b]\n", "[.a]\n", "[1]\n", "[a-b_c]\n", "a = 1\n", "[[a]]\n",
])
def test_known_corners_agree_with_tomllib(text: str) -> None:
    assert _ours(text) == _tomllib(text)
    found = toml.headers_only(text)
    assert found is None or found == tomllib.loads(text)


_LINE = st.one_of(
    st.just(""), st.text(" \t", max_size=3),
    st.builds(lambda s: "#" + s, st.text(max_size=12)),
    st.builds(lambda k: f"[{k}]", st.from_regex(r"[a-c1_-]{1,3}(\.[a-c]{1,2}){0,2}",
                                                 fullmatch=True)),
    st.text(max_size=8),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_LINE, max_size=8), st.sampled_from(["\n", "\r\n"]))
def test_generated_texts_agree_with_tomllib(lines: list[str], newline: str) -> None:
    text = newline.join(lines)
    assert _ours(text) == _tomllib(text)


def test_the_policy_cache_is_current() -> None:
    source = (REPO / "config/policy.toml").read_text("utf-8")
    cache = json.loads((REPO / "config/policy.json").read_text("utf-8"))
    assert cache["source"] == source, "config/policy.json is stale: run scripts/policy_json.py"
    assert cache["parsed"] == tomllib.loads(source)


def test_the_policy_loads_alike_from_the_cache_and_from_toml() -> None:
    source = (REPO / "config/policy.toml").read_text("utf-8")
    assert load_policy() == load_policy(source)  # the second one is parsed by tomllib
    stale = toml.cache_of(source.replace("policy_version", "policy_version_x", 1))
    assert toml.loads_cached(source, stale) == tomllib.loads(source)
    assert toml.loads_cached(source, "not json") == tomllib.loads(source)


def test_inventory_modules_do_not_import_tomllib() -> None:
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); "
            "from evo_agent.collector import discover; from evo_agent.config import load; "
            "from evo_agent.policy import load_policy; "
            f"load({str(REPO / 'config/agent.toml')!r}, discover()); load_policy(); "
            "print('tomllib' in sys.modules, 'pathlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert out[0] == "False"


def test_inventory_imports_none_of_the_heavy_modules() -> None:
    # modules the interpreter had before (site may import some of them) do not count
    code = (f"import sys; before = set(sys.modules); sys.path.insert(0, {str(REPO)!r}); "
            "from evo_agent.cli import main; "
            "import io, contextlib; out = io.StringIO(); "
            "contextlib.redirect_stdout(out).__enter__(); main(['inventory', '--json']); "
            "sys.stderr.write('\\nHEAVY:' + "
            "' '.join(m for m in ('pathlib', 'tomllib', 'dataclasses', "
            "'importlib.metadata', 'psutil', 'inspect', 'shutil', 'uuid', 'tarfile', "
            "'tempfile', 'typing', 'jsonschema', 'pyroute2', 'requests') "
            "if m in set(sys.modules) - before))")
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                          check=True, timeout=120)
    # the collectors' warnings (no SMBIOS table here) come before the list
    assert proc.stderr.rpartition("HEAVY:")[2].strip() == "", proc.stderr
