"""DMI: the motherboard, the CPU and the RAM modules, from the firmware's SMBIOS table.

The published policy sends the motherboard's brand, model and serial, the CPU (model, cores,
threads), the RAM size and the RAM modules' types.  All of it is in the SMBIOS table, and
``dmidecode`` is the reference decoder of that table: the collector runs plain ``dmidecode`` once
(so a capture holds its full text as ``commands/dmidecode.txt``) and parses that text with
:mod:`collectors._dmidecode`.

dmidecode needs root (the table in ``/sys/firmware/dmi/tables`` is mode 0400), may be missing, or
may find no table (some ARM boards, containers).  Then the collector falls back on what the kernel
exports to everyone: ``/sys/class/dmi/id/*`` for the board, system, chassis and BIOS (the serials
there are root-only too), ``/proc/cpuinfo`` for the CPU, and the memory blocks for the RAM size;
there is no module list then.  ``/proc/cpuinfo`` also fills the CPU when the table has no
processor record, one too old (SMBIOS < 2.5) to give core and thread counts, or one whose Version
is a placeholder ("To Be Filled By O.E.M.", "Not Specified", "Unknown").

It collects more than leaves the device (system and chassis serials, UUID, module serials and
asset tags, OEM strings): the privacy filter (``config/policy.toml``) drops them, and tests plant
canaries there to prove it.  Only the standard library is imported: the agent must start fast.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from collectors._dmidecode import parse, summarize, usable
from evo_agent.collector import Collector, Raw
from evo_agent.errors import HostReadError, NotCaptured, PartialData
from evo_agent.hostroot import Host
from evo_agent.policy import is_placeholder

LOG = logging.getLogger(__name__)

DMI_ID = "/sys/class/dmi/id"
#: Raw keys read from /sys/class/dmi/id; the kernel's file names are the keys' names.
SYSFS_KEYS = (
    "board_vendor", "board_name", "board_serial", "board_version",
    "sys_vendor", "product_name", "product_version", "product_serial", "product_uuid",
    "chassis_vendor", "chassis_serial", "chassis_asset_tag",
    "bios_vendor", "bios_version", "bios_date",
)
CPU_KEYS = ("cpu_model", "cpu_cores", "cpu_threads", "cpu_sockets")


class Dmi(Collector):
    name = "dmi"
    description = "motherboard, CPU and RAM modules (dmidecode, else /sys/class/dmi/id)"
    fields = {
        "board_vendor": "motherboard manufacturer (SMBIOS type 2)",
        "board_name": "motherboard product name",
        "board_serial": "motherboard serial number",
        "board_version": "motherboard version (never sent)",
        "sys_vendor": "system manufacturer, type 1 (never sent)",
        "product_name": "system product name (never sent)",
        "product_version": "system version (never sent)",
        "product_serial": "system serial number (never sent)",
        "product_uuid": "system UUID (never sent)",
        "chassis_vendor": "chassis manufacturer, type 3 (never sent)",
        "chassis_serial": "chassis serial number (never sent)",
        "chassis_asset_tag": "chassis asset tag (never sent)",
        "bios_vendor": "BIOS vendor, type 0 (never sent)",
        "bios_version": "BIOS version (never sent)",
        "bios_date": "BIOS release date (never sent)",
        "cpu_model": "CPU model name of the first enabled socket (type 4 Version; /proc/cpuinfo's "
                     "when that is missing or a placeholder)",
        "cpu_cores": "CPU cores summed over the enabled sockets",
        "cpu_threads": "CPU threads summed over the enabled sockets",
        "cpu_sockets": "number of enabled CPU sockets (never sent)",
        "ram_total_bytes": "RAM size: the installed modules' sizes added up",
        "memory_modules": "installed RAM modules (type 17; empty slots left out)",
        "oem_strings": "OEM strings, type 11 (never sent)",
        "source": "dmidecode or sysfs: where the board, system and BIOS values come from "
                  "(CPU and RAM size may come from /proc and /sys when the table lacks them)",
    }

    def collect(self, host: Host) -> Raw:
        raw: dict[str, Any] | None = None
        text, failure = self._dmidecode(host)
        if text is not None:
            records = parse(text)
            if usable(records):
                raw = summarize(records)
                raw["source"] = "dmidecode"
            else:
                LOG.debug("dmidecode gave no usable SMBIOS table; reading /sys/class/dmi/id")
        if raw is None:
            raw = read_sysfs(host)
        missing = [key for key in CPU_KEYS if _cpu_value_missing(key, raw.get(key))]
        if missing:
            cpu = read_cpuinfo(host)
            for key in missing:
                # A placeholder the kernel cannot replace stays as the firmware gave it: the
                # privacy filter nulls it, and the raw value shows what the table said.
                if cpu.get(key) is not None:
                    raw[key] = cpu[key]
        if raw.get("ram_total_bytes") is None:
            raw["ram_total_bytes"] = read_ram_size(host)
        if failure is not None:
            # What the fallback gave still counts, but the collector must not say "ok": the
            # board may be unnamed, the CPU named by the kernel and the RAM modules unlisted.
            got = "board from /sys/class/dmi/id" if raw.get("source") else "no board data"
            raise PartialData(raw, "dmidecode_unavailable",
                              f"{failure}; {got}, CPU from /proc/cpuinfo, no RAM modules")
        return raw

    def _dmidecode(self, host: Host) -> tuple[str | None, str | None]:
        """Return the text of plain ``dmidecode``, or None and why it could not run.

        A table that dmidecode reads but finds unusable (some ARM boards, containers), or a
        replayed tree without commands, is not a failure: the sysfs fallback is then the normal
        path.  Not installed, not permitted (not root, no CAP_DAC_READ_SEARCH), failed or timed
        out is one.
        """
        try:
            out = host.run(["dmidecode"], timeout=self.timeout)
        except NotCaptured as exc:
            # a replayed tree of sysfs files only: the fallback is what it can give
            LOG.debug("dmidecode: %s", exc)
            return None, None
        except HostReadError as exc:
            LOG.debug("dmidecode unavailable: %s", exc)
            return None, str(exc)
        return out.decode("utf-8", errors="replace"), None


def _cpu_value_missing(key: str, value: Any) -> bool:
    """Return whether a CPU value from the table is absent or says nothing."""
    if value is None:
        return True
    if key == "cpu_model":
        # Firmware leaves type 4's Version unset as "Not Specified" (glpi-agent linux-2.6,
        # rhel-4.6), "None" (windows-hyperV-2019), "Unknown" (linuxhw aml-s905x-cc) or zeros
        # (glpi-agent vmware): /proc/cpuinfo's "model name" is the CPU's own brand string.
        return not isinstance(value, str) or is_placeholder(value)
    return not isinstance(value, int) or value <= 0


def read_sysfs(host: Host) -> dict[str, Any]:
    """Return the DMI values the kernel exports in /sys/class/dmi/id (serials need root)."""
    raw: dict[str, Any] = {key: host.read_attr(f"{DMI_ID}/{key}") or None for key in SYSFS_KEYS}
    raw.update({key: None for key in CPU_KEYS})
    raw["ram_total_bytes"] = None
    raw["memory_modules"] = []
    raw["oem_strings"] = []
    raw["source"] = "sysfs" if any(raw[key] for key in SYSFS_KEYS) else None
    return raw


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """Return cpu_model, cpu_cores, cpu_threads and cpu_sockets from /proc/cpuinfo's text."""
    model: str | None = None
    threads = 0
    cores: set[tuple[str, str]] = set()
    packages: set[str] = set()
    physical: str | None = None
    core: str | None = None

    def close() -> None:
        if physical is not None and core is not None:
            cores.add((physical, core))

    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if not line.strip():
                close()
                physical = core = None
            continue
        key, value = key.strip(), value.strip()
        # Each logical CPU opens with "processor" (x86, arm) or "cpu number" (s390x, whose
        # "processor N:" lines are a summary; ghw's linux-s390x snapshot).
        if key in ("processor", "cpu number"):
            close()
            physical = core = None
            threads += 1
        elif key == "model name" and model is None and value:
            model = value
        elif key == "physical id":
            physical = value
            packages.add(value)
        elif key == "core id":
            core = value
    close()
    # Without "physical id"/"core id" (arm64, s390x, some hypervisors) the core count is unknown:
    # counting processors instead would double it on SMT machines.
    return {
        "cpu_model": model,
        "cpu_cores": len(cores) or None,
        "cpu_threads": threads or None,
        "cpu_sockets": len(packages) or None,
    }


