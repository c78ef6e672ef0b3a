"""The real daemon (a subprocess) and the support verbs, against the registry test server."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from evo_agent.cli import main
from evo_agent.delivery.outbox import Outbox
from evo_agent.delivery.schedule import load_state
from tests.delivery.conftest import Agent
from tests.delivery.fixtures import launcher, write_config
from tests.delivery.pki import Pki
from tests.delivery.server import RegistryServer

REPO = Path(__file__).resolve().parents[2]


class Notify:
    """A stand-in for systemd's notify socket: a datagram socket the test binds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, str]] = []

    def collect(self, seconds: float, until: str | None = None) -> list[str]:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.append((time.monotonic(), msg))
            if until and until in msg:
                break
        return [m for _, m in self.messages]


def wait_for(pred: object, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def run_daemon(tmp_path: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []
    notifies: list[Notify] = []

    def start(config: Path, watchdog_usec: int = 2_000_000) -> tuple[subprocess.Popen[bytes],
                                                                         Notify, Path]:
        notify = Notify(tmp_path / f"notify-{len(procs)}")
        notifies.append(notify)
        log = tmp_path / f"daemon-{len(procs)}.log"
        env = dict(os.environ, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC=str(watchdog_usec))
        env.pop("PYTHONPATH", None)
        with log.open("wb") as fh:  # as the .deb's launcher runs it, away from the source tree
            proc = subprocess.Popen(launcher("daemon", "--config", str(config)), env=env,
                                    stderr=fh, cwd=tmp_path)
        procs.append(proc)
        return proc, notify, log

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    for n in notifies:
        n.sock.close()


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_daemon_lifecycle(agent: Agent, server: RegistryServer, run_daemon: object,
                          capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    started = time.monotonic()
    proc, notify, log = run_daemon(agent.config)  # type: ignore[operator]
    msgs = notify.collect(10, until="READY=1")
    assert any("READY=1" in m for m in msgs), msgs
    ready_after = time.monotonic() - started
    assert ready_after < 5
    wait_for(lambda: len(server.registry.stored) == 1)
    [report] = server.registry.stored.values()
    assert report["trigger"] == "boot"
    msgs = notify.collect(2.5)
    assert sum("WATCHDOG=1" in m for m in msgs) >= 2
    assert any(m.startswith("STATUS=last report") and "next (daily)" in m for m in msgs), msgs
    # no second report: the next is due in 24 h
    assert len(server.registry.requests) == 1

    code, out = _cli(capsys, "status", "--json", "--config", str(agent.config))
    doc = json.loads(out)
    assert code == 0 and doc["daemon"]["running"] and doc["daemon"]["pid"] == proc.pid
    assert doc["last_success"]["path"] == "https" and doc["outbox_depth"] == 0
    assert doc["next_due"]["trigger"] == "daily"
    assert doc["next_due"]["time"] - time.time() > 23 * 3600

    code, out = _cli(capsys, "send", "--now", "--config", str(agent.config))
    assert code == 0 and "through the daemon" in out
    assert len(server.registry.stored) == 2

    # a bad new config is refused, the old one kept
    good = agent.config.read_text()
    agent.config.write_text(good + "\n[delivery.oops]\n")
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in log.read_text())
    code, out = _cli(capsys, "send", "--now", "--config", str(agent.config.with_name("x.toml")))
    assert code == 78  # the verb itself validates its own --config
    agent.config.write_text(good)
    code, out = _cli(capsys, "send", "--now", "--config", str(agent.config))
    assert code == 0 and len(server.registry.stored) == 3

    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 0
    assert time.monotonic() - t0 < 3
    assert not (tmp_path / "control.sock").exists()
    assert any("STOPPING=1" in m for m in notify.collect(0.5))


def test_no_busy_loop_while_failing_then_delivered(agent: Agent, server: RegistryServer,
                                                   run_daemon: object,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    server.registry.mode = "503"
    proc, notify, log = run_daemon(agent.config)  # type: ignore[operator]
    notify.collect(10, until="READY=1")
    wait_for(lambda: len(server.registry.requests) == 1)
    time.sleep(4)
    # The next try waits >= 1 min.  Only a network change (a default route appearing: other
    # work on this shared machine can cause one) may start one early, once a minute at most.
    kicks = log.read_text().count("network event")
    assert len(server.registry.requests) == 1 + min(kicks, 1), log.read_text()
    state = load_state(agent.state_dir / "state.json")
    assert state.failures == 1 and "503" in (state.attempt_result or "")
    [waiting] = Outbox(agent.state_dir).pending()
    server.registry.mode = "ok"
    code, _out = _cli(capsys, "send", "--now", "--via", "https", "--config", str(agent.config))
    assert code == 0
    assert server.registry.accepted[waiting.report_id] == 1
    assert Outbox(agent.state_dir).pending() == []
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 0


def test_opt_out_stops_everything(agent: Agent, server: RegistryServer, run_daemon: object,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    server.registry.mode = "503"
    code, _ = _cli(capsys, "send", "--now", "--config", str(agent.config))  # standalone
    assert code == 75 and len(Outbox(agent.state_dir).pending()) == 1
    server.registry.mode = "ok"
    agent.config.write_text(agent.config.read_text().replace("[agent]", "[agent]\nenabled = false"))
    proc, notify, _log = run_daemon(agent.config)  # type: ignore[operator]
    msgs = notify.collect(10, until="READY=1")
    assert any("opted out" in m for m in msgs)
    assert Outbox(agent.state_dir).pending() == []
    code, _ = _cli(capsys, "send", "--now", "--config", str(agent.config))
    assert code == 75
    time.sleep(1)
    assert server.registry.stored == {}
    code, out = _cli(capsys, "status", "--config", str(agent.config))
    assert "OPTED OUT" in out
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 0


def test_sent_and_diff(agent: Agent, server: RegistryServer,
                       capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _cli(capsys, "send", "--now", "--config", str(agent.config))
    assert code == 0
    code, out = _cli(capsys, "sent", "--json", "--bytes", "--config", str(agent.config))
    [entry] = json.loads(out)
    assert entry["status"] == 201 and entry["path"] == "https"
    assert json.loads(entry["content"]) == server.registry.stored[entry["report_id"]]
    code, out = _cli(capsys, "diff", "--config", str(agent.config))
    assert code == 0 and "no difference" in out
    (agent.host_root / "proc/sys/kernel/hostname").write_text("evo-kitchen\n")
    code, out = _cli(capsys, "diff", "--json", "--config", str(agent.config))
    rows = json.loads(out)["differences"]
    assert rows == [{"field": "functional.netbios_name", "sent": "EVO-LIVING-ROOM",
                     "now": "EVO-KITCHEN"}]


def test_doctor(agent: Agent, server: RegistryServer, other_pki: Pki, tmp_path: Path,
                capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _cli(capsys, "doctor", "--json", "--config", str(agent.config))
    rows = {r["check"]: r for r in json.loads(out)}
    assert code == 0, rows
    assert rows["device key"]["result"] == "ok"
    assert rows["reach https_url"]["result"] == "ok"
    assert "TLS verified" in rows["reach https_url"]["detail"]
    assert rows["vpn_url"]["result"] == "warn" and rows["daemon"]["result"] == "warn"
    (agent.state_dir / "device.key").chmod(0o644)
    bad = write_config(tmp_path / "bad.toml", agent.state_dir, agent.host_root, server.url,
                       ca=other_pki.ca_pem)
    code, out = _cli(capsys, "doctor", "--config", str(bad))
    assert code == 1
    assert "certificate not trusted" in out and "mode 0644" in out and "fix: chmod 600" in out


def test_read_only_verbs_work_with_an_empty_config(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "empty.toml"
    cfg.write_text("")
    code, out = _cli(capsys, "sent", "--config", str(cfg))
    assert code == 0 and "nothing was sent" in out
    code, out = _cli(capsys, "status", "--json", "--config", str(cfg))
    assert code == 0 and json.loads(out)["daemon"]["running"] in (True, False)


def test_sigterm_during_a_slow_delivery_exits_within_seconds(
        agent: Agent, server: RegistryServer, run_daemon: object, tmp_path: Path) -> None:
    server.registry.mode, server.registry.delay = "slow", 30.0
    agent.config.write_text(agent.config.read_text().replace("total_timeout = 3.0",
                                                             "total_timeout = 60.0"))
    proc, notify, log = run_daemon(agent.config)  # type: ignore[operator]
    notify.collect(10, until="READY=1")
    wait_for(lambda: "sending a report" in " ".join(notify.collect(0.2)), 10)
    wait_for(lambda: len(Outbox(agent.state_dir).pending()) == 1, 10)  # queued, being sent
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert time.monotonic() - t0 < 4, log.read_text()
    # the report stays queued for the next start; nothing half-written is left
    [entry] = Outbox(agent.state_dir).pending()
    assert [p.name for p in (agent.state_dir / "outbox").iterdir()] == [entry.path.name]


def test_send_as_root_writes_the_state_dir_as_its_owner(server: RegistryServer, pki: Pki,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The unit runs the daemon as user evo-agent; `sudo evo-agent send --now` without a daemon
    must not leave root-owned files there (the daemon could no longer append to the log, read
    the key...).  Here the state directory belongs to "nobody" (65534)."""
    import shutil
    import tempfile

    from evo_agent.delivery import signing
    from tests.delivery.fixtures import VPNID, write_host_root

    if os.geteuid() != 0:
        pytest.skip("needs root to change users")
    base = Path(tempfile.mkdtemp(prefix="evo-owner-", dir="/tmp"))  # traversable by nobody
    try:
        base.chmod(0o755)
        state = base / "state"
        state.mkdir(mode=0o750)
        os.chown(state, 65534, 65534)
        ca = base / "ca.pem"
        shutil.copy(pki.ca_pem, ca)
        ca.chmod(0o644)
        cfg = write_config(base / "agent.toml", state, write_host_root(base / "root"), server.url,
                           ca=ca)
        # the key made by root at manufacturing, enrolled: it goes to the directory's owner
        key = signing.load_or_create(state)
        assert (state / "device.key").stat().st_uid == 65534
        server.registry.enroll(VPNID, signing.public_b64(key))
        code, out = _cli(capsys, "send", "--now", "--config", str(cfg))
        assert code == 0, out
        owners = {(p.relative_to(state).as_posix(), p.stat().st_uid) for p in state.rglob("*")}
        assert owners and all(uid == 65534 for _, uid in owners), owners
        modes = {p.name: p.stat().st_mode & 0o777 for p in state.rglob("*")}
        assert modes["device.key"] == 0o600 and modes["state.json"] == 0o640
        assert modes["sent"] == 0o750 and modes["index.jsonl"] == 0o640
        [stored] = server.registry.stored.values()  # signed with that key, verified
        assert stored["functional"]["vpnid"] == VPNID and stored["trigger"] == "manual"
        assert {"state.json", "sequence", "lock", "outbox", "sent"} <= {p for p, _ in owners}
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").exists(),
                    reason="needs root (to start it as another user) and Debian's python3")
def test_daemon_runs_as_an_unprivileged_user(server: RegistryServer, pki: Pki,
                                             tmp_path: Path) -> None:
    """As the unit runs it: another user than root (here "nobody"), umask 077, Debian's python."""
    import shutil
    import tempfile

    from evo_agent.delivery import signing
    from tests.delivery.fixtures import VPNID, write_host_root

    base = Path(tempfile.mkdtemp(prefix="evo-user-", dir="/tmp"))
    try:
        base.chmod(0o755)
        state, run = base / "state", base / "run"
        for d in (state, run):
            d.mkdir(mode=0o750)
            os.chown(d, 65534, 65534)
        ca = base / "ca.pem"
        shutil.copy(pki.ca_pem, ca)
        ca.chmod(0o644)
        cfg = write_config(base / "agent.toml", state, write_host_root(base / "root"), server.url,
                           ca=ca)
        cfg.write_text(cfg.read_text().replace(str(base / "control.sock"),
                                               str(run / "control.sock")))
        cfg.chmod(0o644)
        key = signing.load_or_create(state)
        os.chown(state / "device.key", 65534, 65534)
        server.registry.enroll(VPNID, signing.public_b64(key))
        log = (tmp_path / "daemon.log").open("wb")
        proc = subprocess.Popen(launcher("daemon", "--config", str(cfg),
                                         python="/usr/bin/python3"),
                                cwd="/", user=65534, group=65534, extra_groups=[],
                                umask=0o077, stderr=log, env={"PATH": "/usr/bin:/bin"})
        try:
            wait_for(lambda: len(server.registry.stored) == 1, 20)
            wait_for((run / "control.sock").exists, 5)
            wait_for(lambda: load_state(state / "state.json").success_path == "https", 5)
            assert (run / "control.sock").stat().st_mode & 0o777 == 0o660
            modes = {p.name: p.stat().st_mode & 0o777 for p in state.rglob("*")}
            assert modes["state.json"] == 0o640 and modes["outbox"] == 0o750, modes
            assert {p.stat().st_uid for p in state.rglob("*")} == {65534}
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0, (tmp_path / "daemon.log").read_text()
            log.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_diff_uses_the_daemons_collection_when_it_runs(agent: Agent, server: RegistryServer,
                                                       run_daemon: object,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    proc, notify, log = run_daemon(agent.config)  # type: ignore[operator]
    notify.collect(10, until="READY=1")
    wait_for(lambda: len(server.registry.stored) == 1)
    wait_for(lambda: load_state(agent.state_dir / "state.json").success_path == "https", 5)
    (agent.host_root / "proc/sys/kernel/hostname").write_text("evo-attic\n")
    code, out = _cli(capsys, "diff", "--json", "--config", str(agent.config))
    doc = json.loads(out)
    assert code == 0 and doc["current"] == "collected by the daemon"
    assert doc["differences"] == [{"field": "functional.netbios_name", "sent": "EVO-LIVING-ROOM",
                                   "now": "EVO-ATTIC"}]
    assert "asked by evo-agent diff" in log.read_text()
    assert len(server.registry.requests) == 1  # nothing sent
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 0


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").exists(),
                    reason="needs root (to run the verbs as another user) and Debian's python3")
def test_read_only_verbs_work_for_a_support_group_member(server: RegistryServer, pki: Pki,
                                                         run_daemon: object) -> None:
    """The state dir as the unit leaves it (owner the service, group evo-support, 2750); a
    technician in that group (here uid 65534 with the directory's group) runs status, sent, diff
    and doctor without root; send is refused."""
    import shutil
    import tempfile

    from evo_agent.delivery import signing
    from tests.delivery.fixtures import VPNID, write_host_root

    base = Path(tempfile.mkdtemp(prefix="evo-support-", dir="/tmp"))
    try:
        base.chmod(0o755)
        state = base / "state"
        state.mkdir()
        os.chmod(state, 0o2750)  # noqa: S103 - as StateDirectory= and the daemon leave it
        os.chown(state, 0, 65534)  # owner: the service (root here); group: the support group
        ca = base / "ca.pem"
        shutil.copy(pki.ca_pem, ca)
        ca.chmod(0o644)
        cfg = write_config(base / "agent.toml", state, write_host_root(base / "root"), server.url,
                           ca=ca)
        cfg.write_text(cfg.read_text().replace(str(base / "control.sock"),
                                               str(base / "control.sock")))
        for p in (cfg, *base.joinpath("root").rglob("*")):
            p.chmod(0o755 if p.is_dir() else 0o644)
        server.registry.enroll(VPNID, signing.public_b64(signing.load_or_create(state)))
        proc, notify, _log = run_daemon(cfg)  # type: ignore[operator]
        notify.collect(10, until="READY=1")
        wait_for(lambda: len(server.registry.stored) == 1)
        wait_for(lambda: load_state(state / "state.json").success_path == "https", 5)
        os.chown(base / "control.sock", 0, 65534)  # what the daemon does with evo-support

        def verb(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["/usr/bin/python3", "-m", "evo_agent", *argv, "--config",
                                   str(cfg)], cwd=REPO, user=65534, group=65534,
                                  extra_groups=[], capture_output=True, text=True, timeout=60,
                                  env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
                                  check=False)

        st = verb("status", "--json")
        assert st.returncode == 0, st.stderr
        doc = json.loads(st.stdout)
        assert doc["daemon"]["running"] and doc["last_success"]["path"] == "https"
        assert doc["outbox_depth"] == 0
        sent = verb("sent", "--bytes")
        assert sent.returncode == 0 and '"functional"' in sent.stdout, sent.stderr
        diff = verb("diff")
        assert diff.returncode == 0 and "no difference" in diff.stdout, diff.stderr
        assert "collected by the daemon" in diff.stdout
        doctor = verb("doctor")
        assert "WARN  device key" in doctor.stdout and "run doctor as root" in doctor.stdout
        assert "OK    reach https_url" in doctor.stdout, doctor.stdout
        send = verb("send", "--now")
        assert send.returncode == 77 and "needs root" in send.stderr
        assert len(server.registry.stored) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_state_directory_shared_without_setgid_under_the_units_group(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the unit (Group=evo-support) the setgid bit is neither needed nor allowed.

    RestrictSUIDSGID= refuses to set it (EPERM): the appliance test's boots logged "cannot
    share /var/lib/evo-agent with group evo-support" at every start.  When the process's group
    is the support group, new files get it anyway and nothing is changed; otherwise (root
    running the daemon by hand) the directory gets the group and the setgid bit."""
    import grp

    from evo_agent.delivery import service

    own = grp.getgrgid(os.getegid()).gr_name
    state = tmp_path / "state"
    state.mkdir(mode=0o750)
    os.chmod(state, 0o750)  # noqa: S103 - the state directory mode the unit sets (0750)
    monkeypatch.setattr(service, "SUPPORT_GROUP", own)
    with monkeypatch.context() as m:
        m.setattr(os, "chmod", lambda *a: pytest.fail(f"chmod{a} under the unit's group"))
        service.share_with_support(state, 0o2750)
    assert stat.S_IMODE(state.stat().st_mode) == 0o750
    if os.geteuid() != 0:
        return  # the other half needs a chown to another group
    other = next(g for g in grp.getgrall() if g.gr_gid != os.getegid())
    monkeypatch.setattr(service, "SUPPORT_GROUP", other.gr_name)
    service.share_with_support(state, 0o2750)
    st = state.stat()
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (other.gr_gid, 0o2750)
