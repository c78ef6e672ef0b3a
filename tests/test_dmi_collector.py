"""The DMI collector end to end: captures replayed through a ReplayHost, the sysfs and
/proc/cpuinfo fallbacks on real fixture trees, and what the privacy filter lets leave."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from collectors.dmi import Dmi, parse_cpuinfo, read_ram_size
from evo_agent.collector import discover
from evo_agent.errors import PartialData
from evo_agent.hostroot import LiveHost, ReplayHost
from evo_agent.policy import apply, load_policy
from tests.ttar import unpack

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "data" / "dmi"
CORPUS = REPO / "tests" / "data" / "corpus"
TXT = CORPUS / "dmidecode_txt"
GHW = CORPUS / "sysfs" / "ghw-snapshots"
NODE_EXPORTER = CORPUS / "sysfs" / "node_exporter" / "sys.ttar"
GiB = 1 << 30
MiB = 1 << 20

CONTRACT = {
    "board_vendor", "board_name", "board_serial", "board_version", "sys_vendor", "product_name",
    "product_version", "product_serial", "product_uuid", "chassis_vendor", "chassis_serial",
    "chassis_asset_tag", "bios_vendor", "bios_version", "bios_date", "cpu_model", "cpu_cores",
    "cpu_threads", "cpu_sockets", "ram_total_bytes", "memory_modules", "oem_strings", "source",
}
MODULE_KEYS = {"locator", "bank_locator", "type", "form_factor", "size_bytes", "speed_mts",
               "manufacturer", "part_number", "serial_number", "asset_tag"}


def collect(root: Path) -> dict[str, Any]:
    """Run the collector on a capture directory."""
    raw = Dmi().collect(ReplayHost(root))
    assert set(raw) == CONTRACT
    return raw


def report(raw: dict[str, Any]) -> dict[str, Any]:
    """Return what would leave the device: the filtered hardware and functional parts."""
    result = apply(load_policy(), {"dmi": raw})
    return {"hardware": result.hardware, "functional": result.functional}


def capture_with_dmidecode(tmp_path: Path, text: bytes | str) -> Path:
    """Make a capture holding only commands/dmidecode.txt."""
    (tmp_path / "commands").mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    (tmp_path / "commands" / "dmidecode.txt").write_bytes(data)
    return tmp_path


#: What the collector's fallbacks read from a ghw snapshot; the rest is not unpacked (speed).
SNAPSHOT_PARTS = ("proc/cpuinfo", "proc/meminfo", "sys/devices/system/memory", "sys/class/dmi")


def extract(archive: Path, dest: Path) -> Path:
    """Unpack the parts of a ghw snapshot (.tar.gz) that the collector reads."""
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.lstrip("./").startswith(SNAPSHOT_PARTS)
                   and not (m.issym() and m.linkname.startswith("/"))]
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:  # Python < 3.11.4 (Debian 12's 3.11.2): the snapshots are trusted corpus files
            tar.extractall(dest, members=members)  # noqa: S202
    return dest


# ---- (a) a capture that holds only dmidecode's text ------------------------------------------

def test_capture_with_only_dmidecode_text() -> None:
    raw = collect(DATA / "capture-msi-ms-7816")
    assert raw["source"] == "dmidecode"
    assert (raw["board_vendor"], raw["board_name"]) == ("MSI", "H87-G43 (MS-7816)")
    assert raw["board_serial"] == "To be filled by O.E.M."  # raw keeps what firmware said
    assert (raw["cpu_model"], raw["cpu_cores"], raw["cpu_threads"]) == (
        "Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz", 4, 8)
    assert raw["ram_total_bytes"] == 32 * GiB
    assert len(raw["memory_modules"]) == 4
    assert all(set(m) == MODULE_KEYS for m in raw["memory_modules"])
    sent = report(raw)["hardware"]
    assert sent["motherboard"] == {"vendor": "MSI", "model": "H87-G43 (MS-7816)", "serial": None}
    assert sent["cpu"] == {"model": "Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz", "cores": 4,
                           "threads": 8}
    assert sent["ram"]["total_bytes"] == 32 * GiB
    assert sent["ram"]["modules"] == [{
        "type": "DDR3", "form_factor": "DIMM", "size_bytes": 8 * GiB, "speed_mts": 1600,
        "manufacturer": "1315", "part_number": "CT102464BA160B.C16",
    }] * 4


# ---- (b) the sysfs fallback on node_exporter's tree --------------------------------------------

@pytest.fixture(scope="module")
def node_exporter_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """node_exporter's whole sysfs fixture tree, unpacked once (read-only for the tests)."""
    if not NODE_EXPORTER.is_file():
        pytest.skip(f"corpus not found at {CORPUS}")
    root = tmp_path_factory.mktemp("node_exporter")
    unpack(NODE_EXPORTER, root)
    assert (root / "sys" / "class" / "dmi" / "id" / "board_serial").is_file()
    return root