def read_cpuinfo(host: Host) -> dict[str, Any]:
    """Return the CPU values of /proc/cpuinfo, all None when it cannot be read."""
    try:
        text = host.read_text("/proc/cpuinfo")
    except OSError:
        return {key: None for key in CPU_KEYS}
    return parse_cpuinfo(text)


MEMORY_BLOCKS = "/sys/devices/system/memory"
# ASCII digits only: str.isdigit() accepts "²" and "፩", which int() refuses (a crash that
# tests/test_dmi_fuzz.py keeps a regression test for).
_MEMTOTAL = re.compile(r"^MemTotal:[ \t]*([0-9]{1,15})[ \t]*kB[ \t]*$", re.MULTILINE)
_BLOCK = re.compile(r"^memory[0-9]{1,9}$")


def read_ram_size(host: Host) -> int | None:
    """Return the RAM size when the SMBIOS table does not give it, or None.

    The memory blocks of /sys/devices/system/memory (the kernel's hot-plug sections, 128 MiB to
    2 GiB each) cover every range of RAM the firmware reported, so their count times their size is
    the installed size up to one block (8 GiB of DIMMs: 64 or 65 blocks of 128 MiB).  MemTotal of
    /proc/meminfo is only the fallback: it leaves out what the firmware, the kernel image and the
    crash kernel reserve, so it reads some hundred MiB below the installed size and changes with
    the kernel version, which would make the same machine's RAM size drift between reports.
    """
    size_text = host.read_attr(f"{MEMORY_BLOCKS}/block_size_bytes")
    if size_text:
        try:
            block = int(size_text, 16)
        except ValueError:
            block = 0
        count = sum(
            1 for name in host.listdir_or_empty(MEMORY_BLOCKS)
            if _BLOCK.match(name)
        )
        if block > 0 and count:
            return block * count
    try:
        meminfo = host.read_text("/proc/meminfo", 64 * 1024)
    except OSError:
        return None
    m = _MEMTOTAL.search(meminfo)
    if m:
        kib = int(m.group(1))
        return kib * 1024 if kib > 0 else None
    return None
