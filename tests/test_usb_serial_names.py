"""The serial rule of descriptor-string names, measured on real names.

A device string is no name when it holds the device's serial (or a 6+ character piece of it) or a
serial-like word (see collectors/_hwids.py; the canaries are in test_usb_serial_canary.py).  What
the rule costs is measured on real names: every vendor and device name of the installed usb.ids,
the descriptor strings of shared/corpus/lsusb (cyme, glpi-agent: GPL, read in place; jc: MIT) and
the USB strings of shared/corpus/udev (checkbox, GPL-3.0, read in place).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors._hwids import USB_IDS_PATHS, holds_serial, plausible_name, serial_like

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "corpus"
INSTALLED = next((p for p in USB_IDS_PATHS if Path(p).is_file()), None)


def test_a_serial_too_short_to_be_one_rejects_nothing() -> None:
    """A 1-3 character serial ("1", "001") is no secret: names holding it stay."""
    assert plausible_name("DAC 1", "1") == "DAC 1"
    assert plausible_name("Series 001 DAC", "001") == "Series 001 DAC"
    assert plausible_name("Series 0001 DAC", "0001") is None


@pytest.mark.parametrize(("text", "rejected"), [
    ("8F3A2C91D0", True), ("SN 8f3a2c91d0e4", True), ("Webcam 4437E62E16DE-BC1C", True),
    ("CN0CW54MLOG0079LB04LA00", True), ("cn0cw54mlog0079lb04la00", True),
    # part numbers of usb.ids and pci.ids that look like hex or are long
    ("CC2400EB 2.0 ZigBee Sniffer", False), ("F1DE108B KVM", False), ("AEC67162 SCSI", False),
    ("BCM20702A0 Bluetooth", False), ("3CRUSB20075 OfficeConnect", False),
    ("My Book Essential 3TB (WDBACW0030HBK)", False), ("DreamComboM4100", False),
    ("USB Camera-B4.04.27.1", False), ("Integrated_Webcam_HD", False),
])
def test_serial_like_words(text: str, rejected: bool) -> None:
    """10+ hex digits (3+ digits, 2+ letters) or 16+ letters and digits (4+ digits) is a serial."""
    assert serial_like(text) is rejected


def _usb_ids_names() -> list[str]:
    """Every vendor and device name of the installed usb.ids (its vendor section)."""
    assert INSTALLED is not None
    names = []
    for line in Path(INSTALLED).read_text("utf-8", "replace").splitlines():
        if line.startswith("C "):
            break  # the class list and the sections after it are no device names
        m = re.match(r"^\t?[0-9a-f]{4}  (.+)$", line)
        if m:
            names.append(m.group(1).strip())
    return names


# The one usb.ids name (Debian 12's hwdata, usb.ids 2025.07.26) with a serial-like word: a hex
# blob ("4E4F41482E4F5247" is "NOAH.ORG" in hex), which no rule can tell from a serial.
USB_IDS_SERIAL_LIKE = {'PieKey "beta" 4GB model 4E4F41482E4F5247 (SM3251Q BB)'}


@pytest.mark.skipif(INSTALLED is None, reason="usb.ids is not installed on this machine")
def test_serial_rule_on_every_usb_ids_name() -> None:
    """The serial rule rejects no real name of usb.ids but one hex blob."""
    names = _usb_ids_names()
    assert len(names) > 15000
    rejected = {n for n in names if serial_like(n)}
    assert rejected <= USB_IDS_SERIAL_LIKE, sorted(rejected - USB_IDS_SERIAL_LIKE)


@pytest.mark.skipif(INSTALLED is None, reason="usb.ids is not installed on this machine")
def test_email_rule_cost_on_usb_ids() -> None:
    """"x@y" is an address even without a domain; these usb.ids names pay for it (16 in 20,000)."""
    names = _usb_ids_names()
    with_at = [n for n in names if re.search(r"[^\s@]@\w", n)]
    assert "Hercules Scan@home 48" in with_at and len(with_at) < 30
    assert all(plausible_name(n) is None for n in with_at)
    kept = [n for n in names if plausible_name(n) is not None]
    assert len(kept) > len(names) - 30


def _lsusb_devices() -> list[dict[str, str]]:
    """iManufacturer, iProduct and iSerial of each device of the corpus's lsusb -v outputs."""
    devices: list[dict[str, str]] = []
    for path in sorted((CORPUS / "lsusb").glob("*/*")):
        dev: dict[str, str] = {}
        for line in path.read_text("utf-8", "replace").splitlines():
            if line.startswith("Bus "):
                dev = {}
                devices.append(dev)
            m = re.match(r"^\s+(iManufacturer|iProduct|iSerial)\s+([0-9]+) ?(.*)$", line)
            if m and m.group(2) != "0" and m.group(3).strip() and m.group(1) not in dev:
                dev[m.group(1)] = m.group(3).strip()
    return [d for d in devices if d]


