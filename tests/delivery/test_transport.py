"""Delivery cycles against the registry test server on 127.0.0.1 over verified TLS."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from evo_agent.delivery import signing, transport
from evo_agent.delivery.cycle import run_cycle
from evo_agent.delivery.outbox import Outbox
from evo_agent.delivery.schedule import BACKOFF_MIN, Now, load_state
from evo_agent.delivery.translog import TransparencyLog
from evo_agent.errors import DeliveryError
from tests.delivery.conftest import VPNID, Agent, write_config
from tests.delivery.pki import Pki
from tests.delivery.server import RegistryServer


def _clock() -> Now:
    return Now("test-boot", time.monotonic(), time.time())


def test_signed_delivery_is_verifiable_and_logged(agent: Agent, server: RegistryServer) -> None:
    result = run_cycle(agent.load(), trigger="boot", clock=_clock)
    assert result.ok and result.path == "https" and result.status == 201
    [rid] = result.acknowledged
    stored = server.registry.stored[rid]
    assert stored["functional"]["vpnid"] == VPNID and stored["trigger"] == "boot"
    assert stored["sequence"] == 1
    assert Outbox(agent.state_dir).pending() == []
    key = agent.state_dir / "device.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    # the log holds the exact bytes; their gzip is the wire body and the signature verifies on it
    [entry] = TransparencyLog(agent.state_dir).entries()
    data = TransparencyLog(agent.state_dir).content(entry)
    assert data is not None and json.loads(data) == stored
    assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["status"] == 201
    wire = transport.gzip_body(data)
    assert entry["wire_sha256"] == hashlib.sha256(wire).hexdigest()
    pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(agent.public_key()))
    priv = signing.load(key)
    pub.verify(base64.b64decode(signing.sign(priv, wire)), wire)
    state = load_state(agent.state_dir / "state.json")
    assert state.success_path == "https" and state.failures == 0


def test_unenrolled_key_is_refused_and_kept(agent: Agent, server: RegistryServer) -> None:
    other = signing.load_or_create(agent.state_dir.parent / "other")  # some other device's key
    server.registry.enroll(VPNID, signing.public_b64(other))
    result = run_cycle(agent.load(), trigger="boot", clock=_clock)
    assert not result.ok and result.status == 401
    assert len(Outbox(agent.state_dir).pending()) == 1  # kept for after re-enrolment


@pytest.mark.parametrize("mode", ["500", "503", "429", "slow", "reset", "down"])
def test_failures_back_off_then_one_delivery(agent: Agent, server: RegistryServer,
                                             mode: str) -> None:
    reg = server.registry
    reg.mode, reg.delay, reg.retry_after = mode, 5.0, "900"
    cfg = agent.load()
    if mode == "down":
        server.stop()
        cfg.values["delivery"]["https_url"] = server.url  # nothing listens there any more
    started = time.monotonic()
    result = run_cycle(cfg, trigger="boot", clock=_clock)
    took = time.monotonic() - started
    assert not result.ok and result.acknowledged == []
    assert took < cfg.values["delivery"]["total_timeout"] + 2  # bounded by the total timeout
    assert len(reg.requests) <= 1  # one try per cycle: no retry storm inside a cycle
    [waiting] = Outbox(agent.state_dir).pending()
    state = load_state(agent.state_dir / "state.json")
    wait = (state.retry_boottime or 0) - time.monotonic()
    assert state.failures == 1 and wait >= BACKOFF_MIN - took - 1
    if mode == "429":
        assert wait >= 900 - took - 1 and result.retry_after == 900
    if mode == "down":
        return
    reg.mode = "ok"
    # a second failure backs off further; then, healthy again, the waiting report goes once
    result = run_cycle(cfg, trigger=None, clock=_clock)
    assert result.ok and result.acknowledged == [waiting.report_id]
    assert reg.accepted[waiting.report_id] == 1 and len(reg.stored) == 1
    assert Outbox(agent.state_dir).pending() == []


def test_wrong_certificate_is_refused(agent: Agent, server: RegistryServer, other_pki: Pki,
                                      tmp_path: Path) -> None:
    cfg_file = write_config(tmp_path / "other.toml", agent.state_dir, agent.host_root, server.url,
                            ca=other_pki.ca_pem)
    from evo_agent.config import load

    result = run_cycle(load(cfg_file), trigger="boot", clock=_clock)
    assert not result.ok and "certificate not trusted" in (result.error or "")
    assert server.registry.requests == [] and server.registry.stored == {}
    assert len(Outbox(agent.state_dir).pending()) == 1


def test_lost_acknowledgement_is_a_harmless_duplicate(agent: Agent, server: RegistryServer) -> None:
    box = Outbox(agent.state_dir)
    cfg = agent.load()
    from evo_agent.delivery.cycle import collect_report

    entry = box.enqueue(collect_report(cfg, "daily"))
    # the registry stored it, but the answer never came back: the file is still queued
    backup = entry.path.read_bytes()
    assert run_cycle(cfg, trigger=None, clock=_clock).ok
    entry.path.write_bytes(backup)
    result = run_cycle(cfg, trigger=None, clock=_clock)
    assert result.ok and result.status == 200
    assert server.registry.accepted[entry.report_id] == 1
    assert server.registry.duplicates[entry.report_id] == 1
    assert box.pending() == []


def test_plain_http_refused_outside_vpn_and_loopback() -> None:
    with pytest.raises(DeliveryError, match="plain http is refused"):
        transport.choose({"https_url": "http://registry.example.net", "vpn_url": ""}, "https")
    assert transport.choose({"https_url": "http://127.0.0.1:9", "vpn_url": ""}, "auto")[0].path \
        == "https"
    with pytest.raises(DeliveryError, match="no VPN configured"):
        transport.choose({"https_url": "", "vpn_url": ""}, "vpn")
    with pytest.raises(DeliveryError, match="down or absent"):
        transport.choose({"vpn_url": "http://127.0.0.1:9", "vpn_interface": "evotest0"}, "vpn")


def test_vpn_check_follows_the_kernels_route() -> None:
    # `lo` is up, and the route to 127.0.0.1 goes through it: so the route check says yes for lo
    ok, why = transport.vpn_state("http://127.0.0.1:9", "lo")
    assert ok, why
    # ... and no for an address that the main table routes elsewhere (or not at all)
    ok, why = transport.vpn_state("http://192.0.2.1:9", "lo")
    assert not ok and "does not go through lo" in why


def test_opt_out_deletes_waiting_reports_and_sends_only_the_objection(
        agent: Agent, server: RegistryServer, tmp_path: Path) -> None:
    server.registry.mode = "503"
    run_cycle(agent.load(), trigger="boot", clock=_clock)
    assert len(Outbox(agent.state_dir).pending()) == 1
    server.registry.mode = "ok"
    text = agent.config.read_text().replace("[agent]", "[agent]\nenabled = false")
    agent.config.write_text(text)
    result = run_cycle(agent.load(), trigger="daily", clock=_clock)
    assert result.disabled and result.ok  # the objection was acknowledged
    assert Outbox(agent.state_dir).pending() == [] and server.registry.stored == {}
    # One request after the opt-out: the signed objection, no report.
    assert [r[1] for r in server.registry.requests if r[1] != 503] == [200]
    assert [m["objects"] for m in server.registry.objections] == [True]
    assert os.listdir(agent.state_dir / "outbox") == []
    # The next cycles send nothing at all.
    run_cycle(agent.load(), trigger="daily", clock=_clock)
    assert len(server.registry.requests) == 2


@pytest.mark.parametrize("status", ["400", "409", "415"])
def test_refused_reports_are_set_aside_bounded(agent: Agent, server: RegistryServer,
                                               status: str) -> None:
    from evo_agent.delivery.outbox import MAX_SET_ASIDE

    server.registry.mode = status  # e.g. a report the registry's schema refuses: never retried
    cfg = agent.load()
    for _ in range(MAX_SET_ASIDE + 3):
        result = run_cycle(cfg, trigger="daily", clock=_clock)
        assert not result.ok and result.status == int(status)
        assert Outbox(agent.state_dir).pending() == []  # set aside, does not block the queue
    rejected = sorted((agent.state_dir / "outbox" / "rejected").iterdir())
    assert len(rejected) == MAX_SET_ASIDE
    assert rejected[-1].name.startswith(f"{MAX_SET_ASIDE + 3:012d}-")  # the newest kept
    server.registry.mode = "ok"
    assert run_cycle(cfg, trigger="daily", clock=_clock).ok


def test_a_retry_sends_the_waiting_report_not_a_second_one(agent: Agent,
                                                           server: RegistryServer) -> None:
    server.registry.mode = "503"
    cfg = agent.load()
    failed = run_cycle(cfg, trigger="boot", clock=_clock)
    [waiting] = Outbox(agent.state_dir).pending()
    assert failed.queued == waiting.report_id
    server.registry.mode = "ok"
    retry = run_cycle(cfg, trigger="boot", clock=_clock)  # what the daemon runs at the retry
    assert retry.ok and retry.acknowledged == [waiting.report_id] and retry.queued is None
    assert list(server.registry.stored) == [waiting.report_id]
    manual = run_cycle(cfg, trigger="manual", clock=_clock)  # send --now: always a fresh one
    assert manual.ok and manual.queued and len(server.registry.stored) == 2
