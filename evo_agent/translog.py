"""The transparency log: the exact bytes of every report that reached the registry, kept here.

Anyone with access to the device can see what left it (``evo-agent sent``), byte for byte, with
the SHA-256 of those bytes, when, by which path, to which URL and what the registry answered.
Layout under ``state_dir/sent/``:

* ``<sha256>.json``: the report's JSON bytes exactly as sent before compression (the wire body is
  their gzip with a zero timestamp, so it can be recomputed; its SHA-256 is recorded too).  Stored
  once per content: a retried report costs one line, not one copy.
* ``index.jsonl``: one JSON line per request that got an HTTP answer, oldest first.

Bounded: the newest ``MAX_ENTRIES`` lines are kept, and a copy nobody references is deleted.  An
append that a power cut tore leaves a partial last line, which readers skip and the next trim
drops.  Entries are written after the registry answered and before the outbox file is removed.
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

from evo_agent.outbox import atomic_write, ensure_dir, fsync_dir

LOG = logging.getLogger(__name__)

MAX_ENTRIES = 200
_BLOB = re.compile(r"^[0-9a-f]{64}\.json$")


class TransparencyLog:
    """``state_dir/sent``."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "sent"
        self.index = self.dir / "index.jsonl"

    def record(self, report_json: bytes, wire_body: bytes, *, time: float, path: str, url: str,
               status: int, report_id: str, sequence: int) -> dict[str, Any]:
        """Keep the bytes of one answered request and append its line."""
        ensure_dir(self.dir)
        digest = hashlib.sha256(report_json).hexdigest()
        blob = self.dir / f"{digest}.json"
        if not blob.exists():
            atomic_write(blob, report_json)
        entry = {"time": round(time, 3), "report_id": report_id, "sequence": sequence,
                 "path": path, "url": url, "status": status, "sha256": digest,
                 "wire_sha256": hashlib.sha256(wire_body).hexdigest(),
                 "bytes": len(report_json), "wire_bytes": len(wire_body)}
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        fd = os.open(self.index, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._trim()
        return entry

    def entries(self) -> list[dict[str, Any]]:
        """Return every readable line, oldest first."""
        try:
            lines = self.index.read_bytes().splitlines()
        except FileNotFoundError:
            return []
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
