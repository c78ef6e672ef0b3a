"""Vendor and device names from the hwdata ID files (pci.ids, usb.ids), read through the host.

udev's database normally names every PCI and USB device already (see ``_udevdb``); these files are
the fallback for devices udev has not processed (no udev in a container or initramfs, a capture
without ``/run/udev``).  The files are large (pci.ids is about 1.4 MB and 36,000 lines), so they
are never parsed in full: a lookup finds the vendor line with a byte search, then the device line
inside that vendor's block only.  A file is read at the first lookup, not before, and one
:class:`IdsFile` caches its file and its answers for one collector run.

Format (both files): a vendor line is ``vvvv  Name`` at column 0, its devices follow as
``\\tdddd  Name`` and their subsystems as ``\\t\\tssss ssss  Name``; ``#`` starts a comment; the
vendor list ends where the class list begins (``C xx  Name``), after which usb.ids has more
sections whose lines are not vendors.

Where no database names a device, its own strings (USB descriptors, which snd-usb-audio also uses
as the sound card's name) are the name; :func:`plausible_name` keeps personal data out of them.
"""

from __future__ import annotations

import logging
import re

from evo_agent.hostroot import Host

LOG = logging.getLogger(__name__)

#: Where Debian (pciutils/hwdata), Fedora (hwdata) and usbutils keep the files.
PCI_IDS_PATHS = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids")
USB_IDS_PATHS = ("/usr/share/misc/usb.ids", "/usr/share/hwdata/usb.ids",
                 "/var/lib/usbutils/usb.ids")
#: Bound on the size read; pci.ids grows by about 50 kB a year.
MAX_IDS_FILE = 16 * 1024 * 1024
_HEX = re.compile(r"^(?:0x)?([0-9a-fA-F]+)$")
#: A line break followed by a line that is neither a device line (tab) nor a comment.
_BLOCK_END = re.compile(rb"\n(?![\t#])")


def hex_id(value: str | None, width: int = 4) -> str | None:
    """Return a sysfs hex value ("0x8086", "8086") as lowercase hex of ``width`` digits, or None."""
    if value is None:
        return None
    m = _HEX.match(value.strip())
    if not m:
        return None
    digits = m.group(1).lstrip("0") or "0"
    if len(digits) > width:
        return None
    return digits.lower().zfill(width)


def _name(line: bytes) -> str | None:
    """Return the name part of an ID line (after the ID and its two spaces)."""
    text = line.decode("utf-8", "replace").strip()
    return text or None


class IdsFile:
    """Lazy lookups in one ID file (pci.ids or usb.ids); create one per collector run."""

    def __init__(self, host: Host, paths: tuple[str, ...]) -> None:
        self.host = host
        self.paths = paths
        self._data: bytes | None = None
        self._vendor_end = 0
        self._loaded = False
        # vendor id -> (name, start, end of its device block) or None when unknown
        self._vendors: dict[str, tuple[str | None, int, int] | None] = {}
        self._devices: dict[tuple[str, str], str | None] = {}

    def _load(self) -> bytes | None:
        if not self._loaded:
            self._loaded = True
            for path in self.paths:
                try:
                    data = self.host.read_bytes(path, MAX_IDS_FILE)
                except OSError:
                    continue
                # Searches below look for "\n<id>"; a leading newline lets the first line match.
                self._data = b"\n" + data
                end = self._data.find(b"\nC ")
                self._vendor_end = end if end >= 0 else len(self._data)
                LOG.debug("hardware IDs read from %s (%d bytes)", path, len(data))
                break
            else:
                LOG.debug("no hardware ID file among %s", ", ".join(self.paths))
        return self._data

    def _vendor(self, vendor_id: str) -> tuple[str | None, int, int] | None:
        vid = hex_id(vendor_id)
        if vid is None:
            return None
        if vid in self._vendors:
            return self._vendors[vid]
        found: tuple[str | None, int, int] | None = None
        data = self._load()
        if data is not None:
            pos = data.find(b"\n" + vid.encode() + b"  ", 0, self._vendor_end)
            if pos >= 0:
                line_end = data.find(b"\n", pos + 1)
                if line_end < 0:
                    line_end = len(data)
                name = _name(data[pos + 7:line_end])
                # The block is the run of lines that start with a tab or '#' (comments
                # appear inside blocks); it ends at the next line that starts otherwise, or
                # where the vendor list ends.  One regex search, not a step per line: Intel's
                # block in pci.ids is 8,000 lines.
                m = _BLOCK_END.search(data, line_end)
                block_end = min(m.start() if m else len(data), max(line_end, self._vendor_end))
                found = (name, line_end, block_end)
        self._vendors[vid] = found
        return found

    def vendor(self, vendor_id: str | None) -> str | None:
        """Return the vendor name for an ID, or None."""
        if vendor_id is None:
            return None
        entry = self._vendor(vendor_id)
        return entry[0] if entry else None

    def device(self, vendor_id: str | None, device_id: str | None) -> str | None:
        """Return the device (product) name for a vendor and device ID, or None."""
        vid, did = hex_id(vendor_id), hex_id(device_id)
        if vid is None or did is None:
            return None
        key = (vid, did)
        if key in self._devices:
            return self._devices[key]
        name: str | None = None
        entry = self._vendor(vid)
        data = self._data
        if entry is not None and data is not None:
            _vname, start, end = entry
            pos = data.find(b"\n\t" + did.encode() + b"  ", start, end)
            if pos >= 0:
                line_end = data.find(b"\n", pos + 1)
                name = _name(data[pos + 8:line_end if line_end >= 0 else len(data)])
        self._devices[key] = name
        return name


