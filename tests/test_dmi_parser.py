"""The dmidecode text parser on real outputs: every capture of the corpus, every SMBIOS dump
turned into text by the installed dmidecode, and the variants of twenty years of dmidecode."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from collectors._dmidecode import (
    JEP106,
    jedec_name,
    module_id_name,
    parse,
    parse_count,
    parse_size,
    parse_speed,
    summarize,
    usable,
)

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "corpus"
TXT = CORPUS / "dmidecode_txt"
BIN = CORPUS / "smbios_bin"
DATA = Path(__file__).resolve().parent / "data" / "dmi"

TXT_FILES = sorted(p for p in TXT.rglob("*") if p.is_file()) if TXT.is_dir() else []
GiB = 1 << 30
MiB = 1 << 20


def summary_of(path: Path) -> dict[str, Any]:
    """Parse one dmidecode text file of the corpus."""
    return summarize(parse(path.read_bytes().decode("utf-8", errors="replace")))


# ---- every real output ----------------------------------------------------------------------

def _blocks(text: str) -> dict[int, list[tuple[str, str]]]:
    """Split dmidecode text at its "Handle" lines: type -> [(handle, body)] (an oracle that
    shares no code with the parser)."""
    found: dict[int, list[tuple[str, str]]] = {}
    for chunk in re.split(r"(?m)^(?=Handle 0x)", text):
        m = re.match(r"Handle (0x[0-9A-Fa-f]+)(?:, |\s+)DMI type (\d+),", chunk)
        if m:
            found.setdefault(int(m.group(2)), []).append((m.group(1).upper(), chunk))
    return found


def _oracle(text: str) -> dict[str, Any]:
    """Expected values, computed with plain regular expressions rather than the parser."""
    blocks = _blocks(text)
    other_arrays = {h for h, b in blocks.get(16, []) if re.search(r"Use: (?!System Memory)\S", b)}
    modules = 0
    for _handle, b in blocks.get(17, []):
        arr = re.search(r"Array Handle: (0x[0-9A-Fa-f]+)", b)
        if arr and arr.group(1).upper() in other_arrays:
            continue
        if re.search(r"^\s+Size: [1-9]\d* [kMGT]B\s*$", b, re.M):
            modules += 1
    boards = [m.group(1).strip() for _h, b in blocks.get(2, [])
              for m in [re.search(r"^\s+(?:Manufacturer|Vendor):(.*)$", b, re.M)] if m]
    cores: list[int | None] = []
    for _handle, b in blocks.get(4, []):
        if re.search(r"Status: Populated, (Enabled|Idle)", b):
            m = re.search(r"^\s+Core Count: (\d+)\s*$", b, re.M)
            cores.append(int(m.group(1)) if m and int(m.group(1)) else None)
    return {"modules": modules, "boards": boards, "cores": cores}


def test_corpus_is_all_there() -> None:
    assert len(TXT_FILES) == 202


@pytest.mark.corpus
@pytest.mark.parametrize("path", TXT_FILES, ids=lambda p: str(p.relative_to(TXT)))
def test_every_dmidecode_text_parses(path: Path) -> None:
    text = path.read_bytes().decode("utf-8", errors="replace")
    out = summarize(parse(text))
    expected = _oracle(text)
    assert len(out["memory_modules"]) == expected["modules"]
    if expected["modules"]:
        assert out["ram_total_bytes"] == sum(m["size_bytes"] for m in out["memory_modules"])
    boards = [b for b in expected["boards"] if b]
    if boards:
        assert out["board_vendor"] is not None
    if expected["cores"] and all(expected["cores"]):
        assert out["cpu_cores"] == sum(c for c in expected["cores"] if c)
    for module in out["memory_modules"]:
        assert isinstance(module["size_bytes"], int) and module["size_bytes"] > 0
        assert module["speed_mts"] is None or module["speed_mts"] > 0
        for key in ("locator", "type", "manufacturer", "part_number", "serial_number"):
            value = module[key]
            assert value is None or (value == value.strip() and value)
    for key, value in out.items():
        if isinstance(value, str):
            assert value == value.strip() and value, key


def test_uroot_supermicro_two_sockets_and_modules() -> None:
    out = summary_of(TXT / "u-root" / "SuperMicro-X9DBL.orig.txt")
    assert out["board_vendor"] == "Supermicro"
    assert out["board_name"] == "X9DBL-3F/X9DBL-iF"
    assert out["board_serial"] == "VM147S018307"
    assert out["sys_vendor"] == "Thomas-Krenn.AG"
    assert out["product_uuid"] == "00000000-0000-0000-0000-0cc47a133878"
    assert out["cpu_model"] == "Intel(R) Xeon(R) CPU E5-2403 v2 @ 1.80GHz"
    assert (out["cpu_sockets"], out["cpu_cores"], out["cpu_threads"]) == (2, 8, 8)
    assert out["ram_total_bytes"] == 48 * GiB
    parts = [m["part_number"] for m in out["memory_modules"]]
    assert parts.count("36KSF2G72PZ-1G6N1") == 2 and parts.count("AL12P72A8BLK0M") == 4
    micron = next(m for m in out["memory_modules"] if m["locator"] == "P1-DIMM1C")
    assert micron == {
        "locator": "P1-DIMM1C", "bank_locator": "P0_Node0_Channel2_Dimm0", "type": "DDR3",
        "form_factor": "DIMM", "size_bytes": 16 * GiB, "speed_mts": 1333,
        "manufacturer": "Micron", "part_number": "36KSF2G72PZ-1G6N1",
        "serial_number": "15C774EF", "asset_tag": "Dimm2_AssetTag",
    }
    assert out["oem_strings"] == ["Intel SandyBridge/Patsburg/Romley",
                                  "Supermicro motherboard-X9 Series"]


def test_dual_socket_servers_sum_cores_and_threads() -> None:
    t440 = summary_of(next((TXT / "linuxhw-DMI/Server/Dell/PowerEdge/PowerEdge T440").rglob("*")))
    assert (t440["cpu_sockets"], t440["cpu_cores"], t440["cpu_threads"]) == (2, 48, 96)
    assert t440["cpu_model"] == "Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz"
    lenovo = summary_of(TXT / "checkbox" / "LENOVO_SYSTEMX.txt")  # GPL-3.0: read in place
    assert (lenovo["cpu_sockets"], lenovo["cpu_cores"], lenovo["cpu_threads"]) == (2, 20, 40)
    # One socket of two populated (HP DL180 G6): only the populated one counts.
    dl180 = summary_of(TXT / "glpi-agent" / "hp-dl180")
    assert (dl180["cpu_sockets"], dl180["cpu_cores"], dl180["cpu_threads"]) == (1, 4, 4)


def test_vmware_disabled_sockets_are_not_counted() -> None:
    out = summary_of(TXT / "u-root" / "VMWare.orig.txt")  # 128 sockets, 2 enabled
    assert out["cpu_sockets"] == 2
    assert out["cpu_model"] == "Intel(R) Core(TM) i7-5500U CPU @ 2.40GHz"
    assert out["cpu_threads"] is None  # SMBIOS 2.7 from VMware gives no thread count


def test_only_socket_called_unpopulated_still_names_the_cpu() -> None:
    out = summary_of(next((TXT / "linuxhw-DMI/Notebook/Sony/VGN-TX690/VGN-TX690P").iterdir()))
    assert out["cpu_model"] == "Intel(R) Pentium(R) M processor 1.20GHz"
    assert out["cpu_sockets"] is None and out["cpu_cores"] is None


def test_flash_memory_array_is_not_ram() -> None:
    out = summary_of(next((TXT / "linuxhw-DMI/Desktop/Intel/Thurley/Thurley").iterdir()))
    assert [m["size_bytes"] for m in out["memory_modules"]] == [2 * GiB]
    assert out["ram_total_bytes"] == 2 * GiB


def test_invalid_entry_length_note_before_a_title() -> None:
    out = summary_of(next((TXT / "linuxhw-DMI/Server/Supermicro/X9/X9DRW").iterdir()))
    assert out["board_name"] == "X9DRW"
    assert (out["cpu_sockets"], out["cpu_cores"], out["cpu_threads"]) == (2, 16, 32)
    assert out["ram_total_bytes"] == 48 * GiB


def test_oldest_dmidecode_formats() -> None:
    # dmidecode 2.2-era: "Handle" alone, "DMI type 2, 8 bytes." below, Vendor/Product keys.
    rhel21 = summary_of(TXT / "glpi-agent" / "rhel-2.1")
    assert (rhel21["board_vendor"], rhel21["board_name"]) == ("IBM", "-[M51G]-")
    assert rhel21["bios_date"] == "12/11/2002"
    assert rhel21["cpu_model"] == "Pentium 4"
    esx = summary_of(TXT / "glpi-agent" / "vmware-esx-2.5")
    assert esx["cpu_model"] == "Pentium(R) III" and esx["cpu_sockets"] == 1
    assert esx["oem_strings"] == ["[MS_VM_CERT/SHA1/27d66596a61c48dd3dc7216fd715126e33f59ae7]",
                                  "Welcome to the Virtual Machine"]
    # dmidecode 2.6, space-indented.
    obsd = summary_of(TXT / "glpi-agent" / "openbsd-3.7")
    assert (obsd["board_vendor"], obsd["board_name"]) == ("Tekram Technology Co., Ltd.", "P6PROA5")
    assert obsd["board_serial"] is None  # "Serial Number:" with nothing after it
    # dmidecode 2.10 with 8-space indentation and MHz speeds.
    obsd45 = summary_of(TXT / "glpi-agent" / "openbsd-4.5")
    assert obsd45["board_name"] == "0Y1861"
    assert [m["size_bytes"] for m in obsd45["memory_modules"]] == [512 * MiB]


def test_jedec_codes_become_names() -> None:
    r640 = summary_of(TXT / "glpi-agent" / "dell-r640")
    assert {m["manufacturer"] for m in r640["memory_modules"]} == {"Samsung"}  # 00CE00B300CE
    w510 = summary_of(TXT / "u-root" / "Lenovo-ThinkPad-W510.orig.txt")
    assert {m["manufacturer"] for m in w510["memory_modules"]} == {"Crucial Technology"}  # 859B
    s3000 = summary_of(TXT / "glpi-agent" / "S3000AHLX")  # DDR2 SPD form, 0x7F continuation
    assert sorted(m["manufacturer"] for m in s3000["memory_modules"]) == [
        "Kingston", "Samsung", "Samsung"]


def test_module_manufacturer_id_names_an_unknown_maker() -> None:
    gtr = summary_of(next((TXT / "linuxhw-DMI/Mini Pc/AZW/GTR/GTR").iterdir()))
    assert [(m["manufacturer"], m["part_number"]) for m in gtr["memory_modules"]] == [
        ("Crucial Technology", "CT16G4SFS832A.C8FE")] * 2
    b650 = summary_of(next((TXT / "linuxhw-DMI/Desktop/ASRock/B650M/B650M Pro RS").iterdir()))
    assert {m["manufacturer"] for m in b650["memory_modules"]} == {"Corsair"}
    # A name the firmware did give is kept, even where the ID would decode.
    x11 = summary_of(next((TXT / "linuxhw-DMI/Server/Supermicro/X11/X11DPi-N").iterdir()))
    assert {m["manufacturer"] for m in x11["memory_modules"]} == {"Micron"}  # not "... Technology"


# ---- SMBIOS dumps through the installed dmidecode ---------------------------------------------

def _verify_rows() -> list[dict[str, str]]:
    if not (BIN / "VERIFY.tsv").is_file():
        return []
    with (BIN / "VERIFY.tsv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _from_dump(row: dict[str, str]) -> str:
    dump = BIN / (row["derived_dump"] or row["file"])
    exe = shutil.which("dmidecode", path="/usr/local/sbin:/usr/sbin:/sbin:/usr/bin")
    if exe is None:
        pytest.skip("dmidecode is not installed")
    proc = subprocess.run([exe, "--from-dump", str(dump)], capture_output=True, check=False,
                          env={"LC_ALL": "C"}, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode("utf-8", errors="replace")


@pytest.mark.corpus
@pytest.mark.parametrize("row", _verify_rows(), ids=lambda r: r["file"])
def test_every_smbios_dump_parses(row: dict[str, str]) -> None:
    records = parse(_from_dump(row))
    assert usable(records)
    out = summarize(records)
    vendor, _, product = row["system(manufacturer|product)"].partition(" | ")
    assert (out["sys_vendor"], out["product_name"]) == (vendor, product)
    assert out["memory_modules"], "every dump of the corpus has memory devices"
    assert out["ram_total_bytes"] == sum(m["size_bytes"] for m in out["memory_modules"])


def test_every_dump_of_the_corpus_is_in_verify_tsv() -> None:
    """No dump escapes the test above: each is listed, or is half of a pair that is."""
    listed = {row["file"] for row in _verify_rows()}
    assert len(listed) == 68
    for path in sorted(BIN.rglob("*")):
        rel = str(path.relative_to(BIN))
        if not path.is_file() or rel == "VERIFY.tsv" or rel.startswith("_derived/"):
            continue
        if path.name in ("smbios_entry_point", "entry.bin", "entry_v3.bin",
                         "entry_v3_short.bin"):
            continue  # the entry point of a sysfs pair, whose table file is listed
        if "/entries/" in rel:
            continue  # /sys/firmware/dmi/entries/N-0/raw: one structure, no table to decode
        assert rel in listed, rel


UROOT = [r for r in _verify_rows() if r["file"].startswith("u-root/")
         and (TXT / "u-root" / (Path(r["file"]).stem + ".orig.txt")).is_file()]


@pytest.mark.corpus
@pytest.mark.parametrize("row", UROOT, ids=lambda r: r["file"])
def test_uroot_dump_equals_its_original_text(row: dict[str, str]) -> None:
    dumped = summarize(parse(_from_dump(row)))
    original = summary_of(TXT / "u-root" / (Path(row["file"]).stem + ".orig.txt"))
    for key in ("board_vendor", "board_name", "board_serial", "cpu_model", "cpu_cores",
                "cpu_threads", "ram_total_bytes", "memory_modules"):
        assert dumped[key] == original[key], key
    assert original["board_vendor"] and original["cpu_model"] and original["memory_modules"]


def test_uroot_pairs_are_all_compared() -> None:
    if TXT.is_dir():
        assert len(UROOT) == 9


# ---- variants, one by one -------------------------------------------------------------------

def test_new_format_with_lists_notes_and_trailing_spaces() -> None:
    text = (
        "# dmidecode 3.4\nGetting SMBIOS data from sysfs.\nSMBIOS 3.0 present.\n"
        "Table at 0x000E0000.\n\n"
        "Handle 0x0000, DMI type 0, 24 bytes\nBIOS Information\n\tVendor: AMI \n"
        "\tCharacteristics:\n\t\tPCI is supported\n\t\tBIOS is upgradeable\n"
        "\tRelease Date: 01/02/2020\n\n"
        "Handle 0x0002, DMI type 2, 15 bytes\n"
        "Invalid entry length (16). Fixed up to 11.\n"
        "Base Board Information\n\tManufacturer: ACME   \n\tProduct Name: X1\n"
        "\tSerial Number: <OUT OF SPEC>\n\n"
        "Handle 0x0003, DMI type 11, 5 bytes\nOEM Strings\n\tString 1: a: b \n\tString 2: \n"
        "\tStrings:\n\t\tc\n\n"
        "Wrong DMI structures count: 4 announced, only 3 decoded.\n"
    )
    records = parse(text)
    assert [r.type for r in records] == [0, 2, 11]
    assert records[0].lists["Characteristics"] == ["PCI is supported", "BIOS is upgradeable"]
    assert records[0].values["Release Date"] == "01/02/2020"
    assert records[1].title == "Base Board Information"
    out = summarize(records)
    assert out["bios_vendor"] == "AMI"
    assert (out["board_vendor"], out["board_name"]) == ("ACME", "X1")
    assert out["board_serial"] == "<OUT OF SPEC>"  # as given: the filter decides
    assert out["oem_strings"] == ["a: b", "c"]


def test_broken_table_keeps_what_came_before() -> None:
    text = (
        "SMBIOS 2.8 present.\n\nHandle 0x0001, DMI type 1, 27 bytes\nSystem Information\n"
        "\tManufacturer: Microsoft Corporation\n\tProduct Name: Virtual Machine\n\n"
        "Handle 0x0002, DMI type 2, 8 bytes\nInvalid entry length (0). DMI table is broken! Stop.\n"
    )
    out = summarize(parse(text))
    assert out["sys_vendor"] == "Microsoft Corporation"
    assert out["board_vendor"] is None


def test_sockets_unpopulated_zero_and_unknown_counts() -> None:
    def cpu(status: str, cores: str, threads: str, version: str = "CPU X") -> str:
        return (f"Handle 0x0004, DMI type 4, 48 bytes\nProcessor Information\n"
                f"\tType: Central Processor\n\tVersion: {version}\n\tStatus: {status}\n"
                f"\tCore Count: {cores}\n\tThread Count: {threads}\n\n")

    two = summarize(parse(cpu("Populated, Enabled", "8", "16")
                          + cpu("Unpopulated", "0", "0", "")
                          + cpu("Populated, Idle", "8", "16")))
    assert (two["cpu_sockets"], two["cpu_cores"], two["cpu_threads"]) == (2, 16, 32)
    zero = summarize(parse(cpu("Populated, Enabled", "0", "Unknown")))
    assert (zero["cpu_model"], zero["cpu_cores"], zero["cpu_threads"]) == ("CPU X", None, None)
    partial = summarize(parse(cpu("Populated, Enabled", "4", "8") + cpu("Populated, Enabled",
                                                                       "Unknown", "8")))
    assert (partial["cpu_cores"], partial["cpu_threads"]) == (None, 16)


def test_memory_device_variants() -> None:
    def dev(size: str, speed: str, extra: str = "") -> str:
        return (f"Handle 0x0011, DMI type 17, 40 bytes\nMemory Device\n\tSize: {size}\n"
                f"\tForm Factor: SODIMM\n\tType: DDR4\n\tSpeed: {speed}\n{extra}"
                f"\tManufacturer: 80CE000080CE\n\tPart Number: M471A1K43CB1-CTD    \n\n")

    text = (dev("8 GB", "2667 MT/s") + dev("No Module Installed", "Unknown")
            + dev("4096 MB", "Unknown", "\tConfigured Memory Speed: 2400 MT/s\n")
            + dev("512 kB", "667 MHz (1.5 ns)") + dev("0 MB", "1333 MHz"))
    mods = summarize(parse(text))["memory_modules"]
    assert [m["size_bytes"] for m in mods] == [8 * GiB, 4 * GiB, 512 * 1024]
    assert [m["speed_mts"] for m in mods] == [2667, 2400, 667]
    assert {m["manufacturer"] for m in mods} == {"Samsung"}
    assert mods[0]["part_number"] == "M471A1K43CB1-CTD"


def test_ram_from_mapped_ranges_when_no_device_has_a_size() -> None:
    text = ("Handle 0x0010, DMI type 16, 23 bytes\nPhysical Memory Array\n\tUse: System Memory\n\n"
            "Handle 0x0013, DMI type 19, 31 bytes\nMemory Array Mapped Address\n"
            "\tRange Size: 3 GB\n\tPhysical Array Handle: 0x0010\n\n"
            "Handle 0x0014, DMI type 19, 31 bytes\nMemory Array Mapped Address\n"
            "\tRange Size: 1024 MB\n\tPhysical Array Handle: 0x0010\n\n")
    assert summarize(parse(text))["ram_total_bytes"] == 4 * GiB


def test_value_parsers() -> None:
    assert parse_size("16384 MB") == parse_size("16 GB") == 16 * GiB
    assert parse_size("256Mbyte") == 256 * MiB
    assert parse_size("2 TB") == 2 << 40
    for bad in ("No Module Installed", "Unknown", "0 MB", "", None, "MB 12", "12 parsecs"):
        assert parse_size(bad) is None
    assert parse_speed("2400 MT/s") == parse_speed("2400 MHz") == 2400
    assert parse_speed("Unknown") is None and parse_speed("0 MT/s") is None
    assert parse_count("12") == 12
    assert parse_count("0") is None and parse_count("Unknown") is None and parse_count("-1") is None


def test_jedec_decoding_is_strict() -> None:
    assert jedec_name("80CE000080CE") == "Samsung"
    assert jedec_name("00AD00B300AD") == "SK Hynix"
    assert jedec_name("0x0198") == "Kingston"
    assert jedec_name("859B") == "Crucial Technology"
    assert jedec_name("7F7F9E0000000000") == "Corsair"
    assert module_id_name("Bank 6, Hex 0x9B") == "Crucial Technology"
    for value in ("Unknown", "Bank 0, Hex 0x9B", "Bank 6, Hex 0x1B", "Bank 99, Hex 0x9B", None):
        assert module_id_name(value) is None
    # Even parity on the code, banks past the table, names, padding that is not padding: kept.
    for value in ("80CF", "ABCD", "1315", "0000", "Samsung", "Kingston", "7F98001200000000",
                  "FFFFFFFFFFFFFFFF", "", None, "80CE0"):
        assert jedec_name(value) is None


def _decode_dimms_vendors() -> list[list[str]] | None:
    """Return i2c-tools' JEP106 table from /usr/bin/decode-dimms (GPL: read, not copied)."""
    path = Path("/usr/bin/decode-dimms")
    if not path.is_file():
        return None
    text = path.read_text("utf-8", errors="replace")
    start = text.index("@vendors = (")
    end = text.index("\n);", start)
    pages = re.findall(r"\[(.*?)\]", text[start:end], re.S)
    return [re.findall(r'"((?:[^"\\]|\\.)*)"', page) for page in pages]


