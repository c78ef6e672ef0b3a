"""The unit under faults the registry does not take part in: the schedule after a failed manual
send under the daemon, temporary files of interrupted writes, and the messages of bad input."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evo_agent.delivery.cycle import run_cycle
from evo_agent.delivery.schedule import BACKOFF_MIN, DAY
from tests.delivery.conftest import Agent
from tests.delivery.fixtures import mounted_tmpfs
from tests.delivery.server import RegistryServer

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO))


def _evo(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evo_agent", *argv], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def daemon(agent: Agent) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-m", "evo_agent", "daemon", "--config",
                             str(agent.config)], cwd=REPO, env=ENV, stderr=subprocess.DEVNULL)
    yield proc
    proc.terminate()
    proc.wait(30)


def _status(agent: Agent) -> dict[str, Any]:
    return dict(json.loads(_evo("status", "--json", "--config", str(agent.config)).stdout))


def _wait(pred: Any, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


@pytest.mark.slow
def test_a_failed_manual_send_under_the_daemon_is_retried_at_the_backoff(
        agent: Agent, server: RegistryServer, daemon: subprocess.Popen[bytes]) -> None:
    reg = server.registry
    _wait(lambda: len(reg.stored) == 1, 30)  # this boot's report
    reg.mode = "503"
    sent = _evo("send", "--now", "--config", str(agent.config))
    assert sent.returncode == 75 and "through the daemon" in sent.stderr, sent.stderr
    doc = _status(agent)
    assert doc["outbox_depth"] == 1 and doc["consecutive_failures"] == 1
    nxt = doc["next_due"]
    assert "retry after 1 failed attempt" in nxt["reason"], nxt
    assert nxt["time"] < time.time() + 2 * BACKOFF_MIN  # not 24 h after the boot report
    reg.mode = "ok"
    # the retry sends the waiting manual report and collects nothing new
    _wait(lambda: len(reg.stored) == 2, 2 * BACKOFF_MIN + 30)
    assert sorted(r["trigger"] for r in reg.stored.values()) == ["boot", "manual"]
    _wait(lambda: _status(agent)["consecutive_failures"] == 0, 10)
    doc = _status(agent)
    assert doc["outbox_depth"] == 0 and doc["next_due"]["trigger"] == "daily"
    assert doc["next_due"]["time"] > time.time() + DAY - 60
    assert len(reg.stored) == 2


def test_temporary_files_of_interrupted_writes_are_removed(agent: Agent,
                                                           server: RegistryServer) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "60"])
    try:
        sd = agent.state_dir
        (sd / "sent").mkdir(parents=True, exist_ok=True)
        stale = [sd / f".tmp-state.json-{dead.pid}", sd / f".tmp-sequence-{dead.pid}",
                 sd / "sent" / f".tmp-{'a' * 64}.json-{dead.pid}",
                 sd / "sent" / f".tmp-index.jsonl-{dead.pid}"]
        for p in stale:
            p.write_bytes(b"half")
        busy = sd / f".tmp-local.json-{alive.pid}"  # a refresh writing now, without the lock
        busy.write_bytes(b"in progress")
        assert run_cycle(agent.load(), trigger="boot").ok
        assert [p for p in stale if p.exists()] == []
        assert busy.exists()
    finally:
        alive.kill()
        alive.wait()


def test_the_daemon_names_a_bad_config_file_once(agent: Agent, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(agent.config.read_text() + "[collectors]\ntimeout = \"soon\"\n")
    proc = _evo("daemon", "--config", str(bad), timeout=60)
    assert proc.returncode == 78, proc.stderr
    assert proc.stderr.count("bad.toml") == 1, proc.stderr
    assert "timeout" in proc.stderr


def test_a_directory_given_as_config_is_named_as_such(tmp_path: Path) -> None:
    proc = _evo("status", "--config", str(tmp_path))
    assert proc.returncode == 78
    assert "is a directory" in proc.stderr and "no such file" not in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_a_read_only_state_filesystem_is_named_not_blamed_on_root(
        agent: Agent, server: RegistryServer) -> None:
    key = (agent.state_dir / "device.key").read_bytes()  # enrolled; the mount hides it
    with mounted_tmpfs(agent.state_dir, "1m"):
        (agent.state_dir / "device.key").write_bytes(key)
        (agent.state_dir / "device.key").chmod(0o600)
        assert run_cycle(agent.load(), trigger="boot").ok  # key, lock, state: all there
        subprocess.run(["mount", "-o", "remount,ro", str(agent.state_dir)], check=True)
        sent = _evo("send", "--now", "--config", str(agent.config))
        assert sent.returncode == 74, sent.stderr
        assert "mounted read-only" in sent.stderr and "need root" not in sent.stderr
        assert "Traceback" not in sent.stderr
        doctor = _evo("doctor", "--json", "--config", str(agent.config))
        rows = {r["check"]: r for r in json.loads(doctor.stdout)}
        assert doctor.returncode == 1 and "read-only" in rows["disk space"]["detail"]
        assert len(server.registry.stored) == 1
        proc = _evo("daemon", "--config", str(agent.config), timeout=60)
        assert proc.returncode == 74 and "mounted read-only" in proc.stderr, proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_the_daemons_backoff_grows_when_state_json_cannot_be_written(
        agent: Agent, tmp_path: Path) -> None:
    """With state.json unwritable (the disk full, here read-only), the failures still count and
    the backoff still grows: it is kept in the daemon's memory."""
    from evo_agent.delivery.daemon import Daemon, Settings
    from evo_agent.delivery.schedule import Now

    random.seed(16)  # the daemon's jitter: the growth below is then the same on every run
    clock = [Now("boot-1", 1000.0, 1.8e9)]
    d = Daemon(str(agent.config), clock=lambda: clock[0])
    with mounted_tmpfs(agent.state_dir, "1m"):
        d.settings = Settings(True, agent.state_dir, str(tmp_path / "sock"), "", "EVO-1", 10.0,
                              10.0)
        (agent.state_dir / "lock").touch()
        subprocess.run(["mount", "-o", "remount,ro", str(agent.state_dir)], check=True)
        gaps = []
        for n in range(1, 6):
            d.timetable.record_failure(d.settings, "disk full (test)")
            due, now = d._due()
            assert d.timetable.state(d.settings).failures == n and due.retry
            gaps.append(due.at - now.boottime)
            clock[0] = Now("boot-1", due.at, 1.8e9 + due.at)
        assert not (agent.state_dir / "state.json").exists()
    assert gaps[0] >= BACKOFF_MIN and max(gaps) > 2 * BACKOFF_MIN, gaps
    assert d.status()["unsaved_state"]["failures"] == 5
