"""Privacy canaries: a USB device's serial never leaves as its vendor or product name.

When neither udev's database nor usb.ids knows a device, its manufacturer and product strings
are its names, and some makers put the unit's serial in them.  The canary devices are planted (the
serials must be made up) under a vendor ID that no database knows (f1e2), and what the privacy
filter lets leave is checked for every byte of the serial, in any case.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collectors.usb import Usb
from evo_agent.hostroot import ReplayHost
from evo_agent.policy import apply, load_policy


def plant(root: Path, manufacturer: str, product: str, serial: str) -> None:
    """Write one USB device, vendor f1e2 (in no database), with these three strings."""
    dev = root / "sys/devices/pci0000:00/0000:00:14.0/usb1/1-2"
    dev.mkdir(parents=True)
    for name, value in {"idVendor": "f1e2", "idProduct": "0a0b", "manufacturer": manufacturer,
                        "product": product, "serial": serial, "bDeviceClass": "00",
                        "speed": "480", "busnum": "1", "devnum": "3"}.items():
        (dev / name).write_text(value + "\n", "utf-8")
    (root / "sys/bus/usb/devices").mkdir(parents=True)
    (root / "sys/bus/usb/devices/1-2").symlink_to(
        "../../../devices/pci0000:00/0000:00:14.0/usb1/1-2")


# (manufacturer, product, serial), the names wanted, a piece of the serial that must not leave
CASES = [
    # the reviewer's evidence: a serial-like manufacturer, the serial in the product
    (("SN 8F3A2C91D0", "DAC 8f3a2c91d0e4", "8f3a2c91d0e4"), (None, None), "8f3a2c91d0"),
    # a short lower-case serial, as the product's last word: only the comparison catches it
    (("Acme Audio", "USB DAC x9k3", "x9k3"), ("Acme Audio", None), "x9k3"),
    # the serial inside a word of the product string
    (("Acme Audio", "StudioDACq7k2m9Pro", "q7k2m9"), ("Acme Audio", None), "q7k2m9"),
    # a piece of the serial (6 characters) in the manufacturer string, in upper case
    (("SN 8F3A2C", "USB DAC", "8f3a2c91d0e4"), (None, "USB DAC"), "8f3a2c"),
]


@pytest.mark.parametrize(("strings", "want", "canary"), CASES,
                         ids=["evidence", "short-lowercase", "inside-a-word", "piece"])
def test_serial_in_descriptor_strings_never_leaves(
        tmp_path: Path, strings: tuple[str, str, str], want: tuple[str | None, str | None],
        canary: str) -> None:
    """Strings holding the device's serial (any case) are not names; the rest stay."""
    manufacturer, product, serial = strings
    plant(tmp_path, manufacturer, product, serial)
    raw = Usb().collect(ReplayHost(tmp_path))
    (dev,) = raw["devices"]
    assert (dev["manufacturer_string"], dev["product_string"], dev["serial"]) == strings
    assert canary.lower() in f"{manufacturer} {product}".lower()  # so the checks can fail
    assert (dev["vendor"], dev["product"]) == want
    result = apply(load_policy(), {"usb": raw})
    assert result.hardware["usb_devices"] == [
        {"vendor_id": "f1e2", "product_id": "0a0b", "vendor": want[0], "product": want[1]}]
    sent = json.dumps({"functional": result.functional, "hardware": result.hardware})
    for piece in (canary, serial):
        assert piece.lower() not in sent.lower()
