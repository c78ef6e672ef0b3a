"""The outbox: each report is on disk before any attempt to send it, gone only once acknowledged.

The appliance's power may be cut at any moment, so every step of delivery leaves the disk in a
state that the next start can use, and no report is lost or sent under two identities.

The delivery protocol, step by step (all under ``[agent] state_dir``, one writer at a time: the
writer holds ``lock`` with ``flock``, see :func:`writer_lock`):

1. **Number.**  The next sequence number is taken from ``sequence`` and the incremented value is
   written back (atomically, see 3) *before* the report uses it.  A crash after this step wastes a
   number; no crash can make two reports share one.  The report also gets a fresh UUID.
2. **Collapse.**  Reports of the same kind collapse to the newest: a new periodic report (boot,
   daily, manual) replaces the periodic reports still waiting, since the newer one says everything
   the older ones said, and the backend only needs the latest state.  A manufacturing report is
   never collapsed: it is kept until acknowledged (it enrols the device's hardware at the factory).
   The replaced files are removed *after* the new one is durable (step 3), so a crash in between
   leaves two waiting reports, never none.
3. **Write.**  The exact JSON bytes that will be sent are written to ``outbox/.tmp-<uuid>``, the
   file is fsync'ed, renamed to ``outbox/<sequence:012d>-<uuid>.json``, and the directory is
   fsync'ed.  rename() is atomic, so after a crash a report file is either complete or absent;
   leftover ``.tmp-*`` files are deleted at the next start.
4. **Send.**  The transport signs and posts the bytes (``evo_agent.delivery.transport``).  The
   backend de-duplicates by report UUID, so sending the same file again after a lost acknowledgement
   stores nothing twice (the backend answers ``200 duplicate``).
5. **Acknowledge.**  Only on 200/201 is the file unlinked (and the directory fsync'ed).  A crash
   between the backend's answer and the unlink makes the next cycle send the same file again, which
   the backend acknowledges as a duplicate: delivered once, acknowledged, removed.

Modes are set explicitly (fchmod/chmod), whatever the umask: the unit runs with UMask=0077 and the
agent opens up only what the support group reads (directories 0750, reports and state 0640; the
device key and the lock stay 0600).  Ownership: the daemon runs as its own user; what root creates
in the state directory (``sudo evo-agent send --now``, the manufacturing station) is given to the
directory's owner (:func:`adopt`), or the daemon would be locked out of its own key and log.

Waiting reports are sent oldest first, before a new report is collected, so a healthy backend sees
every queued report.  A file that cannot be parsed (a disk fault; a crash cannot cause it) is moved
to ``outbox/corrupt/`` and logged: nothing is silently dropped, and it never blocks the queue.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evo_agent.errors import StateError, printable

LOG = logging.getLogger(__name__)

#: Reports kept in outbox/rejected/ (refused by the registry) and outbox/corrupt/, newest first.
MAX_SET_ASIDE = 10
#: Waiting manufacturing reports kept at most (each is kept until acknowledged; a factory station
#: re-running enrolment must still not fill the disk).
MAX_MANUFACTURING = 8
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_NAME = re.compile(rf"^(\d{{12}})-({_UUID})\.json$")


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename or unlink is durable only after this)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def adopt(fd: int, directory: Path) -> None:
    """As root, give a file just created in ``directory`` to that directory's owner."""
    if os.geteuid() != 0:
        return
    st = os.stat(directory)
    if st.st_uid != 0:
        os.fchown(fd, st.st_uid, st.st_gid)


def _write_synced(fd: int, data: bytes, mode: int, directory: Path) -> None:
    """Write all of ``data`` to a new file's descriptor, fsync it and close it."""
    try:
        os.fchmod(fd, mode)  # the umask must not decide what the support group may read
        adopt(fd, directory)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o640) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync of the directory.

    A failed write (a full disk) removes its temp file: it would hold the space it failed to get.
    """
    _publish(path.with_name(f".tmp-{path.name}-{os.getpid()}"), path, data, mode, os.O_TRUNC)


def _publish(tmp: Path, final: Path, data: bytes, mode: int, flag: int) -> None:
    """Write ``data`` to ``tmp`` (opened with ``flag``), fsync, rename it to ``final``, fsync the
    directory; on failure the temp file goes."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | flag | os.O_CLOEXEC, mode)
    try:
        _write_synced(fd, data, mode, final.parent)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(final.parent)


