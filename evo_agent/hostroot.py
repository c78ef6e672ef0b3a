"""The one door through which collectors read the system.

Every file a collector reads and every command it runs goes through a :class:`Host`.  Three kinds
exist:

* :class:`LiveHost` reads the running system (or a directory tree mounted somewhere, e.g. an image);
* :class:`RecordingHost` reads the live system and copies everything it hands out into a capture
  directory, which ``evo-agent capture`` packs as a .tar.gz;
* :class:`ReplayHost` reads such a capture back, so that ``evo-agent inventory --from`` gives the
  same inventory as the live run did; :class:`ArchiveHost` does the same from the .tar.gz itself,
  read into memory, without unpacking it.

Capture layout: files keep their path relative to ``/`` (``sys/...``, ``proc/...``, ``etc/...``,
``run/udev/...``); symbolic links are kept as links, because sysfs is made of them and collectors
follow them (``/sys/class/net/eth0 -> ../../devices/pci0000:00/...``).  The output of a command is
``commands/<name>.txt``, where the name is the command's base name and its arguments joined with
``_`` (plain ``dmidecode`` is ``commands/dmidecode.txt``); a command that failed leaves
``commands/<name>.error`` with its message instead.

A directory listing is replayed from what the capture holds: sub-directories and links are
recorded when listed, regular files only when read.  Collectors must therefore pick the entries they
need by name and then read them, which they all do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tarfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from evo_agent.errors import CaptureError, CommandFailed, CommandUnavailable

# subprocess, tarfile, shutil and pathlib are imported where they are used: on the
# appliance (a QEMU TCG guest in the tests) every module imported costs, and a replay runs no
# command, an inventory packs no archive.

#: Largest file a collector may read; sysfs and procfs files are far smaller, and a bound keeps
#: a corrupt capture or a device node from eating the appliance's memory.
MAX_READ = 4 * 1024 * 1024
#: Commands are searched here: the daemon runs with a minimal PATH, and dmidecode lives in sbin.
COMMAND_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MAX_SYMLINKS = 40


def which(command: str, path: str = COMMAND_PATH) -> str | None:
    """Return the executable a command name stands for, as shutil.which does (without shutil,
    which imports the zlib, bz2 and lzma modules)."""

    def runnable(candidate: str) -> bool:
        return (os.path.exists(candidate) and os.access(candidate, os.F_OK | os.X_OK)
                and not os.path.isdir(candidate))

    if os.path.dirname(command):
        return command if runnable(command) else None
    seen = set()
    for directory in path.split(os.pathsep):
        if directory in seen:
            continue
        seen.add(directory)
        candidate = os.path.join(directory, command)
        if runnable(candidate):
            return candidate
    return None


def command_name(argv: Sequence[str]) -> str:
    """Return the capture file name of a command (``dmidecode -t 17`` -> ``dmidecode_-t_17``)."""
    parts = [os.path.basename(argv[0]), *argv[1:]]
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", "_".join(parts))


def _norm(path: str) -> list[str]:
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


def _walk(path: str, lookup: Callable[[list[str]], tuple[str | None, str]]) -> list[str]:
    """Resolve the links of ``path`` one component at a time, as inside a chroot.

    ``lookup(parts)`` gives the kind of that prefix ('link', 'dir', 'file', 'other' or None when it
    does not exist) and, for a link, its target.  Absolute targets restart at the root and ``..``
    stops there.  A missing component ends the walk, the rest kept as it is.
    """
    pending = _norm(path)
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
            if hops > _MAX_SYMLINKS:
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


class _TreeHost(Host):
    """A host whose files live under a directory of this machine."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        raw = os.fspath(root)
        if raw == "/" or (raw and "//" not in raw and "/./" not in raw and raw != "."
                          and not raw.endswith(("/", "/.")) and not raw.startswith("./")):
            self._root = raw  # already as pathlib spells it
        else:
            from pathlib import Path

            self._root = os.fspath(Path(raw))

    @property
    def root(self) -> Path:
        """The directory the host's "/" is."""
        from pathlib import Path

        return Path(self._root)

    def _local(self, parts: Sequence[str]) -> str:
        # plain string joins: pathlib per component was the main cost of a 559-device PCI scan
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

        return _walk(path, lookup)

    def realpath(self, path: str) -> str:
        return "/" + "/".join(self._resolve(path))

    def lstat_kind(self, path: str) -> str | None:
        try:
            st = os.lstat(self._local(_norm(path)))
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


