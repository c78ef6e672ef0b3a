"""Audio devices: the "list of audio devices" of the privacy policy, the ALSA sound cards.

A music server's sound cards are what support asks about first: which DAC is attached, by USB or
on the board.  ``/proc/asound/cards`` lists the cards the kernel registered; for each,
``/proc/asound/cardN/id`` and ``usbid`` and the sysfs device behind ``/sys/class/sound/cardN``
tell the bus, the kernel driver and the PCI address or USB ID.  A machine without sound (no
``/proc/asound``, or "--- no soundcards ---") yields an empty list: no data, not an error.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from collectors._hwids import hex_id, plausible_name
from evo_agent.collector import Collector, Raw
from evo_agent.hostroot import Host

LOG = logging.getLogger(__name__)

PROC_ASOUND = "/proc/asound"
CLASS_SOUND = "/sys/class/sound"
# sound/core/init.c card_info_read(): "%2i [%-15s]: %s - %s\n" (index, id, driver, short name),
# then the long name on the next line indented by 22 spaces.  The driver name can hold spaces
# ("ThinkPad EC" in shared/corpus/asound/hda-emu/alc269vc-lenovo-thinkpad-t530) and USB short
# names keep the device's trailing blanks ("Camera         ", alc892-asus-m488td-v).
_CARD_LINE = re.compile(r"^\s*([0-9]{1,6}) \[([^\]]*)\]:(.*)$")
# The kernel allows 256 cards at most (CONFIG_SND_MAX_CARDS, SNDRV_CARDS); more is garbage.
_MAX_CARD = 255
# The long name of a USB card ends "at usb-<controller>-<port path>, <speed> speed"
# (sound/usb/card.c usb_audio_make_longname(), through usb_make_path()).
_USB_LONGNAME = re.compile(r"\bat usb-\S+")
_USBID = re.compile(r"^([0-9a-fA-F]{1,4}):([0-9a-fA-F]{1,4})$")
# struct snd_card's shortname is char[32] (include/sound/core.h): 31 bytes and the NUL.
_SHORTNAME_MAX = 31


class Alsa(Collector):
    name = "alsa"
    description = "ALSA sound cards from /proc/asound and /sys/class/sound"
    fields = {
        "cards": "sound cards by index: card, id, name (short name), long_name, driver (kernel "
                 "driver of the device), alsa_driver (ALSA's driver name), bus, usb_id, "
                 "pci_address",
    }

    def collect(self, host: Host) -> Raw:
        try:
            text = host.read_text(f"{PROC_ASOUND}/cards", 1024 * 1024)
        except OSError as exc:
            LOG.debug("no %s/cards (%s): no ALSA sound cards here", PROC_ASOUND, exc.strerror)
            return {"cards": []}
        return {"cards": [describe_card(host, card) for card in parse_cards(text)]}


def parse_cards(text: str) -> list[dict[str, object]]:
    """Return the cards listed in a /proc/asound/cards text; lines it cannot read are skipped."""
    cards: list[dict[str, object]] = []
    seen: set[int] = set()
    current: dict[str, object] | None = None
    for line in text.splitlines():
        m = _CARD_LINE.match(line)
        if m:
            index = int(m.group(1))
            current = None
            if index > _MAX_CARD or index in seen:
                continue
            seen.add(index)
            rest = m.group(3)
            driver, sep, short = rest.partition(" - ")
            current = {
                "card": index,
                "id": m.group(2).strip() or None,
                "alsa_driver": driver.strip() or None,
                "name": (short.strip() or None) if sep else None,
                "long_name": None,
            }
            cards.append(current)
        elif current is not None and line[:1].isspace() and line.strip():
            if current["long_name"] is None:
                current["long_name"] = line.strip()
            current = None
        else:
            current = None
    return cards


def _usb_id(text: str | None) -> str | None:
    """Return a /proc/asound/cardN/usbid value ("046d:08c7") normalised, or None."""
    m = _USBID.match((text or "").strip())
    if not m:
        return None
    return f"{m.group(1).lower().zfill(4)}:{m.group(2).lower().zfill(4)}"


def _link_name(host: Host, path: str) -> str | None:
    """Return the last component of a symbolic link's target, or None."""
    target = host.readlink(path)
    name = target.rstrip("/").rsplit("/", 1)[-1] if target else ""
    return name or None


