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


def _sysfs_device(host: Host, n: object, usb_id: str | None
                  ) -> tuple[str | None, str | None, str | None, str | None]:
    """Return bus, driver, PCI address and USB ID of the device behind /sys/class/sound/cardN."""
    device = f"{CLASS_SOUND}/card{n}/device"
    if not host.exists(device):
        return None, None, None, usb_id
    real = host.realpath(device)
    bus = _link_name(host, f"{real}/subsystem")
    driver = _link_name(host, f"{real}/driver")
    pci_address = None
    if bus == "pci":
        pci_address = real.rsplit("/", 1)[-1]
    elif bus == "usb" and usb_id is None:
        # The card hangs on a USB interface ("1-1.2:1.0"); the IDs are on its device, the
        # parent directory.
        parent = real.rsplit("/", 1)[0]
        vid = hex_id(host.read_attr(f"{parent}/idVendor"))
        pid = hex_id(host.read_attr(f"{parent}/idProduct"))
        usb_id = f"{vid}:{pid}" if vid and pid else None
    return bus, driver, pci_address, usb_id


def describe_card(host: Host, card: dict[str, object]) -> dict[str, object]:
    """Add what /proc/asound/cardN and the card's sysfs device tell about one parsed card."""
    n = card["card"]
    card_dir = f"{PROC_ASOUND}/card{n}"
    card_id = host.read_attr(f"{card_dir}/id") or card["id"]
    usb_id = _usb_id(host.read_attr(f"{card_dir}/usbid"))
    bus = driver = pci_address = None
    try:
        bus, driver, pci_address, usb_id = _sysfs_device(host, n, usb_id)
    except OSError as exc:  # a link loop in a damaged capture: the card without its device
        LOG.debug("sound card %s: sysfs unreadable: %s", n, exc)
    if bus is None and (usb_id is not None or _USB_LONGNAME.search(str(card["long_name"] or ""))):
        bus = "usb"
    # snd-usb-audio names a card after the device's product string, and the kernel makes the
    # card id from that name's last word (sound/core/init.c retrieve_id_from_card_name()): a
    # name that may be personal data takes its id along.  Driver-made names always pass.
    name = card["name"]
    if isinstance(name, str) and plausible_name(name) is None:
        name = card_id = None
    return {**card, "id": card_id, "name": name, "driver": driver, "bus": bus, "usb_id": usb_id,
            "pci_address": pci_address}
