"""The pci collector on real sysfs trees: jaypipes/ghw snapshots and node_exporter's fixture.

Both are Apache-2.0 and read in place from shared/corpus/sysfs (unpacked into a temporary
directory).  The ghw snapshots keep only some attributes of each PCI function (no
subsystem_vendor/subsystem_device files, only the modalias), which is how the collector's modalias
fallback was found to be needed.  The live test compares with ``lspci -vmmnD`` on this machine.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from collectors._hwids import IdsFile
from collectors.pci import Pci, read_device
from evo_agent.hostroot import LiveHost, RecordingHost, ReplayHost
from tests.ttar import unpack

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "corpus"
GHW = CORPUS / "sysfs" / "ghw-snapshots"
NODE_EXPORTER = CORPUS / "sysfs" / "node_exporter" / "sys.ttar"


@pytest.fixture(scope="module")
def ghw(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every ghw snapshot unpacked, by name."""
    out = tmp_path_factory.mktemp("ghw")
    roots = {}
    for archive in sorted(GHW.glob("*.tar.gz")):
        name = archive.name.removesuffix(".tar.gz")
        dest = out / name
        dest.mkdir()
        with tarfile.open(archive) as tar:
            # Only the PCI part: the snapshots hold thousands of other files (CPU, memory).
            wanted = [m for m in tar.getmembers()
                      if m.name.startswith(("sys/bus/pci/", "sys/devices/pci"))]
            if hasattr(tarfile, "tar_filter"):  # Python >= 3.11.4; Debian 12 has 3.11.2
                tar.extractall(dest, members=wanted, filter="tar")
            else:  # pragma: no cover
                tar.extractall(dest, members=wanted)  # noqa: S202 - a trusted corpus file
        roots[name] = dest
    return roots


def _pci(root: Path) -> dict[str, dict[str, object]]:
    return {str(d["address"]): d for d in Pci().collect(ReplayHost(root))["devices"]}


@pytest.mark.corpus
def test_ghw_lenovo_alder_lake_laptop(ghw: dict[str, Path]) -> None:
    """Named devices of an Alder Lake Lenovo laptop snapshot; subsystem IDs from the modalias."""
    devices = _pci(ghw["linux-amd64-415ee03b8c4d1c4f07ae2e9d8b3d3d6d"])
    assert len(devices) == 23
    assert list(devices) == sorted(devices)
    audio = devices["0000:00:1f.3"]
    assert audio == {
        "address": "0000:00:1f.3", "vendor_id": "8086", "device_id": "51c8", "class_id": "0403",
        "prog_if": "80", "revision": "01", "subsystem_vendor_id": "17aa",
        "subsystem_device_id": "22e7", "vendor": None, "device": None,
        "driver": "sof-audio-pci-intel-tgl",
    }  # no udev database and no pci.ids in the snapshot: no names, not invented ones
    nvme = devices["0000:04:00.0"]
    assert (nvme["vendor_id"], nvme["device_id"], nvme["class_id"], nvme["prog_if"]) == (
        "144d", "a80a", "0108", "02")
    assert nvme["driver"] == "nvme"
    wifi = devices["0000:00:14.3"]
    assert (wifi["subsystem_vendor_id"], wifi["subsystem_device_id"], wifi["driver"]) == (
        "8086", "0090", "iwlwifi")
    assert devices["0000:00:1f.0"]["driver"] is None  # the LPC bridge has no driver bound


@pytest.mark.corpus
def test_ghw_qemu_guest_with_nvidia_gpu(ghw: dict[str, Path]) -> None:
    """A q35 guest with virtio functions and a passed-through NVIDIA GPU."""
    devices = _pci(ghw["linux-amd64-accel-nvidia"])
    gpu = devices["0000:06:00.0"]
    assert (gpu["vendor_id"], gpu["device_id"], gpu["class_id"], gpu["driver"]) == (
        "10de", "15f8", "0302", "nvidia")
    assert devices["0000:00:1f.2"]["driver"] == "ahci"
    assert devices["0000:00:1f.2"]["prog_if"] == "01"
    assert devices["0000:01:00.6"]["class_id"] == "0c03"  # qemu-xhci, prog-if 30
    assert devices["0000:01:00.6"]["prog_if"] == "30"
    virtio = [d for d in devices.values() if d["driver"] == "virtio-pci"]
    assert len(virtio) == 13
    assert all(d["vendor_id"] == "1af4" for d in virtio)


@pytest.mark.corpus
def test_ghw_arm64_graviton(ghw: dict[str, Path]) -> None:
    """An AWS Graviton (arm64) snapshot: Amazon's 1d0f functions, one NVMe and one ENA NIC."""
    devices = _pci(ghw["linux-arm64-c288e0776090cd558ef793b2a4e61939"])
    assert list(devices) == ["0000:00:00.0", "0000:00:01.0", "0000:00:04.0", "0000:00:05.0"]
    assert devices["0000:00:04.0"]["device_id"] == "8061"
    assert devices["0000:00:04.0"]["class_id"] == "0108"
    assert devices["0000:00:04.0"]["driver"] == "nvme"
    assert devices["0000:00:05.0"]["subsystem_device_id"] == "ec20"
    assert devices["0000:00:00.0"]["subsystem_vendor_id"] == "0000"