@pytest.fixture
def node_exporter_sys(tmp_path: Path, node_exporter_tree: Path) -> Path:
    """A copy of the fixture's /sys/class/dmi that a test may change."""
    dmi = Path("sys", "class", "dmi")
    shutil.copytree(node_exporter_tree / dmi, tmp_path / dmi, symlinks=True)
    return tmp_path


def test_sysfs_fallback_node_exporter(node_exporter_tree: Path) -> None:
    raw = collect(node_exporter_tree)  # no commands/dmidecode.txt: dmidecode "missing"
    assert raw["source"] == "sysfs"
    assert (raw["board_vendor"], raw["board_name"]) == ("Dell Inc.", "07PXPY")
    assert raw["board_serial"] == ".7N62AI2.GRTCL6944100GP."  # Dell's dotted composite serial
    assert raw["product_name"] == "PowerEdge R6515"
    assert raw["product_uuid"] == "83340ca8-cb49-4474-8c29-d2088ca84dd9"
    assert raw["chassis_asset_tag"] is None  # an empty file
    # product_version holds bytes that are not UTF-8: they become U+FFFD, never an exception.
    assert "\ufffd" in raw["product_version"]
    assert raw["memory_modules"] == [] and raw["oem_strings"] == []
    sent = report(raw)
    assert sent["hardware"]["motherboard"] == {
        "vendor": "Dell Inc.", "model": "07PXPY", "serial": ".7N62AI2.GRTCL6944100GP."}
    text = json.dumps(sent)
    assert "83340ca8" not in text and "PowerEdge" not in text


def test_sysfs_placeholders_and_garbage_are_null(node_exporter_sys: Path) -> None:
    dmi_id = node_exporter_sys / "sys" / "class" / "dmi" / "id"
    (dmi_id / "board_vendor").write_bytes(b"To Be Filled By O.E.M.\n")
    (dmi_id / "board_serial").write_bytes(b"\xff\xff\xff\xff\xff\xff\n")  # unset EEPROM
    (dmi_id / "board_name").write_bytes(b"Default string\n")
    raw = collect(node_exporter_sys)
    assert raw["board_vendor"] == "To Be Filled By O.E.M."
    assert report(raw)["hardware"]["motherboard"] == {"vendor": None, "model": None,
                                                      "serial": None}


def test_non_root_dmidecode_falls_back_to_sysfs(node_exporter_sys: Path) -> None:
    # What a capture records when dmidecode fails (not root: the table is mode 0400).
    (node_exporter_sys / "commands").mkdir()
    (node_exporter_sys / "commands" / "dmidecode.error").write_text(
        "dmidecode: /sys/firmware/dmi/tables/smbios_entry_point: Permission denied\n")
    with pytest.raises(PartialData) as failed:
        collect(node_exporter_sys)
    # the collector says what went wrong, and keeps what the fallback read
    assert failed.value.code == "dmidecode_unavailable"
    assert "Permission denied" in str(failed.value)
    assert "board from /sys/class/dmi/id" in str(failed.value)
    raw = failed.value.raw
    assert raw["source"] == "sysfs" and raw["board_name"] == "07PXPY"


def test_dmidecode_missing_on_a_live_host_is_an_error_in_the_report(tmp_path: Path) -> None:
    """Not installed: the report's dmi status is error with a reason, its fallback data kept."""
    from evo_agent.inventory import collect as run_collectors

    (tmp_path / "sys/class/dmi/id").mkdir(parents=True)
    (tmp_path / "sys/class/dmi/id/board_vendor").write_text("Gigabyte Technology Co., Ltd.\n")
    (tmp_path / "commands").mkdir()
    (tmp_path / "commands" / "dmidecode.error").write_text("dmidecode: not installed\n")
    inventory = run_collectors([Dmi()], ReplayHost(tmp_path), deadline=30)
    outcome = inventory.outcomes["dmi"]
    assert (outcome.status, outcome.error_code) == ("error", "dmidecode_unavailable")
    assert outcome.error_message is not None and "not installed" in outcome.error_message
    assert outcome.raw is not None
    assert outcome.raw["board_vendor"] == "Gigabyte Technology Co., Ltd."


