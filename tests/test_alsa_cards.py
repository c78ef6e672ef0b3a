"""The alsa collector on 30 real machines' alsa-info outputs (tiwai/hda-emu, GPL-2.0, in place).

Every ``/proc/asound/cards`` text of the corpus parses.  :func:`build_tree` turns one alsa-info
output into the files the collector reads: ``/proc/asound/cards`` (the "Soundcards recognised by
ALSA" section), ``/proc/asound/cardN/id``, and ``/sys/class/sound/cardN`` under the device that
``/dev/snd/by-path`` names for the card's control node (``pci-0000:00:14.2``,
``pci-0000:00:13.0-usb-0:1:1.1``, ``platform-thinkpad_acpi``), with its ``subsystem`` link and,
where alsa-info listed one module per card, a ``driver`` link named after that module.  USB bus
numbers are not in alsa-info: bus 1 is assumed.  A USB card's IDs come from "USB Mixer:
usb_id=0x046d08ae" when the machine has one USB card.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from collectors.alsa import Alsa, parse_cards
from evo_agent.hostroot import ReplayHost

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "corpus"
HDA_EMU = CORPUS / "asound" / "hda-emu"
INFOS = sorted((HDA_EMU / "alsa-info").iterdir()) if (HDA_EMU / "alsa-info").is_dir() else []
CARDS_FILES = sorted((HDA_EMU / "_derived_proc_asound_cards").glob("*.cards")) if INFOS else []
_CARD_LINE = re.compile(r"^\s*\d+ \[")


def section(text: str, title: str) -> str:
    """Return the body of one ``!!Title`` section of an alsa-info output."""
    m = re.search(rf"^!!{re.escape(title)}\n!!-+\n(.*?)(?=^!!)", text, re.M | re.S)
    return m.group(1) if m else ""


def build_tree(info: Path, root: Path) -> None:
    """Write /proc/asound and /sys/class/sound for the cards of one alsa-info output."""
    text = info.read_text("utf-8", "replace")
    cards_text = section(text, "Soundcards recognised by ALSA").strip("\n") + "\n"
    asound = root / "proc/asound"
    asound.mkdir(parents=True)
    (asound / "cards").write_text(cards_text, "utf-8")
    cards = parse_cards(cards_text)
    modules = section(text, "Loaded ALSA modules").split()
    drivers = modules if len(modules) == len(cards) else [None] * len(cards)
    by_path = dict((int(n), p) for p, n in re.findall(r"(\S+) ->\s*\.\./controlC(\d+)", text))
    usb_ids = re.findall(r"USB Mixer: usb_id=0x([0-9a-f]{4})([0-9a-f]{4})", text)
    usb_cards = [c for c in cards if str(by_path.get(int(str(c["card"])), "")).count("-usb-")]
    for card, driver in zip(cards, drivers, strict=True):
        n = int(str(card["card"]))
        (asound / f"card{n}").mkdir()
        (asound / f"card{n}/id").write_text(f"{card['id']}\n")
        where = by_path.get(n)
        if where is None:
            continue
        m = re.fullmatch(r"pci-([0-9a-f:.]+?)(?:-usb-0:([0-9.]+):([0-9]+\.[0-9]+))?", where)
        if m:
            pci = f"devices/pci0000:00/{m.group(1)}"
            if m.group(2):
                usbdev = f"{pci}/usb1/1-{m.group(2)}"
                dev, bus = f"{usbdev}/1-{m.group(2)}:{m.group(3)}", "usb"
                if len(usb_cards) == 1 and len(usb_ids) == 1:
                    (root / "sys" / usbdev).mkdir(parents=True, exist_ok=True)
                    (root / "sys" / usbdev / "idVendor").write_text(usb_ids[0][0] + "\n")
                    (root / "sys" / usbdev / "idProduct").write_text(usb_ids[0][1] + "\n")
            else:
                dev, bus = pci, "pci"
        elif where.startswith("platform-"):
            dev, bus = f"devices/platform/{where.removeprefix('platform-')}", "platform"
        else:
            continue
        devdir = root / "sys" / dev
        (devdir / f"sound/card{n}").mkdir(parents=True)
        up = "../" * dev.count("/")
        (devdir / "subsystem").symlink_to(f"../{up}bus/{bus}")
        if driver:
            (devdir / "driver").symlink_to(f"../{up}bus/{bus}/drivers/{driver}")
        (devdir / f"sound/card{n}/device").symlink_to("../..")
        cls = root / "sys/class/sound"
        cls.mkdir(parents=True, exist_ok=True)
        (cls / f"card{n}").symlink_to(f"../../{dev}/sound/card{n}")


@pytest.mark.corpus
@pytest.mark.parametrize("path", CARDS_FILES, ids=lambda p: p.stem)
def test_every_cards_file_parses(path: Path) -> None:
    """Each card line of every /proc/asound/cards of the corpus gives one card, with names."""
    text = path.read_text("utf-8", "replace")
    cards = parse_cards(text)
    lines = [line for line in text.splitlines() if _CARD_LINE.match(line)]
    assert len(cards) == len(lines) >= 1
    for card, line in zip(cards, lines, strict=True):
        assert card["card"] == int(line.split("[")[0])
        assert card["id"] and " " not in str(card["id"])
        assert card["alsa_driver"] and card["name"] and card["long_name"]
        assert str(card["name"]) == str(card["name"]).strip()


@pytest.mark.corpus
@pytest.mark.parametrize("info", INFOS, ids=lambda p: p.name)
def test_every_alsa_info_machine(info: Path, tmp_path: Path) -> None:
    """The collector on each machine: one entry per card, buses as /dev/snd/by-path says."""
    build_tree(info, tmp_path)
    text = info.read_text("utf-8", "replace")
    cards = Alsa().collect(ReplayHost(tmp_path))["cards"]
    assert [c["card"] for c in cards] == [
        c["card"] for c in parse_cards(section(text, "Soundcards recognised by ALSA"))]
    by_path = dict((int(n), p) for p, n in re.findall(r"(\S+) ->\s*\.\./controlC(\d+)", text))
    for card in cards:
        where = by_path.get(int(card["card"]))
        if where is None:
            # no sysfs link: a USB card is still known as USB by its long name
            assert card["bus"] == ("usb" if " at usb-" in str(card["long_name"]) else None)
            assert card["driver"] is None and card["pci_address"] is None
        elif "-usb-" in where:
            assert card["bus"] == "usb" and card["pci_address"] is None
        elif where.startswith("pci-"):
            assert card["bus"] == "pci"
            assert card["pci_address"] == where.removeprefix("pci-")
        else:
            assert card["bus"] == "platform"


def _cards(name: str, tmp_path: Path) -> dict[int, dict[str, object]]:
    info = HDA_EMU / "alsa-info" / name
    if not info.is_file():
        pytest.skip(f"{info} is not in the corpus")
    build_tree(info, tmp_path)
    return {int(c["card"]): c for c in Alsa().collect(ReplayHost(tmp_path))["cards"]}


@pytest.mark.corpus
def test_asus_m488td_four_cards(tmp_path: Path) -> None:
    """Two HDA controllers, an ICE1712 PCI card and a USB webcam's microphone."""
    cards = _cards("alc892-asus-m488td-v", tmp_path)
    assert sorted(cards) == [0, 1, 2, 3]
    assert cards[0] == {
        "card": 0, "id": "SB", "alsa_driver": "HDA-Intel", "name": "HDA ATI SB",
        "long_name": "HDA ATI SB at 0xfe6f4000 irq 16", "driver": "snd_hda_intel", "bus": "pci",
        "usb_id": None, "pci_address": "0000:00:14.2",
    }
    assert (cards[1]["id"], cards[1]["pci_address"]) == ("HDMI", "0000:01:05.1")
    assert (cards[2]["alsa_driver"], cards[2]["name"]) == (
        "ICE1712", "Hoontech SoundTrack Audio DSP24")
    assert (cards[2]["driver"], cards[2]["pci_address"]) == ("snd_ice1712", "0000:04:05.0")
    # the webcam's product string is "Camera" padded with blanks: the kernel keeps them
    assert (cards[3]["id"], cards[3]["name"], cards[3]["bus"]) == ("default", "Camera", "usb")
    assert cards[3]["usb_id"] == "046d:08ae"
    assert cards[3]["driver"] == "snd_usb_audio"
    assert cards[3]["long_name"] == "Camera          at usb-0000:00:13.0-1, full speed"


