"""The daemon's Unix control socket: one JSON line in, one JSON line out.

``evo-agent send --now`` asks the running daemon to run a cycle, so two processes never write the
outbox at once (the daemon's child holds the writer lock; see ``evo_agent.delivery.outbox``), and
``evo-agent status`` asks it what it is doing.  Requests: ``{"op": "status"}`` and
``{"op": "send", "via": "auto"|"vpn"|"https"}`` and ``{"op": "refresh"}`` (collect the local
inventory now, with the daemon's rights, for ``evo-agent diff``; nothing is sent).  The socket
is mode 0660 (group evo-support may ask for status and a refresh); a request that changes state
needs the caller to be root, which the daemon checks with SO_PEERCRED, not with anything the
caller says.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from typing import Any

MAX_REQUEST = 4096


class NoDaemon(Exception):
    """No daemon listens on the control socket."""


def request(path: str, doc: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send one request and return the answer; raise NoDaemon when nothing listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NoDaemon(str(exc)) from None
        s.sendall(json.dumps(doc).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data) if data.strip() else {"ok": False, "error": "no answer"}
    if not isinstance(answer, dict):
        raise ValueError("the daemon answered something that is not a JSON object")
    return answer


def peer_uid(conn: socket.socket) -> int:
    """Return the uid of the process at the other end of a Unix socket."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def listen(path: str) -> socket.socket:
    """Bind the control socket (a stale one from a killed daemon is replaced)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o117)
    try:
        s.bind(path)
    finally:
        os.umask(old)
    s.listen(8)
    s.setblocking(False)
    return s
