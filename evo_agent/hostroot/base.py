"""The Host interface every collector reads through, and the path walk hosts share.

A host path is absolute and resolved one component at a time, as inside a chroot: links with
absolute targets restart at the host's root and ``..`` stops there, so a capture (or an image
mounted elsewhere) can never lead a collector outside it.
"""

from __future__ import annotations

import errno
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from evo_agent.errors import CommandFailed, NotCaptured

#: Largest file a collector may read; sysfs and procfs files are far smaller, and a bound keeps
#: a corrupt capture or a device node from eating the appliance's memory.
MAX_READ = 4 * 1024 * 1024
#: Commands are searched here: the daemon runs with a minimal PATH, and dmidecode lives in sbin.
COMMAND_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_SYMLINKS = 40


def command_name(argv: Sequence[str]) -> str:
    """Return the capture file name of a command (``dmidecode -t 17`` -> ``dmidecode_-t_17``)."""
    parts = [os.path.basename(argv[0]), *argv[1:]]
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", "_".join(parts))


def norm(path: str) -> list[str]:
    """Split an absolute host path into its components, refusing relative paths."""
    if not path.startswith("/"):
        raise ValueError(f"host paths are absolute, got {path!r}")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return parts


def walk(path: str, lookup: Callable[[list[str]], tuple[str | None, str]]) -> list[str]:
    """Resolve the links of ``path`` one component at a time, as inside a chroot.

    ``lookup(parts)`` gives the kind of that prefix ('link', 'dir', 'file', 'other' or None when it
    does not exist) and, for a link, its target.  Absolute targets restart at the root and ``..``
    stops there.  A missing component ends the walk, the rest kept as it is.
    """
    pending = norm(path)
    done: list[str] = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = [*done, part]
        kind, target = lookup(candidate)
        if kind is None:
            return candidate + pending
        if kind == "link":
            hops += 1
            if hops > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
            if target.startswith("/"):
                done = []
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
        else:
            done = candidate
    return done


class Host(ABC):
    """Read-only access to one system: its files and the output of its commands."""

    @abstractmethod
    def read_bytes(self, path: str, max_bytes: int = MAX_READ) -> bytes:
        """Return the content of a file; raises OSError (FileNotFoundError, PermissionError...)."""

    @abstractmethod
    def listdir(self, path: str) -> list[str]:
        """Return the sorted names in a directory; raises OSError."""

    @abstractmethod
    def realpath(self, path: str) -> str:
        """Return the host path with every symbolic link resolved (non-existent tail kept)."""

    @abstractmethod
    def lstat_kind(self, path: str) -> str | None:
        """Return 'file', 'dir', 'link', 'other', or None when the path does not exist."""

    @abstractmethod
    def run(self, argv: Sequence[str], timeout: float) -> bytes:
        """Run a command and return its stdout; raises CommandUnavailable or CommandFailed."""

    @abstractmethod
    def probe(self, name: str, func: Callable[[], bytes]) -> bytes:
        """Return what an in-process probe of the live system gives (e.g. netlink addresses).

        For reads that are neither a file nor a command: live, ``func()`` is called; a capture
        stores its result as ``commands/<name>.txt``, and a replay returns that file.  ``func``
        raises CommandUnavailable or CommandFailed like a command would.
        """

    def read_text(self, path: str, max_bytes: int = MAX_READ) -> str:
        """Return a file decoded as UTF-8; undecodable bytes become U+FFFD, never an exception."""
        return self.read_bytes(path, max_bytes).decode("utf-8", errors="replace")

    def read_attr(self, path: str) -> str | None:
        """Return a one-value sysfs/procfs file stripped of whitespace, or None if unreadable."""
        try:
            return self.read_text(path, 64 * 1024).strip()
        except OSError:
            return None

    def exists(self, path: str) -> bool:
        """Return True when the path exists (links are followed)."""
        return self.kind(path) is not None

    def is_dir(self, path: str) -> bool:
        """Return True when the path is a directory (links are followed)."""
        return self.kind(path) == "dir"

    def kind(self, path: str) -> str | None:
        """Return the kind of what the path points to, following links."""
        return self.lstat_kind(self.realpath(path))

    def readlink(self, path: str) -> str | None:
        """Return the target of a symbolic link, or None when the path is not a link."""
        return None

    def listdir_or_empty(self, path: str) -> list[str]:
        """Return the names in a directory, or [] when it cannot be listed."""
        try:
            return self.listdir(path)
        except OSError:
            return []



def replay_command(host: Host, argv: Sequence[str]) -> bytes:
    """Return a command's output as a capture recorded it, or raise as the command did."""
    # Through the confined, bounded read: a capture's commands/ may hold links or FIFOs too.
    name = command_name(argv)
    try:
        return host.read_bytes(f"/commands/{name}.txt")
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise CommandFailed(f"{argv[0]}: unreadable in the capture ({exc.strerror})") from None
    try:
        message = host.read_text(f"/commands/{name}.error", 4096).strip()
    except OSError:
        raise NotCaptured(f"{argv[0]}: not in the capture") from None
    raise CommandFailed(message)

