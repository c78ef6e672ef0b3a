"""Names from usb.ids: the lazy lookup on a real excerpt and on this machine's whole file.

tests/data/usb/usb.ids.excerpt is cut from Debian 12's usb.ids 2025.07.26 (dual GPL-2.0+/BSD-3;
taken under BSD-3-Clause, see tests/data/usb/SOURCES.tsv): header, the vendors 0001, 1d6b, 192f,
0d8c (C-Media, maker of many USB audio chips), the last vendor ffee, and the start of the class
list, whose lines ("C 01  Audio", "\\t01  Control Device") must not be taken for IDs.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from collectors._hwids import USB_IDS_PATHS, IdsFile
from evo_agent.hostroot import LiveHost, ReplayHost

DATA = Path(__file__).resolve().parent / "data" / "usb"
INSTALLED = next((p for p in USB_IDS_PATHS if Path(p).is_file()), None)


@pytest.fixture
def excerpt(tmp_path: Path) -> IdsFile:
    """An IdsFile reading the excerpt from /usr/share/hwdata/usb.ids of a replay tree."""
    dest = tmp_path / "usr/share/hwdata/usb.ids"
    dest.parent.mkdir(parents=True)
    shutil.copyfile(DATA / "usb.ids.excerpt", dest)
    return IdsFile(ReplayHost(tmp_path), USB_IDS_PATHS)


def test_excerpt_lookups(excerpt: IdsFile) -> None:
    """Vendors and products of the excerpt; class lines are neither."""
    assert excerpt.vendor("1d6b") == "Linux Foundation"
    assert excerpt.device("1d6b", "0002") == "2.0 root hub"
    assert excerpt.device("1d6b", "0104") == "Multifunction Composite Gadget"
    assert excerpt.vendor("0d8c") == "C-Media Electronics, Inc."
    assert excerpt.device("0d8c", "0014") == "Audio Adapter (Unitek Y-247A)"
    assert excerpt.device("0d8c", "5200") == "Mass Storage Controller(0D8C,5200)"
    assert excerpt.device("192f", "0416") == "ADNS-5700 Optical Mouse Controller (3-button)"
    assert excerpt.vendor("ffee") == "FNK Tech"
    assert excerpt.device("ffee", "0100") == "Card Reader Controller RTS5101/RTS5111/RTS5116"
    assert excerpt.vendor("0001") == "Fry's Electronics"
    assert excerpt.device("0001", "0002") is None  # 1d6b's product, not 0001's
    assert excerpt.vendor("2708") is None  # Audient: not in this list
    assert excerpt.device("ffee", "0001") is None  # "\t01  Control Device" of class 01


def _ids_lines(path: Path) -> list[tuple[str, str | None, str]]:
    """(vendor, product or None, name) for every vendor and product line of an ID file."""
    out: list[tuple[str, str | None, str]] = []
    vendor = None
    for line in path.read_text("utf-8", "replace").splitlines():
        if line.startswith("C "):
            break
        m = re.match(r"^([0-9a-f]{4})  (.*)$", line)
        if m:
            vendor = m.group(1)
            out.append((vendor, None, m.group(2).strip()))
            continue
        m = re.match(r"^\t([0-9a-f]{4})  (.*)$", line)
        if m and vendor is not None:
            out.append((vendor, m.group(1), m.group(2).strip()))
    return out


@pytest.mark.skipif(INSTALLED is None, reason="usb.ids is not installed on this machine")
def test_every_entry_of_the_installed_file_is_found() -> None:
    """Every vendor and product line of this machine's usb.ids is found by the lazy lookup.

    A line-by-line parse (the obvious, slow way) is the oracle for the byte search.
    """
    assert INSTALLED is not None
    entries = _ids_lines(Path(INSTALLED))
    assert len(entries) > 20000
    ids = IdsFile(LiveHost("/"), USB_IDS_PATHS)
    first: dict[tuple[str, str | None], str] = {}
    for vendor, product, name in entries:
        first.setdefault((vendor, product), name)  # a duplicated ID: the first line wins
    for (vendor, product), name in first.items():
        got = ids.vendor(vendor) if product is None else ids.device(vendor, product)
        assert got == name, (vendor, product)
