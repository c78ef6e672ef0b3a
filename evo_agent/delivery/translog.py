"""The transparency log: the exact bytes of every report that reached the registry, kept here.

Anyone with access to the device can see what left it (``evo-agent sent``), byte for byte, with
the SHA-256 of those bytes, when, by which path, to which URL and what the registry answered.
Layout under ``state_dir/sent/``:

* ``<sha256>.json``: the report's JSON bytes exactly as sent before compression (the wire body is
  their gzip with a zero timestamp, so it can be recomputed; its SHA-256 is recorded too).  Stored
  once per content: a retried report costs one line, not one copy.
* ``index.jsonl``: one JSON line per request that left the unit, oldest first: its HTTP status,
  or ``status: null`` and the ``error`` when the request went out but no answer came back (reset,
  timeout, a dripping answer): the registry may hold that report, so the log shows it.

The copy is written before the request goes (:meth:`TransparencyLog.keep`): what cannot be kept
here is not sent.  The line is appended after the attempt and before the outbox file is removed,
so a report killed in between is still waiting and its retry writes the line.

Bounded: the newest ``MAX_ENTRIES`` lines are kept, and a copy nobody references is deleted.  An
append that a power cut tore leaves a partial last line, which readers skip and the next trim
drops.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from evo_agent.delivery.outbox import adopt, atomic_write, ensure_dir, fsync_dir
from evo_agent.errors import StateError

LOG = logging.getLogger(__name__)

MAX_ENTRIES = 200
_BLOB = re.compile(r"^[0-9a-f]{64}\.json$")


class TransparencyLog:
    """``state_dir/sent``."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "sent"
        self.index = self.dir / "index.jsonl"

    def keep(self, report_json: bytes) -> str:
        """Store the report's bytes (once per content) before they are sent; return the SHA-256.

        Raises OSError (a full disk): then the report must not be sent."""
        ensure_dir(self.dir)
        digest = hashlib.sha256(report_json).hexdigest()
        blob = self.dir / f"{digest}.json"
        if not blob.exists():
            atomic_write(blob, report_json)
        return digest

    def record(self, report_json: bytes, wire_body: bytes, *, time: float, path: str, url: str,
               status: int | None, report_id: str, sequence: int,
               error: str | None = None) -> dict[str, Any]:
        """Keep the bytes of one request that left the unit and append its line (``status``
        None: no answer came, ``error`` says why)."""
        digest = self.keep(report_json)
        entry: dict[str, Any] = {
            "time": round(time, 3), "report_id": report_id, "sequence": sequence, "path": path,
            "url": url, "status": status, "sha256": digest,
            "wire_sha256": hashlib.sha256(wire_body).hexdigest(), "bytes": len(report_json),
            "wire_bytes": len(wire_body)}
        if error is not None:
            entry["error"] = error
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        fd = os.open(self.index, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            os.fchmod(fd, 0o640)  # readable by the support group whatever the umask
            adopt(fd, self.dir)
            size = os.fstat(fd).st_size
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError:
                # a full disk: no torn line, which the next append would glue to its own
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)
        try:
            self._trim()
        except OSError as exc:  # the line is written; a later append trims
            LOG.warning("%s: not trimmed now (%s)", self.index, exc.strerror)
        return entry

    def entries(self) -> list[dict[str, Any]]:
        """Return every readable line, oldest first."""
        try:
            lines = self.index.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        except PermissionError:
            raise StateError(f"{self.index}: not readable by uid {os.getuid()}; the read-only "
                             "verbs need membership of group evo-support") from None
        out = []
        for raw in lines:
            try:
                doc = json.loads(raw)
            except ValueError:
                continue  # torn by a power cut
            if isinstance(doc, dict) and isinstance(doc.get("sha256"), str):
                out.append(doc)
        return out

    def content(self, entry: dict[str, Any]) -> bytes | None:
        """Return the exact bytes of an entry's report, or None when no longer kept."""
        digest = str(entry.get("sha256", ""))
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            return None
        try:
            return (self.dir / f"{digest}.json").read_bytes()
        except FileNotFoundError:
            return None

    def last_acknowledged(self) -> tuple[dict[str, Any], bytes] | None:
        """Return the newest acknowledged entry and its bytes."""
        for entry in reversed(self.entries()):
            if entry.get("status") in (200, 201):
                data = self.content(entry)
                if data is not None:
                    return entry, data
        return None

    def _trim(self) -> None:
        entries = self.entries()
        try:
            raw_count = len(self.index.read_bytes().splitlines())
        except FileNotFoundError:
            return
        if raw_count <= MAX_ENTRIES and raw_count == len(entries):
            return
        keep = entries[-MAX_ENTRIES:]
        atomic_write(self.index, b"".join((json.dumps(e, sort_keys=True) + "\n").encode()
                                          for e in keep))
        wanted = {f"{e['sha256']}.json" for e in keep}
        removed = False
        for p in self.dir.iterdir():
            if _BLOB.match(p.name) and p.name not in wanted:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                removed = True
        if removed:
            fsync_dir(self.dir)
