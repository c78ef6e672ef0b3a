"""What a new user meets first: argument errors, the verb list, states that are not errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from evo_agent.cli import main
from tests.conftest import REPO


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "vpnid").write_text("EVO-000123\n")
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nstate_dir = "{tmp_path}/state"\n'
                    f'control_socket = "{tmp_path}/control.sock"\n'
                    f'[collectors.identity]\nvpnid_file = "{tmp_path}/vpnid"\n')
    return path


@pytest.mark.parametrize("argv", [["inventory", "--bogus"], ["bogus"], ["--bogus"],
                                  ["send", "--via", "carrier-pigeon"], ["capture"]])
def test_an_argument_error_names_the_program_once(argv: list[str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(argv, capsys)
    assert code == 64
    assert err.count("evo-agent") == 1 and err.startswith("evo-agent: "), err
    assert len(err.strip().splitlines()) == 1, err


def test_no_verb_lists_every_verb(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run([], capsys)
    assert code == 64
    help_text = subprocess.run([sys.executable, "-m", "evo_agent", "--help"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout
    verbs = help_text.split("  VERB\n", 1)[1].split("\n\n", 1)[0]
    listed = re.findall(r"^    ([a-z]+) ", verbs, re.MULTILINE)
    assert len(listed) >= 11
    for verb in listed:
        assert verb in err, (verb, err)


def test_diff_with_nothing_sent_is_a_normal_state(config: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["diff", "--config", str(config)], capsys)
    assert code == 0, err
    assert "nothing to compare with" in out
    code, out, _ = run(["diff", "--json", "--config", str(config)], capsys)
    assert code == 0
    assert json.loads(out)["compared_with"] is None


def test_status_says_when_no_destination_is_configured(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["status", "--config", str(config)], capsys)
    assert code == 0
    assert "delivery:     NOT CONFIGURED" in out
    with config.open("a") as fh:
        fh.write('[delivery]\nhttps_url = "https://registry.example.net/"\n')
    code, out, _ = run(["status", "--config", str(config)], capsys)
    assert "delivery:     enabled, to https://registry.example.net/" in out


@pytest.mark.parametrize("url", ["http://registry.example.net/", "http://192.0.2.7:8432/",
                                 "http://[2001:db8::1]/"])
def test_plain_http_across_the_internet_is_refused(config: Path, url: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config.write_text(config.read_text().replace(
        "[collectors.identity]", f'[delivery]\nhttps_url = "{url}"\n[collectors.identity]'))
    code, _, err = run(["status", "--config", str(config)], capsys)
    assert code == 78
    assert str(config) in err and "https_url" in err and "https://" in err


@pytest.mark.parametrize("url", ["http://127.0.0.1:8432/", "http://localhost/", "http://[::1]/"])
def test_plain_http_to_this_machine_is_accepted(config: Path, url: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    config.write_text(config.read_text().replace(
        "[collectors.identity]", f'[delivery]\nhttps_url = "{url}"\n[collectors.identity]'))
    code, _, err = run(["status", "--config", str(config)], capsys)
    assert code == 0, err


def test_ram_in_gib_for_people_bytes_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    capture = REPO / "tests" / "data" / "dmi" / "capture-msi-ms-7816"
    code, out, _ = run(["inventory", "--from", str(capture)], capsys)
    assert code == 0
    assert "ram.total_bytes     32 GiB" in out and "34359738368" not in out
    assert "DDR3  DIMM  8 GiB" in out
    code, out, _ = run(["inventory", "--json", "--from", str(capture)], capsys)
    assert json.loads(out)["hardware"]["ram"]["total_bytes"] == 34359738368


@pytest.mark.parametrize("verb", ["doctor", "send"])
def test_a_missing_library_is_one_line_naming_its_package(config: Path, verb: str) -> None:
    # cryptography made unimportable, as in a venv without Debian's python3-cryptography
    argv = [verb, "--config", str(config), *(["--now"] if verb == "send" else [])]
    code = ("import sys; sys.modules['cryptography'] = None; "
            f"from evo_agent.cli import main; sys.exit(main({argv!r}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=False, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    if verb == "send":
        assert proc.returncode == 69, proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == (
            "evo-agent: the Python module 'cryptography' is not installed "
            "(Debian: apt-get install python3-cryptography)")
    else:  # doctor reports it as one of its checks, or as the same one line
        assert proc.returncode in (1, 69), proc.stderr
        assert "python3-cryptography" in proc.stdout + proc.stderr
