"""The README's two commands, as a new user runs them on a fresh Debian 12 machine.

The agent's command is run for real (its apt part is checked, not run: scripts/test.sh installed
those packages, and a test here keeps its list a superset): a virtual environment made exactly as
the README makes it, in a copy of the repository, then every verb of ``evo-agent --help`` in it.
Whatever a verb finds missing, it must say so in one line and exit with a documented status,
never with a traceback.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from evo_agent.errors import EXIT_CODES
from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def readme_commands() -> list[str]:
    """Return the commands of the README's "The two commands" section, in order."""
    section = README.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL)]


def apt_packages(command: str) -> list[str]:
    """Return the packages of the ``apt-get install`` steps of a command line."""
    packages: list[str] = []
    for step in command.split("&&"):
        words = shlex.split(step)
        if words[:2] == ["apt-get", "install"]:
            packages += [w for w in words[2:] if not w.startswith("-")]
    return packages


def test_the_readme_has_the_two_commands() -> None:
    agent, tests = readme_commands()
    assert agent.endswith("evo-agent inventory")
    assert tests == "bash scripts/test.sh"
    assert "bash scripts/test.sh" in (REPO / ".ci" / "run").read_text()


def test_the_test_script_installs_what_the_agent_command_does() -> None:
    script = (REPO / "scripts" / "test.sh").read_text()
    listed = re.search(r"APT_PACKAGES=\((.*?)\n\)", script, re.DOTALL)
    assert listed is not None
    words = {w for line in listed.group(1).splitlines() for w in line.split("#")[0].split()}
    assert set(apt_packages(readme_commands()[0])) <= words


def test_the_agent_command_installs_the_packages_debian_control_depends_on() -> None:
    control = (REPO / "debian" / "control").read_text()
    depends = control.split("\nDepends:", 1)[1].split("\nDescription:", 1)[0]
    python_deps = set(re.findall(r"\b(python3-[a-z0-9.-]+)", depends))
    assert python_deps <= set(apt_packages(readme_commands()[0]))


def test_every_apt_call_of_the_scripts_waits_for_the_lock() -> None:
    scripts = [REPO / "scripts" / "test.sh", REPO / "tests" / "vm" / "install-deps.sh"]
    for path in scripts:
        for line in path.read_text().splitlines():
            code = line.split("#", 1)[0]
            if re.search(r"\bapt-get\s+(-\S+\s+)*(update|install)\b", code):
                assert "DPkg::Lock::Timeout=" in code, f"{path.name}: {line.strip()}"


@pytest.fixture(scope="module")
def readme_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's venv, made by its own command (less apt and the final run) in a copy."""
    agent = readme_commands()[0]
    copy = tmp_path_factory.mktemp("clone") / "evo-agent"
    # what a clone holds, less the tests and benchmarks (pip install . does not read them)
    shutil.copytree(REPO, copy, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "__pycache__", "*.egg-info", "build", ".hypothesis", "*_cache",
        "tests", "bench"))
    steps = [s.strip() for s in agent.split("&&")]
    steps = [s for s in steps if not s.startswith("apt-get")]
    assert steps[-1] == ".venv-agent/bin/evo-agent inventory"
    subprocess.run(" && ".join(steps[:-1]), shell=True, cwd=copy, check=True, timeout=600,
                   capture_output=True)
    return copy


def verbs() -> list[str]:
    """Return the verbs that ``evo-agent --help`` lists."""
    out = subprocess.run([sys.executable, "-m", "evo_agent", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    listing = out.split("  VERB\n", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^    ([a-z]+) ", listing, re.MULTILINE)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Path]:
    """A config whose state, socket and identity live in the test's directory."""
    (tmp_path / "vpnid").write_text("EVO-000123\n")
    (tmp_path / "agent.toml").write_text(
        "[agent]\n"
        f'state_dir = "{tmp_path}/state"\n'
        f'control_socket = "{tmp_path}/control.sock"\n'
        "[delivery]\n"
        'https_url = "http://127.0.0.1:9/"\n'  # discard port: refused at once
        "connect_timeout = 2.0\n"
        "total_timeout = 4.0\n"
        "[collectors.identity]\n"
        f'vpnid_file = "{tmp_path}/vpnid"\n')
    yield tmp_path


ARGS = {
    "capture": ["-o", "{tmp}/capture.tar.gz"],
    "send": ["--now"],
    "manufacture": ["--vpnid", "EVO-000123", "--offline", "{tmp}/bundles"],
}


@pytest.mark.slow
@pytest.mark.parametrize("verb", verbs())
def test_every_verb_in_the_readme_venv(readme_venv: Path, sandbox: Path, verb: str) -> None:
    exe = readme_venv / ".venv-agent" / "bin" / "evo-agent"
    (sandbox / "bundles").mkdir()
    argv = [str(exe), verb, "--config", str(sandbox / "agent.toml"),
            *(a.format(tmp=sandbox) for a in ARGS.get(verb, []))]
    env = {"PATH": os.environ["PATH"], "LC_ALL": "C.UTF-8", "HOME": str(sandbox)}
    if verb == "daemon":  # runs until stopped: stop it as systemd would
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, cwd=sandbox)
        try:
            proc.wait(8)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        code = proc.returncode
    else:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=sandbox,
                              timeout=120, check=False)
        out, err, code = done.stdout, done.stderr, done.returncode
    assert "Traceback" not in err + out, err
    assert code in EXIT_CODES, (code, err)
    if code not in (0, 1):  # a failure is one line that says what is wrong
        assert len([line for line in err.splitlines() if "evo-agent:" in line]) >= 1, err
