"""Configuration: precedence, strict validation, messages that name the file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from evo_agent.cli import main
from evo_agent.collector import Collector, Raw
from evo_agent.config import load
from evo_agent.errors import ConfigError
from evo_agent.hostroot import Host


class Dummy(Collector):
    name = "dummy"
    description = "test collector"
    fields: ClassVar[dict[str, str]] = {"x": "x"}
    options: ClassVar[dict[str, tuple[type, Any]]] = {"path": (str, "/etc/x"), "limit": (int, 3)}

    def collect(self, host: Host) -> Raw:
        return {"x": None}


class OffByDefault(Dummy):
    name = "optional"
    default_enabled = False


CLASSES: dict[str, Any] = {"dummy": Dummy, "optional": OffByDefault}


def cfg(tmp_path: Path, **files: str) -> tuple[Path, Path]:
    system = tmp_path / "agent.toml"
    dropins = tmp_path / "agent.d"
    dropins.mkdir()
    for name, text in files.items():
        target = system if name == "main" else dropins / f"{name}.toml"
        target.write_text(text)
    return system, dropins


def test_defaults_without_any_file(tmp_path: Path) -> None:
    c = load(None, CLASSES, system_file=tmp_path / "none.toml", dropin_dir=tmp_path / "none.d")
    assert c.enabled is True
    assert c.state_dir == Path("/var/lib/evo-agent")
    assert c.collectors["dummy"] == {"enabled": True, "path": "/etc/x", "limit": 3}
    assert c.collectors["optional"]["enabled"] is False
    assert c.sources == []


def test_dropins_override_in_lexical_order(tmp_path: Path) -> None:
    system, dropins = cfg(
        tmp_path,
        main='[agent]\nstate_dir = "/srv/a"\n[collectors.dummy]\nlimit = 5\n',
        **{"10-a": "[collectors.dummy]\nlimit = 7\n", "20-b": "[collectors.dummy]\nlimit = 9\n",
           "05-first": '[agent]\nstate_dir = "/srv/b"\n'},
    )
    c = load(None, CLASSES, system_file=system, dropin_dir=dropins)
    assert c.collectors["dummy"]["limit"] == 9
    assert c.state_dir == Path("/srv/b")
    assert [p.name for p in c.sources] == ["agent.toml", "05-first.toml", "10-a.toml", "20-b.toml"]


def test_explicit_file_replaces_system_locations(tmp_path: Path) -> None:
    system, dropins = cfg(tmp_path, main="[collectors.dummy]\nlimit = 5\n",
                          **{"10": "[collectors.dummy]\nlimit = 6\n"})
    own = tmp_path / "own.toml"
    own.write_text("[collectors]\ntimeout = 2\n")
    c = load(own, CLASSES, system_file=system, dropin_dir=dropins)
    assert c.collectors["dummy"]["limit"] == 3
    assert c.collector_timeout == 2.0


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[agent]\nenabled = 'yes'\n", "agent.enabled", "must be true or false, got 'yes'"),
        ("[agent]\nstate_dir = 'var/lib'\n", "agent.state_dir", "must be an absolute path"),
        ("[agent]\nstat_dir = '/x'\n", "agent.stat_dir", "unknown key"),
        ("[agnet]\n", "agnet", "unknown section"),
        ("agent = 3\n", "agent", "must be a table"),
        ("[collectors]\ntimeout = 0\n", "collectors.timeout", "must be greater than 0"),
        ("[collectors.nope]\nenabled = false\n", "collectors.nope", "no such collector"),
        ("[collectors.dummy]\nlimit = 'many'\n", "collectors.dummy.limit", "must be an integer"),
        ("[collectors.dummy]\nenabled = 1\n", "collectors.dummy.enabled", "must be true or false"),
        ("[collectors.dummy]\nlimt = 1\n", "collectors.dummy.limt", "unknown option"),
    ],
)
def test_bad_values_name_file_key_and_problem(tmp_path: Path, text: str, key: str,
                                              problem: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(path, CLASSES)
    message = str(err.value)
    assert message.startswith(f"{path}: key '{key}': ")
    assert problem in message
    assert err.value.exit_code == 78


def test_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[agent\nenabled = true\n")
    with pytest.raises(ConfigError, match=f"^{path}: not valid TOML"):
        load(path, CLASSES)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load(latin, CLASSES)


def test_cli_exits_78_and_names_file_and_key(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[collectors.identity]\nvpnid_file = 42\n")
    assert main(["inventory", "--json", "--config", str(path), "--from", str(tmp_path)]) == 78
    err = capsys.readouterr().err
    assert f"{path}: key 'collectors.identity.vpnid_file': must be a string, got 42" in err
    assert main(["collectors", "--config", str(tmp_path / "missing.toml")]) == 78


def test_shipped_example_config_is_valid_and_equals_the_defaults() -> None:
    example = Path(__file__).resolve().parents[1] / "config" / "agent.toml"
    if not example.exists():
        pytest.fail("config/agent.toml (the documented example) is missing")
    shipped = load(example)
    defaults = load(None, system_file=Path("/nonexistent"), dropin_dir=Path("/nonexistent"))
    assert shipped.values == defaults.values
    assert shipped.collectors == defaults.collectors


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def test_shipped_example_config_documents_every_option_with_its_default() -> None:
    """Each key of every section and every collector appears as '#key = default' in its table."""
    from evo_agent.collector import discover
    from evo_agent.config import SCHEMA

    text = (Path(__file__).resolve().parents[1] / "config" / "agent.toml").read_text()
    tables: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        stripped = line.lstrip("#").strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            current = stripped[1:-1]
        elif current and "=" in stripped and not line.startswith("# "):
            tables.setdefault(current, []).append(stripped.replace(" ", ""))
    expected: dict[str, dict[str, Any]] = {
        section: {key: spec[1] for key, spec in keys.items()} for section, keys in SCHEMA.items()
    }
    for name, cls in discover().items():
        expected[f"collectors.{name}"] = {"enabled": cls.default_enabled,
                                          **{k: d for k, (_t, d) in cls.options.items()}}
    missing = [f"[{section}] {key} = {_toml_value(default)}"
               for section, keys in expected.items() for key, default in keys.items()
               if f"{key}={_toml_value(default)}".replace(" ", "")
               not in tables.get(section, [])]
    assert not missing, "config/agent.toml does not document: " + "; ".join(missing)
