"""End to end: `evo-agent opt-out` and `opt-in` against the registry on 127.0.0.1 (SQLite and
PostgreSQL), through the loopback front end of test_agent_e2e that plays the home's router.

The agent runs as its own processes (root: these verbs need it); "offline" is an endpoint where
nothing listens.  What is checked is what the registry holds afterwards, and what left the unit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evo_agent.delivery import objection, signing
from evo_agent.delivery.outbox import Outbox
from tests.delivery.fixtures import launcher
from tests.registry.conftest import (
    FACTORY,
    HOME_A,
    Clock,
    Server,
    base_report,
    get_device,
)
from tests.registry.test_agent_e2e import VPNID, _agent, _front, _send_now

REPO = Path(__file__).resolve().parents[2]
OFFLINE = "http://127.0.0.1:9"  # nothing listens: the registry cannot be reached
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="opt-out and opt-in need root")


def _run(cfg: Path, *verb: str) -> subprocess.CompletedProcess[str]:
    """Run a verb as the .deb's launcher does, away from the source tree."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(launcher(*verb, "--config", str(cfg)), cwd="/", env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _cycle(cfg: Path) -> dict[str, object]:
    """What the daemon runs at a retry: a cycle that sends what waits."""
    done = subprocess.run([sys.executable, "-m", "evo_agent.delivery", "cycle", "--config",
                           str(cfg)], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    doc: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return doc


def _point(cfg: Path, url: str) -> None:
    text = cfg.read_text()
    start = text.index("https_url = ")
    end = text.index("\n", start)
    cfg.write_text(text[:start] + f'https_url = "{url}"' + text[end:])


def _enrolled_agent(server: Server, tmp_path: Path, url: str) -> Path:
    cfg = _agent(tmp_path, url)
    key = signing.load_or_create(tmp_path / "state")
    enrol = {"vpnid": VPNID, "public_key": signing.public_b64(key),
             "report": base_report(VPNID), "sales_region": ["BE", "NL"], "psu_variant": "230V"}
    reply = server.request("POST", "/v1/enroll", json.dumps(enrol).encode(),
                           {"Content-Type": "application/json",
                            "Authorization": f"Bearer {FACTORY}"})
    assert reply.status == 201, reply.body
    return cfg


def test_opt_out_erases_the_record_and_later_reports_are_refused(server: Server, clock: Clock,
                                                                 tmp_path: Path) -> None:
    state = tmp_path / "state"
    with _front(server.port, HOME_A) as port:
        cfg = _enrolled_agent(server, tmp_path, f"http://127.0.0.1:{port}")
        sent = _send_now(cfg)
        assert sent.returncode == 0, sent.stderr
        assert get_device(server, VPNID).json()["wan_ip"] == HOME_A
        out = _run(cfg, "opt-out")
        assert out.returncode == 0, out.stderr
        assert "the registry has the objection" in out.stdout
        record = get_device(server, VPNID).json()
        assert record["objected"] is True
        assert (record["wan_ip"], record["country"], record["last_seen"], record["reports"]) == \
            (None, None, None, [])
        row = server.app.store.device(VPNID)[0]
        assert (row["netbios_name"], row["lan_ip"]) == (None, None)
        # Opted out: nothing is collected or sent; the unit's own log shows the objection left.
        clock.advance(days=1)
        sent = _send_now(cfg)
        assert sent.returncode == 75 and "opted out" in sent.stderr
        assert server.app.store.counts()["reports"] == 0
        log = [json.loads(x) for x in (state / "sent" / "index.jsonl").read_text().splitlines()]
        assert [e["status"] for e in log] == [201, 200]
        # The registry itself refuses a report of an objected unit with a clear 4xx: the
        # signature is right, the owner's objection stands.
        objection.decide(state, False)  # as if the opt-in marker went, but no withdrawal sent
        (state / "objection.json").write_text(json.dumps(
            {"objects": False, "acknowledged": True, "message": {}}))
        refused = _send_now(cfg)
        assert refused.returncode == 75 and "403" in refused.stderr, refused.stderr
        assert "objected" in refused.stderr
        # opt-in: the withdrawal, then reports are taken again.
        (state / "objection.json").write_text(json.dumps(
            {"objects": True, "acknowledged": True, "message": {}}))
        back = _run(cfg, "opt-in")
        assert back.returncode == 0, back.stderr
        assert get_device(server, VPNID).json()["objected"] is False
        sent = _send_now(cfg)
        assert sent.returncode == 0, sent.stderr
        assert get_device(server, VPNID).json()["wan_ip"] == HOME_A


def test_offline_objection_waits_and_goes_first(server: Server, clock: Clock,
                                                tmp_path: Path) -> None:
    state = tmp_path / "state"
    with _front(server.port, HOME_A) as port:
        online = f"http://127.0.0.1:{port}"
        cfg = _enrolled_agent(server, tmp_path, online)
        assert _send_now(cfg).returncode == 0
        # Offline: a report waits in the outbox, then the owner opts out.
        _point(cfg, OFFLINE)
        assert _send_now(cfg).returncode == 75
        assert len(Outbox(state).pending()) == 1
        out = _run(cfg, "opt-out")
        assert out.returncode == 75 and "waits and goes first" in out.stderr, out.stderr
        assert Outbox(state).pending() == []  # purged at once, not at the next cycle
        assert objection.waiting(state)
        assert get_device(server, VPNID).json()["objected"] is False  # not told yet
        # Back online: the daemon's next cycle sends the objection.
        _point(cfg, online)
        result = _cycle(cfg)
        assert result["ok"] and result["disabled"], result
        assert get_device(server, VPNID).json()["objected"] is True
        assert not objection.waiting(state)
        # opt-in offline, and a report collected meanwhile: when the registry is back, the
        # withdrawal goes before the report (else the registry would refuse the report).
        _point(cfg, OFFLINE)
        back = _run(cfg, "opt-in")
        assert back.returncode == 75, back.stderr
        assert _send_now(cfg).returncode == 75
        assert len(Outbox(state).pending()) == 1
        _point(cfg, online)
        clock.advance(hours=1)
        result = _cycle(cfg)
        assert result["ok"] and len(result["acknowledged"]) == 1, result  # type: ignore[arg-type]
        record = get_device(server, VPNID).json()
        assert record["objected"] is False and len(record["reports"]) == 1
        log = [json.loads(x) for x in (state / "sent" / "index.jsonl").read_text().splitlines()]
        assert [e["status"] for e in log] == [201, 200, 200, 201]


def test_enabled_false_in_the_config_objects_too(server: Server, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with _front(server.port, HOME_A) as port:
        cfg = _enrolled_agent(server, tmp_path, f"http://127.0.0.1:{port}")
        assert _send_now(cfg).returncode == 0
        cfg.write_text(cfg.read_text().replace("[agent]\n", "[agent]\nenabled = false\n"))
        result = _cycle(cfg)
        assert result["disabled"] and result["ok"], result
        assert get_device(server, VPNID).json()["objected"] is True
        # opt-in refuses while the configuration says false (exit 78, names the key).
        back = _run(cfg, "opt-in")
        assert back.returncode == 78 and "agent.enabled" in back.stderr
        cfg.write_text(cfg.read_text().replace("enabled = false\n", ""))
        result = _cycle(cfg)  # the withdrawal, sent by the next cycle
        assert result["ok"], result
        assert get_device(server, VPNID).json()["objected"] is False
        assert not objection.opted_out(state)


def test_send_now_while_opted_out_purges_the_queue(server: Server, tmp_path: Path) -> None:
    """A report queued before `enabled = false` is not sent after a switch back (issue 16, 7)."""
    state = tmp_path / "state"
    with _front(server.port, HOME_A) as port:
        online = f"http://127.0.0.1:{port}"
        cfg = _enrolled_agent(server, tmp_path, online)
        _point(cfg, OFFLINE)
        assert _send_now(cfg).returncode == 75
        queued = Outbox(state).pending()
        assert len(queued) == 1
        cfg.write_text(cfg.read_text().replace("[agent]\n", "[agent]\nenabled = false\n"))
        refused = _send_now(cfg)
        assert refused.returncode == 75 and "opted out" in refused.stderr
        assert Outbox(state).pending() == []
        cfg.write_text(cfg.read_text().replace("enabled = false\n", ""))
        _point(cfg, online)
        assert _send_now(cfg).returncode == 0
    stored = [r["report_id"] for r in get_device(server, VPNID).json()["reports"]]
    assert queued[0].report_id not in stored and len(stored) == 1
