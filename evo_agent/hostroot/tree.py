"""Hosts whose files live under a directory of this machine: a capture unpacked (ReplayHost);
LiveHost (``live.py``) builds on the same reads."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from evo_agent.hostroot.base import MAX_READ, Host, norm, replay_command, walk


class TreeHost(Host):
    """A host whose files live under a directory of this machine."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        #: The directory the host's "/" is.
        self.root = Path(root)
        self._root = os.fspath(self.root)

    def _local(self, parts: Sequence[str]) -> str:
        # host paths are strings resolved component by component; the local path joins them
        return os.path.join(self._root, *parts) if parts else self._root

    def _resolve(self, path: str) -> list[str]:
        """Resolve links inside the root, as chroot would: absolute targets restart at the root."""

        def lookup(parts: list[str]) -> tuple[str | None, str]:
            local = self._local(parts)
            try:
                st = os.lstat(local)
            except OSError:
                return None, ""
            if stat.S_ISLNK(st.st_mode):
                return "link", os.readlink(local)
            return ("dir" if stat.S_ISDIR(st.st_mode) else "file"), ""

        return walk(path, lookup)

    def realpath(self, path: str) -> str:
        return "/" + "/".join(self._resolve(path))

    def lstat_kind(self, path: str) -> str | None:
        try:
            st = os.lstat(self._local(norm(path)))
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return "link"
        if stat.S_ISDIR(st.st_mode):
            return "dir"
        if stat.S_ISREG(st.st_mode):
            return "file"
        return "other"

    def readlink(self, path: str) -> str | None:
        parent = self._resolve(os.path.dirname(path.rstrip("/")) or "/")
        local = self._local([*parent, os.path.basename(path.rstrip("/"))])
        try:
            return os.readlink(local)
        except OSError:
            return None

    def _opening(self, path: str) -> tuple[str, int]:
        """Return the local path to open for a host path, and the flags that go with it."""
        # O_NOFOLLOW: the path is resolved already, inside the root
        return self._local(self._resolve(path)), getattr(os, "O_NOFOLLOW", 0)

    def read_bytes(self, path: str, max_bytes: int = MAX_READ) -> bytes:
        local, flags = self._opening(path)
        # O_NONBLOCK: a FIFO or device node in a hostile capture must not hang the agent.
        fd = os.open(local, os.O_RDONLY | os.O_NONBLOCK | flags)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode) and not self._allow_special(path):
                raise OSError(errno.EINVAL, "not a regular file", path)
            chunks: list[bytes] = []
            left = max_bytes
            while left > 0:
                chunk = os.read(fd, min(left, 65536))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _allow_special(self, path: str) -> bool:
        return False

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(self._opening(path)[0]))



class ReplayHost(TreeHost):
    """A capture made by ``evo-agent capture`` (or a fixture tree laid out the same way)."""

    def probe(self, name: str, func: Callable[[], bytes]) -> bytes:
        return self.run([name], 0)

    def run(self, argv: Sequence[str], timeout: float) -> bytes:
        return replay_command(self, argv)


