"""Configuration: TOML files, stated precedence, strict validation.

Precedence, lowest first: built-in defaults < ``/etc/evo-agent/agent.toml`` <
``/etc/evo-agent/agent.d/*.toml`` (lexical order, later wins) < command line.  ``--config FILE``
replaces the two system locations by that one file.  ``config/agent.toml`` in the source tree
documents every option with its default.

Validation is strict: an unknown key is an error (a typo must not silently fall back to a default
on an unattended appliance), and every error names the file, the key and what is wrong.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evo_agent.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: tomli is the same parser, a dependency there only
    import tomli as tomllib

Validator = Callable[[Any], str | None]
Spec = tuple[type, Any, Validator | None]

DEFAULT_FILE = Path("/etc/evo-agent/agent.toml")
DEFAULT_DROPIN_DIR = Path("/etc/evo-agent/agent.d")
DEFAULT_STATE_DIR = Path("/var/lib/evo-agent")
#: Where manufacturing writes the unit's VPNID: a directory of its own, owned by the agent's user,
#: because the manufacturing unit runs with ProtectSystem=strict and may write only there
#: (ReadWritePaths=); /etc/evo-agent itself stays root's.  Older units had /etc/evo-agent/vpnid;
#: the package moves it here on upgrade (debian/postinst).
DEFAULT_VPNID_FILE = "/etc/evo-agent/identity/vpnid"


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _absolute(value: Any) -> str | None:
    return None if str(value).startswith("/") else "must be an absolute path"


def _absolute_or_empty(value: Any) -> str | None:
    return None if value == "" else _absolute(value)


def _url_or_empty(value: Any) -> str | None:
    ok = value == "" or (str(value).startswith(("https://", "http://")) and len(str(value)) > 8)
    return None if ok else "must be an http:// or https:// URL (or empty: not used)"


def _https_url(value: Any) -> str | None:
    """The open-internet path: plain http:// only to this machine (tests, a local proxy)."""
    problem = _url_or_empty(value)
    if problem or not str(value).startswith("http://"):
        return problem
    from urllib.parse import urlsplit

    try:
        host = urlsplit(str(value)).hostname or ""
    except ValueError:
        return "must be an https:// URL (or empty: not used)"
    if host in {"localhost", "::1"} or host.startswith("127."):
        return None
    return ("must be an https:// URL: reports would cross the internet unencrypted "
            "(http:// is accepted only to localhost)")


def _interface(value: Any) -> str | None:
    # IFNAMSIZ is 16 with the NUL; '/' and whitespace are not allowed by the kernel
    ok = value == "" or (len(value) < 16 and not any(c in value for c in "/ \t\n:"))
    return None if ok else "must be a network interface name (at most 15 characters)"


def _not_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _countries(value: Any) -> str | None:
    ok = all(isinstance(c, str) and len(c) == 2 and c.isascii() and c.isupper() and c.isalpha()
             for c in value)
    return None if ok else 'must be ISO 3166-1 alpha-2 codes in upper case, e.g. ["BE", "NL"]'


def _psu_variant(value: Any) -> str | None:
    # The registry's rule (evo_registry.rules.parse_psu_variant): "230V", "120V", "100-240V".
    m = re.fullmatch(r"([0-9]{2,3})(?:-([0-9]{2,3}))?V", str(value).strip().upper())
    ok = value == "" or (m is not None and int(m.group(1)) <= int(m.group(2) or m.group(1)))
    return None if ok else 'must be a PSU variant like "230V", "120V" or "100-240V"'


def _model(value: Any) -> str | None:
    return None if len(value) <= 64 else "must be at most 64 characters"


#: section -> key -> (type, default, extra check). Collector sections come from the collectors.
SCHEMA: dict[str, dict[str, tuple[type, Any, Validator | None]]] = {
    "agent": {
        "enabled": (bool, True, None),
        "state_dir": (str, "/var/lib/evo-agent", _absolute),
        # Root the daemon reads the system from: "/" on a device; a capture directory in tests.
        "host_root": (str, "/", _absolute),
        "control_socket": (str, "/run/evo-agent/control.sock", _absolute),
    },
    # Delivery (evo_agent.delivery.transport): VPN first, HTTPS otherwise. See config/agent.toml.
    "delivery": {
        "vpn_url": (str, "", _url_or_empty),
        "https_url": (str, "", _https_url),
        "ca_bundle": (str, "/etc/evo-agent/ca.pem", _absolute_or_empty),
        "vpn_interface": (str, "", _interface),
        "connect_timeout": (float, 10.0, _positive),
        "total_timeout": (float, 60.0, _positive),
    },
    "collectors": {
        "timeout": (float, 10.0, _positive),
    },
    # The bill of materials a unit is checked against by `evo-agent manufacture`, and where the
    # station enrols it (evo_agent.manufacture).  Used on the manufacturing line only.
    "manufacture": {
        "require_board_serial": (bool, True, None),
        "require_mac": (bool, True, None),
        "require_boot_drive_serial": (bool, True, None),
        "require_rip_drive": (bool, True, None),
        "require_audio": (bool, True, None),
        # a substring of an ALSA card's name, long name, id or driver, or a USB ID "152a:8750"
        "expected_audio": (str, "", None),
        "min_ram_bytes": (int, 0, _not_negative),
        "sales_region": (list, [], _countries),
        "psu_variant": (str, "", _psu_variant),
        "model": (str, "", _model),
        "registry_url": (str, "", _url_or_empty),
        "factory_token_file": (str, "", _absolute_or_empty),
        "timeout": (float, 10.0, _positive),
    },
}


