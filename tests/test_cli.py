"""The evo-agent command line: verbs, outputs, exit statuses, capture and replay."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from evo_agent.cli import NEVER_SENT, main
from tests.conftest import REPO, strip_volatile

SCHEMA = json.loads((REPO / "evo_agent/schemas/evo-inventory-1.schema.json").read_text())


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config whose identity collector reads a VPNID file of the test."""
    vpnid = tmp_path / "vpnid"
    vpnid.write_text("EVO-000123\n")
    path = tmp_path / "agent.toml"
    path.write_text(f'[collectors.identity]\nvpnid_file = "{vpnid}"\n')
    return path


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    root = tmp_path / "capture"
    (root / "etc/evo-agent/identity").mkdir(parents=True)
    (root / "etc/evo-agent/identity/vpnid").write_text("EVO-000777\n")
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/hostname").write_text("living-room-evo\n")
    return root


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_inventory_json_from_a_capture(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["inventory", "--json", "--from", str(capture)], capsys)
    assert code == 0, err
    report = json.loads(out)
    jsonschema.validate(report, SCHEMA)
    assert report["functional"]["vpnid"] == "EVO-000777"
    assert report["functional"]["netbios_name"] == "LIVING-ROOM-EVO"
    assert report["trigger"] == "manual"


def test_inventory_reads_the_configured_host_root(capture: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # [agent] host_root is the host every verb reads, as the daemon and manufacture read it
    cfg = tmp_path / "root.toml"
    cfg.write_text(f'[agent]\nhost_root = "{capture}"\n')
    code, out, err = run(["inventory", "--json", "--config", str(cfg)], capsys)
    assert code == 0, err
    from_root = json.loads(out)
    assert from_root["functional"]["vpnid"] == "EVO-000777"
    code, out, err = run(["inventory", "--json", "--config", str(cfg), "--from", str(capture)],
                         capsys)
    assert strip_volatile(json.loads(out)) == strip_volatile(from_root)


def test_table_and_raw_and_explain(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["inventory", "--from", str(capture)], capsys)
    assert code == 0
    assert "vpnid" in out and "EVO-000777" in out and "Hardware" in out
    code, out, _ = run(["inventory", "--raw", "--json", "--from", str(capture)], capsys)
    raw = json.loads(out)
    assert raw["never_sent"] is True and raw["notice"] == NEVER_SENT
    # raw shows what is collected but never sent: the host name itself
    assert raw["collectors"]["identity"]["raw"]["hostname"] == "living-room-evo"
    code, out, _ = run(["inventory", "--raw", "--from", str(capture)], capsys)
    assert out.startswith(f"== {NEVER_SENT} ==")
    code, out, _ = run(["explain", "--from", str(capture)], capsys)
    assert code == 0
    assert 'functional.vpnid = EVO-000777' in out
    assert '"LAN Server name (netbios name)"' in out
    assert "identity.hostname (1)" in out  # collected, never sent, named without its value
    code, out, _ = run(["explain", "--json", "--from", str(capture)], capsys)
    doc = json.loads(out)
    row = next(r for r in doc["fields"] if r["field"] == "functional.vpnid")
    assert row["value"] == "EVO-000777" and row["source"] == "identity.vpnid"
    assert "for 432 EVO support & troubleshooting" in row["purposes"]
    assert doc["not_sent"] == {"identity.hostname": 1}


def test_collectors_verb(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["collectors", "--json", "--from", str(capture)], capsys)
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["identity"]["status"] == "ok"
    assert rows["identity"]["enabled"] is True


def test_disabled_collector_is_not_run(capture: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "off.toml"
    cfg.write_text("[collectors.identity]\nenabled = false\n")
    _, out, _ = run(["inventory", "--json", "--config", str(cfg), "--from", str(capture)], capsys)
    report = json.loads(out)
    assert "identity" not in report["collectors"]
    assert report["functional"]["vpnid"] is None
    _code, out, _ = run(["collectors", "--json", "--config", str(cfg), "--from", str(capture)],
                       capsys)
    assert {r["name"]: r["status"] for r in json.loads(out)}["identity"] == "disabled"


@pytest.mark.parametrize(("argv", "code"), [
    ([], 64), (["bogus"], 64), (["inventory", "--nope"], 64), (["capture"], 64),
    (["inventory", "--from", "/nonexistent/capture.tar.gz"], 66),
])
def test_exit_statuses(argv: list[str], code: int, capsys: pytest.CaptureFixture[str]) -> None:
    got, _out, err = run(argv, capsys)
    assert got == code
    assert err.startswith("evo-agent: ")


def test_capture_then_replay_gives_the_live_inventory(tmp_path: Path, config: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "out" / "capture.tar.gz"
    archive.parent.mkdir()
    code, live_out, err = run(["inventory", "--json", "--config", str(config)], capsys)
    assert code == 0, err
    code, _, err = run(["capture", "-o", str(archive), "--config", str(config)], capsys)
    assert code == 0, err
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    code, replay_out, err = run(["inventory", "--json", "--from", str(archive), "--config",
                                 str(config)], capsys)
    assert code == 0, err
    live, replay = json.loads(live_out), json.loads(replay_out)
    assert strip_volatile(replay) == strip_volatile(live)
    assert live["functional"]["vpnid"] == "EVO-000123"
    # and the same from the unpacked directory
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(unpacked)], check=True)
    code, dir_out, _ = run(["inventory", "--json", "--from", str(unpacked), "--config",
                            str(config)], capsys)
    assert strip_volatile(json.loads(dir_out)) == strip_volatile(live)
    stored = json.loads((unpacked / "evo-agent/live-report.json").read_text())
    assert strip_volatile(stored) == strip_volatile(live)


def test_capture_into_missing_directory_is_exit_73(tmp_path: Path, config: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["capture", "-o", str(tmp_path / "no/such/dir/c.tar.gz"), "--config",
                        str(config)], capsys)
    assert code == 73
    assert "does not exist" in err


def test_module_entry_point_and_broken_pipe(capture: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        f"{sys.executable} -m evo_agent inventory --raw --from {capture} | head -c 10",
        shell=True, capture_output=True, env=env, check=False, text=True,
    )
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr


def test_man_page_lists_every_verb_and_exit_status() -> None:
    from evo_agent.cli import _parser
    from evo_agent.errors import EXIT_CODES

    page = (REPO / "docs" / "evo-agent.8").read_text()
    sub = next(a for a in _parser()._actions if a.dest == "verb")
    for verb in sub.choices:  # type: ignore[union-attr]
        assert f".B {verb}" in page, verb
    for code in EXIT_CODES:
        assert f".TP\n.B {code}\n" in page, code