def test_dmidecode_without_a_table_falls_back_to_sysfs(node_exporter_sys: Path) -> None:
    capture_with_dmidecode(node_exporter_sys, "# dmidecode 3.4\nScanning /dev/mem for entry "
                           "point.\n# No SMBIOS nor DMI entry point found, sorry.\n")
    raw = collect(node_exporter_sys)
    assert raw["source"] == "sysfs" and raw["board_vendor"] == "Dell Inc."


def test_nothing_at_all_is_none_not_an_error(tmp_path: Path) -> None:
    raw = collect(tmp_path)
    assert raw["source"] is None
    assert all(raw[k] is None for k in CONTRACT - {"memory_modules", "oem_strings", "source"})
    assert raw["memory_modules"] == [] and raw["oem_strings"] == []


# ---- (c) /proc/cpuinfo and the RAM size from ghw snapshots -------------------------------------

# Checked by hand against each snapshot's cpuinfo ("cpu cores" x sockets, "siblings") and its
# memory blocks (block_size_bytes x memoryN directories).
GHW_EXPECTED = {
    "linux-amd64-415ee03b8c4d1c4f07ae2e9d8b3d3d6d":
        ("12th Gen Intel(R) Core(TM) i7-1270P", 12, 16, 255 * 128 * MiB),
    "linux-amd64-61797caf7c0b6bca1725ad7975ed4773":
        ("AMD Ryzen 5 1600 Six-Core Processor", 6, 12, 32 * GiB),
    "linux-amd64-8581cf3a529e5d8b97ea876eade2f60d":  # two sockets of 6 cores, HT
        ("Intel(R) Xeon(R) CPU           L5640  @ 2.27GHz", 12, 24, 33 * 2 * GiB),
    "linux-amd64-accel-nvidia":
        ("Intel(R) Xeon(R) CPU E5-2695 v4 @ 2.10GHz", 8, 8, 239 * 128 * MiB),
    "linux-amd64-accel": ("Intel(R) Xeon(R) Gold 5218R CPU @ 2.10GHz", 2, 2, 2 * GiB),
    # No memory blocks in this one: MemTotal (7881912 kB) is the fallback.
    "linux-amd64-offlineCPUs": ("Intel Xeon Processor (Skylake, IBRS)", 2, 2, 7881912 * 1024),
    # arm64: no "model name" and no core ids in cpuinfo: unknown, not guessed.
    "linux-arm64-c288e0776090cd558ef793b2a4e61939": (None, None, 1, 2 * GiB),
    "linux-s390x-snapshot": (None, 4, 8, 110 * GiB),
}


@pytest.mark.corpus
@pytest.mark.parametrize("name", sorted(GHW_EXPECTED))
def test_cpuinfo_fallback_on_ghw_snapshots(tmp_path: Path, name: str) -> None:
    root = extract(GHW / f"{name}.tar.gz", tmp_path)
    raw = collect(root)
    assert raw["source"] is None  # the snapshots hold no /sys/class/dmi
    model, cores, threads, ram = GHW_EXPECTED[name]
    assert (raw["cpu_model"], raw["cpu_cores"], raw["cpu_threads"]) == (model, cores, threads)
    assert raw["ram_total_bytes"] == ram
    assert raw["memory_modules"] == []


def test_dmidecode_without_processor_record_takes_cpu_from_cpuinfo(tmp_path: Path) -> None:
    # The Surface Go 2 capture of glpi-agent (GPL: read in place) has no type 4 record.
    extract(GHW / "linux-amd64-415ee03b8c4d1c4f07ae2e9d8b3d3d6d.tar.gz", tmp_path)
    capture_with_dmidecode(tmp_path, (TXT / "glpi-agent" / "surface-go-2").read_bytes())
    raw = collect(tmp_path)
    assert raw["source"] == "dmidecode"
    assert raw["board_vendor"] == "Microsoft Corporation"
    assert (raw["cpu_model"], raw["cpu_cores"], raw["cpu_threads"]) == (
        "12th Gen Intel(R) Core(TM) i7-1270P", 12, 16)


