"""The daemon's event sources on real sockets and real child processes: the control socket's
answers to what the daemon does not act on, and a child's one JSON line, death and deadline."""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from evo_agent.delivery.sources import Child, ControlServer
from evo_agent.errors import StateError


def _ask(server: ControlServer, line: bytes, enabled: bool = True) -> tuple[Any, dict[str, Any]]:
    """Send ``line`` as a client; return what accept() gave the daemon and what the client got."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(server.path)
        client.sendall(line)
        select.select([server], [], [], 5)
        got = server.accept(enabled)
        if got is not None:
            got[1].close()  # the daemon would answer later; the test needs only the request
            return got[0], {}
        client.settimeout(5)
        data = client.recv(65536)
    return None, json.loads(data) if data else {}


@pytest.fixture
def server(tmp_path: Path) -> Any:
    srv = ControlServer.open(str(tmp_path / "control.sock"))
    assert srv is not None
    yield srv
    srv.close()
    assert not (tmp_path / "control.sock").exists()


def test_control_requests_the_daemon_acts_on(server: ControlServer) -> None:
    assert _ask(server, b'{"op": "status"}\n')[0] == "status"
    assert _ask(server, b'{"op": "status"}\n', enabled=False)[0] == "status"
    assert _ask(server, b'{"op": "refresh"}\n')[0] == "refresh"
    if os.geteuid() == 0:
        assert _ask(server, b'{"op": "send", "via": "vpn"}\n')[0] == "send"


def test_control_refusals_are_answered_by_the_server(server: ControlServer) -> None:
    assert _ask(server, b'{"op": "reboot"}\n')[1] == {
        "ok": False, "error": "unknown request 'reboot'", "exit_code": 64}
    assert _ask(server, b'[1, 2]\n')[1]["exit_code"] == 64  # not an object: no op
    assert _ask(server, b"not json\n") == (None, {})  # hung up without an answer
    assert _ask(server, b'{"op": "refresh"}\n', enabled=False)[1]["exit_code"] == 75
    if os.geteuid() != 0:
        assert _ask(server, b'{"op": "send"}\n')[1]["exit_code"] == 77
        return
    assert _ask(server, b'{"op": "send"}\n', enabled=False)[1]["disabled"] is True
    assert _ask(server, b'{"op": "send", "via": "carrier pigeon"}\n')[1] == {
        "ok": False, "error": "unknown path 'carrier pigeon'", "exit_code": 64}


def test_a_second_daemon_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "control.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as first:  # a daemon that answers
        first.bind(path)
        first.listen(1)

        def answer_status() -> None:
            conn, _ = first.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b'{"ok": true}\n')

        thread = threading.Thread(target=answer_status, daemon=True)
        thread.start()
        with pytest.raises(StateError, match="another evo-agent daemon is running"):
            ControlServer.open(path)
        thread.join(5)
    assert os.path.exists(path)  # the first daemon's socket is left alone


def _run(code: str, **kw: Any) -> Child:
    return Child.spawn([sys.executable, "-c", code], time.monotonic(), **kw)


def _result(child: Child, timeout: float = 10.0) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        select.select([child], [], [], 1)
        result = child.read()
        if result is not None:
            child.close()
            return result
    raise AssertionError("the child's pipe did not end")


def test_child_result_is_its_last_json_line() -> None:
    child = _run("print('noise'); print('{\"ok\": true, \"path\": \"vpn\"}')", trigger="boot")
    assert _result(child) == {"ok": True, "path": "vpn"} and child.trigger == "boot"


def test_child_that_dies_without_a_result() -> None:
    assert _result(_run("import sys; sys.exit(3)")) == {
        "ok": False, "error": "report cycle died (exit status 3)"}
    assert _result(_run("print('[1]')")) == {"ok": False, "error": "report cycle gave no result"}


def test_child_killed_at_its_deadline_ends_its_pipe() -> None:
    child = _run("import time; time.sleep(60)")
    child.kill()
    assert child.killed
    assert _result(child, 5) == {"ok": False, "error": "report cycle died (exit status -9)"}


def test_stopping_a_child_terminates_it() -> None:
    child = _run("import time; time.sleep(60)")
    t0 = time.monotonic()
    child.stop()
    assert child.proc.returncode == -15 and time.monotonic() - t0 < 2
    child.close()
