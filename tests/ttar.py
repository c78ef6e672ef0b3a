"""Unpack ``.ttar`` text archives (prometheus' test fixture format) into a directory.

node_exporter and prometheus/procfs keep their sysfs/procfs fixtures as ttar files; see
shared/corpus/sysfs.  Format: records separated by a ``# ttar - - -`` line, each with
``Path:``/``Directory:``/``SymlinkTo:`` headers, ``Lines: N`` followed by N content lines (a
``NoNewline`` suffix drops the last newline), and ``Mode:``.  Bytes that are not UTF-8 are stored
as they are (node_exporter's DMI fixture has some), so the archive is read in binary.
"""

from __future__ import annotations

import os
from pathlib import Path


def unpack(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` under ``dest``."""
    lines = archive.read_bytes().split(b"\n")
    i = 0
    path: str | None = None
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith(b"Directory: "):
            (dest / line[11:].decode()).mkdir(parents=True, exist_ok=True)
            path = None
        elif line.startswith(b"Path: "):
            path = line[6:].decode()
        elif line.startswith(b"SymlinkTo: ") and path is not None:
            target = dest / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if not os.path.lexists(target):
                os.symlink(line[11:].decode(), target)
            path = None
        elif line.startswith(b"Lines: ") and path is not None:
            spec = line[7:].decode()
            no_newline = spec.endswith("NoNewline")
            count = int(spec.split()[0])
            body = lines[i : i + count]
            i += count
            data = b"\n".join(body) + (b"" if no_newline or count == 0 else b"\n")
            target = dest / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            path = None
