"""Privacy canaries: a USB serial and personal data in descriptor strings never leave the device.

The fixture is a planted tree (the canaries must be made up): a DAC whose vendor ID no database
knows, so its descriptor strings are the only names it has; its product string holds an e-mail
address, its manufacturer string a serial-like code (as real Dell webcams do, see
shared/corpus/udev/checkbox), and its serial the canary.  A second device is known to the udev
database, whose record also carries the serial (ID_SERIAL_SHORT), as udev's records do.
The filtered output is checked byte for byte, through the policy and through the whole
``evo-agent inventory --json`` pipeline, and validated against the report schema.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
from pathlib import Path
from typing import Any

from collectors.alsa import Alsa
from collectors.pci import Pci
from collectors.usb import Usb
from evo_agent import cli
from evo_agent.hostroot import ReplayHost
from evo_agent.inventory import Inventory, Outcome
from evo_agent.policy import apply, load_policy
from evo_agent.report import build_report

SERIAL = "CANARY-USB-SERIAL-7731"
SERIAL_2 = "CANARY-USB-SERIAL-8842"
EMAIL = "jane.canary7731@example.org"
PPID = "CN0CANARY7731X9LB04LA00"
PATH = "/home/canary7731/dac.cfg"
CANARIES = (SERIAL, SERIAL_2, EMAIL, PPID, PATH, "canary7731", "CANARY")
# imported by name: whether jsonschema's type stubs are installed does not matter to mypy then
jsonschema = importlib.import_module("jsonschema")
SCHEMA = (Path(__file__).resolve().parents[1] / "evo_agent" / "schemas"
          / "evo-inventory-1.schema.json")


def plant(root: Path) -> None:
    """Write the fixture tree: two USB devices, one PCI function, one USB sound card."""
    usb = root / "sys/devices/pci0000:00/0000:00:14.0/usb1"
    dac = usb / "1-2"
    dac.mkdir(parents=True)
    for name, value in {"idVendor": "f1e2", "idProduct": "0a0b", "manufacturer": PPID,
                        "product": f"USB DAC - mail {EMAIL}", "serial": SERIAL,
                        "bDeviceClass": "ef", "speed": "480", "busnum": "1", "devnum": "3",
                        "dev": "189:2"}.items():
        (dac / name).write_text(value + "\n")
    iface = dac / "1-2:1.0"
    iface.mkdir()
    (iface / "bInterfaceClass").write_text("01\n")
    known = usb / "1-3"
    known.mkdir()
    for name, value in {"idVendor": "0d8c", "idProduct": "0014", "manufacturer": "C-Media",
                        "product": PATH, "serial": SERIAL_2, "busnum": "1", "devnum": "4",
                        "dev": "189:3"}.items():
        (known / name).write_text(value + "\n")
    (usb / "idVendor").write_text("1d6b\n")
    (usb / "serial").write_text("0000:00:14.0\n")
    bus = root / "sys/bus/usb/devices"
    bus.mkdir(parents=True)
    for name, target in (("usb1", "usb1"), ("1-2", "usb1/1-2"), ("1-2:1.0", "usb1/1-2/1-2:1.0"),
                         ("1-3", "usb1/1-3")):
        (bus / name).symlink_to(f"../../../devices/pci0000:00/0000:00:14.0/{target}")
    db = root / "run/udev/data"
    db.mkdir(parents=True)
    (db / "c189:3").write_text(
        "I:5611\nE:ID_VENDOR_FROM_DATABASE=C-Media Electronics, Inc.\n"
        "E:ID_MODEL_FROM_DATABASE=Audio Adapter (Unitek Y-247A)\n"
        f"E:ID_SERIAL=C-Media_USB_{SERIAL_2}\nE:ID_SERIAL_SHORT={SERIAL_2}\nG:seat\n")
    (db / "c189:2").write_text(f"I:5600\nE:ID_SERIAL_SHORT={SERIAL}\n")
    xhci = root / "sys/devices/pci0000:00/0000:00:14.0"
    for name, value in {"vendor": "0x8086", "device": "0x9d2f", "class": "0x0c0330",
                        "revision": "0x21", "subsystem_vendor": "0x1028",
                        "subsystem_device": "0x0869"}.items():
        (xhci / name).write_text(value + "\n")
    (root / "sys/bus/pci/devices").mkdir(parents=True)
    (root / "sys/bus/pci/devices/0000:00:14.0").symlink_to(
        "../../../devices/pci0000:00/0000:00:14.0")
    sound = iface / "sound/card1"
    sound.mkdir(parents=True)
    (sound / "device").symlink_to("../../../1-2:1.0")
    (root / "sys/bus/usb/drivers/snd-usb-audio").mkdir(parents=True)
    (iface / "driver").symlink_to("../../../../../../bus/usb/drivers/snd-usb-audio")
    (iface / "subsystem").symlink_to("../../../../../../bus/usb")
    (root / "sys/class/sound").mkdir(parents=True)
    (root / "sys/class/sound/card1").symlink_to(
        "../../devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0/sound/card1")
    asound = root / "proc/asound"
    (asound / "card1").mkdir(parents=True)
    (asound / "cards").write_text(
        " 1 [janecanary7731e]: USB-Audio - USB DAC - mail " + EMAIL + "\n"
        "                      " + PPID + " USB DAC at usb-0000:00:14.0-2, high speed\n")
    # the id the kernel makes of that name: the alphanumerics of its last word, 15 at most
    (asound / "card1/id").write_text("janecanary7731e\n")
    (asound / "card1/usbid").write_text("f1e2:0a0b\n")


def _raw(root: Path) -> dict[str, Any]:
    host = ReplayHost(root)
    return {"usb": Usb().collect(host), "pci": Pci().collect(host), "alsa": Alsa().collect(host)}


def test_canaries_are_collected_raw(tmp_path: Path) -> None:
    """The raw values do hold the canaries (so the checks below can fail)."""
    plant(tmp_path)
    raw = _raw(tmp_path)
    usb = {d["path"]: d for d in raw["usb"]["devices"]}
    assert list(usb) == ["1-2", "1-3"]
    assert usb["1-2"]["serial"] == SERIAL
    assert usb["1-3"]["serial"] == SERIAL_2
    assert usb["1-2"]["manufacturer_string"] == PPID
    assert EMAIL in str(usb["1-2"]["product_string"])
    # names: the e-mail, the path and the serial-like string are never used as names
    assert (usb["1-2"]["vendor"], usb["1-2"]["product"]) == (None, None)
    assert (usb["1-3"]["vendor"], usb["1-3"]["product"]) == (
        "C-Media Electronics, Inc.", "Audio Adapter (Unitek Y-247A)")
    card = raw["alsa"]["cards"][0]
    assert (card["bus"], card["usb_id"], card["driver"]) == ("usb", "f1e2:0a0b", "snd-usb-audio")
    assert (card["name"], card["id"]) == (None, None)  # made of the e-mail: not a name
    assert PPID in str(card["long_name"])  # kept raw (never sent)


def test_policy_output_holds_no_canary(tmp_path: Path) -> None:
    """The filtered report (and the names of what was dropped) holds no byte of any canary."""
    plant(tmp_path)
    result = apply(load_policy(), _raw(tmp_path))
    sent = json.dumps({"functional": result.functional, "hardware": result.hardware})
    dropped = json.dumps(sorted(result.dropped))
    for canary in CANARIES:
        assert canary not in sent
        assert canary.lower() not in sent.lower()
        assert canary not in dropped
    assert "usb.devices[].serial" in result.dropped
    assert result.hardware["usb_devices"] == [
        {"vendor_id": "f1e2", "product_id": "0a0b", "vendor": None, "product": None},
        {"vendor_id": "0d8c", "product_id": "0014", "vendor": "C-Media Electronics, Inc.",
         "product": "Audio Adapter (Unitek Y-247A)"},
    ]
    assert result.hardware["pci_devices"] == [
        {"address": "0000:00:14.0", "vendor_id": "8086", "device_id": "9d2f", "class_id": "0c03",
         "vendor": None, "device": None},
    ]


def test_report_validates_and_holds_no_canary(tmp_path: Path) -> None:
    """build_report on these collectors gives a schema-valid evo-inventory/1 document."""
    plant(tmp_path)
    raw = _raw(tmp_path)
    inventory = Inventory({name: Outcome(name, "ok", 1, value) for name, value in raw.items()})
    report, _dropped = build_report(inventory, load_policy(), report_id=None)
    jsonschema.validate(report, json.loads(SCHEMA.read_text("utf-8")))
    text = json.dumps(report)
    for canary in CANARIES:
        assert canary not in text
    assert report["hardware"]["audio_devices"][0]["usb_id"] == "f1e2:0a0b"


def test_cli_inventory_json_holds_no_canary(tmp_path: Path) -> None:
    """The whole pipeline: ``evo-agent inventory --from TREE --json`` prints no canary."""
    tree = tmp_path / "capture"
    plant(tree)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli.main(["inventory", "--from", str(tree), "--json"])
    assert status == 0
    report = json.loads(out.getvalue())
    jsonschema.validate(report, json.loads(SCHEMA.read_text("utf-8")))
    for canary in CANARIES:
        assert canary not in out.getvalue()
    assert [d["vendor_id"] for d in report["hardware"]["usb_devices"]] == ["f1e2", "0d8c"]
    assert report["collectors"]["usb"]["status"] == "ok"


def test_capture_of_this_tree_replays_the_same(tmp_path: Path) -> None:
    """Recording the three collectors' reads and replaying the capture gives the same raw values.

    A capture lists directories only through what was read (see evo_agent.hostroot), so this
    checks that the collectors pick entries by name and read them, and that usb.ids/pci.ids
    read through the host are captured too.
    """
    from evo_agent.hostroot import LiveHost, RecordingHost

    tree = tmp_path / "machine"
    plant(tree)
    ids = Path("/usr/share/misc/usb.ids")
    if ids.is_file():  # so that the ID file fallback is exercised and recorded as well
        (tree / "usr/share/misc").mkdir(parents=True)
        (tree / "usr/share/misc/usb.ids").write_bytes(ids.read_bytes())
    live = LiveHost(tree)
    capture = tmp_path / "capture"
    recording = RecordingHost(live, capture)
    recorded = {"usb": Usb().collect(recording), "pci": Pci().collect(recording),
                "alsa": Alsa().collect(recording)}
    assert recorded == _raw(tree)
    replay = ReplayHost(capture)
    replayed = {"usb": Usb().collect(replay), "pci": Pci().collect(replay),
                "alsa": Alsa().collect(replay)}
    assert replayed == recorded
    assert (capture / "run/udev/data/c189:3").is_file()
    assert not (capture / "sys/devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0/"
                          "bInterfaceClass").exists()  # never read, never captured
