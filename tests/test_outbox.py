"""The outbox on a real filesystem: durable numbering, collapse, acknowledgement, recovery."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from evo_agent.delivery.outbox import MAX_MANUFACTURING, Outbox, atomic_write, writer_lock
from evo_agent.delivery.translog import TransparencyLog
from evo_agent.errors import StateError


def _report(trigger: str = "daily") -> dict[str, object]:
    return {"schema": "evo-inventory/1", "trigger": trigger, "functional": {"vpnid": "EVO-1"}}


def test_enqueue_numbers_durably_and_writes_exact_bytes(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    a = box.enqueue(_report("boot"))
    assert a.sequence == 1 and a.path.read_bytes() == a.body
    assert json.loads(a.body)["report_id"] == a.report_id
    assert (tmp_path / "sequence").read_text() == "1\n"
    assert oct(a.path.stat().st_mode & 0o777) == "0o640"
    box.acknowledge(a)
    b = box.enqueue(_report())
    assert b.sequence == 2 and b.report_id != a.report_id
    assert [e.report_id for e in box.pending()] == [b.report_id]
    box.acknowledge(b)
    box.acknowledge(b)  # twice is harmless (a crash between ack and unlink)
    assert box.pending() == []


def test_periodic_reports_collapse_manufacturing_kept(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    m = box.enqueue(_report("manufacturing"))
    for trig in ("boot", "daily", "manual", "daily"):
        last = box.enqueue(_report(trig))
    assert [e.report_id for e in box.pending()] == [m.report_id, last.report_id]
    for _ in range(MAX_MANUFACTURING + 3):
        box.enqueue(_report("manufacturing"))
    kinds = [e.kind for e in box.pending()]
    assert kinds.count("manufacturing") == MAX_MANUFACTURING and kinds.count("periodic") == 1


def test_lost_counter_never_reuses_a_number_still_queued(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.enqueue(_report("manufacturing"))
    box.enqueue(_report("manufacturing"))
    (tmp_path / "sequence").unlink()
    assert box.enqueue(_report()).sequence == 3


def test_corrupt_or_old_counter_continues_after_the_highest_number_seen(tmp_path: Path) -> None:
    """A corrupt counter does not stop delivery, and numbering never goes back: the registry
    takes a lower number for a copied identity (sequence_backwards)."""
    box = Outbox(tmp_path)
    for _ in range(4):
        box.acknowledge(box.enqueue(_report()))  # acknowledged: gone from the outbox
    log = TransparencyLog(tmp_path)
    log.record(b"{}", b"gz", time=1.0, path="https", url="http://127.0.0.1:1", status=201,
               report_id="0" * 8, sequence=4)
    expected = 5
    for junk in (b"garbage\n", b"\xff\x00\n", b"1\n", b""):  # corrupt, not ASCII, old, lost
        (tmp_path / "sequence").write_bytes(junk)
        nxt = box.enqueue(_report())
        assert nxt.sequence == expected, junk
        box.acknowledge(nxt)
        log.record(b"{}", b"gz", time=1.0, path="https", url="http://127.0.0.1:1", status=201,
                   report_id=nxt.report_id, sequence=expected)
        expected += 1
    # a report refused for good still holds its number
    aside = tmp_path / "outbox" / "rejected"
    aside.mkdir()
    (aside / f"{20:012d}-{'0' * 8}-0000-0000-0000-{'0' * 12}.json").write_text("{}")
    (tmp_path / "sequence").write_text("oops")
    assert box.enqueue(_report()).sequence == 21


def test_recovery_removes_temp_files_and_sets_aside_corrupt_ones(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    good = box.enqueue(_report())
    (box.dir / ".tmp-0000").write_bytes(b'{"half')
    bad = box.dir / "000000000099-00000000-0000-4000-8000-000000000000.json"
    bad.write_bytes(b"\x00\x00\x00")  # what a disk fault (not a crash) can leave
    assert box.recover() == 1
    assert [e.report_id for e in box.pending()] == [good.report_id]
    assert (box.dir / "corrupt" / bad.name).read_bytes() == b"\x00\x00\x00"


def test_purge_for_opt_out(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.enqueue(_report("manufacturing"))
    box.enqueue(_report())
    assert box.purge() == 2 and box.pending() == []


def test_atomic_write_replaces_whole(tmp_path: Path) -> None:
    p = tmp_path / "f"
    atomic_write(p, b"one")
    atomic_write(p, b"two", mode=0o600)
    assert p.read_bytes() == b"two"
    assert [x.name for x in tmp_path.iterdir()] == ["f"]


def test_writer_lock_is_exclusive(tmp_path: Path) -> None:
    with writer_lock(tmp_path):
        pid = os.fork()
        if pid == 0:  # another process must not get it
            try:
                with writer_lock(tmp_path, wait=False):
                    os._exit(1)
            except StateError:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
    with writer_lock(tmp_path, wait=False):
        pass


def test_root_gives_what_it_creates_to_the_state_dirs_owner(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)
    old = os.umask(0o077)  # as the unit runs
    try:
        box = Outbox(state)
        with writer_lock(state):
            box.enqueue(_report())
        atomic_write(state / "state.json", b"{}")
    finally:
        os.umask(old)
    found = {p.relative_to(state).as_posix(): (p.stat().st_uid, p.stat().st_mode & 0o777)
             for p in state.rglob("*")}
    assert all(uid == 65534 for uid, _ in found.values()), found
    assert found["outbox"][1] == 0o750 and found["state.json"][1] == 0o640
    assert found["lock"][1] == 0o600
