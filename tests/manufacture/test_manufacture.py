"""``evo-agent manufacture`` on captured units against the real registry on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evo_agent.cli import main
from evo_agent.errors import EXIT_CODES
from evo_registry.cli import main as registry_main
from tests.delivery.pki import Pki, make_pki
from tests.manufacture import units
from tests.manufacture.conftest import FACTORY, Station, device, free_closed_port
from tests.registry.conftest import Server

REPO = Path(__file__).resolve().parents[2]
VPNID = "EVO-2026-000123"


def manufacture(station: Station, capture: Path, capsys: pytest.CaptureFixture[str],
                *extra: str, as_json: bool = True, vpnid: str | None = VPNID
                ) -> tuple[int, Any, str]:
    argv = ["manufacture", "--config", str(station.config), "--from", str(capture), *extra]
    if vpnid is not None:
        argv += ["--vpnid", vpnid]
    if as_json:
        argv.append("--json")
    code = main(argv)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if as_json and out else out), err


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return units.build(tmp_path / "good-unit")


# ---- a good unit -----------------------------------------------------------------------------
def test_good_unit_passes_and_is_enrolled(station: Station, good: Path, registry: Server,
                                          registry_url: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, err = manufacture(station, good, capsys)
    assert code == 0, err
    assert doc["verdict"] == "PASS" and doc["exit_code"] == 0
    assert {c["check"]: c["result"] for c in doc["checks"]} == {
        "board_serial": "pass", "mac": "pass", "boot_drive_serial": "pass", "rip_drive": "pass",
        "audio": "pass", "ram": "pass"}
    seen = {c["check"]: c["seen"] for c in doc["checks"]}
    assert seen["board_serial"] == units.BOARD_SERIAL and seen["mac"] == units.MAC
    assert seen["boot_drive_serial"] == units.BOOT_SERIAL
    assert seen["rip_drive"] == f"sr0: {units.RIP_MODEL} (serial {units.RIP_SERIAL})"
    form = f"{registry_url}/v1/devices/{VPNID}/registration-form.pdf"
    assert doc["enrolment"] == {"status": "enrolled", "sent": True, "forced": False,
                                "enrolled_at": doc["enrolment"]["enrolled_at"],
                                "registration_form": form}
    # identity on the unit: the VPNID file, the key (0600)
    assert station.vpnid_file.read_text() == VPNID + "\n"
    key = station.state / "device.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert doc["identity"]["key_created"] is True and doc["identity"]["vpnid_written"] is True
    # the registry holds it, with the station's sales region and PSU, and the unit's parts
    reply = device(registry, VPNID)
    assert reply.status == 200
    stored = reply.json()
    assert stored["sales_region"] == ["BE", "LU", "NL"] and stored["psu_variant"] == "230V"
    assert stored["model"] == "432 EVO Aeon"
    assert stored["fingerprint"]["enrolled"]["motherboard_serial"] == units.BOARD_SERIAL
    assert stored["fingerprint"]["enrolled"]["mac"] == units.MAC
    assert stored["fingerprint"]["enrolled"]["boot_serial"] == units.BOOT_SERIAL
    assert stored["fingerprint"]["enrolled"]["rip_serial"] == units.RIP_SERIAL
    # the registration form is served, to the factory token
    pdf = registry.request("GET", form.removeprefix(registry_url),
                           headers={"Authorization": f"Bearer {FACTORY}"})
    assert pdf.status == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.body.startswith(b"%PDF-") and VPNID.encode() in pdf.body


def test_enrolment_report_is_the_filtered_manufacturing_report(
        station: Station, good: Path, registry: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, err = manufacture(station, good, capsys)
    assert code == 0, err
    row = registry.app.db.read("SELECT enrolment_report FROM devices WHERE vpnid = ?", (VPNID,))
    report = json.loads(row[0]["enrolment_report"])
    assert report["trigger"] == "manufacturing" and report["report_id"] == doc["report_id"]
    assert report["functional"]["vpnid"] == VPNID
    # the privacy filter ran: what the MSI table holds beside the sent fields stays on the unit
    # (memory module serials and asset tags, BIOS data); the host name only as the NetBIOS name
    text = json.dumps(report)
    for private in ("A40C03AC", "A3144331", "9876543210", "American Megatrends", "evo-line-07"):
        assert private not in text
    raw_capture = (good / "commands/dmidecode.txt").read_text()
    for canary in units.CANARIES:
        assert canary in raw_capture  # planted, so its absence below means something
        assert canary not in text
    assert "cnry" not in json.dumps(doc).lower()  # nor in what the station prints
    assert report["functional"]["netbios_name"] == "EVO-LINE-07"


def test_text_verdict_first_line(station: Station, good: Path, registry: Server,
                                 registry_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = manufacture(station, good, capsys, as_json=False)
    assert code == 0
    first, *rest = out.splitlines()
    assert first == f"PASS {VPNID}: {registry_url}/v1/devices/{VPNID}/registration-form.pdf"
    assert any(line.split()[:3] == ["ok", "rip", "drive"] for line in rest)


# ---- faulty units ----------------------------------------------------------------------------
FAULTY = [
    (units.NO_RIP_DRIVE, "rip_drive", None, "no optical drive found"),
    (units.PLACEHOLDER_SERIAL, "board_serial", "To be filled by O.E.M.",
     "a placeholder: the privacy filter sends it as null"),
    (units.LOW_RAM, "ram", "4 GiB (4294967296 bytes)", None),
    (units.NO_AUDIO, "audio", None, "no ALSA sound card"),
]


@pytest.mark.parametrize("case", FAULTY, ids=[f[1] for f in FAULTY])
def test_faulty_unit_fails_and_gets_no_identity(
        tmp_path: Path, station: Station, registry: Server,
        case: tuple[units.Unit, str, str | None, str | None],
        capsys: pytest.CaptureFixture[str]) -> None:
    unit, check, seen, detail = case
    capture = units.build(tmp_path / "unit", unit)
    code, doc, err = manufacture(station, capture, capsys)
    assert code == 10 and doc["exit_code"] == 10
    assert doc["verdict"] == "FAIL"
    failed = [c for c in doc["checks"] if c["result"] == "fail"]
    assert [c["check"] for c in failed] == [check]
    assert failed[0]["seen"] == seen and failed[0]["detail"] == detail
    assert failed[0]["expected"]
    assert err.startswith("evo-agent: FAIL: ")
    # nothing written, nothing sent
    assert not station.vpnid_file.exists()
    assert not (station.state / "device.key").exists()
    assert doc["enrolment"] is None and doc["identity"] is None
    assert device(registry, VPNID).status == 404
    # the readable verdict names the failed check first
    code, out, _ = manufacture(station, capture, capsys, as_json=False)
    assert code == 10
    label = failed[0]["label"]
    assert out.splitlines()[0] == f"FAIL {VPNID}: {label}"
    assert f"FAIL {label}" in out


def test_expected_audio_by_usb_id_and_bom_switches(tmp_path: Path, registry_url: str,
                                                   good: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # a USB DAC is expected (by USB ID): the onboard HDA card does not count
    root = tmp_path / "usb-dac-station"
    root.mkdir()
    station = Station(root, registry_url, expected_audio="152a:8750")
    code, doc, _ = manufacture(station, good, capsys)
    assert code == 10
    audio = next(c for c in doc["checks"] if c["check"] == "audio")
    assert audio["result"] == "fail" and audio["detail"] == "no card matches"
    assert audio["seen"] == ["card 0: HDA Intel PCH (snd_hda_intel, pci)"]
    # a line building units without a rip drive turns that check off
    root = tmp_path / "no-rip-station"
    root.mkdir()
    station = Station(root, registry_url, require_rip_drive=False)
    capture = units.build(tmp_path / "no-rip", units.NO_RIP_DRIVE)
    code, doc, err = manufacture(station, capture, capsys)
    assert code == 0, err
    assert "rip_drive" not in {c["check"] for c in doc["checks"]}


# ---- idempotence and --force -----------------------------------------------------------------
def test_twice_same_verdict_no_second_identity(station: Station, good: Path, registry: Server,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code1, first, _ = manufacture(station, good, capsys)
    key = (station.state / "device.key").read_bytes()
    enrolled = device(registry, VPNID).json()["enrolled_at"]
    code2, second, _ = manufacture(station, good, capsys)
    assert code1 == code2 == 0
    assert first["verdict"] == second["verdict"] == "PASS"
    assert first["checks"] == second["checks"]
    assert second["identity"]["key_created"] is False
    assert second["identity"]["vpnid_written"] is False
    assert second["identity"]["public_key"] == first["identity"]["public_key"]
    assert (station.state / "device.key").read_bytes() == key
    assert second["enrolment"]["sent"] is False
    assert second["enrolment"]["registration_form"] == first["enrolment"]["registration_form"]
    assert registry.app.store.counts()["devices"] == 1
    assert device(registry, VPNID).json()["enrolled_at"] == enrolled


def test_crash_after_the_registry_answered_is_no_conflict(
        station: Station, good: Path, registry: Server,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The station dies after the registry's 201 but before it notes the enrolment: the next run
    sends the same key again and the registry answers 'unchanged', not 'already enrolled'."""
    code1, first, _ = manufacture(station, good, capsys)
    enrolled = device(registry, VPNID).json()["enrolled_at"]
    (station.state / "enrolment.json").unlink()
    code2, second, _ = manufacture(station, good, capsys)
    assert code1 == code2 == 0
    assert second["enrolment"]["sent"] is True
    assert second["identity"]["public_key"] == first["identity"]["public_key"]
    assert second["enrolment"]["registration_form"] == first["enrolment"]["registration_form"]
    assert registry.app.store.counts()["devices"] == 1
    assert device(registry, VPNID).json()["enrolled_at"] == enrolled