def test_jep106_table_matches_decode_dimms() -> None:
    vendors = _decode_dimms_vendors()
    if vendors is None:
        pytest.skip("i2c-tools' decode-dimms is not installed")
    for (bank, code), name in JEP106.items():
        theirs = re.sub(r" \(former .*\)$", "", vendors[bank][code - 1])
        assert theirs == name, (bank, code)


def test_empty_and_preamble_only_text() -> None:
    assert parse("") == []
    records = parse("# dmidecode 3.4\n# No SMBIOS nor DMI entry point found, sorry.\n")
    assert records == [] and not usable(records)
    out = summarize(records)
    assert out["memory_modules"] == [] and out["board_vendor"] is None


def test_fixture_files_are_attributed() -> None:
    sources = (DATA / "SOURCES.tsv").read_text("utf-8").splitlines()
    assert sources[0].split("\t") == ["file", "repo", "path", "commit", "licence"]
    listed = {line.split("\t")[0] for line in sources[1:] if line}
    present = {str(p.relative_to(DATA.parent)) for p in DATA.rglob("*")
               if p.is_file() and p.name not in ("SOURCES.tsv", "README.md")}
    assert present <= listed
    for line in sources[1:]:
        licence = line.split("\t")[4]
        assert licence in ("BSD-3-Clause", "CC-BY-4.0", "MIT", "Apache-2.0"), line