@dataclass
class Config:
    """The merged, validated configuration."""

    enabled: bool = True
    state_dir: Path = DEFAULT_STATE_DIR
    collector_timeout: float = 10.0
    #: collector name -> its options (``enabled`` included).
    collectors: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the files read, in precedence order
    sources: list[Path] = field(default_factory=list)
    #: every value, by section then key, for verbs that need the raw sections.
    values: dict[str, dict[str, Any]] = field(default_factory=dict)


def _type_ok(expected: type, value: Any) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


_TYPE_NAMES = {
    bool: "true or false", str: "a string", float: "a number", int: "an integer", list: "a list",
}


def _check(path: str | Path | None, key: str, spec: Spec, value: Any) -> Any:
    expected, _default, validator = spec
    if not _type_ok(expected, value):
        shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
        raise ConfigError(path, key, f"must be {_TYPE_NAMES.get(expected, expected.__name__)}, "
                                     f"got {shown}")
    if expected is float:
        value = float(value)
    if validator is not None:
        problem = validator(value)
        if problem:
            raise ConfigError(path, key, f"{problem}, got {value!r}")
    return value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode()
    except UnicodeDecodeError:
        raise ConfigError(path, None, "not valid UTF-8") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot be read: {exc.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"not valid TOML: {exc}") from None


def config_files(
    explicit: str | os.PathLike[str] | None,
    system_file: Path | None = None,
    dropin_dir: Path | None = None,
) -> list[Path]:
    """Return the files to read, in precedence order (lowest first)."""
    if explicit is not None:
        path = Path(explicit)
        if path.is_dir():
            raise ConfigError(path, None, "is a directory, not a configuration file")
        if not path.is_file():
            raise ConfigError(path, None, "no such file")
        return [path]
    system = DEFAULT_FILE if system_file is None else system_file
    dropins = DEFAULT_DROPIN_DIR if dropin_dir is None else dropin_dir
    files = [system] if system.is_file() else []
    # hidden names too; nothing when the directory cannot be read
    files += sorted(p for p in dropins.glob("*.toml") if p.is_file())
    return files


def load(
    explicit: str | Path | None = None,
    collectors: Mapping[str, Any] | None = None,
    *,
    system_file: Path | None = None,
    dropin_dir: Path | None = None,
) -> Config:
    """Read and validate the configuration.

    ``collectors`` maps each known collector name to its class (from
    :func:`evo_agent.collector.discover`, which is called when it is None); their ``options``
    and ``default_enabled`` define the ``[collectors.NAME]`` tables.  Without ``system_file``
    and ``dropin_dir``: /etc/evo-agent/agent.toml and /etc/evo-agent/agent.d.
    """
    if collectors is None:
        from evo_agent.collector import discover

        collectors = discover()
    collector_options = {name: cls.options for name, cls in collectors.items()}
    values: dict[str, dict[str, Any]] = {
        section: {key: spec[1] for key, spec in keys.items()} for section, keys in SCHEMA.items()
    }
    col: dict[str, dict[str, Any]] = {
        name: {"enabled": cls.default_enabled, **{k: d for k, (_t, d) in cls.options.items()}}
        for name, cls in collectors.items()
    }
    files = config_files(explicit, system_file, dropin_dir)
    for path in files:
        merge_file(path, _read_toml(path), values, col, collector_options)
    return Config(
        enabled=values["agent"]["enabled"],
        state_dir=Path(values["agent"]["state_dir"]),
        collector_timeout=values["collectors"]["timeout"],
        collectors=col,
        sources=files,
        values=values,
    )


def merge_file(
    path: str | Path | None,
    data: Mapping[str, Any],
    values: dict[str, dict[str, Any]],
    col: dict[str, dict[str, Any]],
    collector_options: Mapping[str, Mapping[str, tuple[type, Any]]],
) -> None:
    """Validate one parsed file and merge it over ``values`` and ``col``."""
    for section, body in data.items():
        if section not in SCHEMA:
            known = ", ".join(sorted(SCHEMA))
            raise ConfigError(path, section, f"unknown section (known: {known})")
        if not isinstance(body, dict):
            raise ConfigError(path, section, "must be a table, e.g. [" + section + "]")
        for key, value in body.items():
            dotted = f"{section}.{key}"
            if section == "collectors" and isinstance(value, dict):
                _merge_collector(path, key, value, col, collector_options)
                continue
            spec = SCHEMA[section].get(key)
            if spec is None:
                known = ", ".join(sorted(SCHEMA[section]))
                if section == "collectors":
                    known += "; collectors: " + ", ".join(sorted(collector_options))
                raise ConfigError(path, dotted, f"unknown key (known: {known})")
            values[section][key] = _check(path, dotted, spec, value)


def _merge_collector(
    path: str | Path | None,
    name: str,
    body: Mapping[str, Any],
    col: dict[str, dict[str, Any]],
    collector_options: Mapping[str, Mapping[str, tuple[type, Any]]],
) -> None:
    if name not in collector_options:
        raise ConfigError(path, f"collectors.{name}",
                          f"no such collector (available: {', '.join(sorted(collector_options))})")
    specs: dict[str, tuple[type, Any, Validator | None]] = {"enabled": (bool, True, None)}
    specs.update({k: (t, d, None) for k, (t, d) in collector_options[name].items()})
    for key, value in body.items():
        dotted = f"collectors.{name}.{key}"
        spec = specs.get(key)
        if spec is None:
            raise ConfigError(path, dotted, f"unknown option (known: {', '.join(sorted(specs))})")
        col[name][key] = _check(path, dotted, spec, value)
