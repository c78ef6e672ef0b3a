"""Capture archives: packing a capture directory, and opening ``--from`` as a host."""

from __future__ import annotations

import contextlib
import os
import tarfile
from pathlib import Path

from evo_agent.errors import CaptureError
from evo_agent.hostroot.archive import ArchiveHost
from evo_agent.hostroot.base import Host
from evo_agent.hostroot.tree import ReplayHost


def pack_capture(capture_dir: str | os.PathLike[str], output: str | os.PathLike[str]) -> None:
    """Pack a capture directory as a .tar.gz readable only by its owner (it holds raw values)."""
    out = Path(output)
    tmp = out.with_name(f".{out.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            for entry in sorted(Path(capture_dir).rglob("*")):
                arcname = entry.relative_to(capture_dir).as_posix()
                info = tar.gettarinfo(str(entry), arcname)
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                if info.isreg():
                    with entry.open("rb") as fh:
                        tar.addfile(info, fh)
                else:
                    tar.addfile(info)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise



class CaptureSource:
    """Opens ``--from`` (a directory or a .tar.gz) as a host to replay; use as a context manager.

    A directory is a ReplayHost; an archive is read into memory (ArchiveHost), not unpacked.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:

        self.path = Path(path)

    def __enter__(self) -> Host:
        if self.path.is_dir():
            return ReplayHost(self.path)
        if not self.path.exists():
            raise CaptureError(f"{self.path}: no such capture (give a directory or a .tar.gz)")
        return ArchiveHost(self.path)

    def __exit__(self, *exc: object) -> None:
        pass

