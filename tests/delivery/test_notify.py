"""sd_notify over a real datagram socket standing in for systemd's."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from evo_agent.delivery.notify import Notifier


def test_messages_and_watchdog_interval(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(tmp_path / "n"))
        n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "n"), "WATCHDOG_USEC": "30000000",
                      "WATCHDOG_PID": str(os.getpid())})
        assert n.watchdog_interval == 15.0
        n.ready("all good")
        n.watchdog()
        assert s.recv(4096).decode().split("\n")[:2] == ["READY=1", "STATUS=all good"]
        assert s.recv(4096) == b"WATCHDOG=1"
    # the watchdog belongs to another process (WATCHDOG_PID): not ours to ping
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier({}).send("READY=1") is False  # not under systemd: nothing to do


def test_a_receiver_that_stops_reading_never_blocks_the_daemon(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(tmp_path / "n"))
        n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "n")})
        started = time.monotonic()
        results = [n.send("WATCHDOG=1") for _ in range(2000)]  # nobody reads
        assert time.monotonic() - started < 5
        assert results[0] is True and results[-1] is False  # the queue filled; pings dropped