def test_old_smbios_without_core_count_takes_counts_from_cpuinfo(tmp_path: Path) -> None:
    # SMBIOS 2.4 (Gigabyte GA-MA74GMT-S2) has no Core Count: the model stays the table's.
    extract(GHW / "linux-amd64-61797caf7c0b6bca1725ad7975ed4773.tar.gz", tmp_path)
    capture_with_dmidecode(tmp_path, (TXT / "u-root" / "Gigabyte-GA-MA74GMT-S2.orig.txt")
                           .read_bytes())
    raw = collect(tmp_path)
    assert raw["cpu_model"] == "AMD Athlon(tm) II X2 240 Processor"
    assert (raw["cpu_cores"], raw["cpu_threads"]) == (6, 12)
    assert raw["ram_total_bytes"] == 2 * GiB  # the modules', not the snapshot's


XEON_L5640 = "linux-amd64-8581cf3a529e5d8b97ea876eade2f60d"  # 2 x 6 cores, HT
L5640_MODEL = "Intel(R) Xeon(R) CPU           L5640  @ 2.27GHz"


@pytest.mark.corpus
@pytest.mark.parametrize(("path", "placeholder", "counts"), [
    # Every corpus text whose type 4 Version is a placeholder (10 of the 164 with a type 4
    # record); counts are the table's where it states them, else cpuinfo's (12 cores, 24 threads).
    ("glpi-agent/linux-2.6", "Not Specified", (12, 24)),
    ("glpi-agent/rhel-4.6", "Not Specified", (12, 24)),
    ("glpi-agent/openbsd-3.8", "Not Specified", (12, 24)),
    ("glpi-agent/openbsd-4.5", "Not Specified", (12, 24)),
    ("glpi-agent/windows-2003R2-Hotfix", "Not Specified", (12, 24)),
    ("glpi-agent/windows-xp", "Not Specified", (2, 2)),
    ("glpi-agent/windows-hyperV-2019", "None", (1, 1)),
    ("glpi-agent/vmware", "0" * 32, (12, 24)),
    ("glpi-agent/vmware-esx", "0" * 32, (12, 24)),
])
def test_placeholder_cpu_model_is_taken_from_cpuinfo(
        tmp_path: Path, path: str, placeholder: str, counts: tuple[int, int]) -> None:
    # The texts are glpi-agent's (GPL: read in place); the /proc/cpuinfo beside them is ghw's.
    text = (TXT / path).read_bytes()
    assert placeholder in Dmi().collect(ReplayHost(capture_with_dmidecode(
        tmp_path / "alone", text)))["cpu_model"]  # no cpuinfo: the table's word is kept
    extract(GHW / f"{XEON_L5640}.tar.gz", tmp_path / "host")
    raw = collect(capture_with_dmidecode(tmp_path / "host", text))
    assert raw["source"] == "dmidecode"
    assert (raw["cpu_model"], raw["cpu_cores"], raw["cpu_threads"]) == (L5640_MODEL, *counts)
    assert report(raw)["hardware"]["cpu"] == {  # the filter collapses the runs of spaces
        "model": "Intel(R) Xeon(R) CPU L5640 @ 2.27GHz", "cores": counts[0], "threads": counts[1]}


@pytest.mark.corpus
def test_placeholder_cpu_model_without_a_cpuinfo_model_stays_null(tmp_path: Path) -> None:
    # The Amlogic S905X board (linuxhw) says "Unknown"; an arm64 kernel's cpuinfo names no model
    # (ghw's arm64 snapshot): nothing is invented, the filter nulls the placeholder.
    extract(GHW / "linux-arm64-c288e0776090cd558ef793b2a4e61939.tar.gz", tmp_path)
    capture_with_dmidecode(tmp_path, (
        TXT / "linuxhw-DMI" / "System On Chip" / "libre-computer" / "aml-s905"
        / "aml-s905x-cc" / "F3CD39003109").read_bytes())
    raw = collect(tmp_path)
    assert (raw["cpu_model"], raw["cpu_cores"], raw["cpu_threads"]) == ("Unknown", None, 1)
    assert report(raw)["hardware"]["cpu"] == {"model": None, "cores": None, "threads": 1}


