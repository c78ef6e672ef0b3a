"""The outbox on a real filesystem: durable numbering, collapse, acknowledgement, recovery."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from evo_agent.errors import StateError
from evo_agent.outbox import MAX_MANUFACTURING, Outbox, atomic_write, writer_lock


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
    (tmp_path / "sequence").write_text("garbage")
    with pytest.raises(StateError, match="not a number"):
        box.enqueue(_report())


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
