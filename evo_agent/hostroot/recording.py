"""The live system read through, with a copy of everything handed out: ``evo-agent capture``."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from evo_agent.errors import CommandFailed
from evo_agent.hostroot.base import MAX_READ, Host, command_name, norm, walk
from evo_agent.hostroot.live import LiveHost


class RecordingHost(Host):
    """Reads a live host and copies every file, link and command output it hands out."""

    def __init__(self, inner: LiveHost, capture_dir: str | os.PathLike[str]) -> None:
        self.inner = inner
        self.out = Path(capture_dir)
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Stop recording: a collector abandoned after its deadline may still be reading, and
        must not change the capture while it is packed (or make it differ from the live report).
        """
        with self._lock:
            self._closed = True

    # -- recording ---------------------------------------------------------------------------
    def _mirror(self, path: str) -> list[str]:
        """Copy the link chain and directories leading to ``path``; return its resolved parts."""

        def lookup(parts: list[str]) -> tuple[str | None, str]:
            host_path = "/" + "/".join(parts)
            kind = self.inner.lstat_kind(host_path)
            dest = self.out.joinpath(*parts)
            if kind == "link":
                target = self.inner.readlink(host_path) or ""
                dest.parent.mkdir(parents=True, exist_ok=True)
                if not os.path.lexists(dest):
                    os.symlink(target, dest)
                return kind, target
            if kind == "dir":
                dest.mkdir(parents=True, exist_ok=True)
            return kind, ""

        try:
            return walk(path, lookup)
        except OSError:
            # a link loop: the live call answered (or will fail) on its own; record what was seen
            return norm(path)

    @contextlib.contextmanager
    def _recording(self) -> Iterator[bool]:
        """Hold the lock; yield False once closed, so nothing more is written."""
        with self._lock:
            yield not self._closed

    def _copy(self, path: str, data: bytes) -> None:
        """Record a file's content under its resolved path; the longest read wins."""
        with self._recording() as active:
            if not active:
                return
            dest = self.out.joinpath(*self._mirror(path))
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists() or dest.stat().st_size < len(data):
                dest.write_bytes(data)

    def _mirror_path(self, path: str) -> None:
        with self._recording() as active:
            if active:
                self._mirror(path)

    def read_bytes(self, path: str, max_bytes: int = MAX_READ) -> bytes:
        data = self.inner.read_bytes(path, max_bytes)
        self._copy(path, data)
        return data

    def listdir(self, path: str) -> list[str]:
        names = self.inner.listdir(path)
        with self._recording() as active:
            if active:
                parts = self._mirror(path)
                self.out.joinpath(*parts).mkdir(parents=True, exist_ok=True)
                base = "/" + "/".join(parts)
                for name in names:
                    child = f"{base.rstrip('/')}/{name}"
                    if self.inner.lstat_kind(child) in ("dir", "link"):
                        self._mirror(child)
        return names

    def realpath(self, path: str) -> str:
        self._mirror_path(path)
        return self.inner.realpath(path)

    def lstat_kind(self, path: str) -> str | None:
        kind = self.inner.lstat_kind(path)
        if kind in ("dir", "link"):
            self._mirror_path(path)
        elif kind == "file":
            # A collector may test a file's existence without reading it (``partition`` in a
            # sysfs block device says "this is a partition"): the replay must see it too, so
            # it is copied.  A file that cannot be read (some sysfs attributes answer EIO) is
            # recorded empty, which keeps its existence.
            try:
                data = self.inner.read_bytes(path, 64 * 1024)
            except OSError:
                data = b""
            self._copy(path, data)
        return kind

    def readlink(self, path: str) -> str | None:
        target = self.inner.readlink(path)
        if target is not None:
            self._mirror_path(path)
        return target

    def run(self, argv: Sequence[str], timeout: float) -> bytes:
        return self._record_command(command_name(argv), lambda: self.inner.run(argv, timeout))

    def probe(self, name: str, func: Callable[[], bytes]) -> bytes:
        return self._record_command(command_name([name]), lambda: self.inner.probe(name, func))

    def _record_command(self, name: str, call: Callable[[], bytes]) -> bytes:
        commands = self.out / "commands"
        try:
            data = call()
        except CommandFailed as exc:
            with self._recording() as active:
                if active:
                    commands.mkdir(parents=True, exist_ok=True)
                    (commands / f"{name}.error").write_text(str(exc) + "\n", "utf-8")
            raise
        with self._recording() as active:
            if active:
                commands.mkdir(parents=True, exist_ok=True)
                (commands / f"{name}.txt").write_bytes(data)
        return data