def test_zero_counts_are_taken_from_cpuinfo(tmp_path: Path) -> None:
    # A type 4 record stating "Core Count: 0" and "Thread Count: 0" (edited from the MSI
    # capture): zero is no count, /proc/cpuinfo's is used.
    text = (DATA / "capture-msi-ms-7816" / "commands" / "dmidecode.txt").read_text("utf-8")
    text = text.replace("Core Count: 4", "Core Count: 0").replace("Thread Count: 8",
                                                                   "Thread Count: 0")
    capture_with_dmidecode(tmp_path, text)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text("".join(
        f"processor\t: {i}\nmodel name\t: Other\nphysical id\t: 0\ncore id\t\t: {i % 2}\n\n"
        for i in range(4)))
    raw = collect(tmp_path)
    assert (raw["cpu_model"], raw["cpu_cores"], raw["cpu_threads"]) == (
        "Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz", 2, 4)


def test_cpuinfo_parser_counts_pairs_not_lines() -> None:
    text = "".join(
        f"processor\t: {i}\nmodel name\t: Test CPU\nphysical id\t: {i // 4}\n"
        f"core id\t\t: {(i % 4) // 2}\n\n" for i in range(8))
    assert parse_cpuinfo(text) == {"cpu_model": "Test CPU", "cpu_cores": 4, "cpu_threads": 8,
                                   "cpu_sockets": 2}
    assert parse_cpuinfo("") == {"cpu_model": None, "cpu_cores": None, "cpu_threads": None,
                                 "cpu_sockets": None}
    assert parse_cpuinfo("\x00\ufffd:\n:::\nprocessor\n")["cpu_threads"] is None


def test_ram_size_prefers_memory_blocks(tmp_path: Path) -> None:
    mem = tmp_path / "sys" / "devices" / "system" / "memory"
    for i in range(3):
        (mem / f"memory{i}").mkdir(parents=True)
    (mem / "block_size_bytes").write_text("8000000\n")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text("MemTotal:       300000 kB\n")
    assert read_ram_size(ReplayHost(tmp_path)) == 3 * 128 * MiB
    (mem / "block_size_bytes").write_text("garbage\n")
    assert read_ram_size(ReplayHost(tmp_path)) == 300000 * 1024


# ---- placeholders and canaries through the privacy filter --------------------------------------

@pytest.mark.parametrize(("path", "field", "placeholder"), [
    ("u-root/GigaByte-X399.orig.txt", "board_serial", "Default string"),
    ("u-root/MSI-MS-7816.orig.txt", "board_serial", "To be filled by O.E.M."),
    ("glpi-agent/hp-proLiant-DL120-G6", "board_serial", "0123456789"),
    ("linuxhw-DMI/Desktop/Others/Intel/Intel X79/098205FD68F3", "board_vendor",
     "To be filled by O.E.M."),
])
def test_placeholders_come_out_null(tmp_path: Path, path: str, field: str,
                                    placeholder: str) -> None:
    raw = collect(capture_with_dmidecode(tmp_path, (TXT / path).read_bytes()))
    assert raw[field] == placeholder
    board = report(raw)["hardware"]["motherboard"]
    key = {"board_serial": "serial", "board_vendor": "vendor"}[field]
    assert board[key] is None
    assert board["model"] is not None  # the real values next to it survive


def test_module_placeholders_come_out_null(tmp_path: Path) -> None:
    raw = collect(capture_with_dmidecode(
        tmp_path, (TXT / "u-root" / "SuperMicro-X9DBL.orig.txt").read_bytes()))
    assert {m["manufacturer"] for m in raw["memory_modules"]} == {"Undefined", "Micron"}
    sent = report(raw)["hardware"]["ram"]["modules"]
    assert sorted(str(m["manufacturer"]) for m in sent) == ["Micron"] * 2 + ["None"] * 4


CANARIES = [
    "CNRY-SYS-SERIAL-5521", "6b0c1a2e-9f3d-4e5a-b7c8-d9e0f1a2b3c4", "CNRY-CHASSIS-SN-3310",
    "CNRY-CHASSIS-TAG-7781", "jane.cnry@example.org", "cnryuser42", "/home/cnryuser42",
    *[f"CNRY-DIMM-SN-{i:04d}" for i in range(1, 7)],
    *[f"CNRY-DIMM-TAG-{i:04d}" for i in range(1, 7)],
]