def test_force_re_enrols_and_is_logged(tmp_path: Path, station: Station, registry: Server,
                                       capsys: pytest.CaptureFixture[str],
                                       caplog: pytest.LogCaptureFixture) -> None:
    good = units.build(tmp_path / "good-unit")
    registry_url = f"http://127.0.0.1:{registry.port}"
    code, first, _ = manufacture(station, good, capsys)
    assert code == 0
    # the same VPNID label on another unit (another key): the registry refuses it
    other_root = tmp_path / "other"
    other_root.mkdir()
    other = Station(other_root, registry_url)
    code, doc, err = manufacture(other, good, capsys)
    assert code == 11, err
    assert doc["verdict"] == "PASS" and doc["enrolment"]["status"] == "already_enrolled"
    assert "already enrolled" in err
    stored_key = registry.app.store.public_key(VPNID)
    assert stored_key == first["identity"]["public_key"]
    # --force: override, logged
    with caplog.at_level(logging.WARNING, logger="evo_agent.manufacture"):
        code, doc, err = manufacture(other, good, capsys, "--force")
    assert code == 0, err
    assert doc["enrolment"]["forced"] is True
    assert registry.app.store.public_key(VPNID) == doc["identity"]["public_key"] != stored_key
    assert any("--force" in r.getMessage() and VPNID in r.getMessage() for r in caplog.records)
    assert registry.app.store.counts()["devices"] == 1