@pytest.mark.corpus
def test_no_lsusb_descriptor_string_holds_a_serial() -> None:
    """Every manufacturer and product string of the corpus's lsusb outputs passes the rule."""
    devices = _lsusb_devices()
    checked = 0
    for dev in devices:
        for key in ("iManufacturer", "iProduct"):
            if key in dev:
                checked += 1
                assert not serial_like(dev[key]), dev[key]
                assert not holds_serial(dev[key], dev.get("iSerial")), dev
    assert checked >= 60


def _udev_usb_strings() -> list[tuple[str, str | None]]:
    """(vendor or model string, serial) of each USB device record of shared/corpus/udev."""
    found = []
    for path in sorted((CORPUS / "udev").glob("*/*")):
        for block in path.read_text("utf-8", "replace").split("\n\n"):
            props = dict(re.findall(r"^E: (\w+)=(.*)$", block, re.M))
            if props.get("ID_BUS") != "usb":
                continue
            for key in ("ID_VENDOR_ENC", "ID_MODEL_ENC"):
                if key in props:  # udev writes blanks and other bytes as \xNN
                    text = re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)),
                                  props[key]).strip()
                    if text:
                        found.append((text, props.get("ID_SERIAL_SHORT")))
    return sorted(set(found), key=str)


# The udev corpus's USB strings that are serials: Dell webcams (CAPTURE_METADATA.txt and others)
# whose manufacturer string is a Dell PPID or a hex code.
UDEV_SERIALS = {
    "001731C3913D-B40D-12131E", "4437E62E16DE-BC1C-0D3310", "CN00XMGGLOG0091FD053A01",
    "CN0CW54MLOG0079LB04LA00", "CN0F08KG724875AEB021X02", "CN0J8NNP7248754LB0D1X02",
    "CN0Y3PX87248731NA8E2A00", "CNFDH69F30401789B1B2", "CNFGH19F30401789C512",
}


@pytest.mark.corpus
def test_udev_corpus_strings_rejected_are_the_serials() -> None:
    """Of ~280 real USB vendor and model strings, the rule rejects exactly the nine serials."""
    strings = _udev_usb_strings()
    assert len(strings) > 200
    rejected = {text for text, serial in strings if plausible_name(text, serial) is None}
    assert rejected == UDEV_SERIALS


_SERIALISH = st.text(alphabet="0123456789abcdefABCDEFxyzXYZ -._", min_size=0, max_size=24)


@settings(max_examples=400, deadline=None)
@given(before=st.text(max_size=30), serial=_SERIALISH, after=st.text(max_size=30),
       upper=st.booleans())
def test_fuzz_a_name_holding_its_serial_is_never_kept(before: str, serial: str, after: str,
                                                      upper: bool) -> None:
    """Any text around a 4+ character serial, in either case: no name; never an exception."""
    text = before + (serial.upper() if upper else serial.lower()) + after
    got = plausible_name(text, serial)
    assert got is None or got == text.strip()
    if len(serial.strip()) >= 4:
        assert got is None
