"""Garbage never crashes the DMI parsers: hypothesis feeds them random text, random bytes, real
dmidecode outputs cut short, shuffled and mutated, and random /proc and /sys files.  Each crash it
found has a regression test at the end of this file."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from collectors._dmidecode import (
    jedec_name,
    parse,
    parse_count,
    parse_size,
    parse_speed,
    summarize,
    usable,
)
from collectors.dmi import Dmi, parse_cpuinfo, read_ram_size
from evo_agent.hostroot import ReplayHost
from evo_agent.policy import apply, load_policy

HERE = Path(__file__).resolve().parent
TXT = HERE / "data" / "corpus" / "dmidecode_txt"
# Real outputs to cut and shuffle: two BSD-licensed ones, and a spread of GPL and CC-BY ones.
REAL = [HERE / "data" / "dmi" / "supermicro-x9dbl-canaries.txt",
        HERE / "data" / "dmi" / "capture-msi-ms-7816" / "commands" / "dmidecode.txt"]
REAL += [TXT / "glpi-agent" / name for name in ("rhel-2.1", "openbsd-3.7", "openbsd-4.5",
                                                "dell-r640", "vmware-esx-2.5")]
REAL += sorted((TXT / "linuxhw-DMI" / "Server").rglob("*"))[:40:4]
REAL = [p for p in REAL if p.is_file()]
REAL_TEXTS = [p.read_bytes().decode("utf-8", errors="replace") for p in REAL]

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Lines that look like dmidecode's, to reach deep into the parser's states.
KEYS = ["Manufacturer", "Product Name", "Serial Number", "Version", "Size", "Speed",
        "Configured Memory Speed", "Core Count", "Thread Count", "Status", "Array Handle",
        "Physical Array Handle", "Range Size", "Use", "Type", "String 1", "Strings",
        "Characteristics", "Vendor", "Product", "Processor Version", "Locator", "Part Number"]
VALUES = ["", "8 GB", "16384 MB", "512 kB", "No Module Installed", "2400 MT/s", "667 MHz (1.5 ns)",
          "Unknown", "0", "4", "Populated, Enabled", "Unpopulated", "Populated, Disabled By BIOS",
          "0x0010", "System Memory", "Flash Memory", "<OUT OF SPEC>", "80CE000080CE",
          "7F7F9E0000000000", "To Be Filled By O.E.M.", "\ufffd\ufffd", "999999999999999 TB"]
line_st = st.one_of(
    st.builds(lambda h, t, n: f"Handle 0x{h:04X}, DMI type {t}, {n} bytes",
              st.integers(0, 0xFFFF), st.sampled_from([0, 1, 2, 3, 4, 11, 16, 17, 19, 255]),
              st.integers(0, 300)),
    st.builds(lambda h: f"Handle 0x{h:04X}", st.integers(0, 0xFFFF)),
    st.builds(lambda t: f"\tDMI type {t}, 20 bytes.", st.sampled_from([1, 2, 4, 17])),
    st.sampled_from(["Base Board Information", "Processor Information", "Memory Device",
                     "Invalid entry length (16). Fixed up to 11.", "End Of Table", "",
                     "Invalid entry length (0). DMI table is broken! Stop.", "# dmidecode 3.4",
                     "Wrong DMI structures count: 4 announced, only 3 decoded.", "Table at 0x0"]),
    st.builds(lambda ind, k, v: f"{ind}{k}: {v}",
              st.sampled_from(["\t", "\t\t", "        ", " ", ""]),
              st.sampled_from(KEYS), st.one_of(st.sampled_from(VALUES), st.text(max_size=20))),
    st.text(max_size=40),
)


def check(out: dict[str, Any]) -> None:
    """The shape summarize promises, whatever the input."""
    for key in ("cpu_cores", "cpu_threads", "cpu_sockets", "ram_total_bytes"):
        assert out[key] is None or (isinstance(out[key], int) and out[key] > 0), key
    assert isinstance(out["memory_modules"], list) and isinstance(out["oem_strings"], list)
    for module in out["memory_modules"]:
        assert isinstance(module["size_bytes"], int) and module["size_bytes"] > 0
        assert module["speed_mts"] is None or module["speed_mts"] > 0
    for value in out.values():
        assert value is None or isinstance(value, (str, int, list))
    apply(load_policy(), {"dmi": out})  # and the filter takes it


@FUZZ
@given(st.text())
@example("Handle 0x0000, DMI type 4, 48 bytes\nProcessor Information\n\tCore Count: \u0664\n")
def test_random_text(text: str) -> None:
    records = parse(text)
    usable(records)
    check(summarize(records))


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    check(summarize(parse(data.decode("utf-8", errors="replace"))))


@FUZZ
@given(st.lists(line_st, max_size=60))
def test_dmidecode_like_lines(lines: list[str]) -> None:
    check(summarize(parse("\n".join(lines))))


@FUZZ
@given(st.sampled_from(range(len(REAL_TEXTS))), st.floats(0, 1))
def test_truncated_real_outputs(index: int, fraction: float) -> None:
    text = REAL_TEXTS[index]
    check(summarize(parse(text[: int(len(text) * fraction)])))


@FUZZ
@given(st.sampled_from(range(len(REAL_TEXTS))), st.randoms(use_true_random=False))
def test_shuffled_real_outputs(index: int, rnd: random.Random) -> None:
    lines = REAL_TEXTS[index].splitlines()
    rnd.shuffle(lines)
    check(summarize(parse("\n".join(lines))))


@FUZZ
@given(st.sampled_from(range(len(REAL_TEXTS))), st.randoms(use_true_random=False),
       st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=30))
def test_mutated_real_outputs(index: int, rnd: random.Random, junk: list[str]) -> None:
    """Insert, replace and delete characters at random places of a real output."""
    text = list(REAL_TEXTS[index])
    for piece in junk:
        at = rnd.randrange(len(text) + 1)
        op = rnd.randrange(3)
        if op == 0:
            text[at:at] = list(piece)
        elif op == 1:
            text[at:at + len(piece)] = list(piece)
        else:
            del text[at:at + len(piece)]
    check(summarize(parse("".join(text))))


@FUZZ
@given(st.text(max_size=40))
def test_value_parsers(value: str) -> None:
    for func in (parse_size, parse_speed, parse_count):
        result = func(value)
        assert result is None or (isinstance(result, int) and result > 0)
    name = jedec_name(value)
    assert name is None or isinstance(name, str)


@FUZZ
@given(st.text())
def test_cpuinfo_parser(text: str) -> None:
    out = parse_cpuinfo(text)
    for key in ("cpu_cores", "cpu_threads", "cpu_sockets"):
        assert out[key] is None or out[key] > 0


# Numbers in /proc and /sys: any text, and text made of Unicode digits and number signs (what
# str.isdigit() and int() disagree on).
number_st = st.one_of(st.text(max_size=30),
                      st.text(st.characters(whitelist_categories=("Nd", "No", "Zs")), max_size=12))


@FUZZ
@given(number_st, number_st)
def test_ram_size_on_random_proc_and_sys(tmp_path_factory: pytest.TempPathFactory,
                                         meminfo_value: str, block_size: str) -> None:
    root = tmp_path_factory.mktemp("ram")
    (root / "proc").mkdir()
    (root / "proc" / "meminfo").write_text(f"MemFree: 1 kB\nMemTotal:{meminfo_value}\n", "utf-8")
    mem = root / "sys" / "devices" / "system" / "memory"
    (mem / "memory7").mkdir(parents=True)
    (mem / "block_size_bytes").write_text(block_size, "utf-8")
    size = read_ram_size(ReplayHost(root))
    assert size is None or size > 0


@settings(max_examples=60, deadline=None)
@given(st.fixed_dictionaries({
    "commands/dmidecode.txt": st.binary(max_size=2048),
    "proc/meminfo": st.binary(max_size=256),
    "proc/cpuinfo": st.binary(max_size=512),
    "sys/devices/system/memory/block_size_bytes": st.binary(max_size=16),
    "sys/class/dmi/id/board_name": st.binary(max_size=64),
}))
def test_collector_on_garbage_capture(tmp_path_factory: pytest.TempPathFactory,
                                      files: dict[str, bytes]) -> None:
    root = tmp_path_factory.mktemp("garbage")
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "sys/devices/system/memory/memory0").mkdir()
    raw = Dmi().collect(ReplayHost(root))
    check(raw)


# ---- regressions: what fuzzing and review found ---------------------------------------------

def test_regression_meminfo_with_non_ascii_digits(tmp_path: Path) -> None:
    # Seen in review, then reproduced by test_ram_size_on_random_proc_and_sys (falsifying
    # example: MemTotal "\u1369", ETHIOPIC DIGIT ONE): str.isdigit() said yes, int() raised.
    for digit in ("\u00b2", "\u1369"):
        (tmp_path / "proc").mkdir(exist_ok=True)
        (tmp_path / "proc" / "meminfo").write_text(f"MemTotal: {digit} kB\n", encoding="utf-8")
        assert read_ram_size(ReplayHost(tmp_path)) is None


def test_regression_digits_of_other_scripts_are_no_counts() -> None:
    # "\d" matched ARABIC-INDIC DIGIT FOUR before the patterns became re.ASCII.
    assert parse_count("\u0664") is None and parse_size("\u0664 GB") is None
