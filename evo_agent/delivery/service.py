"""The daemon as a systemd service, apart from its loop: where it logs, who may read its files.

The cycle child logs the same way (``python3 -m evo_agent.delivery``), so both live here rather
than in ``daemon``, whose imports the child does not need.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from pathlib import Path
from typing import ClassVar

LOG = logging.getLogger(__name__)

#: Members of this group may run the read-only verbs (status, sent, diff, doctor).
SUPPORT_GROUP = "evo-support"


def share_with_support(path: Path, mode: int) -> None:
    """Give the support group read access (setgid on the state directory: new files inherit it)."""
    import grp

    try:
        gid = grp.getgrnam(SUPPORT_GROUP).gr_gid
    except KeyError:
        return  # no such group on this system: root only
    try:
        st = os.stat(path)
        # under the unit the group is already the service's primary group: no chown (a
        # privileged call its seccomp filter refuses)
        if st.st_gid != gid:
            os.chown(path, -1, gid)
        current = st.st_mode & 0o7777
        if os.getegid() == gid:
            # Group=evo-support (the unit): new files get the group anyway, so the setgid bit
            # is not needed, and RestrictSUIDSGID= refuses to set it (EPERM at every start).
            mode &= ~stat.S_ISGID
            current &= ~stat.S_ISGID
        if current != mode:
            os.chmod(path, mode)
    except OSError as exc:
        LOG.warning("cannot share %s with group %s: %s", path, SUPPORT_GROUP, exc)


def setup_logging(verbose: bool) -> None:
    """Log to the journal with structured fields when possible, else to stderr."""
    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger()
    root.setLevel(level)
    for old in list(root.handlers):  # the command line's stderr handler
        root.removeHandler(old)
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        try:
            from systemd.journal import JournalHandler

            root.addHandler(JournalHandler(SYSLOG_IDENTIFIER="evo-agent"))
            return
        except ImportError:
            pass
        # journald reads sd-daemon(3) "<N>" priority prefixes on stderr: no python3-systemd needed
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PrefixFormatter("%(name)s: %(message)s"))
        root.addHandler(handler)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("evo-agent: %(levelname)s: %(message)s"))
    root.addHandler(handler)


class _PrefixFormatter(logging.Formatter):
    _PRIORITY: ClassVar[dict[int, int]] = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4,
                                           logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self._PRIORITY.get(record.levelno, 6)}>{super().format(record)}"
