"""The unit under faults, end to end: the agent's own processes against ``evo-registry serve``.

Each test starts the real registry (SQLite) on 127.0.0.1 with a fault proxy in front, an agent
installation with an enrolled key, and runs ``evo-agent`` and the daemon's cycle child as their own
processes.  What the registry stored is read from its database.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evo_agent.delivery.translog import MAX_ENTRIES, TransparencyLog
from tests.delivery.fixtures import mounted_tmpfs
from tests.registry.realunit import (
    REPO,
    VPNID,
    FaultProxy,
    RegistryProcess,
    Unit,
    make_unit,
    public_key_of,
)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    reg = RegistryProcess(tmp_path / "registry")
    yield reg
    reg.stop()


@pytest.fixture
def proxy(registry: RegistryProcess) -> Iterator[FaultProxy]:
    p = FaultProxy(registry.port)
    yield p
    p.stop()


def _enrolled_unit(directory: Path, registry: RegistryProcess, proxy: FaultProxy) -> Unit:
    unit = make_unit(directory, proxy.url)
    registry.enroll(VPNID, public_key_of(unit.state_dir))
    return unit


@pytest.fixture
def unit(tmp_path: Path, registry: RegistryProcess, proxy: FaultProxy) -> Unit:
    return _enrolled_unit(tmp_path / "unit", registry, proxy)


def _outbox(unit: Unit) -> list[str]:
    with contextlib.suppress(FileNotFoundError):
        return sorted(p.name for p in (unit.state_dir / "outbox").iterdir() if p.is_file())
    return []


def _temp_files(state_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(state_dir)) for p in state_dir.rglob(".tmp-*"))


# -- the VPNID --------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["missing", "garbage", "too long", "another unit's"])
def test_a_bad_vpnid_queues_nothing_and_the_fixed_one_delivers_at_the_next_cycle(
        unit: Unit, registry: RegistryProcess, bad: str) -> None:
    if bad == "missing":
        unit.vpnid_file.unlink()
    else:
        unit.vpnid_file.write_bytes({"garbage": b"\x00\x01 not-a-vpnid!\n",
                                     "too long": b"E" * 80 + b"\n",
                                     "another unit's": b"EVO-NOT-ENROLLED-9\n"}[bad])
    code, result, _ = unit.cycle("boot")
    assert code == 75, result
    if bad == "another unit's":  # a valid shape: sent, answered 401 (unknown VPNIDs are not
        # told apart from wrong signatures), kept for a retry
        assert result["status"] == 401 and len(_outbox(unit)) == 1
    else:
        assert "VPNID file" in result["error"] and "\x00" not in result["error"]
        assert _outbox(unit) == []  # nothing that could never be accepted is queued
        doctor = unit.run("doctor", "--json")
        rows = {r["check"]: r for r in json.loads(doctor.stdout)}
        assert doctor.returncode == 1 and rows["VPNID"]["result"] == "fail", rows
    # fixed: the next scheduled cycle delivers a report with the right identity
    unit.vpnid_file.write_text(VPNID + "\n")
    code, result, err = unit.cycle("daily")
    assert code == 0, (result, err)
    [stored] = registry.stored().values()
    assert stored["functional"]["vpnid"] == VPNID and result["acknowledged"] == [
        stored["report_id"]]
    assert _outbox(unit) == []
    if bad == "another unit's":  # the report built for the wrong VPNID is set aside, named
        assert len(os.listdir(unit.state_dir / "outbox" / "rejected")) == 1
        assert "could never accept it" in err
    rows = {r["check"]: r for r in json.loads(unit.run("doctor", "--json").stdout)}
    assert rows["VPNID"] == {"check": "VPNID", "result": "ok", "detail": VPNID, "fix": ""}


# -- the transparency log ---------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["lost", "slow"])
def test_the_log_records_what_left_when_the_answer_was_lost(unit: Unit, registry: RegistryProcess,
                                                            proxy: FaultProxy,
                                                            fault: str) -> None:
    proxy.mode = fault  # the registry stores it; the answer never comes back, or too late
    assert unit.run("send", "--now").returncode == 75
    assert unit.run("send", "--now").returncode == 75  # the waiting one again, then a new one
    proxy.mode = "ok"
    sent = unit.run("send", "--now")
    assert sent.returncode == 0, sent.stderr
    stored = registry.stored()
    assert len(stored) == 3
    log = TransparencyLog(unit.state_dir)
    entries = log.entries()
    assert set(stored) == {e["report_id"] for e in entries}  # every report the registry holds
    for e in entries:  # byte for byte what the registry stored
        data = log.content(e)
        assert data is not None and json.loads(data) == stored[e["report_id"]]
    assert [e["status"] for e in entries] == [None, None, 201, 201]
    listing = unit.run("sent", "20").stdout
    assert listing.count("no answer") == 2, listing


# -- the device key ---------------------------------------------------------------------------
def test_a_missing_device_key_is_not_replaced_and_says_re_enrol(unit: Unit,
                                                                registry: RegistryProcess,
                                                                proxy: FaultProxy) -> None:
    assert unit.run("send", "--now").returncode == 0
    (unit.state_dir / "device.key").unlink()
    sent = unit.run("send", "--now")
    assert sent.returncode == 74, sent.stderr
    assert "re-enrolled" in sent.stderr and "Traceback" not in sent.stderr
    assert not (unit.state_dir / "device.key").exists()  # no key that can never work
    assert proxy.requests == 1 and len(registry.stored()) == 1
    status = json.loads(unit.run("status", "--json").stdout)
    assert any("re-enrolled" in p for p in status["problems"]), status
    assert "PROBLEM" in unit.run("status").stdout
    doctor = unit.run("doctor", "--json")
    rows = {r["check"]: r for r in json.loads(doctor.stdout)}
    assert doctor.returncode == 1 and rows["device key"]["result"] == "fail"
    assert "re-enrol" in rows["device key"]["detail"] + rows["device key"]["fix"]
    # the daemon says it in the journal, and backs off
    (unit.state_dir / "state.json").unlink()  # a new boot: its report is due
    with unit.daemon() as journal:
        doc = _wait_for_failures(unit, 1)
        assert "retry after 1 failed attempt" in doc["next_due"]["reason"]
    assert "report cycle failed" in journal[0] and "re-enrolled" in journal[0]
    assert not (unit.state_dir / "device.key").exists() and proxy.requests == 1


def _wait_for_failures(unit: Unit, count: int) -> dict[str, Any]:
    """Wait until ``status`` (asking the daemon) shows ``count`` consecutive failures."""
    deadline = time.monotonic() + 60
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(json.JSONDecodeError):
            doc = json.loads(unit.run("status", "--json").stdout)
            if doc["consecutive_failures"] == count and doc["daemon"]["running"]:
                return doc
        time.sleep(0.5)
    raise AssertionError(f"status never showed {count} failure(s): {doc}")


# -- the sequence counter ---------------------------------------------------------------------
def test_a_corrupt_sequence_file_recovers_and_never_goes_back(unit: Unit,
                                                              registry: RegistryProcess) -> None:
    for _ in range(2):
        assert unit.run("send", "--now").returncode == 0
    seq = unit.state_dir / "sequence"
    for junk in (b"garbage\n", b"\xff\xfe\x00", b"1\n", None):  # corrupt, binary, old, gone
        if junk is None:
            seq.unlink()
        else:
            seq.write_bytes(junk)
        sent = unit.run("send", "--now")
        assert sent.returncode == 0, sent.stderr
    sequences = sorted(r["sequence"] for r in registry.stored().values())
    assert sequences == [1, 2, 3, 4, 5, 6]
    assert "sequence_backwards" not in registry.events()


# -- a full disk ------------------------------------------------------------------------------
PAGE = os.sysconf("SC_PAGE_SIZE")  # what tmpfs allocates


def _fill(directory: Path) -> None:
    """Fill the file system of ``directory`` to the last byte."""
    n = len(list(directory.glob("filler-*")))
    with (directory / f"filler-{n}").open("wb", buffering=0) as fh, \
            contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 4096)
    with contextlib.suppress(OSError), \
            (directory / f"filler-{n}b").open("wb", buffering=0) as fh:  # a last partial page
        while True:
            fh.write(b"\0")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_a_full_disk_says_so_backs_off_and_loses_nothing(tmp_path: Path,
                                                         registry: RegistryProcess,
                                                         proxy: FaultProxy) -> None:
    with mounted_tmpfs(tmp_path / "unit" / "state", "512k"):
        unit = _enrolled_unit(tmp_path / "unit", registry, proxy)
        assert unit.run("send", "--now").returncode == 0
        proxy.mode = "503"
        assert unit.run("send", "--now").returncode == 75
        [waiting] = _outbox(unit)
        _fill(unit.state_dir)
        proxy.mode = "ok"

        # the waiting report goes (its bytes are in the log already; its line fits in the
        # index's last page) and leaves the outbox
        code, result, err = unit.cycle()
        assert code == 0, (result, err)
        rid = waiting.split("-", 1)[1].removesuffix(".json")
        assert result["acknowledged"] == [rid] and rid in registry.stored()
        assert _outbox(unit) == [] and "Traceback" not in err
        assert TransparencyLog(unit.state_dir).entries()[-1]["report_id"] == rid

        # again, with no room even for the log's line: acknowledged and gone all the same, the
        # missing line said (exit 74), and no torn line left for the next append to glue onto
        for f in unit.state_dir.glob("filler-*"):
            f.unlink()
        proxy.mode = "503"
        assert unit.run("send", "--now").returncode == 75
        [waiting] = _outbox(unit)
        index = unit.state_dir / "sent" / "index.jsonl"
        pad = (-index.stat().st_size) % PAGE  # to make the index end on a page boundary
        if pad:
            pad += PAGE if pad < 16 else 0
            with index.open("ab") as fh:  # a line readers skip (no sha256)
                fh.write(b'{"pad":"' + b"x" * (pad - 11) + b'"}\n')
        lines = index.read_bytes().count(b"\n")
        _fill(unit.state_dir)
        proxy.mode = "ok"
        code, result, err = unit.cycle()
        assert code == 74, (result, err)
        rid = waiting.split("-", 1)[1].removesuffix(".json")
        assert result["acknowledged"] == [rid] and rid in registry.stored()
        assert "transparency log misses a request" in result["state_error"]
        assert "no space left on the file system holding" in result["state_error"]
        assert _outbox(unit) == [] and "Traceback" not in err
        assert index.read_bytes().count(b"\n") == lines and index.read_bytes().endswith(b"\n")

        # a new report cannot be kept: a clear message, exit 74, nothing sent
        _fill(unit.state_dir)
        requests = proxy.requests
        sent = unit.run("send", "--now")
        assert sent.returncode == 74, sent.stderr
        [line] = sent.stderr.strip().splitlines()[-1:]
        assert "no space left on the file system holding" in line and "Traceback" not in \
            sent.stderr
        assert proxy.requests == requests
        assert _temp_files(unit.state_dir) == []

        status = unit.run("status")
        assert "is full" in status.stdout and str(unit.state_dir) in status.stdout, status.stdout
        doctor = unit.run("doctor", "--json")
        rows = {r["check"]: r for r in json.loads(doctor.stdout)}
        assert doctor.returncode == 1 and rows["disk space"]["result"] == "fail"
        assert "is full" in rows["disk space"]["detail"]

        # under the daemon: the failure backs off although state.json cannot take it
        (unit.state_dir / "state.json").unlink()  # a boot report is due
        _fill(unit.state_dir)
        with unit.daemon() as journal:
            doc = _wait_for_failures(unit, 1)
            nxt = doc["next_due"]
            assert "retry after 1 failed attempt" in nxt["reason"]
            assert nxt["time"] > time.time() + 50  # the backoff, not every minute
            assert "no space left" in str(doc["last_attempt"])
            assert proxy.requests == requests
            # space again: the next send goes through the daemon and is delivered
            for f in unit.state_dir.glob("filler-*"):
                f.unlink()
            sent = unit.run("send", "--now")
            assert sent.returncode == 0 and "through the daemon" in sent.stdout, sent.stderr
        assert "Traceback" not in journal[0], journal[0]
        assert _temp_files(unit.state_dir) == []
        assert len(registry.stored()) == 4


# -- messages ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["garbage", "big"])
def test_server_bytes_are_escaped_and_bounded(unit: Unit, proxy: FaultProxy, mode: str) -> None:
    proxy.mode = mode
    sent = unit.run("send", "--now")
    assert sent.returncode == 75
    state = (unit.state_dir / "state.json").read_text()
    status = unit.run("status").stdout
    for text in (sent.stderr, state, status):
        assert not any(c in text for c in "\x00\x01\x1b\x7f"), repr(text)
    assert ("\\x00\\x01" in sent.stderr) if mode == "garbage" else ("\\x1f" in sent.stderr)
    assert max(len(line) for line in sent.stderr.splitlines()) < 600
    assert len(json.loads(state)["attempt_result"]) < 600


# -- SIGKILL at random points, against the real registry -------------------------------------
CYCLES = int(os.environ.get("EVO_CRASH_CYCLES", "200"))


def _queued_ids(unit: Unit) -> set[str]:
    return {name[13:-5] for name in _outbox(unit) if name.endswith(".json")}


@pytest.mark.slow
def test_sigkill_at_random_points_against_the_registry(unit: Unit, registry: RegistryProcess,
                                                       proxy: FaultProxy) -> None:
    """Like tests/delivery/test_crash.py, with the real registry: the cycle child or
    ``send --now`` killed anywhere, right after a report is queued, right after the request
    reached the registry (its answer often lost), or late; then one cycle runs to the end."""
    import random
    import signal
    import statistics

    rng = random.Random(int(os.environ.get("EVO_CRASH_SEED", "20261204")))  # noqa: S311
    base = [sys.executable, "-m"]

    def start(kind: str) -> subprocess.Popen[bytes]:
        argv = base + (["evo_agent.delivery", "cycle", "--trigger", "daily"] if kind == "cycle"
                       else ["evo_agent", "send", "--now"])
        return subprocess.Popen([*argv, "--config", str(unit.config)], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))

    durations = []
    for _ in range(3):
        t0 = time.monotonic()
        assert start("cycle").wait(60) == 0
        durations.append(time.monotonic() - t0)
    span = statistics.median(durations)
    created: set[str] = set()
    killed = 0
    for _ in range(CYCLES):
        before_files, before_requests = _queued_ids(unit), proxy.requests
        proc = start(rng.choice(("cycle", "cycle", "cycle", "send")))
        plan = rng.choice(("anywhere", "queued", "answered", "late"))
        delay = rng.uniform(0, span) if plan == "anywhere" else rng.uniform(span * 0.8,
                                                                            span * 1.2)
        t0 = time.monotonic()
        if plan in ("queued", "answered"):
            while proc.poll() is None and time.monotonic() - t0 < 60:
                if (plan == "queued" and _queued_ids(unit) - before_files) or (
                        plan == "answered" and proxy.requests > before_requests):
                    break
                time.sleep(0.002)
            delay = rng.uniform(0, 0.03)
        try:
            proc.wait(delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed += 1
        created |= _queued_ids(unit)  # queued: the unit made it
        created |= {e["report_id"] for e in TransparencyLog(unit.state_dir).entries()}
    code, result, err = unit.cycle()
    assert code == 0, (result, err)
    log = TransparencyLog(unit.state_dir)
    entries = log.entries()
    created |= {e["report_id"] for e in entries}
    stored = registry.stored()
    lost = created - set(stored)
    sequences = [r["sequence"] for r in stored.values()]
    duplicated = len(sequences) - len(set(sequences))
    backwards = registry.events().count("sequence_backwards")
    print(f"\nreal registry: {CYCLES} runs, {killed} killed; created {len(created)}, "
          f"stored {len(stored)}, lost {len(lost)}, duplicated {duplicated}, "
          f"sequence_backwards {backwards}, requests {proxy.requests}, "
          f"log lines {len(entries)}")
    assert not lost and duplicated == 0 and backwards == 0
    assert set(stored) <= created  # nothing stored that the unit did not make
    logged = {e["report_id"] for e in entries}  # the log shows all it holds (its last lines)
    assert logged <= set(stored) and (len(entries) == MAX_ENTRIES or logged == set(stored))
    for e in entries:
        data = log.content(e)
        assert data is not None and json.loads(data) == stored[e["report_id"]]
    assert _outbox(unit) == [] and _temp_files(unit.state_dir) == []
    assert killed > CYCLES // 3 and len(stored) > CYCLES // 8
