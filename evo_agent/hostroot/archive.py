"""A capture .tar.gz (or any tar tarfile reads) replayed from memory, never unpacked.

tarfile reads the archive; nothing is extracted, so no extraction filter (``tarfile.data_filter``)
applies: the checks that matter are made here on each member, as it is indexed.  Absolute names
and ``..`` are refused, as are members under a link or a file and names given twice; links stay
links, resolved later inside the index by the chroot-like walk (so an absolute target, which
sysfs and /etc captures do hold, points into the capture, never out of it); hard links, devices
and FIFOs are left out; the member count and the bytes kept are bounded.
"""

from __future__ import annotations

import errno
import os
import tarfile
from collections.abc import Callable, Sequence

from evo_agent.errors import CaptureError
from evo_agent.hostroot.base import MAX_READ, Host, norm, replay_command, walk

#: Bounds of a capture archive read into memory.  A capture of a real appliance holds a few
#: hundred members and well under a megabyte; these only stop a hostile or corrupt archive
#: (a gzip bomb, millions of empty members) from eating the device's memory or minutes of CPU.
MAX_ARCHIVE_MEMBERS = 200_000
MAX_ARCHIVE_MEMBER = 64 * 1024 * 1024  # declared size of one member
MAX_ARCHIVE_BYTES = 256 * 1024 * 1024  # bytes kept in memory, all members together


def _error(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)

class ArchiveHost(Host):
    """A capture archive read once into an index of host paths, answering as ReplayHost would
    answer from the archive unpacked."""

    def __init__(self, archive: str | os.PathLike[str]) -> None:
        # key: the host path's components joined with "/" ("" is the root)
        self._kinds: dict[str, str] = {"": "dir"}
        self._data: dict[str, bytes] = {}
        self._links: dict[str, str] = {}
        self._children: dict[str, list[str]] = {"": []}
        self._load(archive)
        self._listing: dict[str, list[str]] = {}

    # -- loading ----------------------------------------------------------------------------
    def _load(self, archive: str | os.PathLike[str]) -> None:
        try:
            tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed by the with below
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise CaptureError(f"{archive}: not a readable capture archive ({exc})") from None
        kept = 0
        with tar:
            try:
                # member by member, each read as it comes: getmembers() first would rewind the
                # gzip stream and inflate it twice
                for count, member in enumerate(tar, 1):
                    if count > MAX_ARCHIVE_MEMBERS:
                        raise CaptureError(f"{archive}: more than {MAX_ARCHIVE_MEMBERS} members")
                    data = b""
                    if member.isreg():
                        if member.size > MAX_ARCHIVE_MEMBER:
                            raise CaptureError(f"{archive}: member {member.name!r} is too large "
                                               f"({member.size} bytes)")
                        src = tar.extractfile(member)
                        # a collector never reads more than MAX_READ of a file
                        data = src.read(min(member.size, MAX_READ)) if src is not None else b""
                        kept += len(data)
                        if kept > MAX_ARCHIVE_BYTES:
                            raise CaptureError(f"{archive}: more than {MAX_ARCHIVE_BYTES} bytes "
                                               "of content")
                    kind = ("dir" if member.isdir() else "link" if member.issym()
                            else "file" if member.isreg() else "skip")
                    self._add(archive, member.name, kind, member.linkname, data)
            except (OSError, tarfile.TarError, EOFError) as exc:
                raise CaptureError(f"{archive}: damaged capture archive ({exc})") from None

    def _add(self, archive: str | os.PathLike[str], name: str, member: str, linkname: str,
             data: bytes) -> None:
        """Index one member, refusing unsafe names and layouts."""
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if not parts or name.startswith("/") or ".." in parts or "\0" in name:
            raise CaptureError(f"{archive}: unsafe member name {name!r}")
        parent = ""
        for part in parts[:-1]:
            key = f"{parent}/{part}" if parent else part
            kind = self._kinds.get(key)
            if kind is None:
                self._kinds[key] = "dir"
                self._children[key] = []
                self._children[parent].append(part)
            elif kind == "link":
                raise CaptureError(f"{archive}: member {name!r} goes through a link")
            elif kind != "dir":
                raise CaptureError(f"{archive}: member {name!r} is under a file")
            parent = key
        key = "/".join(parts)
        kind = self._kinds.get(key)
        if kind is not None and not (kind == "dir" and member == "dir"):
            raise CaptureError(f"{archive}: member {name!r} appears twice")
        if member == "dir":
            if kind is None:
                self._children[key] = []
        elif member == "link":
            if not linkname or "\0" in linkname:
                raise CaptureError(f"{archive}: link {name!r} has no usable target")
            self._links[key] = linkname
        elif member == "file":
            self._data[key] = data
        else:
            # hard links, devices and FIFOs: no collector reads them from a capture
            return
        if kind is None:
            self._kinds[key] = member
            self._children[parent].append(parts[-1])

    # -- reading ----------------------------------------------------------------------------
    def _lookup(self, parts: list[str]) -> tuple[str | None, str]:
        key = "/".join(parts)
        kind = self._kinds.get(key)
        return kind, self._links.get(key, "") if kind == "link" else ""

    def _resolved(self, path: str) -> tuple[str, str | None]:
        """Return the resolved key of a path and what is there (None: nothing)."""
        key = "/".join(walk(path, self._lookup))
        return key, self._kinds.get(key)

    def _missing(self, key: str, path: str) -> OSError:
        # as the kernel answers: ENOTDIR when a component on the way is a file
        parts = key.split("/")
        for depth in range(1, len(parts)):
            if self._kinds.get("/".join(parts[:depth])) == "file":
                return _error(errno.ENOTDIR, path)
        return _error(errno.ENOENT, path)

    def realpath(self, path: str) -> str:
        return "/" + "/".join(walk(path, self._lookup))

    def lstat_kind(self, path: str) -> str | None:
        parts = norm(path)
        if not parts:
            return "dir"
        # the parent is resolved inside the capture: links on the way are followed there
        try:
            parent = walk("/" + "/".join(parts[:-1]), self._lookup)
        except OSError:  # a link loop on the way: lstat fails, as on disk
            return None
        return self._kinds.get("/".join([*parent, parts[-1]]))

    def readlink(self, path: str) -> str | None:
        parent = walk(os.path.dirname(path.rstrip("/")) or "/", self._lookup)
        key = "/".join([*parent, os.path.basename(path.rstrip("/"))])
        return self._links.get(key)

    def read_bytes(self, path: str, max_bytes: int = MAX_READ) -> bytes:
        key, kind = self._resolved(path)
        if kind == "file":
            return self._data[key][:max_bytes]
        if kind is None:
            raise self._missing(key, path)
        # a directory: ReplayHost opens it and refuses it as not a regular file
        raise OSError(errno.EINVAL, "not a regular file", path)

    def listdir(self, path: str) -> list[str]:
        key, kind = self._resolved(path)
        if kind == "dir":
            names = self._listing.get(key)
            if names is None:
                names = self._listing[key] = sorted(self._children[key])
            return list(names)
        if kind is None:
            raise self._missing(key, path)
        raise _error(errno.ENOTDIR, path)

    def run(self, argv: Sequence[str], timeout: float) -> bytes:
        return replay_command(self, argv)

    def probe(self, name: str, func: Callable[[], bytes]) -> bytes:
        return self.run([name], 0)