def state_error(path: Path, exc: OSError, what: str = "cannot be written") -> StateError:
    """Return the StateError for a failed read or write of the state directory, saying why."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why = (f"no space left on the file system holding {path.parent} (disk full): "
               "free space there")
    elif exc.errno == errno.EROFS:
        why = f"the file system holding {path.parent} is mounted read-only"
    elif exc.errno in (errno.EACCES, errno.EPERM) and os.geteuid() != 0:
        why = "permission denied; verbs that change state need root"
    else:
        why = exc.strerror or str(exc)
    return StateError(f"{path}: {what} ({why})")


_TMP_OF_PID = re.compile(r"^\.tmp-.+-(\d+)$")


def _remove_orphans(directory: Path) -> int:
    """Delete the temp files of :func:`atomic_write` whose process no longer runs."""
    removed = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        m = _TMP_OF_PID.match(name)
        if not m or _alive(int(m.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / name)
            removed += 1
    if removed:
        fsync_dir(directory)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process writes nothing while it recovers
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs under another user
        return True
    return True


def prune(directory: Path, keep: int = MAX_SET_ASIDE) -> None:
    """Delete all but the ``keep`` newest files of a set-aside directory (names sort by age)."""
    try:
        files = sorted(p for p in directory.iterdir() if p.is_file())
    except FileNotFoundError:
        return
    for p in files[:max(0, len(files) - keep)]:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def ensure_dir(path: Path, mode: int = 0o750) -> Path:
    """Create a state directory if needed; a missing parent or no permission is a StateError."""
    if path.is_dir():
        return path
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        # mkdir's mode is filtered by the umask; keep the setgid bit inherited from a shared
        # parent (the state dir, 2750 with group evo-support), so files below get its group
        os.chmod(path, mode | (os.stat(path.parent).st_mode & stat.S_ISGID))
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            adopt(fd, path.parent)
        finally:
            os.close(fd)
    except OSError as exc:
        raise state_error(path, exc, "cannot be created") from None
    return path


@contextlib.contextmanager
def writer_lock(state_dir: Path, *, wait: bool = True) -> Iterator[None]:
    """Hold the state directory's writer lock: one process writes the outbox and state at a time."""
    ensure_dir(state_dir)
    try:
        fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        adopt(fd, state_dir)
    except OSError as exc:
        raise state_error(state_dir / "lock", exc, "cannot be opened") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise StateError(f"{state_dir}: another evo-agent process is delivering; "
                             "try again in a minute") from None
        yield
    finally:
        os.close(fd)  # closing releases the flock, also when the process is killed


def kind_of(trigger: str) -> str:
    """Return the collapse class of a report: 'manufacturing' or 'periodic'."""
    return "manufacturing" if trigger == "manufacturing" else "periodic"


@dataclass(frozen=True)
class Entry:
    """One waiting report."""

    path: Path
    sequence: int
    report_id: str
    body: bytes
    report: dict[str, Any]

    @property
    def kind(self) -> str:
        """Return the collapse class of this report."""
        return kind_of(str(self.report.get("trigger", "")))


