"""Privacy canaries in USB sound card names: the full device strings decide, not the cut name.

snd-usb-audio copies a USB device's product string into the card's shortname, which holds 31
bytes (``char shortname[32]``, sound/usb/card.c usb_audio_make_shortname()), and the kernel
makes the card id from the shortname's last word (sound/core/init.c
retrieve_id_from_card_name(), copy_valid_id_string()).  A product string with an e-mail address
at its end is cut before its domain, or before its "@": the short name alone no longer shows it.

The fixture is planted (the canaries must be made up) the way the kernel lays a USB sound card
out: ``/sys/class/sound/cardN`` -> the card under the USB interface ``1-4:1.0``, whose parent
``1-4`` is the USB device with its ``product``, ``manufacturer`` and ``serial`` files;
``/proc/asound/cards`` holds the cut short name and the long name, ``cardN/id`` the id the
kernel makes of it.  Each canary is checked through the privacy filter, byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from collectors._hwids import plausible_name
from collectors.alsa import Alsa
from evo_agent.hostroot import ReplayHost
from evo_agent.policy import apply, load_policy

SHORTNAME_BYTES = 31  # char shortname[32] and its NUL


def kernel_shortname(product: str) -> str:
    """The card's shortname: the product string cut to 31 bytes, blanks trimmed (strim)."""
    return product.encode("utf-8")[:SHORTNAME_BYTES].decode("utf-8", "ignore").strip()


def kernel_card_id(shortname: str) -> str:
    """The card id: the letters and digits of the shortname's last word, 15 at most."""
    start = 0
    for i in range(len(shortname) - 1):
        if shortname[i].isspace() and shortname[i + 1].isascii() and shortname[i + 1].isalnum():
            start = i + 1
    word = [c for c in shortname[start:] if c.isascii() and c.isalnum()]
    if word and word[0].isdigit():
        word.insert(0, shortname[0] if shortname[0].isalpha() else "D")
    return "".join(word)[:15] or "Default"


def plant(root: Path, *, product: str | None, manufacturer: str | None, serial: str | None,
          with_device: bool = True, card: int = 1) -> None:
    """Write one USB sound card; ``with_device=False`` leaves the sysfs tree out (bare capture)."""
    shortname = kernel_shortname(product) if product else "USB Device 0xf1e2:0xa0b"
    card_id = kernel_card_id(shortname)
    asound = root / "proc/asound"
    (asound / f"card{card}").mkdir(parents=True)
    longname = f"{manufacturer + ' ' if manufacturer else ''}{shortname}"[:80]
    (asound / "cards").write_text(
        f"{card:2d} [{card_id:<15}]: USB-Audio - {shortname}\n"
        f"                      {longname} at usb-0000:00:14.0-4, high speed\n", "utf-8")
    (asound / f"card{card}/id").write_text(card_id + "\n")
    (asound / f"card{card}/usbid").write_text("f1e2:0a0b\n")
    if not with_device:
        return
    pci = "devices/pci0000:00/0000:00:14.0"
    usbdev = root / "sys" / pci / "usb1/1-4"
    usbdev.mkdir(parents=True)
    strings = {"product": product, "manufacturer": manufacturer, "serial": serial,
               "idVendor": "f1e2", "idProduct": "0a0b"}
    for name, value in strings.items():
        if value is not None:
            (usbdev / name).write_text(value + "\n", "utf-8")
    iface = usbdev / "1-4:1.0"
    (iface / f"sound/card{card}").mkdir(parents=True)
    (iface / f"sound/card{card}/device").symlink_to("../..")
    (root / "sys/bus/usb/drivers/snd-usb-audio").mkdir(parents=True)
    (iface / "subsystem").symlink_to("../../../../../../bus/usb")
    (iface / "driver").symlink_to("../../../../../../bus/usb/drivers/snd-usb-audio")
    (root / "sys/class/sound").mkdir(parents=True)
    (root / "sys/class/sound" / f"card{card}").symlink_to(
        f"../../{pci}/usb1/1-4/1-4:1.0/sound/card{card}")


def _card(root: Path) -> dict[str, Any]:
    """The one card the collector finds."""
    (card,) = Alsa().collect(ReplayHost(root))["cards"]
    assert isinstance(card, dict)
    return card


def _sent(root: Path) -> tuple[list[dict[str, Any]], str]:
    """The audio_devices the privacy filter lets leave, and all it lets leave as JSON."""
    result = apply(load_policy(), {"alsa": Alsa().collect(ReplayHost(root))})
    return (result.hardware["audio_devices"],
            json.dumps({"functional": result.functional, "hardware": result.hardware}))


# (product string, the cut short name, a piece of personal data in that short name)
CUT_EMAILS = [
    # the reviewer's example: cut after the domain's first label, before its dot's TLD
    ("Studio DAC of jane.doe@example.org", "Studio DAC of jane.doe@example.", "jane.doe"),
    # cut just after the "@" plus one letter
    ("Studio DAC of jane.canary5512@example.org", "Studio DAC of jane.canary5512@e",
     "canary5512"),
    # cut before the "@": nothing in the short name says e-mail; only the full string does
    ("Hi-Fi DAC owned by zqcanary5512@example.org", "Hi-Fi DAC owned by zqcanary5512",
     "zqcanary5512"),
]