def test_canaries_never_leave(tmp_path: Path) -> None:
    text = (DATA / "supermicro-x9dbl-canaries.txt").read_bytes()
    raw = collect(capture_with_dmidecode(tmp_path, text))
    # The canaries were collected: the filter, not the collector, is what keeps them in.
    everything = json.dumps(raw)
    for canary in CANARIES:
        assert canary in everything, canary
    result = apply(load_policy(), {"dmi": raw})
    sent = json.dumps({"hardware": result.hardware, "functional": result.functional,
                       "dropped": sorted(result.dropped)})
    for canary in CANARIES:
        assert canary not in sent, canary
    assert "cnry" not in sent.lower()
    assert "6b0c1a2e" not in sent and "9f3d-4e5a" not in sent
    # ... while what the policy declares is there.
    hw = result.hardware
    assert hw["motherboard"] == {"vendor": "Supermicro", "model": "X9DBL-3F/X9DBL-iF",
                                 "serial": "VM147S018307"}
    assert hw["cpu"] == {"model": "Intel(R) Xeon(R) CPU E5-2403 v2 @ 1.80GHz", "cores": 8,
                         "threads": 8}
    assert hw["ram"]["total_bytes"] == 48 * GiB
    assert len(hw["ram"]["modules"]) == 6
    assert {m["part_number"] for m in hw["ram"]["modules"]} == {"AL12P72A8BLK0M",
                                                               "36KSF2G72PZ-1G6N1"}
    for name in ("dmi.product_serial", "dmi.product_uuid", "dmi.chassis_serial",
                 "dmi.chassis_asset_tag", "dmi.oem_strings", "dmi.memory_modules[].serial_number",
                 "dmi.memory_modules[].asset_tag"):
        assert result.dropped[name] >= 1, name


# ---- the collector as a plug-in, on this machine, and its cost -------------------------------

def test_collector_is_discovered_and_declares_its_fields() -> None:
    assert discover()["dmi"] is Dmi
    assert set(Dmi.fields) == CONTRACT
    policy_keys = {rule.key for rule in load_policy().fields if rule.collector == "dmi"}
    assert policy_keys <= set(Dmi.fields)


def test_runs_plain_dmidecode_once_with_the_timeout(tmp_path: Path) -> None:
    calls: list[tuple[list[str], float]] = []

    class Recorder(ReplayHost):
        def run(self, argv: Any, timeout: float) -> bytes:
            calls.append((list(argv), timeout))
            return super().run(argv, timeout)

    Dmi(timeout=3.5).collect(Recorder(DATA / "capture-msi-ms-7816"))
    assert calls == [(["dmidecode"], 3.5)]


def test_live_machine_gives_its_data_and_says_what_failed() -> None:
    # A machine without an SMBIOS table (a container, this sandbox): dmidecode fails, the
    # fallbacks answer, and the collector says so instead of "ok".
    try:
        raw = Dmi().collect(LiveHost("/"))
    except PartialData as exc:
        assert str(exc).startswith("dmidecode"), exc
        raw = exc.raw
    assert set(raw) == CONTRACT
    if os.path.exists("/proc/cpuinfo"):
        assert isinstance(raw["cpu_threads"], int) and raw["cpu_threads"] >= 1
    if shutil.which("dmidecode", path="/usr/sbin:/sbin") and not os.path.exists(
            "/sys/firmware/dmi/tables/DMI"):
        assert raw["source"] in ("sysfs", None)


def test_module_imports_no_heavy_library() -> None:
    code = ("import sys, collectors.dmi; "
            "print(' '.join(m for m in sys.modules if m.split('.')[0] in "
            "('psutil', 'pyudev', 'pyroute2', 'requests', 'cryptography')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          check=True, timeout=60)
    assert proc.stdout.split() == []


def test_cli_inventory_from_canary_capture(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`evo-agent inventory --from CAPTURE --json`: the document that would be sent."""
    import jsonschema  # untyped: pyproject.toml lets mypy ignore its missing stubs

    from evo_agent.cli import main

    capture = capture_with_dmidecode(tmp_path / "capture",
                                     (DATA / "supermicro-x9dbl-canaries.txt").read_bytes())
    config = tmp_path / "agent.toml"
    config.write_text("", "utf-8")
    assert main(["inventory", "--from", str(capture), "--json", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    for canary in CANARIES:
        assert canary not in out, canary
    assert "cnry" not in out.lower()
    doc = json.loads(out)
    schema = json.loads((REPO / "evo_agent" / "schemas" / "evo-inventory-1.schema.json")
                        .read_text("utf-8"))
    jsonschema.validate(doc, schema)
    assert doc["hardware"]["motherboard"]["serial"] == "VM147S018307"
    assert doc["hardware"]["cpu"]["cores"] == 8
    assert doc["collectors"]["dmi"]["status"] == "ok"
