"""Every collector, built-in or plugin, is well formed and survives an empty or hostile host."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from evo_agent.collector import Collector, discover
from evo_agent.hostroot import ReplayHost

COLLECTORS = discover()


def test_the_expected_collectors_are_there() -> None:
    assert {"dmi", "pci", "usb", "alsa", "disks", "network", "identity"} <= set(COLLECTORS)


@pytest.mark.parametrize("name", sorted(COLLECTORS))
def test_collector_is_well_formed(name: str) -> None:
    cls = COLLECTORS[name]
    assert issubclass(cls, Collector)
    assert name.isalpha() and name.islower()
    assert cls.__module__ == f"collectors.{name}", "one collector per module, named like it"
    assert cls.description and "\n" not in cls.description
    assert cls.fields and all(isinstance(k, str) and v for k, v in cls.fields.items())
    for option, (kind, default) in cls.options.items():
        assert kind in (str, int, float, bool, list), option
        assert isinstance(default, kind), option


@pytest.mark.parametrize("name", sorted(COLLECTORS))
def test_collector_on_an_empty_host_returns_declared_keys(name: str, tmp_path: Path) -> None:
    raw = COLLECTORS[name]().collect(ReplayHost(tmp_path))
    assert isinstance(raw, dict)
    assert set(raw) <= set(COLLECTORS[name].fields), set(raw) - set(COLLECTORS[name].fields)
    json.dumps(raw)  # raw values are JSON data


@pytest.mark.parametrize("name", sorted(COLLECTORS))
def test_collector_on_garbage_files_does_not_crash(name: str, tmp_path: Path) -> None:
    """Every file a collector could read holds non-UTF-8 garbage: it must not raise."""
    garbage = b"\xff\xfe\x00garbage\n:::\n\x1b[0m=\n" * 3
    dirs = ["sys/class/dmi/id", "sys/bus/pci/devices/0000:00:00.0", "sys/bus/usb/devices/1-1",
            "proc/asound/card0", "sys/class/sound/card0", "sys/class/net/eth0", "sys/block/sda",
            "sys/dev/block", "run/udev/data", "proc/self", "proc/net", "proc/sys/kernel",
            "etc/samba", "etc/evo-agent/identity", "commands", "usr/share/misc", "usr/share/hwdata"]
    files = ["proc/asound/cards", "proc/cpuinfo", "proc/meminfo", "proc/self/mountinfo",
             "proc/net/route", "proc/net/fib_trie", "proc/net/if_inet6", "etc/samba/smb.conf",
             "etc/evo-agent/identity/vpnid", "etc/hostname", "proc/sys/kernel/hostname",
             "commands/dmidecode.txt", "commands/netlink-addresses.txt", "usr/share/misc/pci.ids",
             "usr/share/misc/usb.ids", "usr/share/hwdata/pci.ids", "usr/share/hwdata/usb.ids",
             "run/udev/data/b8:0", "run/udev/data/+pci:0000:00:00.0", "run/udev/data/c189:1"]
    for d in dirs:
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
        for attr in ("vendor", "device", "class", "idVendor", "idProduct", "address", "type",
                     "board_vendor", "board_serial", "id", "dev", "model", "serial", "usbid"):
            (tmp_path / d / attr).write_bytes(garbage)
    for f in files:
        (tmp_path / f).write_bytes(garbage)
    raw = COLLECTORS[name]().collect(ReplayHost(tmp_path))
    assert isinstance(raw, dict)
    json.dumps(raw)


def test_a_third_party_collector_plugs_in_by_entry_point(tmp_path: Path) -> None:
    """A package that declares an entry point is found without any edit of the agent."""
    (tmp_path / "evo_fanspeed.py").write_text(
        "from evo_agent.collector import Collector\n"
        "class Fans(Collector):\n"
        "    name = 'fans'\n"
        "    description = 'fan speeds'\n"
        "    fields = {'rpm': 'speed of fan 1'}\n"
        "    def collect(self, host):\n"
        "        return {'rpm': host.read_attr('/sys/class/hwmon/hwmon0/fan1_input')}\n"
    )
    dist = tmp_path / "evo_fanspeed-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: evo-fanspeed\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[evo_agent.collectors]\nfans = evo_fanspeed:Fans\n")
    sys.path.insert(0, str(tmp_path))
    try:
        importlib.invalidate_caches()
        found = discover()
        assert "fans" in found
        hw = tmp_path / "host/sys/class/hwmon/hwmon0"
        hw.mkdir(parents=True)
        (hw / "fan1_input").write_text("1200\n")
        assert found["fans"]().collect(ReplayHost(tmp_path / "host")) == {"rpm": "1200"}
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("evo_fanspeed", None)
        importlib.invalidate_caches()


