"""Random bytes in every sysfs file the pci and usb collectors read: they never raise.

(This file is named test_usb_* but covers both collectors: their readers share _udevdb/_hwids.)
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectors.pci import Pci
from collectors.usb import Usb
from evo_agent.hostroot import ReplayHost

_PCI_FILES = ("uevent", "vendor", "device", "class", "revision", "subsystem_vendor",
              "subsystem_device", "modalias")
_USB_FILES = ("uevent", "idVendor", "idProduct", "bDeviceClass", "manufacturer", "product",
              "serial", "speed", "dev", "busnum", "devnum")
# Bytes that look like what sysfs holds, mixed with anything at all.
_VALUE = st.one_of(
    st.binary(max_size=80),
    st.sampled_from([b"0x8086\n", b"8086\n", b"0x040380\n", b"189:3\n", b"1\n", b"\xc2\xb2\n",
                     b"DRIVER=x\nPCI_ID=8086:1521\nPCI_CLASS=20000\nPCI_SUBSYS_ID=8086:A3\n",
                     b"MAJOR=189\nMINOR=2\nPRODUCT=d8c/14/100\nTYPE=0/0/0\nDRIVER=usb\n",
                     b"pci:v00008086d00001521sv00008086sd000000A3bc02sc00i00\n"]),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.fixed_dictionaries({}, optional={n: _VALUE for n in _PCI_FILES}),
       record=_VALUE)
def test_fuzz_pci_collector(tmp_path_factory: pytest.TempPathFactory,
                            files: dict[str, bytes], record: bytes) -> None:
    """Any content in a function's files and its udev record: a list, each ID well formed."""
    root = tmp_path_factory.mktemp("pci")
    dev = root / "sys/devices/pci0000:00/0000:00:1f.3"
    dev.mkdir(parents=True)
    for name, data in files.items():
        (dev / name).write_bytes(data)
    (root / "sys/bus/pci/devices").mkdir(parents=True)
    (root / "sys/bus/pci/devices/0000:00:1f.3").symlink_to(
        "../../../devices/pci0000:00/0000:00:1f.3")
    (root / "run/udev/data").mkdir(parents=True)
    (root / "run/udev/data/+pci:0000:00:1f.3").write_bytes(record)
    for d in Pci().collect(ReplayHost(root))["devices"]:
        for key, width in (("vendor_id", 4), ("device_id", 4), ("class_id", 4), ("prog_if", 2),
                           ("revision", 2), ("subsystem_vendor_id", 4)):
            value = d[key]
            assert value is None or (isinstance(value, str) and len(value) == width
                                     and all(c in "0123456789abcdef" for c in value))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.fixed_dictionaries({}, optional={n: _VALUE for n in _USB_FILES}),
       record=_VALUE)
def test_fuzz_usb_collector(tmp_path_factory: pytest.TempPathFactory,
                            files: dict[str, bytes], record: bytes) -> None:
    """Any content in a device's files and its udev record: a list, never an exception."""
    root = tmp_path_factory.mktemp("usb")
    dev = root / "sys/devices/x/1-1"
    dev.mkdir(parents=True)
    for name, data in files.items():
        (dev / name).write_bytes(data)
    (root / "sys/bus/usb/devices").mkdir(parents=True)
    (root / "sys/bus/usb/devices/1-1").symlink_to("../../../devices/x/1-1")
    (root / "run/udev/data").mkdir(parents=True)
    for name in ("c189:0", "c189:2", "c189:3"):
        (root / "run/udev/data" / name).write_bytes(record)
    for d in Usb().collect(ReplayHost(root))["devices"]:
        assert isinstance(d["vendor_id"], str) and len(d["vendor_id"]) == 4
        assert d["device_class"] is None or len(str(d["device_class"])) == 2