@pytest.mark.parametrize(("product", "shortname", "canary"), CUT_EMAILS,
                         ids=["after-domain-label", "after-at", "before-at"])
def test_cut_email_in_product_never_leaves(tmp_path: Path, product: str, shortname: str,
                                           canary: str) -> None:
    """A product string longer than 31 bytes with an e-mail address at its end: no name, no id."""
    assert len(product.encode()) > SHORTNAME_BYTES
    assert kernel_shortname(product) == shortname  # the fixture is what the kernel makes
    plant(tmp_path, product=product, manufacturer="Studio Audio", serial="SA-000042")
    # the canary is in what the kernel shows (so the checks below can fail), and in the id
    assert canary in (tmp_path / "proc/asound/cards").read_text()
    assert canary.replace(".", "") in (tmp_path / "proc/asound/card1/id").read_text()
    card = _card(tmp_path)
    assert (card["name"], card["id"]) == (None, None)
    # what is not personal stays
    assert (card["driver"], card["bus"], card["usb_id"]) == ("snd-usb-audio", "usb", "f1e2:0a0b")
    devices, sent = _sent(tmp_path)
    assert devices == [{"card": 1, "id": None, "name": None, "driver": "snd-usb-audio",
                        "bus": "usb", "usb_id": "f1e2:0a0b"}]
    for piece in (canary, canary.replace(".", ""), "example", "@"):
        assert piece.lower() not in sent.lower()


def test_cut_email_alone_is_rejected() -> None:
    """The e-mail check takes any non-blank, "@", word character: no whole domain needed."""
    for _product, shortname, _canary in CUT_EMAILS[:2]:
        assert plausible_name(shortname) is None
    assert plausible_name("jane@e") is None
    assert plausible_name("Mic @ 48 kHz") == "Mic @ 48 kHz"  # a lone "@" is no address


def test_email_in_manufacturer_drops_the_name(tmp_path: Path) -> None:
    """A device whose owner wrote an e-mail address in one string is trusted in none."""
    plant(tmp_path, product="Studio DAC", manufacturer="Made for jane.canary5512@example.org",
          serial="SA-000042")
    card = _card(tmp_path)
    assert (card["name"], card["id"], card["usb_id"]) == (None, None, "f1e2:0a0b")
    _devices, sent = _sent(tmp_path)
    assert "canary5512" not in sent


@pytest.mark.parametrize(("product", "manufacturer", "serial", "canary"), [
    # the device's serial is the last word of its product string: name and id are the serial
    ("USB DAC 8f3a2c91d0e4", "Acme", "8f3a2c91d0e4", "8f3a2c91d0e4"),
    # a short lower-case serial, not serial-like by itself, inside a word of the product
    ("StudioDACq7k2m9", "Acme", "q7k2m9", "q7k2m9"),
    # a long product string cut inside the serial: the short name holds 3 characters of it
    ("Reference DAC Mk II Limited q7k2m9x8", "Acme", "q7k2m9x8", "q7k"),
    # the name is fine, the manufacturer string carries a piece of the serial
    ("USB DAC", "SN 8F3A2C91D0", "8f3a2c91d0e4", "8f3a2c91d0"),
])
def test_serial_in_device_strings_never_leaves(tmp_path: Path, product: str, manufacturer: str,
                                               serial: str, canary: str) -> None:
    """A card of a device whose strings hold its serial has no name and no id."""
    plant(tmp_path, product=product, manufacturer=manufacturer, serial=serial)
    card = _card(tmp_path)
    assert (card["name"], card["id"]) == (None, None)
    assert card["usb_id"] == "f1e2:0a0b"
    _devices, sent = _sent(tmp_path)
    assert canary.lower() not in sent.lower()


def test_cut_name_without_the_device_cannot_be_checked(tmp_path: Path) -> None:
    """A bare capture (no sysfs device): a name at the 31-byte limit may be cut, so it goes."""
    plant(tmp_path, product="Hi-Fi DAC owned by zqcanary5512@example.org", manufacturer=None,
          serial=None, with_device=False)
    card = _card(tmp_path)
    assert (card["name"], card["id"], card["bus"]) == (None, None, "usb")
    assert "zqcanary5512" not in _sent(tmp_path)[1]


def test_short_name_without_the_device_stays(tmp_path: Path) -> None:
    """A bare capture: a name shorter than the limit was not cut, and is checked as it is."""
    plant(tmp_path, product="QuickCam Pro 9000", manufacturer=None, serial=None,
          with_device=False)
    card = _card(tmp_path)
    assert (card["name"], card["id"]) == ("QuickCam Pro 9000", "Q9000")


def test_clean_device_keeps_name_and_id(tmp_path: Path) -> None:
    """A DAC with ordinary strings (a cut long product name included) keeps its name and id."""
    product = "Cambridge Audio USB 2.0 Audio Class Device"
    plant(tmp_path, product=product, manufacturer="Cambridge Audio", serial="A1B2C3D4E5F6A7")
    card = _card(tmp_path)
    assert (card["name"], card["id"]) == ("Cambridge Audio USB 2.0 Audio C", "C")
    devices, _sent_text = _sent(tmp_path)
    assert (devices[0]["name"], devices[0]["id"]) == ("Cambridge Audio USB 2.0 Audio C", "C")