@pytest.mark.corpus
def test_thinkpad_t530_card_29_on_the_platform_bus(tmp_path: Path) -> None:
    """ThinkPad EC's console audio control is card 29, a platform device; its driver name
    ("ThinkPad EC") holds a space."""
    cards = _cards("alc269vc-lenovo-thinkpad-t530", tmp_path)
    assert sorted(cards) == [0, 1, 29]
    ec = cards[29]
    assert (ec["id"], ec["alsa_driver"], ec["name"]) == (
        "ThinkPadEC", "ThinkPad EC", "ThinkPad Console Audio Control")
    assert (ec["bus"], ec["pci_address"], ec["usb_id"]) == ("platform", None, None)
    assert ec["driver"] is None  # this alsa-info listed no modules
    assert (cards[1]["id"], cards[1]["pci_address"]) == ("NVidia", "0000:01:00.1")


@pytest.mark.corpus
def test_lenovo_w500_quickcam(tmp_path: Path) -> None:
    """A QuickCam Pro 9000 microphone: USB card 1 on the EHCI controller 00:1d.7."""
    cards = _cards("cx20561-lenovo-w500", tmp_path)
    cam = cards[1]
    assert (cam["id"], cam["alsa_driver"], cam["name"]) == (
        "Q9000", "USB-Audio", "QuickCam Pro 9000")
    assert cam["long_name"] == (
        "Logitech, Inc. QuickCam Pro 9000 at usb-0000:00:1d.7-2, high speed")
    assert cam["bus"] == "usb"
    assert cam["usb_id"] is None  # alsa-info 2009 printed no USB mixer id for it


