"""Garbage from hardware never crashes the disks parsers (hypothesis); regressions found so far."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectors._udevdb import block_properties, decode_escapes
from collectors._udevdb import parse_properties as parse_udev_data
from collectors.disks import Disks, natural_key, parse_mountinfo, parse_vpd_pg80
from evo_agent.hostroot import ReplayHost

# Lines shaped like the real thing, mutated: fields from the alphabet mountinfo and udev use.
_FIELD = st.text(alphabet=st.sampled_from(list("0123456789:/-abcdefx \\\t=,EPSN_")), max_size=24)
_MOUNT_LINE = st.lists(_FIELD, min_size=0, max_size=14).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_MOUNT_LINE, st.text(max_size=80)), max_size=20))
def test_mountinfo_never_raises(lines: list[str]) -> None:
    for m in parse_mountinfo("\n".join(lines)):
        assert m.major >= 0 and m.minor >= 0


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_udev_data_never_raises(text: str) -> None:
    props = parse_udev_data(text)
    assert all(isinstance(k, str) and "=" not in k for k in props)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("\\x0123456789abcdefgABCDEF é")), max_size=60))
def test_udev_escape_decoder_never_raises(text: str) -> None:
    assert isinstance(decode_escapes(text), str)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_vpd_pg80_never_raises(data: bytes) -> None:
    serial = parse_vpd_pg80(data)
    assert serial is None or (serial.isprintable() and serial == serial.strip())


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_natural_key_is_total(name: str) -> None:
    assert sorted([name, "sr0", "sr10", "sr2"], key=natural_key)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(mountinfo=st.binary(max_size=300), udev=st.binary(max_size=200),
       dev=st.binary(max_size=12), size=st.binary(max_size=12), vpd=st.binary(max_size=40))
def test_collector_on_garbage_tree(*, mountinfo: bytes, udev: bytes, dev: bytes, size: bytes,
                                   vpd: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        disk = root / "sys/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda"
        disk.mkdir(parents=True)
        (disk / "dev").write_bytes(dev)
        (disk / "size").write_bytes(size)
        (disk.parent.parent / "vpd_pg80").write_bytes(vpd)
        (disk.parent.parent / "type").write_bytes(vpd[:2])
        os.symlink(disk.parent.parent, disk / "device")
        (root / "sys/block").mkdir(parents=True)
        os.symlink(os.path.relpath(disk, root / "sys/block"), root / "sys/block/sda")
        (root / "sys/dev/block").mkdir(parents=True)
        os.symlink(os.path.relpath(disk, root / "sys/dev/block"), root / "sys/dev/block/8:0")
        (root / "proc/self").mkdir(parents=True)
        (root / "proc/self/mountinfo").write_bytes(
            b"25 1 8:0 / / rw - ext4 /dev/sda rw\n" + mountinfo)
        (root / "run/udev/data").mkdir(parents=True)
        (root / "run/udev/data/b8:0").write_bytes(udev)
        raw = Disks().collect(ReplayHost(root))
        assert raw["boot_drive_device"] == "sda"
        assert [d["name"] for d in raw["drives"]] == ["sda"]


def test_regression_natural_key_unicode_digit() -> None:
    # hypothesis: "¹" passed str.isdigit() and crashed int()
    assert sorted(["sr10", "¹", "sr2"], key=natural_key) == ["sr2", "sr10", "¹"]


def test_udev_lookup_refuses_odd_device_numbers(tmp_path: Path) -> None:
    # a garbage "dev" file must not become a path outside /run/udev/data
    (tmp_path / "run/udev/data").mkdir(parents=True)
    (tmp_path / "secret").write_text("E:ID_SERIAL_SHORT=LEAK\n")
    host = ReplayHost(tmp_path)
    assert block_properties(host, "../../../secret") == {}
    assert block_properties(host, "8:0\n") == {}
    assert block_properties(host, None) == {}