def test_unit_holding_another_vpnid(station: Station, good: Path, registry: Server,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    station.vpnid_file.parent.mkdir(parents=True)
    station.vpnid_file.write_text("EVO-2026-000999\n")
    code, doc, err = manufacture(station, good, capsys)
    assert code == 11
    assert "already holds VPNID EVO-2026-000999" in err
    assert doc["verdict"] == "PASS" and doc["identity"] is None  # no key made for it
    assert not (station.state / "device.key").exists()
    assert station.vpnid_file.read_text() == "EVO-2026-000999\n"
    assert device(registry, VPNID).status == 404
    code, _doc, err = manufacture(station, good, capsys, "--force")
    assert code == 0, err
    assert station.vpnid_file.read_text() == VPNID + "\n"


# ---- the registry unreachable or refusing ----------------------------------------------------
def test_registry_unreachable(tmp_path: Path, good: Path, capsys: pytest.CaptureFixture[str]
                              ) -> None:
    root = tmp_path / "st"
    root.mkdir()
    station = Station(root, f"http://127.0.0.1:{free_closed_port()}")
    code, doc, err = manufacture(station, good, capsys)
    assert code == 69
    assert doc["verdict"] == "PASS" and doc["enrolment"]["status"] == "registry_unreachable"
    assert "unreachable" in err and "Connection refused" in err
    code, out, _ = manufacture(station, good, capsys, as_json=False)
    assert code == 69
    assert out.splitlines()[0] == f"PASS {VPNID}: unit passes, NOT ENROLLED (exit 69)"


def test_unreachable_then_enrolled_with_the_same_key(station: Station, good: Path,
                                                    registry: Server,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    reachable = station.config.read_text()
    station.config.write_text(reachable.replace(
        f"http://127.0.0.1:{registry.port}", f"http://127.0.0.1:{free_closed_port()}"))
    code, first, _ = manufacture(station, good, capsys)
    assert code == 69 and first["identity"]["key_created"] is True
    station.config.write_text(reachable)
    code, second, err = manufacture(station, good, capsys)
    assert code == 0, err
    assert second["identity"]["key_created"] is False
    assert second["identity"]["vpnid_written"] is False
    assert registry.app.store.public_key(VPNID) == first["identity"]["public_key"]


def test_wrong_factory_token_is_refused(station: Station, good: Path, registry: Server,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    station.token.write_text("not-the-token\n")
    code, _doc, err = manufacture(station, good, capsys)
    assert code == 76
    assert "factory token was refused" in err
    assert device(registry, VPNID).status == 404


def test_plain_http_to_another_host_is_refused(tmp_path: Path, good: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "st"
    root.mkdir()
    # never connected to: the agent refuses plain http to a non-loopback address before that
    station = Station(root, "http://registry.invalid:8432")
    code, _doc, err = manufacture(station, good, capsys)
    assert code == 78
    assert "plain http is refused" in err


# ---- usage errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    [],  # neither --vpnid nor --from-cmdline
    ["--vpnid", "EVO 1"],
    ["--vpnid", "To Be Filled By O.E.M."],
    ["--vpnid", VPNID, "--from-cmdline"],
    ["--vpnid", VPNID, "--offline", "/nonexistent/dir"],
    ["--vpnid", VPNID, "--bogus"],
])
def test_usage_errors(station: Station, good: Path, argv: list[str],
                      capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["manufacture", "--config", str(station.config), "--from", str(good), *argv])
    _out, err = capsys.readouterr()
    assert code == 64, err
    assert err.startswith("evo-agent: ")
    assert not station.state.exists()


def test_no_registry_configured_is_a_usage_error(tmp_path: Path, good: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "st"
    root.mkdir()
    station = Station(root, "")
    code, _doc, err = manufacture(station, good, capsys)
    assert code == 64 and "no registry" in err


def test_exit_codes_are_documented() -> None:
    for code in (10, 11, 64, 69, 76):
        assert EXIT_CODES.get(code)
    proc = subprocess.run([sys.executable, "-m", "evo_agent", "--help"], capture_output=True,
                          text=True, check=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    help_text = " ".join(proc.stdout.split())
    assert "10 manufacture: FAIL" in help_text and "69 unavailable:" in help_text
    assert "manufacture: registry unreachable" in help_text


# ---- the kernel command line -----------------------------------------------------------------
def test_vpnid_from_the_kernel_command_line(tmp_path: Path, station: Station, registry: Server,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    capture = units.build(tmp_path / "u", cmdline=(
        'BOOT_IMAGE=/vmlinuz-6.1.0-27-amd64 root=UUID=0f4c ro quiet console=ttyS0,115200 '
        f'evo.manufacture=1 "evo.vpnid={VPNID}"'))
    code, doc, err = manufacture(station, capture, capsys, "--from-cmdline", vpnid=None)
    assert code == 0, err
    assert doc["vpnid"] == VPNID and device(registry, VPNID).status == 200


def test_vpnid_file_named_on_the_kernel_command_line(tmp_path: Path, station: Station,
                                                     registry: Server,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    capture = units.build(tmp_path / "u", cmdline=(
        "root=/dev/sda2 evo.manufacture=1 evo.vpnid_file=/run/line/vpnid"))
    (capture / "run/line").mkdir(parents=True)
    (capture / "run/line/vpnid").write_text("EVO-2026-000124\n")
    code, doc, err = manufacture(station, capture, capsys, "--from-cmdline", vpnid=None)
    assert code == 0, err
    assert doc["vpnid"] == "EVO-2026-000124"
    assert device(registry, "EVO-2026-000124").status == 200


def test_no_vpnid_on_the_kernel_command_line(tmp_path: Path, station: Station,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    capture = units.build(tmp_path / "u", cmdline="root=/dev/sda2 evo.manufacture=1")
    code, _doc, err = manufacture(station, capture, capsys, "--from-cmdline", vpnid=None)
    assert code == 64 and "no evo.vpnid=" in err


# ---- offline bundles -------------------------------------------------------------------------
def _import(registry: Server, *paths: Path) -> tuple[int, str, str]:
    import io

    buf = io.StringIO()
    code = registry_main(["import", "--database", registry.app.settings.database,
                          "--config", str(_registry_config(registry)), *map(str, paths)],
                         out=buf)
    return code, buf.getvalue(), ""


def _registry_config(registry: Server) -> Path:
    path = Path(registry.app.settings.database.removeprefix("sqlite:///")).parent / "reg.toml"
    path.write_text(f'factory_tokens = ["{FACTORY}"]\n')
    return path


def test_offline_bundle_then_import(tmp_path: Path, station: Station, good: Path,
                                    registry: Server, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "bundles"
    out_dir.mkdir()
    code, doc, err = manufacture(station, good, capsys, "--offline", str(out_dir))
    assert code == 0, err
    bundle = out_dir / f"{VPNID}.evo-enrol.json"
    assert doc["enrolment"] == {"status": "bundle_written", "written": True,
                                "bundle": str(bundle), "forced": False}
    assert device(registry, VPNID).status == 404  # nothing was sent
    envelope = json.loads(bundle.read_text())
    assert envelope["format"] == "evo-enrolment-bundle/1" and envelope["vpnid"] == VPNID
    request = json.loads(base64.b64decode(envelope["request"]))
    assert request["public_key"] == doc["identity"]["public_key"]
    assert "cnry" not in json.dumps(request).lower()
    assert request["report"]["trigger"] == "manufacturing"
    # a second run keeps the bundle (same identity)
    code, again, _ = manufacture(station, good, capsys, "--offline", str(out_dir))
    assert code == 0 and again["enrolment"]["written"] is False
    assert json.loads(bundle.read_text()) == envelope
    # import: enrolled with the same checks as online; a second import changes nothing
    code, out, _ = _import(registry, out_dir)
    assert code == 0, out
    assert out.split()[:2] == ["imported", VPNID]
    stored = device(registry, VPNID).json()
    assert stored["fingerprint"]["enrolled"]["motherboard_serial"] == units.BOARD_SERIAL
    assert registry.app.store.public_key(VPNID) == request["public_key"]
    code, out, _ = _import(registry, bundle)
    assert code == 0 and out.split()[:2] == ["unchanged", VPNID]


def _tampered(bundle: Path, target: Path, **changes: Any) -> Path:
    envelope = json.loads(bundle.read_text())
    request = json.loads(base64.b64decode(envelope["request"]))
    request.update(changes)
    envelope["request"] = base64.b64encode(json.dumps(request).encode()).decode()
    target.write_text(json.dumps(envelope))
    return target


def test_tampered_bundles_are_refused(tmp_path: Path, station: Station, good: Path,
                                      registry: Server,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from evo_agent.delivery.signing import public_b64, sign

    out_dir = tmp_path / "bundles"
    out_dir.mkdir()
    code, _doc, _ = manufacture(station, good, capsys, "--offline", str(out_dir))
    assert code == 0
    bundle = out_dir / f"{VPNID}.evo-enrol.json"
    bad = tmp_path / "bad"
    bad.mkdir()
    # 1. the sales region changed after signing
    grey = _tampered(bundle, bad / "grey.json", sales_region=["US"])
    # 2. the key swapped and the body re-signed with it: the factory MAC no longer matches
    thief = Ed25519PrivateKey.generate()
    swapped = _tampered(bundle, bad / "swapped.json", public_key=public_b64(thief))
    env = json.loads(swapped.read_text())
    env["signature"] = sign(thief, base64.b64decode(env["request"]))
    swapped.write_text(json.dumps(env))
    # 3. a valid factory MAC but a signature of another key
    foreign = bad / "foreign-signature.json"
    env = json.loads(bundle.read_text())
    env["signature"] = sign(thief, base64.b64decode(env["request"]))
    foreign.write_text(json.dumps(env))
    # 4. not a bundle at all
    junk = bad / "junk.json"
    junk.write_bytes(b"\x1f\x8b not json")
    for path, reason in ((grey, "factory_mac"), (swapped, "factory_mac"),
                         (foreign, "signature does not match"),
                         (junk, "not an enrolment bundle")):
        code, out, _ = _import(registry, path)
        assert code == 65, out
        assert out.startswith("refused") and reason in out, out
    assert device(registry, VPNID).status == 404
    assert registry.app.store.counts()["devices"] == 0


def test_offline_without_a_token_is_a_usage_error(tmp_path: Path, good: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "st"
    root.mkdir()
    station = Station(root, "", factory_token_file="")
    out_dir = tmp_path / "bundles"
    out_dir.mkdir()
    code, _doc, err = manufacture(station, good, capsys, "--offline", str(out_dir))
    assert code == 64 and "factory token" in err
    assert list(out_dir.iterdir()) == []


# ---- the command as the line runs it ---------------------------------------------------------
def test_as_a_process(station: Station, good: Path, registry: Server, registry_url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "evo_agent", "manufacture", "--config", str(station.config),
         "--from", str(good), "--vpnid", VPNID], capture_output=True, text=True, check=False,
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"PASS {VPNID}: {registry_url}/v1/devices/")
    assert proc.stderr == ""


# ---- HTTPS: the registry's CA only -----------------------------------------------------------
@pytest.fixture
def tls_registry(tmp_path: Path, registry: Server) -> Iterator[tuple[str, Pki]]:
    """The same registry app served over TLS on 127.0.0.1 by uvicorn."""
    pki = make_pki(tmp_path / "pki", "registry")
    tls = Server(registry.app, tls=(str(pki.cert_pem), str(pki.key_pem)))
    yield f"https://127.0.0.1:{tls.port}", pki
    tls.close()


def test_https_verified_against_the_registry_ca(tmp_path: Path, good: Path, registry: Server,
                                                tls_registry: tuple[str, Pki],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    url, pki = tls_registry
    root = tmp_path / "st"
    root.mkdir()
    station = Station(root, url)
    # a CA that did not sign the registry's certificate: no enrolment
    other = make_pki(tmp_path / "other-pki", "other")
    station.config.write_text(station.config.read_text()
                              + f'[delivery]\nca_bundle = "{other.ca_pem}"\n')
    code, doc, err = manufacture(station, good, capsys)
    assert code == 69 and "certificate not trusted" in err
    assert device(registry, VPNID).status == 404
    # the registry's own CA
    station.config.write_text(station.config.read_text().replace(str(other.ca_pem),
                                                                 str(pki.ca_pem)))
    code, doc, err = manufacture(station, good, capsys)
    assert code == 0, err
    assert doc["enrolment"]["registration_form"] == \
        f"{url}/v1/devices/{VPNID}/registration-form.pdf"
    assert device(registry, VPNID).status == 200