@pytest.mark.corpus
def test_every_ghw_snapshot_agrees_with_its_modalias(ghw: dict[str, Path]) -> None:
    """In every snapshot, each function's IDs equal those the kernel wrote into its modalias."""
    checked = 0
    for name, root in ghw.items():
        for address, dev in _pci(root).items():
            modalias = (root / "sys/bus/pci/devices" / address / "modalias").read_text().strip()
            v, d = modalias[5:13].lower()[-4:], modalias[14:22].lower()[-4:]
            bc_at = modalias.index("bc")
            assert (dev["vendor_id"], dev["device_id"]) == (v, d), (name, address)
            assert dev["class_id"] == modalias[bc_at + 2:bc_at + 4].lower() + modalias[
                bc_at + 6:bc_at + 8].lower(), (name, address)
            checked += 1
    assert checked > 100
    # The offline-CPUs and s390x snapshots have no PCI bus: an empty list, no error.
    assert _pci(ghw["linux-amd64-offlineCPUs"]) == {}
    assert _pci(ghw["linux-s390x-snapshot"]) == {}


@pytest.mark.corpus
def test_node_exporter_fixture(tmp_path: Path) -> None:
    """node_exporter's sys.ttar: a ThinkPad AMD root port, an NVMe and an Intel i350 NIC."""
    unpack(NODE_EXPORTER, tmp_path)
    devices = _pci(tmp_path)
    assert list(devices) == ["0000:00:02.1", "0000:01:00.0", "0000:45:00.0"]
    assert devices["0000:45:00.0"] == {
        "address": "0000:45:00.0", "vendor_id": "8086", "device_id": "1521", "class_id": "0200",
        "prog_if": "00", "revision": "01", "subsystem_vendor_id": "8086",
        "subsystem_device_id": "00a3", "vendor": None, "device": None, "driver": "igb",
    }
    assert devices["0000:00:02.1"]["driver"] == "pcieport"
    assert devices["0000:00:02.1"]["class_id"] == "0604"
    assert devices["0000:01:00.0"]["vendor_id"] == "c0a9"  # Micron/Crucial NVMe


def test_garbage_attributes_never_raise(tmp_path: Path) -> None:
    """Truncated, non-hex, oversized and non-UTF-8 attribute files give None, not an exception."""
    dev = tmp_path / "sys/devices/pci0000:00/0000:00:1f.3"
    dev.mkdir(parents=True)
    (dev / "vendor").write_bytes(b"0x80")  # truncated: still a valid (short) hex value
    (dev / "device").write_bytes(b"\xff\xfe garbage")
    (dev / "class").write_bytes(b"0x1234567890")
    (dev / "revision").write_bytes(b"")
    (dev / "modalias").write_bytes(b"pci:v0000")
    bus = tmp_path / "sys/bus/pci/devices"
    bus.mkdir(parents=True)
    (bus / "0000:00:1f.3").symlink_to("../../../devices/pci0000:00/0000:00:1f.3")
    (bus / "not-an-address").symlink_to("../../../devices/pci0000:00/0000:00:1f.3")
    (bus / "0000:00:1f.4").symlink_to("../../../devices/pci0000:00/missing")  # dangling link
    devices = Pci().collect(ReplayHost(tmp_path))["devices"]
    assert devices == [{
        "address": "0000:00:1f.3", "vendor_id": "0080", "device_id": None, "class_id": None,
        "prog_if": None, "revision": None, "subsystem_vendor_id": None,
        "subsystem_device_id": None, "vendor": None, "device": None, "driver": None,
    }]


def test_no_pci_bus_is_empty(tmp_path: Path) -> None:
    """A host without /sys/bus/pci (s390x, some ARM boards) gives an empty list."""
    assert Pci().collect(ReplayHost(tmp_path)) == {"devices": []}


def _lspci_records(text: str) -> dict[str, dict[str, str]]:
    records = {}
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(":\t", 1) for line in block.splitlines() if ":\t" in line)
        records[fields["Slot"]] = fields
    return records


@pytest.mark.skipif(not Path("/sys/bus/pci/devices").is_dir() or shutil.which("lspci") is None,
                    reason="this machine has no PCI bus or no lspci")
