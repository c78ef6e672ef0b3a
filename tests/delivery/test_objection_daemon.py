"""opt-out and opt-in with the real daemon (a subprocess), against the registry test server."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from evo_agent.delivery import objection
from evo_agent.delivery.outbox import Outbox
from tests.delivery.conftest import Agent
from tests.delivery.server import RegistryServer
from tests.delivery.test_daemon import _cli, run_daemon, wait_for

__all__ = ["run_daemon"]  # the fixture, used by name
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="opt-out and opt-in need root")


def test_objection_decided_offline_goes_when_the_daemon_starts(
        agent: Agent, server: RegistryServer, run_daemon: object,
        capsys: pytest.CaptureFixture[str]) -> None:
    server.registry.mode = "503"
    code, _ = _cli(capsys, "send", "--now", "--config", str(agent.config))
    assert code == 75 and len(Outbox(agent.state_dir).pending()) == 1
    code = _cli(capsys, "opt-out", "--config", str(agent.config))[0]
    assert code == 75 and objection.waiting(agent.state_dir)
    assert Outbox(agent.state_dir).pending() == []  # at once, not at the next cycle
    server.registry.mode = "ok"
    proc, notify, log = run_daemon(agent.config)  # type: ignore[operator]
    notify.collect(10, until="READY=1")
    wait_for(lambda: len(server.registry.objections) == 1)
    assert server.registry.objections[0]["objects"] is True
    assert server.registry.objections[0]["vpnid"] == "EVO-TEST-0042"
    time.sleep(1.5)
    assert server.registry.stored == {}  # opted out: no boot report either
    assert not objection.waiting(agent.state_dir)
    code, out = _cli(capsys, "status", "--config", str(agent.config))
    assert "OPTED OUT" in out
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 0, log.read_text()


def test_opt_out_and_in_while_the_daemon_runs(agent: Agent, server: RegistryServer,
                                              run_daemon: object,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    proc, notify, log = run_daemon(agent.config)  # type: ignore[operator]
    notify.collect(10, until="READY=1")
    wait_for(lambda: len(server.registry.stored) == 1)  # the boot report
    code, out = _cli(capsys, "opt-out", "--config", str(agent.config))
    assert code == 0 and "the registry has the objection" in out
    wait_for(lambda: log.read_text().count("configuration reloaded") >= 1)  # SIGHUP
    code, _ = _cli(capsys, "send", "--now", "--config", str(agent.config))
    assert code == 75  # the daemon refuses: opted out
    status = json.loads(_cli(capsys, "status", "--json", "--config", str(agent.config))[1])
    assert status["enabled"] is False
    code, out = _cli(capsys, "opt-in", "--config", str(agent.config))
    assert code == 0 and "the registry has the withdrawal" in out
    assert json.loads(_cli(capsys, "status", "--json", "--config",
                           str(agent.config))[1])["enabled"] is True
    wait_for(lambda: log.read_text().count("configuration reloaded") >= 2)  # the daemon too
    assert [m["objects"] for m in server.registry.objections] == [True, False]
    seqs = [m["sequence"] for m in server.registry.objections]
    assert seqs[0] > 1 and seqs[1] > seqs[0]  # after the boot report's, in order
    code, _ = _cli(capsys, "send", "--now", "--config", str(agent.config))
    assert code == 0 and len(server.registry.stored) == 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 0, log.read_text()
