"""A capture .tar.gz replayed from memory (ArchiveHost) answers exactly as the unpacked capture
(ReplayHost), stays inside the capture, and refuses hostile archives."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from evo_agent.errors import CaptureError, CommandFailed, CommandUnavailable
from evo_agent.hostroot import (
    ArchiveHost,
    CaptureSource,
    Host,
    ReplayHost,
    pack_capture,
)
from evo_agent.hostroot import archive as archive_module
from tests.appliance import build_appliance, collect_all
from tests.test_hostroot import _tar_with as _tar


def _answer(call: Callable[[str], object], path: str) -> object:
    try:
        return call(path)
    except OSError as exc:
        return type(exc).__name__, exc.errno


def _paths(root: Path) -> list[str]:
    """Every path of a tree, and paths built to miss, go through files, links and '..'."""
    out = ["/", "/nothing", "/nothing/below"]
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        base = "" if rel == "." else "/" + rel
        for name in [*dirnames, *filenames]:
            p = f"{base}/{name}"
            out += [p, f"{p}/", f"{p}/x", f"{p}/..", f"{p}/../{name}", f"{p}/./uevent",
                    f"{p}/device/vendor", f"{p}/subsystem"]
    return out


def _compare(tree: Path, archive: Path, *, lstat_kind: bool = True) -> int:
    disk, mem = ReplayHost(tree), ArchiveHost(archive)
    checked = 0
    for path in _paths(tree):
        calls: list[tuple[Callable[[str], object], Callable[[str], object]]] = [
            (disk.realpath, mem.realpath), (disk.readlink, mem.readlink),
            (disk.read_bytes, mem.read_bytes), (disk.listdir, mem.listdir),
            (disk.kind, mem.kind), (disk.exists, mem.exists), (disk.is_dir, mem.is_dir),
            (disk.read_attr, mem.read_attr), (disk.listdir_or_empty, mem.listdir_or_empty)]
        if lstat_kind:
            calls.append((disk.lstat_kind, mem.lstat_kind))
        for on_disk, in_memory in calls:
            assert _answer(in_memory, path) == _answer(on_disk, path), (on_disk.__name__, path)
        checked += 1
    return checked


def _collect(host: Host) -> dict[str, Any]:
    inventory, report, dropped = collect_all(host)
    raw = {name: (o.status, o.raw, o.error_code, o.error_message)
           for name, o in inventory.outcomes.items()}
    return {"raw": raw, "report": report, "dropped": dropped}


@pytest.mark.parametrize("dongle", [True, False])
def test_appliance_archive_replays_as_the_unpacked_tree(tmp_path: Path, dongle: bool) -> None:
    tree = tmp_path / "tree"
    build_appliance(tree, dongle=dongle)
    archive = tmp_path / "cap.tar.gz"
    pack_capture(tree, archive)
    assert _compare(tree, archive) > 500
    # and the whole pipeline: every collector, the filter, the report
    unpacked = tmp_path / "unpacked"
    # the test's own archive, unpacked as it is (absolute link targets included)
    trusted = {"filter": "fully_trusted"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, **trusted)  # type: ignore[arg-type]  # noqa: S202
    with CaptureSource(archive) as host:
        assert isinstance(host, ArchiveHost)
        from_memory = _collect(host)
    from_disk = _collect(ReplayHost(unpacked))
    assert from_memory == from_disk
    assert from_memory["raw"]["dmi"][0] == "ok"
    assert from_memory["raw"]["network"][1]


def test_links_resolve_as_on_disk_and_never_leave_the_capture(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("outside\n")
    tree = tmp_path / "tree"
    (tree / "dir/sub").mkdir(parents=True)
    (tree / "dir/file").write_text("in\n")
    (tree / "dir/sub/deep").write_text("deep\n")
    links = {"dangling": "nowhere", "loop1": "loop2", "loop2": "loop1", "self": "self",
             "todir": "dir", "chain": "todir/file",
             "dir/sub/back": "../../dir/file", "dir/sub/rel": "../sub/deep",
             "dir/via": "../todir/sub", "dir/updot": "sub/../file", "empty_up": "..",
             "missing_up": "nothere/../dir/file", "tofile_below": "dir/file/x"}
    for link, target in links.items():
        (tree / link).symlink_to(target)
    archive = tmp_path / "cap.tar.gz"
    pack_capture(tree, archive)
    assert _compare(tree, archive) > 100
    # links whose target is absolute or climbs out: compared with the confined walk only
    # (ReplayHost.lstat_kind lets the kernel follow links on the way, which may leave the tree)
    (tree / "abs").symlink_to(str(outside))
    (tree / "absin").symlink_to("/dir")
    (tree / "climb").symlink_to("../outside")
    (tree / "up").symlink_to("../../../../dir")
    pack_capture(tree, archive)
    assert _compare(tree, archive, lstat_kind=False) > 100
    host = ArchiveHost(archive)
    assert host.realpath("/abs/secret") == str(outside / "secret")  # as chroot: under the capture
    with pytest.raises(FileNotFoundError):
        host.read_bytes("/abs/secret")
    with pytest.raises(FileNotFoundError):
        host.read_bytes("/climb/secret")
    assert host.realpath("/climb") == "/outside"
    assert host.lstat_kind("/abs/secret") is None
    assert host.lstat_kind("/climb/secret") is None
    assert host.read_bytes("/absin/file") == b"in\n"
    assert host.read_bytes("/up/file") == b"in\n"  # ".." stops at the capture's root
    assert host.lstat_kind("/absin/sub/deep") == "file"
    with pytest.raises(OSError, match="too many levels"):
        host.read_bytes("/loop1")
    assert host.lstat_kind("/loop1/x") is None
    assert host.read_bytes("/dir/file", 1) == b"i"


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info, None


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside", "a/../../outside", "a/..", "./",
                                  "sys/../etc"])
def test_unsafe_member_names_are_refused(tmp_path: Path, name: str) -> None:
    for mode in ("w:gz", "w:bz2"):
        with pytest.raises(CaptureError, match="unsafe member"):
            ArchiveHost(_tar(tmp_path, _file(name), mode=mode))


@pytest.mark.parametrize("members, match", [
    # a member below a link: the link would take it anywhere
    ([_link("etc", "/"), _file("etc/passwd")], "through a link"),
    ([_link("etc", "../.."), _dir("etc/x")], "through a link"),
    # a link after files under its name (its directory is already known)
    ([_file("sys/b/c/one"), _file("sys/b/c/d/e"), _link("sys/b", "/tmp"), _file("sys/b/f")],
     "appears twice"),
    ([_file("sys/b/c/one"), _link("sys/b/c", "/tmp")], "appears twice"),
    # the same name twice, whatever the kinds
    ([_file("etc/hostname", b"a"), _file("etc/hostname", b"b")], "appears twice"),
    ([_link("etc/hostname", "x"), _file("etc/hostname")], "appears twice"),
    ([_file("etc/hostname"), _link("etc/hostname", "x")], "appears twice"),
    ([_file("etc"), _dir("etc")], "appears twice"),
    ([_dir("etc"), _file("etc")], "appears twice"),
    ([_file("etc/x"), _file("etc")], "appears twice"),
    ([_link("etc", "dir"), _dir("etc")], "appears twice"),
    ([_file("etc"), _file("etc/x")], "under a file"),
    ([_link("etc/l", "")], "no usable target"),
])
def test_hostile_layouts_are_refused(tmp_path: Path, members: list[tuple[tarfile.TarInfo,
                                                                         bytes | None]],
                                     match: str) -> None:
    # the fast reader (.tar.gz) and tarfile (.tar.bz2) refuse them alike
    for mode in ("w:gz", "w:bz2"):
        with pytest.raises(CaptureError, match=match):
            ArchiveHost(_tar(tmp_path, *members, mode=mode))


def test_hard_links_devices_and_fifos_are_left_out(tmp_path: Path) -> None:
    fifo = tarfile.TarInfo("run/fifo")
    fifo.type = tarfile.FIFOTYPE
    dev = tarfile.TarInfo("dev/sda")
    dev.type = tarfile.BLKTYPE
    archive = _tar(tmp_path, _file("etc/shadow", b"secret"), _link("etc/hard", "etc/shadow",
                                                                   tarfile.LNKTYPE),
                   _link("etc/hardout", "/etc/shadow", tarfile.LNKTYPE), (fifo, None),
                   (dev, None))
    host = ArchiveHost(archive)
    for path in ("/etc/hard", "/etc/hardout", "/run/fifo", "/dev/sda"):
        assert host.lstat_kind(path) is None
        with pytest.raises(FileNotFoundError):
            host.read_bytes(path)
    # their directories exist, as tar makes them
    assert host.listdir("/etc") == ["shadow"]
    assert host.listdir("/run") == []
    # and a name given twice is refused even when the second is one of these
    with pytest.raises(CaptureError, match="appears twice"):
        ArchiveHost(_tar(tmp_path, _file("run/fifo"), (fifo, None)))


def test_duplicate_directories_are_merged(tmp_path: Path) -> None:
    host = ArchiveHost(_tar(tmp_path, _file("a/b/c"), _dir("a/b"), _dir("a"), _file("a/d"),
                            _dir("a/b/")))
    assert host.listdir("/a") == ["b", "d"]
    assert host.listdir("/a/b") == ["c"]
    with pytest.raises(NotADirectoryError):
        host.listdir("/a/d")
    with pytest.raises(NotADirectoryError):
        host.read_bytes("/a/d/x")
    with pytest.raises(OSError, match="not a regular file"):
        host.read_bytes("/a")


def test_huge_members_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = b"y" * (archive_module.MAX_READ + 10)
    host = ArchiveHost(_tar(tmp_path, _file("big", big)))
    # kept as far as any read goes, as ReplayHost reads an unpacked file
    assert host.read_bytes("/big") == big[:archive_module.MAX_READ]
    monkeypatch.setattr(archive_module, "MAX_ARCHIVE_MEMBER", 1000)
    with pytest.raises(CaptureError, match="too large"):
        ArchiveHost(_tar(tmp_path, _file("big", b"z" * 1001)))
    monkeypatch.setattr(archive_module, "MAX_ARCHIVE_BYTES", 2500)
    with pytest.raises(CaptureError, match="bytes of content"):
        ArchiveHost(_tar(tmp_path, *[_file(f"f{i}", b"z" * 900) for i in range(3)]))
    monkeypatch.setattr(archive_module, "MAX_ARCHIVE_MEMBERS", 10)
    with pytest.raises(CaptureError, match="more than 10 members"):
        ArchiveHost(_tar(tmp_path, *[_file(f"f{i}", b"") for i in range(11)]))


def test_truncated_and_garbage_archives_are_capture_errors(tmp_path: Path) -> None:
    good = _tar(tmp_path, _file("commands/dmidecode.txt", b"# dmidecode\n" * 5000))
    data = good.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CaptureError):
        ArchiveHost(cut)
    garbage = tmp_path / "g.tar.gz"
    garbage.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(CaptureError):
        ArchiveHost(garbage)
    with pytest.raises(CaptureError):
        ArchiveHost(tmp_path / "missing.tar.gz")


def test_commands_replay_from_the_archive(tmp_path: Path) -> None:
    archive = _tar(tmp_path, _file("commands/dmidecode.txt", b"# dmidecode 3.4\n"),
                   _file("commands/lsusb.error", b"lsusb: exit status 1\n"),
                   _link("commands/lspci.txt", "/etc/shadow"), _file("etc/shadow", b"s"),
                   _dir("commands/ip.txt"))
    host = ArchiveHost(archive)
    assert host.run(["dmidecode"], 5) == b"# dmidecode 3.4\n"
    assert host.probe("dmidecode", lambda: b"live") == b"# dmidecode 3.4\n"
    with pytest.raises(CommandFailed, match="exit status 1"):
        host.run(["lsusb"], 5)
    with pytest.raises(CommandUnavailable):
        host.run(["ethtool"], 5)
    with pytest.raises(CommandFailed, match="unreadable"):
        host.run(["ip"], 5)
    # a link inside the capture is followed inside it, as ReplayHost does
    assert host.run(["lspci"], 5) == b"s"


def _variety(depth: int) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    long_dir = "sys/devices/" + "/".join(f"pci0000:00/0000:00:{i:02x}.0" for i in range(depth))
    hard = tarfile.TarInfo("etc/hard")
    hard.type = tarfile.LNKTYPE
    hard.linkname = "etc/hostname"
    hard.size = 7  # declared, but a hard link has no data blocks
    old_dir = tarfile.TarInfo("var/old/")
    old_dir.type = tarfile.AREGTYPE  # an old tar's directory: a plain file named with a slash
    return [_dir("sys"), _file(f"{long_dir}/vendor", b"0x8086\n"),
            _link(f"{long_dir}/driver", "../" * 14 + "bus/pci/drivers/" + "e" * 120),
            _file("etc/hostname", b"evo-\xc3\xa9\n"), (hard, None), (old_dir, None),
            _file("etc/na\u00efve-\u00e9", b"u"), _file("etc/empty", b""),
            _file("proc/big", bytes(range(256)) * 40), _link("etc/localtime", "/usr/share/x")]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT])
def test_every_tar_format_replays_alike(tmp_path: Path, fmt: int) -> None:
    # ustar: names up to 255 bytes (in the prefix and name fields), no long link targets
    members = _variety(5 if fmt == tarfile.USTAR_FORMAT else 12)
    if fmt == tarfile.USTAR_FORMAT:
        members = [m for m in members if len(m[0].linkname) < 100]
        assert any(len(m[0].name) > 100 for m in members)
    host = ArchiveHost(_tar(tmp_path, *members, fmt=fmt))
    for info, data in members:
        name = "/" + info.name.rstrip("/")
        if info.islnk():
            assert host.lstat_kind(name) is None  # hard links are left out
        elif info.issym():
            assert host.readlink(name) == info.linkname
        elif info.name.endswith("/") or info.isdir():
            assert host.is_dir(name)
        else:
            assert host.read_bytes(name) == data, name