class LiveHost(_TreeHost):
    """The running system (root ``/``), or a system image unpacked under another directory."""

    def __init__(self, root: str | os.PathLike[str] = "/", *,
                 allow_commands: bool | None = None) -> None:
        super().__init__(root)
        # Commands of this machine describe this machine only: never mix them into another root.
        self.allow_commands = (str(root) == "/") if allow_commands is None else allow_commands
        self._slash = str(root) == "/"

    # On "/" itself, the kernel resolves paths: walking them here one component at a time (as
    # a root elsewhere needs, to stay inside it) made 1,950 lstat calls and most of the
    # collectors' Python work in a run.  Only plain absolute paths take that way: the walk
    # drops ".." before it resolves links, the kernel after.
    def _kernel_resolves(self, path: str) -> bool:
        return self._slash and path.startswith("/") and "/." not in path and "//" not in path

    def _opening(self, path: str) -> tuple[str, int]:
        if self._kernel_resolves(path):
            return path, 0
        return super()._opening(path)

    def readlink(self, path: str) -> str | None:
        if not self._kernel_resolves(path):
            return super().readlink(path)
        try:
            return os.readlink(path.rstrip("/") or "/")
        except OSError as exc:
            # a loop above the link: the walk raises it
            return super().readlink(path) if exc.errno == errno.ELOOP else None

    def kind(self, path: str) -> str | None:
        if not self._kernel_resolves(path):
            return super().kind(path)
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            # a link loop: realpath() stops at the looping link, which then "exists"
            return super().kind(path) if exc.errno == errno.ELOOP else None
        if stat.S_ISDIR(mode):
            return "dir"
        return "file" if stat.S_ISREG(mode) else "other"

    def realpath(self, path: str) -> str:
        if not self._slash:
            return super().realpath(path)
        if self._kernel_resolves(path) and hasattr(os, "O_PATH"):
            # What the kernel opened, by name (O_PATH opens without reading or side effects);
            # a missing component keeps its unresolved tail, as os.path.realpath does.
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                return os.path.realpath(path)
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            finally:
                os.close(fd)
            if target.startswith("/") and not target.endswith(" (deleted)"):
                return target
        return os.path.realpath(path)

    def run(self, argv: Sequence[str], timeout: float) -> bytes:
        if not self.allow_commands:
            raise CommandUnavailable(f"{argv[0]}: commands are not run against root {self.root}")
        exe = which(argv[0])
        if exe is None:
            raise CommandUnavailable(f"{argv[0]}: not installed")
        import subprocess

        try:
            proc = subprocess.run(
                [exe, *argv[1:]],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                env={"PATH": COMMAND_PATH, "LC_ALL": "C"},
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise CommandFailed(f"{argv[0]}: no answer within {timeout:g} s") from None
        except OSError as exc:
            raise CommandUnavailable(f"{argv[0]}: {exc.strerror}") from None
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            detail = err[-1] if err else f"exit status {proc.returncode}"
            raise CommandFailed(f"{argv[0]}: {detail[:200]}")
        return proc.stdout


    def probe(self, name: str, func: Callable[[], bytes]) -> bytes:
        if not self.allow_commands:
            raise CommandUnavailable(f"{name}: probes of this machine are not run against root "
                                     f"{self.root}")
        return func()


class ReplayHost(_TreeHost):
    """A capture made by ``evo-agent capture`` (or a fixture tree laid out the same way)."""

    def probe(self, name: str, func: Callable[[], bytes]) -> bytes:
        return self.run([name], 0)

    def run(self, argv: Sequence[str], timeout: float) -> bytes:
        return _replay_command(self, argv)


def _replay_command(host: Host, argv: Sequence[str]) -> bytes:
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
        raise CommandUnavailable(f"{argv[0]}: not in the capture") from None
    raise CommandFailed(message)


#: Bounds of a capture archive read into memory.  A capture of a real appliance holds a few
#: hundred members and well under a megabyte; these only stop a hostile or corrupt archive
#: (a gzip bomb, millions of empty members) from eating the device's memory or minutes of CPU.
MAX_ARCHIVE_MEMBERS = 200_000
MAX_ARCHIVE_MEMBER = 64 * 1024 * 1024  # declared size of one member
MAX_ARCHIVE_BYTES = 256 * 1024 * 1024  # bytes kept in memory, all members together
#: Largest .tar.gz (and tar inside it) read whole into memory; beyond, tarfile streams it.
MAX_INFLATE = 64 * 1024 * 1024


def _error(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


#: One archive member: name, kind ('file', 'dir', 'link' or 'skip'), link target, declared
#: size, and a function returning its first MAX_READ bytes.
_Member = tuple[str, str, str, int, Callable[[], bytes]]


def _tarfile_members(archive: str | os.PathLike[str]) -> Iterator[_Member]:
    """Yield an archive's members as tarfile reads them (any format it knows)."""
    import tarfile

    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed by the with below
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise CaptureError(f"{archive}: not a readable capture archive ({exc})") from None
    with tar:
        try:
            # members one by one, each read as it comes: getmembers() first would make the
            # gzip stream rewind and inflate everything twice
            for member in tar:
                kind = ("dir" if member.isdir() else "link" if member.issym()
                        else "file" if member.isreg() else "skip")

                def read(member: tarfile.TarInfo = member) -> bytes:
                    # called by the consumer, outside this try
                    try:
                        src = tar.extractfile(member)
                        return src.read(min(member.size, MAX_READ)) if src is not None else b""
                    except (OSError, tarfile.TarError, EOFError) as exc:
                        raise CaptureError(f"{archive}: damaged capture archive ({exc})") from None

                yield member.name, kind, member.linkname, member.size, read
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise CaptureError(f"{archive}: damaged capture archive ({exc})") from None


# tar header types the fast reader knows; anything else goes to tarfile
_FAST_KINDS = {b"0": "file", b"\0": "file", b"7": "file", b"5": "dir", b"2": "link",
               b"1": "skip", b"3": "skip", b"4": "skip", b"6": "skip"}
# pax records that change nothing the replay uses but the names
_FAST_PAX = {"path", "linkpath", "mtime", "atime", "ctime", "uid", "gid", "uname", "gname"}


class _NotFast(Exception):
    """The archive is not the simple kind the fast reader handles: tarfile reads it."""


def _octal(field: bytes) -> int:
    # as tarfile's nti() for octal fields; base-256 numbers are left to tarfile
    if field[:1] in (b"\x80", b"\xff"):
        raise _NotFast
    end = field.find(b"\0")
    text = (field if end < 0 else field[:end]).decode("ascii")
    return int(text.strip() or "0", 8)


def _fast_members(archive: str | os.PathLike[str]) -> list[_Member] | None:
    """Read a .tar.gz as pack_capture writes it (ustar headers, pax records for long names and
    times) without tarfile, or return None for anything else, which tarfile then reads.

    tarfile parses each header in Python through a dozen helpers and a regular expression:
    on a capture of 331 members that was 140M instructions, more than the collectors' work.
    Every header this reader accepts gives the name, type and link tarfile would give (the
    same fields, decoded the same way); a header it does not know gives up, never guesses.
    """
    buf = _inflate(archive)
    if buf is None:
        return None
    members: list[_Member] = []
    view = memoryview(buf)
    off, pax = 0, None
    valid: set[bytes] = set()
    try:
        while True:
            header = buf[off:off + 512]
            if len(header) < 512 or header[156:157] == b"g":
                return None
            if header.count(0) == 512:
                if off == 0 or pax is not None:
                    return None
                return members
            size = _header_size(header, valid)
            kind_byte = header[156:157]
            data_at = off + 512
            if kind_byte == b"x":
                off = data_at + (size + 511) // 512 * 512
                if pax is not None or off > len(buf):
                    return None
                pax = _pax_records(bytes(view[data_at:data_at + size]))
                continue
            kind = _FAST_KINDS.get(kind_byte)
            if kind is None:
                return None
            name = _nts(header[0:100])
            if kind_byte == b"\0" and name.endswith("/"):
                kind = "dir"
            # as tarfile: only regular files have data blocks after their header, whatever
            # size other headers declare
            off = data_at + ((size + 511) // 512 * 512 if kind == "file" else 0)
            if off > len(buf):
                return None
            if kind == "dir":
                name = name.rstrip("/")
            prefix = _nts(header[345:500])
            if prefix:
                name = prefix + "/" + name
            linkname = _nts(header[157:257])
            if pax is not None:
                if "path" in pax:
                    name = pax["path"].rstrip("/")
                linkname = pax.get("linkpath", linkname)
                pax = None

            def read(at: int = data_at, n: int = min(size, MAX_READ)) -> bytes:
                return bytes(view[at:at + n])

            members.append((name, kind, linkname, size, read))
    except (_NotFast, ValueError, UnicodeDecodeError):
        return None


def _inflate(archive: str | os.PathLike[str]) -> bytes | None:
    """Return the tar inside a one-member .tar.gz, or None (tarfile then reads the archive)."""
    import zlib

    try:
        with open(archive, "rb") as fh:
            raw = fh.read(MAX_INFLATE + 1)
    except OSError:
        return None
    if not raw.startswith(b"\x1f\x8b") or len(raw) > MAX_INFLATE:
        return None
    try:
        inflate = zlib.decompressobj(wbits=31)
        buf = inflate.decompress(raw, MAX_INFLATE + 1)
    except zlib.error:
        return None
    if not inflate.eof or inflate.unused_data or len(buf) > MAX_INFLATE:
        return None  # several gzip members, trailing bytes, truncated or huge: tarfile
    return buf


def _header_size(header: bytes, valid: set[bytes]) -> int:
    """Check a header's checksum and numbers as tarfile does; return its size field.

    ``valid`` holds the number fields already checked in this archive: mode, owner, time and
    device numbers repeat from one member to the next, and each check is a few Python calls.
    """
    chksum = _octal(header[148:156])
    # tarfile also accepts a signed-char sum (old Sun tars): those go to it
    if chksum != sum(header) - sum(header[148:156]) + 256:
        raise _NotFast
    numbers = header[100:124] + header[136:148] + header[329:345]
    if numbers not in valid:
        for start, stop in ((100, 108), (108, 116), (116, 124), (136, 148), (329, 337),
                            (337, 345)):
            _octal(header[start:stop])
        valid.add(numbers)
    return _octal(header[124:136])


def _nts(field: bytes) -> str:
    # as tarfile's nts() with the file system's encoding (UTF-8) and surrogateescape
    end = field.find(b"\0")
    return (field if end < 0 else field[:end]).decode("utf-8", "surrogateescape")


def _pax_records(data: bytes) -> dict[str, str]:
    """Parse a pax extended header whose records are all plain UTF-8 and known."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.index(b" ", pos)
        length = int(data[pos:space].decode("ascii"), 10)
        if length < 5 or not data[pos:space].isdigit() or pos + length > len(data):
            raise _NotFast
        record = data[space + 1:pos + length]
        if not record.endswith(b"\n"):
            raise _NotFast
        key, equals, value = record[:-1].partition(b"=")
        keyword = key.decode("utf-8")
        if not equals or keyword not in _FAST_PAX or keyword == "hdrcharset":
            raise _NotFast
        records[keyword] = value.decode("utf-8")
        pos += length
    return records


class ArchiveHost(Host):
    """A capture .tar.gz replayed from memory, as ReplayHost replays it unpacked.

    Unpacking to a temporary directory and resolving every path there with one lstat per
    component made a replay cost 2.3 times the instructions of a live run (3.1-3.8 s in the
    appliance's TCG guest).  Here the archive is read once into an index of host paths; links
    are resolved inside that index with the walk ReplayHost uses, so nothing resolves outside
    the capture and no member is ever written anywhere.  The archive is checked as
    :func:`unpack_capture` checks it (absolute names, ``..``, members under a link, members
    given twice are refused; hard links, devices and FIFOs are left out), and bounded in size.
    """

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
        members = _fast_members(archive)
        if members is None:  # not the plain ustar/pax .tar.gz pack_capture writes
            self._load_members(archive, _tarfile_members(archive))
        else:
            self._load_members(archive, iter(members))

    def _load_members(self, archive: str | os.PathLike[str], members: Iterator[_Member]) -> None:
        kept = 0
        for count, (name, kind, linkname, size, read) in enumerate(members, 1):
            if count > MAX_ARCHIVE_MEMBERS:
                raise CaptureError(f"{archive}: more than {MAX_ARCHIVE_MEMBERS} members")
            data = b""
            if kind == "file":
                if size > MAX_ARCHIVE_MEMBER:
                    raise CaptureError(f"{archive}: member {name!r} is too large "
                                       f"({size} bytes)")
                # a collector never reads more than MAX_READ of a file
                data = read()
                kept += len(data)
                if kept > MAX_ARCHIVE_BYTES:
                    raise CaptureError(f"{archive}: more than {MAX_ARCHIVE_BYTES} bytes "
                                       "of content")
            self._add(archive, name, kind, linkname, data)

    def _add(self, archive: str | os.PathLike[str], name: str, member: str, linkname: str,
             data: bytes) -> None:
        """Index one member, refusing what unpack_capture refuses."""
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
            # hard links, devices and FIFOs are left out, as unpack_capture leaves them
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
        key = "/".join(_walk(path, self._lookup))
        return key, self._kinds.get(key)

    def _missing(self, key: str, path: str) -> OSError:
        # as the kernel answers: ENOTDIR when a component on the way is a file
        parts = key.split("/")
        for depth in range(1, len(parts)):
            if self._kinds.get("/".join(parts[:depth])) == "file":
                return _error(errno.ENOTDIR, path)
        return _error(errno.ENOENT, path)

    def realpath(self, path: str) -> str:
        return "/" + "/".join(_walk(path, self._lookup))

    def lstat_kind(self, path: str) -> str | None:
        parts = _norm(path)
        if not parts:
            return "dir"
        # the parent is resolved inside the capture: links on the way are followed there
        try:
            parent = _walk("/" + "/".join(parts[:-1]), self._lookup)
        except OSError:  # a link loop on the way: lstat fails, as on disk
            return None
        return self._kinds.get("/".join([*parent, parts[-1]]))

    def readlink(self, path: str) -> str | None:
        parent = _walk(os.path.dirname(path.rstrip("/")) or "/", self._lookup)
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
        return _replay_command(self, argv)

    def probe(self, name: str, func: Callable[[], bytes]) -> bytes:
        return self.run([name], 0)


class RecordingHost(Host):
    """Reads a live host and copies every file, link and command output it hands out."""

    def __init__(self, inner: LiveHost, capture_dir: str | os.PathLike[str]) -> None:
        self.inner = inner
        from pathlib import Path

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
            return _walk(path, lookup)
        except OSError:
            # a link loop: the live call answered (or will fail) on its own; record what was seen
            return _norm(path)

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


# -- capture archives ------------------------------------------------------------------------
def pack_capture(capture_dir: str | os.PathLike[str], output: str | os.PathLike[str]) -> None:
    """Pack a capture directory as a .tar.gz readable only by its owner (it holds raw values)."""
    import tarfile
    from pathlib import Path

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


def unpack_capture(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Unpack a capture safely: only files, directories and links, nothing outside ``dest``.

    Python 3.11.2 (Debian 12) has no tarfile extraction filters, so the checks are done here:
    absolute names and ``..`` are refused, and no member is written through a link, because a
    capture may come from anywhere (a technician's laptop, an e-mail).
    """
    import shutil
    import tarfile
    from pathlib import Path

    root = Path(dest)
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed by the with below
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise CaptureError(f"{archive}: not a readable capture archive ({exc})") from None
    with tar:
        try:
            members = tar.getmembers()
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise CaptureError(f"{archive}: damaged capture archive ({exc})") from None
        # directories made (or found real) here: a link can never take their place later, so
        # each is checked and made once, not once per member below it (1,531 mkdir calls for a
        # capture of this sandbox)
        made: set[tuple[str, ...]] = set()
        for member in members:
            parts = [p for p in member.name.split("/") if p not in ("", ".")]
            if not parts or member.name.startswith("/") or ".." in parts:
                raise CaptureError(f"{archive}: unsafe member name {member.name!r}")
            parent = root
            for depth, part in enumerate(parts[:-1], 1):
                parent = parent / part
                if tuple(parts[:depth]) in made:
                    continue
                if parent.is_symlink():
                    raise CaptureError(f"{archive}: member {member.name!r} goes through a link")
                parent.mkdir(exist_ok=True)
                made.add(tuple(parts[:depth]))
            target = parent / parts[-1]
            if os.path.lexists(target) and not target.is_dir():
                raise CaptureError(f"{archive}: member {member.name!r} appears twice")
            if member.isdir():
                target.mkdir(exist_ok=True)
            elif member.issym():
                os.symlink(member.linkname, target)
            elif member.isreg():
                src = tar.extractfile(member)
                if src is None:
                    continue
                try:
                    with src, open(target, "xb") as fh:
                        shutil.copyfileobj(src, fh)
                except (OSError, tarfile.TarError, EOFError) as exc:
                    raise CaptureError(f"{archive}: damaged capture archive ({exc})") from None
            # hard links, devices and FIFOs are skipped: no collector reads them from a capture


class CaptureSource:
    """Opens ``--from`` (a directory or a .tar.gz) as a host to replay; use as a context manager.

    A directory is a ReplayHost; an archive is read into memory (ArchiveHost), not unpacked.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from pathlib import Path

        self.path = Path(path)

    def __enter__(self) -> Host:
        if self.path.is_dir():
            return ReplayHost(self.path)
        if not self.path.exists():
            raise CaptureError(f"{self.path}: no such capture (give a directory or a .tar.gz)")
        return ArchiveHost(self.path)

    def __exit__(self, *exc: object) -> None:
        pass