def test_live_machine_matches_lspci(tmp_path: Path) -> None:
    """On this machine, IDs and names equal what lspci -vmmnD / -vmmD print; replay equals live."""
    live = Pci().collect(LiveHost("/"))["devices"]
    lspci = shutil.which("lspci") or "lspci"
    ids = _lspci_records(subprocess.run([lspci, "-vmmnD"], capture_output=True, text=True,
                                        check=True).stdout)
    names = _lspci_records(subprocess.run([lspci, "-vmmD"], capture_output=True, text=True,
                                          check=True).stdout)
    assert [d["address"] for d in live] == sorted(ids)
    for dev in live:
        rec, named = ids[str(dev["address"])], names[str(dev["address"])]
        assert dev["vendor_id"] == rec["Vendor"]
        assert dev["device_id"] == rec["Device"]
        assert dev["class_id"] == rec["Class"]
        assert dev["prog_if"] == rec.get("ProgIf", "00")
        assert dev["revision"] == rec.get("Rev", "00")
        if "SVendor" in rec:
            assert (dev["subsystem_vendor_id"], dev["subsystem_device_id"]) == (
                rec["SVendor"], rec["SDevice"])
        assert dev["vendor"] == named["Vendor"]
        # lspci says "Device 0d57" for an ID its pci.ids does not know
        want = None if named["Device"] == f"Device {rec['Device']}" else named["Device"]
        # udev's record may name the subsystem too: "Wireless 7260 (Dual Band Wireless-AC 7260)"
        # where lspci, which asks hwdb without the subsystem IDs, says "Wireless 7260"
        assert dev["device"] == want or str(dev["device"]).startswith(f"{want} (")
    # A capture of the live run replays to the same list (pci.ids is read through the host too).
    recording = RecordingHost(LiveHost("/"), tmp_path)
    assert Pci().collect(recording)["devices"] == live
    assert Pci().collect(ReplayHost(tmp_path))["devices"] == live


def test_read_device_uses_ids_file_only_when_udev_has_no_name(tmp_path: Path) -> None:
    """A name from udev's database wins; pci.ids is not even read then."""
    dev = tmp_path / "sys/devices/pci0000:00/0000:00:02.0"
    dev.mkdir(parents=True)
    (dev / "vendor").write_text("0x1af4\n")
    (dev / "device").write_text("0x1041\n")
    (tmp_path / "sys/bus/pci/devices").mkdir(parents=True)
    (tmp_path / "sys/bus/pci/devices/0000:00:02.0").symlink_to(
        "../../../devices/pci0000:00/0000:00:02.0")
    db = tmp_path / "run/udev/data"
    db.mkdir(parents=True)
    (db / "+pci:0000:00:02.0").write_text(
        "I:1234\nE:ID_VENDOR_FROM_DATABASE=Red Hat, Inc.\nE:ID_MODEL_FROM_DATABASE=Virtio 1.0 "
        "network device\nG:seat\n")
    ids = IdsFile(ReplayHost(tmp_path), ("/usr/share/misc/pci.ids",))
    got = read_device(ReplayHost(tmp_path), "0000:00:02.0", ids)
    assert got is not None
    assert (got["vendor"], got["device"]) == ("Red Hat, Inc.", "Virtio 1.0 network device")
    assert ids._loaded is False


def test_link_loop_skips_that_function_only(tmp_path: Path) -> None:
    """A link loop in a damaged capture (ELOOP on replay) costs one entry, not the list."""
    good = tmp_path / "sys/devices/pci0000:00/0000:00:02.0"
    good.mkdir(parents=True)
    (good / "vendor").write_text("0x1af4\n")
    bus = tmp_path / "sys/bus/pci/devices"
    bus.mkdir(parents=True)
    (bus / "0000:00:02.0").symlink_to("../../../devices/pci0000:00/0000:00:02.0")
    (bus / "0000:00:03.0").symlink_to("0000:00:03.0")  # points at itself
    devices = Pci().collect(ReplayHost(tmp_path))["devices"]
    assert [d["address"] for d in devices] == ["0000:00:02.0"]


@pytest.mark.corpus
def test_snapshot_replays_through_cli_from(ghw: dict[str, Path]) -> None:
    """``evo-agent inventory --from <snapshot> --json`` gives its PCI list, schema-valid."""
    import contextlib
    import importlib
    import io
    import json

    from evo_agent import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli.main(["inventory", "--from",
                           str(ghw["linux-amd64-415ee03b8c4d1c4f07ae2e9d8b3d3d6d"]), "--json"])
    assert status == 0
    report = json.loads(out.getvalue())
    schema = Path(__file__).resolve().parents[1] / "evo_agent/schemas/evo-inventory-1.schema.json"
    importlib.import_module("jsonschema").validate(report, json.loads(schema.read_text("utf-8")))
    pci = {d["address"]: d for d in report["hardware"]["pci_devices"]}
    assert len(pci) == 23
    assert pci["0000:00:1f.3"] == {"address": "0000:00:1f.3", "vendor_id": "8086",
                                   "device_id": "51c8", "class_id": "0403", "vendor": None,
                                   "device": None}
    assert report["collectors"]["pci"]["status"] == "ok"
    assert report["collectors"]["usb"]["status"] == "no_data"
    assert report["collectors"]["alsa"]["status"] == "no_data"