def pci_ids(host: Host) -> IdsFile:
    """Return a lazy pci.ids reader for one run."""
    return IdsFile(host, PCI_IDS_PATHS)


def usb_ids(host: Host) -> IdsFile:
    """Return a lazy usb.ids reader for one run."""
    return IdsFile(host, USB_IDS_PATHS)


# Descriptor strings are free text written by the maker (or by the owner: some devices let the
# user set them).  Used as a name only when no database knows the ID, they must not carry
# personal data: some put an e-mail address, a path, a URL with a user, or the unit's serial in
# them (the Dell webcams of shared/corpus/udev/checkbox/CAPTURE_METADATA.txt and six other
# machines there have a serial-like "CN0CW54MLOG0079LB04LA00" as manufacturer string).
# An e-mail address is any non-blank before an "@" and a word character after it, domain or not:
# snd-usb-audio cuts the product string to 31 bytes for the card name (struct snd_card's
# shortname[32], sound/usb/card.c), and "Studio DAC of jane.doe@example.org" arrives as
# "Studio DAC of jane.doe@example." (no whole domain).  This costs 16 names of usb.ids
# ("Hercules Scan@home 48", "POWERC@M"): a name is only lost for a device usb.ids does not know.
_EMAIL = re.compile(r"[^\s@]@\w")
# A path: "/Users/john/..." (a Parallels virtual printer's product string, lsusb output in
# shared/corpus/lsusb/cyme/lsusb_list.txt), "~/x", "C:\\x", "\\\\server".  The first component must
# start with a letter so that model names such as "AHA-2940U2/U2W /7890/7891" (pci.ids) pass.
_PATH = re.compile(r"(?:^|[\s(\[\"'=:,])(?:~[^\s/\\]*/|\.{0,2}/[A-Za-z_.][^\s/\\]*[/\\]"
                   r"|[A-Za-z]:\\|\\\\[A-Za-z])")
_URL = re.compile(r"[a-z][a-z0-9+.-]*://", re.I)
# A serial number inside a string: a word (run of ASCII letters and digits) of 10 or more hex
# digits with 3+ digits and 2+ letters ("8F3A2C91D0", the "4437E62E16DE" of a Dell webcam's
# manufacturer string in shared/corpus/udev/checkbox/DELL_VOSTRO3460_FINGERPRINT.txt), or of 16
# or more letters and digits with 4+ digits and 2+ letters (Dell's PPIDs "CN0CW54MLOG0079LB04LA00").
# Measured on hwdata's usb.ids (Debian 12, 3,339 vendor and 17,014 device names): this rejects one
# name, 'PieKey "beta" 4GB model 4E4F41482E4F5247', a hex blob itself; none of the descriptor
# strings of shared/corpus/lsusb; of shared/corpus/udev's USB strings, only those nine serials.
# Shorter hex words are part numbers too often ("CC2400EB", "F1DE108B" in usb.ids, ten in
# pci.ids), and "10+ letters and digits with 4+ digits" rejects 117 usb.ids names ("BCM20702A0").
_WORD = re.compile(r"[A-Za-z0-9]+")
_HEX_SERIAL = re.compile(r"^(?=(?:.*[0-9]){3})(?=(?:.*[A-Fa-f]){2})[0-9A-Fa-f]{10,}$")
_ALNUM_SERIAL = re.compile(r"^(?=(?:.*[0-9]){4})(?=(?:.*[A-Za-z]){2})[A-Za-z0-9]{16,}$")
#: A device serial this short ("1", "001") is no secret and would match too many names.
MIN_SERIAL = 4
#: A word of a name this long found inside the device's serial is a piece of that serial
#: ("SN 8F3A2C91" for serial "8f3a2c91d0e4").
MIN_SERIAL_PIECE = 6


def serial_like(text: str) -> bool:
    """Return True when a word of the text looks like a serial number."""
    return any(_HEX_SERIAL.match(w) or _ALNUM_SERIAL.match(w) for w in _WORD.findall(text))


def holds_serial(text: str, serial: str | None) -> bool:
    """Return True when the text holds the device's serial, or a 6+ character piece of it."""
    wanted = (serial or "").strip().casefold()
    if len(wanted) < MIN_SERIAL:
        return False
    if wanted in text.casefold():
        return True
    return any(len(w) >= MIN_SERIAL_PIECE and w.casefold() in wanted for w in _WORD.findall(text))


def plausible_name(text: str | None, serial: str | None = None) -> str | None:
    """Return a descriptor string usable as a name, or None when it may be personal data."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    if (_EMAIL.search(text) or _PATH.search(text) or _URL.search(text) or serial_like(text)
            or holds_serial(text, serial)):
        return None
    return text