@pytest.mark.corpus
def test_cards_files_equal_alsa_info_sections() -> None:
    """The derived .cards files are the alsa-info sections (so both cover the same 30 machines)."""
    for info in INFOS:
        derived = HDA_EMU / "_derived_proc_asound_cards" / f"{info.name}.cards"
        want = parse_cards(section(info.read_text("utf-8", "replace"),
                                   "Soundcards recognised by ALSA"))
        assert parse_cards(derived.read_text("utf-8", "replace")) == want, info.name


def test_missing_proc_asound_is_no_data(tmp_path: Path) -> None:
    """No /proc/asound (no sound support): an empty list, which the runner reports as no_data."""
    assert Alsa().collect(ReplayHost(tmp_path)) == {"cards": []}


def test_no_soundcards(tmp_path: Path) -> None:
    """The kernel's text for zero cards."""
    (tmp_path / "proc/asound").mkdir(parents=True)
    (tmp_path / "proc/asound/cards").write_text("--- no soundcards ---\n")
    assert Alsa().collect(ReplayHost(tmp_path)) == {"cards": []}


def test_usbid_file_and_id_file_win(tmp_path: Path) -> None:
    """/proc/asound/cardN/usbid gives the USB ID and the bus; the id file the exact id."""
    asound = tmp_path / "proc/asound"
    (asound / "card1").mkdir(parents=True)
    (asound / "cards").write_text(
        " 1 [U0x46d0x8c7    ]: USB-Audio - USB Device 0x46d:0x8c7\n"
        "                      USB Device 0x46d:0x8c7 at usb-0000:00:1d.7-6, high speed\n")
    (asound / "card1/usbid").write_text("046d:08c7\n")
    (asound / "card1/id").write_text("U0x46d0x8c7\n")
    (card,) = Alsa().collect(ReplayHost(tmp_path))["cards"]
    assert (card["id"], card["usb_id"], card["bus"]) == ("U0x46d0x8c7", "046d:08c7", "usb")
