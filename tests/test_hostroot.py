"""The host root: replay confinement, record/replay equality, commands, capture archives."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from evo_agent.errors import CaptureError, CommandFailed, CommandUnavailable
from evo_agent.hostroot import (
    CaptureSource,
    LiveHost,
    RecordingHost,
    ReplayHost,
    command_name,
    pack_capture,
)


def make_sysfs(root: Path) -> None:
    """A small tree shaped like sysfs: class links pointing into devices/, as the kernel does."""
    dev = root / "sys/devices/pci0000:00/0000:00:1f.6/net/eth0"
    dev.mkdir(parents=True)
    (dev / "address").write_text("3c:ec:ef:00:11:22\n")
    (dev / "type").write_text("1\n")
    os.symlink("../../../0000:00:1f.6", dev / "device")
    (root / "sys/devices/pci0000:00/0000:00:1f.6/vendor").write_text("0x8086\n")
    (root / "sys/class/net").mkdir(parents=True)
    os.symlink("../../devices/pci0000:00/0000:00:1f.6/net/eth0", root / "sys/class/net/eth0")
    (root / "sys/class/net/lo").mkdir()
    (root / "sys/class/net/lo/address").write_text("00:00:00:00:00:00\n")
    (root / "etc").mkdir()
    (root / "etc/hostname").write_bytes(b"evo-\xff\xfe\n")


def test_replay_follows_links_inside_the_root(tmp_path: Path) -> None:
    make_sysfs(tmp_path)
    host = ReplayHost(tmp_path)
    assert host.read_attr("/sys/class/net/eth0/address") == "3c:ec:ef:00:11:22"
    assert host.read_attr("/sys/class/net/eth0/device/vendor") == "0x8086"
    assert host.realpath("/sys/class/net/eth0") == "/sys/devices/pci0000:00/0000:00:1f.6/net/eth0"
    assert host.readlink("/sys/class/net/eth0/device") == "../../../0000:00:1f.6"
    assert host.listdir("/sys/class/net") == ["eth0", "lo"]
    assert host.is_dir("/sys/class/net/eth0")
    assert not host.exists("/sys/class/net/eth1")
    assert host.read_attr("/sys/class/net/eth1/address") is None


def test_replay_cannot_escape_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret").write_text("outside\n")
    os.symlink("/../../secret", root / "abs")
    os.symlink("../secret", root / "rel")
    (root / "secret").write_text("inside\n")
    host = ReplayHost(root)
    # Absolute targets restart at the capture's root, and '..' stops there, as in a chroot.
    assert host.read_attr("/abs") == "inside"
    assert host.read_attr("/rel") == "inside"
    assert host.read_attr("/../../secret") == "inside"


def test_symlink_loop_is_an_oserror_not_a_hang(tmp_path: Path) -> None:
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    with pytest.raises(OSError):
        ReplayHost(tmp_path).read_bytes("/a")


def test_fifo_in_a_capture_does_not_block(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError):
        ReplayHost(tmp_path).read_bytes("/fifo")


def test_non_utf8_becomes_replacement_characters(tmp_path: Path) -> None:
    make_sysfs(tmp_path)
    assert ReplayHost(tmp_path).read_text("/etc/hostname") == "evo-\ufffd\ufffd\n"


def test_record_then_replay_gives_the_same_answers(tmp_path: Path) -> None:
    live_root = tmp_path / "live"
    make_sysfs(live_root)
    capture = tmp_path / "capture"
    capture.mkdir()
    live = LiveHost(live_root)
    rec = RecordingHost(live, capture)

    def reads(h: object) -> list[object]:
        from evo_agent.hostroot import Host

        assert isinstance(h, Host)
        return [
            h.listdir("/sys/class/net"),
            h.read_attr("/sys/class/net/eth0/address"),
            h.read_attr("/sys/class/net/eth0/device/vendor"),
            h.realpath("/sys/class/net/eth0/device"),
            h.is_dir("/sys/class/net/lo"),
            h.read_text("/etc/hostname"),
            h.read_attr("/sys/nonexistent"),
        ]

    expected = reads(live)
    assert reads(rec) == expected
    assert reads(ReplayHost(capture)) == expected
    # links are kept as links in the capture, so sysfs' shape survives
    assert (capture / "sys/class/net/eth0").is_symlink()
    # nothing that was not read was copied
    assert not (capture / "sys/class/net/lo/address").exists()


def test_commands_are_recorded_and_replayed(tmp_path: Path) -> None:
    rec = RecordingHost(LiveHost("/"), tmp_path)
    out = rec.run(["uname", "-s"], timeout=10)
    assert out.strip() == b"Linux"
    assert (tmp_path / "commands" / "uname_-s.txt").read_bytes() == out
    with pytest.raises(CommandFailed) as failed:
        rec.run(["false"], timeout=10)
    with pytest.raises(CommandUnavailable):
        rec.run(["evo-no-such-command"], timeout=10)
    replay = ReplayHost(tmp_path)
    assert replay.run(["uname", "-s"], timeout=10) == out
    with pytest.raises(CommandFailed) as replayed:
        replay.run(["false"], timeout=10)
    assert str(replayed.value) == str(failed.value)
    with pytest.raises(CommandUnavailable):
        replay.run(["evo-no-such-command"], timeout=10)


def test_command_timeout_is_a_failure(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed, match="no answer within"):
        LiveHost("/").run(["sleep", "5"], timeout=0.2)


def test_commands_never_mix_into_another_root(tmp_path: Path) -> None:
    with pytest.raises(CommandUnavailable):
        LiveHost(tmp_path).run(["uname"], timeout=5)


def test_probe_is_recorded_like_a_command(tmp_path: Path) -> None:
    rec = RecordingHost(LiveHost("/"), tmp_path)
    assert rec.probe("netlink-addresses", lambda: b'{"eth0": {}}') == b'{"eth0": {}}'
    assert ReplayHost(tmp_path).probe("netlink-addresses", lambda: b"live!") == b'{"eth0": {}}'


def test_command_name() -> None:
    assert command_name(["dmidecode"]) == "dmidecode"
    assert command_name(["/usr/sbin/dmidecode", "-t", "17"]) == "dmidecode_-t_17"
    assert command_name(["x", "a b/c"]) == "x_a_b_c"


def test_pack_is_private_and_round_trips(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_sysfs(src)
    (src / "commands").mkdir()
    (src / "commands/dmidecode.txt").write_text("# dmidecode 3.4\n")
    archive = tmp_path / "c.tar.gz"
    pack_capture(src, archive)
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    with CaptureSource(archive) as host:
        assert host.read_attr("/sys/class/net/eth0/device/vendor") == "0x8086"
        assert host.run(["dmidecode"], 5) == b"# dmidecode 3.4\n"


def _tar_with(tmp_path: Path, *members: tuple[tarfile.TarInfo, bytes | None],
              mode: str = "w:gz", fmt: int = tarfile.PAX_FORMAT) -> Path:
    """Write an archive of exactly ``members`` (``None``: no data, as for links and dirs)."""
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, mode, format=fmt) as tar:  # type: ignore[call-overload]
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside", "a/../../outside"])
def test_unsafe_member_names_are_refused(tmp_path: Path, name: str) -> None:
    archive = _tar_with(tmp_path, (tarfile.TarInfo(name), b"x"))
    with pytest.raises(CaptureError, match="unsafe member"), CaptureSource(archive):
        pass


def test_members_written_through_a_link_are_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("etc")
    link.type = tarfile.SYMTYPE
    link.linkname = str(tmp_path / "victim")
    (tmp_path / "victim").mkdir()
    archive = _tar_with(tmp_path, (link, None), (tarfile.TarInfo("etc/passwd"), b"pwned"))
    with pytest.raises(CaptureError, match="through a link"), CaptureSource(archive):
        pass
    assert not (tmp_path / "victim" / "passwd").exists()


def test_damaged_archive_is_a_capture_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(CaptureError), CaptureSource(bad):
        pass
    with pytest.raises(CaptureError, match="no such capture"), CaptureSource(tmp_path / "none"):
        pass


def test_a_file_tested_for_existence_only_is_recorded(tmp_path: Path) -> None:
    """Collectors test sysfs markers without reading them (``sda2/partition``): replay agrees."""
    live_root = tmp_path / "live"
    part = live_root / "sys/devices/pci0000:00/0000:00:17.0/block/sda/sda2"
    part.mkdir(parents=True)
    (part / "partition").write_text("2\n")
    (live_root / "sys/dev/block").mkdir(parents=True)
    os.symlink("../../devices/pci0000:00/0000:00:17.0/block/sda/sda2",
               live_root / "sys/dev/block/8:2")
    capture = tmp_path / "capture"
    rec = RecordingHost(LiveHost(live_root), capture)
    assert rec.exists("/sys/dev/block/8:2/partition")
    assert not rec.exists("/sys/dev/block/8:2/holders")
    replay = ReplayHost(capture)
    assert replay.exists("/sys/dev/block/8:2/partition")
    assert not replay.exists("/sys/dev/block/8:2/holders")
    assert replay.read_attr("/sys/dev/block/8:2/partition") == "2"


def test_a_closed_recorder_reads_but_records_nothing(tmp_path: Path) -> None:
    live_root = tmp_path / "live"
    make_sysfs(live_root)
    capture = tmp_path / "capture"
    rec = RecordingHost(LiveHost(live_root), capture)
    rec.close()
    assert rec.read_attr("/sys/class/net/eth0/address") == "3c:ec:ef:00:11:22"
    assert rec.listdir("/sys/class/net") == ["eth0", "lo"]
    assert not capture.exists() or list(capture.rglob("*")) == []


def test_replayed_commands_stay_inside_the_capture(tmp_path: Path) -> None:
    (tmp_path / "commands").mkdir()
    os.symlink("/etc/os-release", tmp_path / "commands" / "dmidecode.txt")
    os.mkfifo(tmp_path / "commands" / "lsusb.txt")
    host = ReplayHost(tmp_path)
    with pytest.raises(CommandUnavailable):
        host.run(["dmidecode"], 5)  # the link resolves inside the capture, where nothing is
    with pytest.raises(CommandFailed, match="unreadable"):
        host.run(["lsusb"], 5)


def _live_paths(tmp: Path) -> list[str]:
    """Paths of this machine worth resolving: sysfs devices through their links, and oddities."""
    paths = ["/", "/sys", "/proc/self/mountinfo", "/proc/cpuinfo", "/etc/hostname",
             "/sys/class/net/no-such-if/address", "/proc/self/fd", "/sys/class/net/lo/.",
             "/sys/class/net/lo/../lo/address", "//sys//class/net", "/sys/class/net/"]
    for top in ("/sys/class/net", "/sys/class/sound", "/sys/block", "/sys/bus/pci/devices",
                "/sys/bus/usb/devices", "/sys/class/dmi/id", "/sys/dev/block"):
        for name in sorted(os.listdir(top))[:12] if os.path.isdir(top) else []:
            base = f"{top}/{name}"
            paths += [base, f"{base}/", f"{base}/uevent", f"{base}/device",
                      f"{base}/device/driver", f"{base}/subsystem", f"{base}/device/subsystem",
                      f"{base}/address", f"{base}/dev", f"{base}/no-such-attr/x"]
    (tmp / "dir").mkdir()
    (tmp / "dir/file").write_text("x\n")
    links = {"dangling": "nowhere", "loop1": "loop2", "loop2": "loop1", "todir": "dir",
             "chain": "todir/file", "abs": str(tmp / "dir"), "up": "../" + tmp.name + "/dir"}
    for link, target in links.items():
        (tmp / link).symlink_to(target)
    for name in [*links, "dir", "dir/file", "dir/file/below", "chain/x", "todir/file",
                 "todir/../dir/file", "abs/file", "up/file", "loop1/x"]:
        paths += [f"{tmp}/{name}"]
    return paths


def test_live_root_answers_as_the_component_walk(tmp_path: Path) -> None:
    # On "/" the kernel resolves paths; every answer must be the one the walk gave
    from evo_agent.hostroot import LiveHost

    fast = LiveHost("/")
    walk = LiveHost("/")
    walk._slash = False  # the component walk inside the root, as before

    def answer(call: Callable[[str], object], path: str) -> object:
        try:
            return call(path)
        except OSError as exc:
            return type(exc).__name__, exc.errno

    checked = 0
    for path in _live_paths(tmp_path):
        assert fast.realpath(path) == os.path.realpath(path), path
        assert fast.kind(path) == walk.lstat_kind(os.path.realpath(path)), path
        assert answer(fast.readlink, path) == answer(walk.readlink, path), path
        assert answer(fast.read_bytes, path) == answer(walk.read_bytes, path), path
        assert answer(fast.listdir, path) == answer(walk.listdir, path), path
        checked += 1
    assert checked > 30


def test_a_link_after_files_under_the_same_name_is_still_refused(tmp_path: Path) -> None:
    # directories are checked once each: a link member must not sneak in after them
    (tmp_path / "victim").mkdir()
    link = tarfile.TarInfo("sys/a")
    link.type = tarfile.SYMTYPE
    link.linkname = str(tmp_path / "victim")
    deep = tarfile.TarInfo("sys/b/c/d/e")
    archive = _tar_with(tmp_path, (tarfile.TarInfo("sys/b/c/one"), b"1"), (deep, b"2"),
                        (link, None), (tarfile.TarInfo("sys/a/pwned"), b"x"))
    with pytest.raises(CaptureError, match="goes through a link"), CaptureSource(archive):
        pass
    assert not (tmp_path / "victim" / "pwned").exists()
