"""udev database records: the parser on real /run/udev/data files, record names, and fuzzing.

node_exporter's udev.ttar (Apache-2.0, shared/corpus/sysfs/node_exporter) holds 15 real records
of /run/udev/data, with S:, W:, I:, E:, G:, Q:, V: and L: lines as udev writes them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors import _udevdb
from evo_agent.hostroot import ReplayHost
from tests.ttar import unpack

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "corpus"
UDEV_TTAR = CORPUS / "sysfs" / "node_exporter" / "udev.ttar"


@pytest.fixture(scope="module")
def udev_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """node_exporter's udev records, placed at /run/udev/data of a replay tree."""
    out = tmp_path_factory.mktemp("udev")
    unpack(UDEV_TTAR, out / "tmp")
    (out / "run").mkdir()
    (out / "tmp/udev").rename(out / "run/udev")
    return out


@pytest.mark.corpus
def test_real_records(udev_root: Path) -> None:
    """Properties of real records; the other line kinds (S:, I:, G:...) are not properties."""
    host = ReplayHost(udev_root)
    sd = _udevdb.properties(host, "b179:0")
    assert sd["ID_NAME"] == "SC64G"
    assert sd["ID_PATH"] == "platform-df2969f3.mmc"
    assert sd["ID_PART_TABLE_TYPE"] == "dos"
    assert not any(key.startswith(("disk/", "systemd")) for key in sd)
    disk = _udevdb.properties(host, "b8:0")
    assert disk["ID_MODEL"] == "TOSHIBA_KSDB4U86"
    assert disk["ID_MODEL_ENC"] == "TOSHIBA\\x20KSDB4U86"  # values are kept as udev wrote them
    every = [_udevdb.properties(host, name) for name in sorted(
        p.name for p in (udev_root / "run/udev/data").iterdir())]
    assert len(every) == 15 and all(every)


def test_absent_and_unsafe_record_names(tmp_path: Path) -> None:
    """A missing record, or a name that would leave the directory, gives {}."""
    secret = tmp_path / "run/udev/secret"
    secret.parent.mkdir(parents=True)
    secret.write_text("E:LEAK=1\n")
    (tmp_path / "run/udev/data").mkdir()
    host = ReplayHost(tmp_path)
    for name in ("c189:9", "", ".", "..", "../secret", "a/b"):
        assert _udevdb.properties(host, name) == {}


@pytest.mark.parametrize(("dev", "busnum", "devnum", "want"), [
    ("189:2", None, None, "c189:2"),
    ("189:130\n", "2", "3", "c189:130"),  # dev wins
    (None, "2", "3", "c189:130"),  # (2 - 1) * 128 + 3 - 1
    (None, "001", "001", "c189:0"),
    ("garbage", "1", "5", "c189:4"),
    (None, "0", "1", None), (None, "1", "0", None), (None, "1", "129", None),
    (None, None, None, None), ("189:", "x", "y", None), (":3", None, None, None),
])
def test_usb_record_name(dev: str | None, busnum: str | None, devnum: str | None,
                         want: str | None) -> None:
    """A USB device's record: from its dev attribute, else from bus and device number."""
    assert _udevdb.usb_record(dev, busnum, devnum) == want


def test_pci_record_name() -> None:
    """PCI functions have no device node: "+pci:<address>"."""
    assert _udevdb.pci_record("0000:00:1f.3") == "+pci:0000:00:1f.3"


def test_parse_properties_edge_cases() -> None:
    """Lines that are not E:KEY=VALUE are skipped; '=' in values is kept; the last value wins."""
    text = ("E:A=1\nE:URL=a=b=c\nE:=nokey\nE:BAD KEY=x\nE:NOEQUALS\nS:link\nE:A=2\n"
            "E:EMPTY=\n\x00E:NUL=1\nE:ID_VENDOR_FROM_DATABASE=Intel Corporation\r\n")
    props = _udevdb.parse_properties(text)
    assert props == {"A": "2", "URL": "a=b=c", "EMPTY": "",
                     "ID_VENDOR_FROM_DATABASE": "Intel Corporation"}


_line = st.one_of(
    st.builds(lambda k, v: f"E:{k}={v}", st.text(max_size=20), st.text(max_size=30)),
    st.builds(lambda c, t: f"{c}:{t}", st.sampled_from("SIWGQVLEN"), st.text(max_size=30)),
    st.text(max_size=50),
)


@settings(max_examples=500, deadline=None)
@given(lines=st.lists(_line, max_size=30))
def test_fuzz_parse_properties(lines: list[str]) -> None:
    """Any record text gives a dict of str to str whose keys have udev's shape."""
    props = _udevdb.parse_properties("\n".join(lines))
    for key, value in props.items():
        assert isinstance(key, str) and isinstance(value, str)
        assert key and "=" not in key and "\n" not in value


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(max_size=2000))
def test_fuzz_record_bytes(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    """Any bytes in a record file: properties() returns a dict, never raises."""
    root = tmp_path_factory.mktemp("db")
    (root / "run/udev/data").mkdir(parents=True)
    (root / "run/udev/data/c189:1").write_bytes(raw)
    assert isinstance(_udevdb.properties(ReplayHost(root), "c189:1"), dict)


# -- regression: the crash fuzzing found ----------------------------------------------------------
@pytest.mark.parametrize(("dev", "busnum", "devnum"), [
    (None, "0", "\u00b2"),  # the falsifying example: "²".isdigit() is True, int("²") raises
    ("\u00b2:1", None, None), ("189:\u0663", "\u0661", "\u0662"),  # Arabic-Indic digits
    (None, "1", "9" * 40),
])
def test_regression_unicode_digits_in_device_numbers(dev: str | None, busnum: str | None,
                                                     devnum: str | None) -> None:
    """Unicode digits in dev/busnum/devnum give no record instead of a ValueError."""
    assert _udevdb.usb_record(dev, busnum, devnum) is None


def test_regression_unicode_digits_in_sysfs_files(tmp_path: Path) -> None:
    """The same bytes in a capture's busnum/devnum and uevent do not stop the usb collector."""
    from collectors.usb import Usb

    d = tmp_path / "sys/devices/x/1-1"
    d.mkdir(parents=True)
    (d / "idVendor").write_text("0d8c\n")
    (d / "busnum").write_text("0\n")
    (d / "devnum").write_text("\u00b2\n")
    (d / "uevent").write_text("MAJOR=\u00b2\nMINOR=1\nPRODUCT=d8c/14/100\nTYPE=\u00b2/0/0\n")
    (tmp_path / "sys/bus/usb/devices").mkdir(parents=True)
    (tmp_path / "sys/bus/usb/devices/1-1").symlink_to("../../../devices/x/1-1")
    (dev,) = Usb().collect(ReplayHost(tmp_path))["devices"]
    assert (dev["vendor_id"], dev["product_id"], dev["device_class"]) == ("0d8c", "0014", None)