class Outbox:
    """The directory of waiting reports (``state_dir/outbox``) and the sequence counter."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.dir = state_dir / "outbox"
        self.seq_file = state_dir / "sequence"

    def _prepare(self) -> None:
        ensure_dir(self.dir)

    def recover(self) -> int:
        """Delete temp files left by a crash (outbox, state directory, sent/); return how many.

        Called under the writer lock, so no other writer is half way through a report.  The
        ``.tmp-NAME-PID`` files of :func:`atomic_write` elsewhere are removed when their process
        is gone (the hot-plug refresh writes ``local.json`` without the lock).
        """
        removed = 0
        for p in self._listing():
            if p.name.startswith(".tmp-"):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                removed += 1
        if removed:
            fsync_dir(self.dir)
        for directory in (self.state_dir, self.state_dir / "sent"):
            removed += _remove_orphans(directory)
        if removed:
            LOG.info("state: removed %s unfinished file(s) left by an interruption", removed)
        return removed

    def _listing(self) -> list[Path]:
        try:
            return sorted(self.dir.iterdir())
        except FileNotFoundError:
            return []

    def next_sequence(self) -> int:
        """Reserve and return the next sequence number (durable before it is used)."""
        current = self.last_sequence()
        nxt = current + 1
        try:
            atomic_write(self.seq_file, f"{nxt}\n".encode())
        except OSError as exc:
            raise state_error(self.seq_file, exc) from None
        return nxt

    def highest_seen(self) -> int:
        """Return the highest sequence number in the outbox, its set-aside reports and the
        transparency log (0 when none)."""
        from evo_agent.delivery.translog import TransparencyLog

        names = [p.name for p in self._listing()]
        for sub in ("rejected", "corrupt"):
            with contextlib.suppress(OSError):
                names += os.listdir(self.dir / sub)
        numbers = [int(m.group(1)) for n in names if (m := _NAME.match(n))]
        with contextlib.suppress(StateError):  # not readable by this user: the outbox alone
            numbers += [e["sequence"] for e in TransparencyLog(self.state_dir).entries()
                        if isinstance(e.get("sequence"), int)]
        return max(numbers, default=0)

    def last_sequence(self) -> int:
        """Return the last reserved sequence number (0 when none), never below one seen.

        The registry takes a number lower than the last it stored for a copied identity
        (``sequence_backwards``), so a counter that is lost, corrupt or restored from an old copy
        continues from the highest number the outbox and the transparency log hold.
        """
        try:
            text = self.seq_file.read_text("ascii").strip()
        except FileNotFoundError:
            text = ""
        except UnicodeDecodeError:
            text = "not ASCII"
        except OSError as exc:
            raise state_error(self.seq_file, exc, "cannot be read") from None
        seen = self.highest_seen()
        if text and not text.isdigit():
            LOG.error("%s is corrupt (%s); numbering continues after %s, the highest number the "
                      "outbox and the transparency log hold", self.seq_file,
                      printable(text, 40), seen)
            return seen
        return max(int(text or 0), seen)

    def enqueue(self, report: dict[str, Any]) -> Entry:
        """Durably queue a report (which gets its sequence and UUID here); collapse older ones."""
        self._prepare()
        seq = self.next_sequence()
        rid = str(uuid.uuid4())
        report = {**report, "sequence": seq, "report_id": rid}
        body = json.dumps(report, ensure_ascii=False, sort_keys=True,
                          separators=(",", ":")).encode("utf-8")
        final = self.dir / f"{seq:012d}-{rid}.json"
        try:
            _publish(self.dir / f".tmp-{rid}", final, body, 0o640, os.O_EXCL)
        except OSError as exc:
            raise state_error(final, exc) from None
        entry = Entry(final, seq, rid, body, report)
        self._collapse(entry)
        return entry

    def _collapse(self, newest: Entry) -> None:
        older = [e for e in self.pending()
                 if e.kind == newest.kind and e.sequence < newest.sequence]
        if newest.kind == "manufacturing":
            older = older[:max(0, len(older) + 1 - MAX_MANUFACTURING)]
        for e in older:
            LOG.info("outbox: report %s (sequence %s) replaced by newer %s", e.report_id,
                     e.sequence, newest.report_id)
            with contextlib.suppress(FileNotFoundError):
                e.path.unlink()
        if older:
            fsync_dir(self.dir)

    def pending(self) -> list[Entry]:
        """Return the waiting reports, oldest first (unreadable files are set aside)."""
        out = []
        for p in self._listing():
            m = _NAME.match(p.name)
            if not m:
                continue
            try:
                body = p.read_bytes()
                report = json.loads(body)
                if not isinstance(report, dict) or report.get("report_id") != m.group(2):
                    raise ValueError("name and content disagree")
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                self._set_aside(p, str(exc))
                continue
            out.append(Entry(p, int(m.group(1)), m.group(2), body, report))
        return out

    def _set_aside(self, path: Path, why: str) -> None:
        LOG.error("outbox: %s is unreadable (%s); moved to %s/corrupt/", path.name, why, self.dir)
        try:
            ensure_dir(self.dir / "corrupt")
            os.replace(path, self.dir / "corrupt" / path.name)
            fsync_dir(self.dir)
            prune(self.dir / "corrupt")
        except (OSError, StateError) as exc:  # a read-only verb leaves it for the daemon
            LOG.debug("outbox: cannot move %s aside: %s", path.name, exc)

    def acknowledge(self, entry: Entry) -> None:
        """Remove a report the backend acknowledged (200/201)."""
        try:
            entry.path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise StateError(f"{entry.path}: cannot be removed ({exc.strerror})") from None
        fsync_dir(self.dir)

    def purge(self) -> int:
        """Delete every waiting report (opt-out: nothing queued before is sent after)."""
        entries = self.pending()
        for e in entries:
            with contextlib.suppress(FileNotFoundError):
                e.path.unlink()
        if entries:
            fsync_dir(self.dir)
        return len(entries)
