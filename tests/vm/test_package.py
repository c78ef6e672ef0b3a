"""Packaging checks: the conffile documents every option; install, upgrade, remove and purge
behave as a Debian administrator expects (in a chroot of the appliance's Debian 12 system)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib

from tests.vm import vmlib

REPO = Path(__file__).resolve().parents[2]


def documented_options(text: str) -> dict[str, Any]:
    """Parse config/agent.toml with its "#key = default" and "#[table]" lines uncommented."""
    lines = []
    for line in text.splitlines():
        lines.append(line[1:] if re.match(r"^#(\[[a-z_.]+\]|[a-z_]+ = )", line) else line)
    return tomllib.loads("\n".join(lines))


def test_agent_toml_documents_every_option_with_its_default(tmp_path: Path) -> None:
    """config/agent.toml (the conffile) lists every option of the code, with the real default,
    and nothing else; as shipped (all commented out) it loads and changes nothing."""
    sys.path.insert(0, str(REPO))
    from evo_agent import config
    from evo_agent.collector import discover

    path = REPO / "config" / "agent.toml"
    text = path.read_text(encoding="utf-8")
    doc = documented_options(text)
    classes = discover()
    expected: dict[str, Any] = {section: {k: spec[1] for k, spec in keys.items()}
                                for section, keys in config.SCHEMA.items()}
    for name, cls in classes.items():
        expected["collectors"][name] = {
            "enabled": cls.default_enabled, **{k: d for k, (_t, d) in cls.options.items()}}
    assert doc == expected
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    shipped, defaults = config.load(path), config.load(empty)
    assert (shipped.values, shipped.collectors) == (defaults.values, defaults.collectors)
    # Uncommented, it is a valid configuration too: every key and type is right.
    uncommented = tmp_path / "uncommented.toml"
    uncommented.write_text("\n".join(line[1:] if re.match(r"^#(\[[a-z_.]+\]|[a-z_]+ = )", line)
                                     else line for line in text.splitlines()))
    loaded = config.load(uncommented)
    assert (loaded.values, loaded.collectors) == (defaults.values, defaults.collectors)


@pytest.mark.vm
def test_install_upgrade_remove_purge(tmp_path: Path) -> None:
    """dpkg -i, upgrade keeps config and state, remove keeps them, purge removes them (but not
    the VPNID written at manufacturing)."""
    deb1 = vmlib.build_deb(tmp_path / "deb1")
    deb2 = vmlib.build_deb(tmp_path / "deb2", version_suffix="+upgrade1")
    root = tmp_path / "root"
    vmlib.prepare_tree(vmlib.rootfs(), root)
    try:
        vmlib.install_deb(root, deb1.path)
        assert vmlib.chroot(root, "evo-agent", "--version").stdout.strip() == \
            f"evo-agent {deb1.version}"
        assert vmlib.chroot(root, "getent", "passwd", "evo-agent").stdout.startswith("evo-agent:")
        group = vmlib.chroot(root, "getent", "group", "evo-support").stdout
        assert group.startswith("evo-support:")
        wants = root / "etc/systemd/system/multi-user.target.wants"
        assert (wants / "evo-agent.service").is_symlink()
        assert (wants / "evo-agent-manufacture.service").is_symlink()
        # The VPNID's directory belongs to the agent's user: the sandboxed manufacturing unit
        # writes the VPNID there (ReadWritePaths=), and nowhere else in /etc.
        ident = root / "etc/evo-agent/identity"
        assert vmlib.chroot(root, "stat", "-c", "%U:%G %a", "/etc/evo-agent/identity").stdout \
            == "evo-agent:evo-support 755\n"
        assert not list(ident.iterdir())
        conffiles = vmlib.chroot(root, "dpkg-query", "-W", "-f", "${Conffiles}",
                                 "evo-agent").stdout
        assert "/etc/evo-agent/agent.toml" in conffiles
        # Byte-compiled at install (the sandboxed service cannot write __pycache__).
        assert list((root / "usr/share/evo-agent/evo_agent/__pycache__").glob("cli.*.pyc"))
        # The launcher runs the code from the private directory, not from dist-packages.
        assert not list(root.glob("usr/lib/python3/dist-packages/collectors*"))
        assert not list(root.glob("usr/share/evo-agent/evo_registry*"))

        # Local changes and state, as on a unit in the field.
        conf = root / "etc/evo-agent/agent.toml"
        conf.write_text(conf.read_text().replace("#timeout = 10.0", "timeout = 20.0"))
        local = conf.read_text()
        assert "\ntimeout = 20.0\n" in local
        dropin = root / "etc/evo-agent/agent.d/50-local.toml"
        dropin.parent.mkdir()
        dropin.write_text("[agent]\nenabled = true\n")
        state = root / "var/lib/evo-agent/outbox/report.json"
        state.parent.mkdir(parents=True)
        state.write_text("{}")
        # A unit manufactured by an older version kept its VPNID in /etc/evo-agent/vpnid: the
        # upgrade moves it where the agent now reads it.
        legacy = root / "etc/evo-agent/vpnid"
        legacy.write_text("EVO432-0042\n")
        vpnid = ident / "vpnid"

        out = vmlib.install_deb(root, deb2.path)
        assert "agent.toml" not in out.stdout + out.stderr  # no conffile prompt: kept silently
        assert vmlib.chroot(root, "evo-agent", "--version").stdout.strip() == \
            f"evo-agent {deb1.version}"  # the code's version; the package's is newer
        assert vmlib.chroot(root, "dpkg-query", "-W", "-f", "${Version}",
                            "evo-agent").stdout == deb2.version
        assert conf.read_text() == local
        assert dropin.is_file() and state.is_file()
        assert vpnid.read_text() == "EVO432-0042\n" and not legacy.exists()
        assert json.loads(vmlib.chroot(root, "evo-agent", "inventory",
                                       "--json").stdout)["functional"]["vpnid"] == "EVO432-0042"
        # The configuration with the local change is valid for the installed agent.
        assert vmlib.chroot(root, "evo-agent", "collectors", "--json").returncode == 0

        vmlib.chroot(root, "dpkg", "-r", "evo-agent")
        assert conf.read_text() == local and state.is_file() and dropin.is_file()
        assert not (root / "usr/share/evo-agent/evo_agent").exists()

        vmlib.chroot(root, "dpkg", "-P", "evo-agent")
        assert not conf.exists()
        assert not dropin.parent.exists()
        assert not (root / "var/lib/evo-agent").exists()
        assert vpnid.read_text() == "EVO432-0042\n"  # the device's identity stays
        assert not (wants / "evo-agent.service").exists()
        assert not (root / "usr/share/evo-agent").exists()
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