@dataclass
class _Sysfs:
    """What the sysfs device behind /sys/class/sound/cardN tells about a card."""

    usb_id: str | None = None
    bus: str | None = None
    driver: str | None = None
    pci_address: str | None = None
    # A USB card's device strings, in full (None: no such string, or no USB device to read).
    product: str | None = None
    manufacturer: str | None = None
    serial: str | None = None


def _sysfs_device(host: Host, n: object, usb_id: str | None) -> _Sysfs:
    """Return bus, driver, PCI address, USB ID and USB strings of a card's sysfs device."""
    found = _Sysfs(usb_id=usb_id)
    device = f"{CLASS_SOUND}/card{n}/device"
    if not host.exists(device):
        return found
    real = host.realpath(device)
    found.bus = _link_name(host, f"{real}/subsystem")
    found.driver = _link_name(host, f"{real}/driver")
    if found.bus == "pci":
        found.pci_address = real.rsplit("/", 1)[-1]
    elif found.bus == "usb":
        # The card hangs on a USB interface ("1-1.2:1.0"); the IDs and strings are on its
        # device, the parent directory.
        usbdev = real.rsplit("/", 1)[0] if ":" in real.rsplit("/", 1)[-1] else real
        if found.usb_id is None:
            vid = hex_id(host.read_attr(f"{usbdev}/idVendor"))
            pid = hex_id(host.read_attr(f"{usbdev}/idProduct"))
            found.usb_id = f"{vid}:{pid}" if vid and pid else None
        found.product = host.read_attr(f"{usbdev}/product") or None
        found.manufacturer = host.read_attr(f"{usbdev}/manufacturer") or None
        found.serial = host.read_attr(f"{usbdev}/serial") or None
    return found


def _name_is_safe(name: str, bus: str | None, dev: _Sysfs) -> bool:
    """Return True when a card's short name (and so its id) may leave the device."""
    if plausible_name(name, dev.serial) is None:
        return False
    if bus != "usb":
        return True
    # snd-usb-audio copies the product string into the card's shortname, char[32]
    # (sound/usb/card.c usb_audio_make_shortname()): a longer string is cut at 31 bytes, and
    # what made it personal may be in the part cut off ("Studio DAC of jane.doe@example.org"
    # becomes "Studio DAC of jane.doe@example.").  So the device's full strings decide; a
    # device whose maker or owner put personal data in one string is trusted in none.
    for full in (dev.product, dev.manufacturer):
        if full is not None and plausible_name(full, dev.serial) is None:
            return False
    # Without the full product string (a capture without the USB device), a name as long as
    # the kernel's limit may have been cut: it cannot be checked.
    return dev.product is not None or len(name.encode("utf-8")) < _SHORTNAME_MAX


def describe_card(host: Host, card: dict[str, object]) -> dict[str, object]:
    """Add what /proc/asound/cardN and the card's sysfs device tell about one parsed card."""
    n = card["card"]
    card_dir = f"{PROC_ASOUND}/card{n}"
    card_id = host.read_attr(f"{card_dir}/id") or card["id"]
    dev = _Sysfs(usb_id=_usb_id(host.read_attr(f"{card_dir}/usbid")))
    try:
        dev = _sysfs_device(host, n, dev.usb_id)
    except OSError as exc:  # a link loop in a damaged capture: the card without its device
        LOG.debug("sound card %s: sysfs unreadable: %s", n, exc)
    bus = dev.bus
    if bus is None and (dev.usb_id is not None
                        or _USB_LONGNAME.search(str(card["long_name"] or ""))):
        bus = "usb"
    # snd-usb-audio names a card after the device's product string, and the kernel makes the
    # card id from that name's last word (sound/core/init.c retrieve_id_from_card_name()): a
    # name that may be personal data takes its id along.  Driver-made names always pass.
    name = card["name"]
    if isinstance(name, str) and not _name_is_safe(name, bus, dev):
        name = card_id = None
    if isinstance(card_id, str) and plausible_name(card_id, dev.serial) is None:
        card_id = None  # an id set by hand (snd-usb-audio's "id" option) holding the serial
    return {**card, "id": card_id, "name": name, "driver": dev.driver, "bus": bus,
            "usb_id": dev.usb_id, "pci_address": dev.pci_address}
