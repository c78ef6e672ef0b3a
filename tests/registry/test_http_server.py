"""What the served registry does with hostile or broken HTTP, byte by byte over 127.0.0.1.

Each case was first probed against the registry's former hand-written server; here it runs
against uvicorn with the registry's protocol class (evo_registry.server), as ``evo-registry
serve`` runs it: slow and never-reading clients, one address holding many connections, header
names with underscores, bare CR/LF/NUL in header values, broken Content-Lengths, bodies refused
while they arrive, values no database stores, and PostgreSQL restarting under a warm pool.
"""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from evo_registry.app import Registry
from evo_registry.config import Settings
from evo_registry.db import Database
from evo_registry.geo import Geo
from evo_registry.server import GuardedHttpTools
from tests.registry.conftest import (
    FACTORY,
    HOME_A,
    HOME_B,
    SUPPORT,
    Device,
    Server,
    enroll,
    get_device,
    send,
)
from tests.registry.pgserver import PgServer, pg_bin, postgres

_OPEN: list[socket.socket] = []


class QuickGuard(GuardedHttpTools):
    """The same protocol with deadlines short enough for a test."""

    request_timeout_s = 1.5
    send_timeout_s = 1.5


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


@pytest.fixture
def quick(settings: Settings) -> Iterator[Server]:
    """A served registry with short deadlines and a share of 4 connections per client."""
    settings.connections_per_client = 4
    db = Database(settings.database)
    db.migrate()
    app = Registry(settings, db=db, geo=Geo(settings.geo_database))
    srv = Server(app, protocol=QuickGuard)
    yield srv
    srv.close()
    app.close()
    db.close()


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    _OPEN.append(sock)
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def _answers(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """Read ``count`` responses from a socket (Content-Length bodies)."""
    data = b""
    out: list[tuple[int, dict[str, str], bytes]] = []
    while len(out) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {len(out)} answers: {data[:80]!r}")
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(data) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed in a body")
            data += chunk
        out.append((int(lines[0].split(" ")[1]), headers, data[:length]))
        data = data[length:]
    return out


def _closed(sock: socket.socket, within_s: float = 5.0) -> bool:
    """Return True when the server closes the connection within ``within_s`` (data skipped)."""
    sock.settimeout(within_s)
    deadline = time.monotonic() + within_s
    try:
        while time.monotonic() < deadline:
            if sock.recv(65536) == b"":
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


def _wait_for(condition: object, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.05)
    return False


GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def device(server: Server) -> Device:
    dev = Device("EVO-300001")
    assert enroll(server, dev).status == 201
    return dev


def test_keep_alive_pipelining_and_head(server: Server) -> None:
    sock = _connect(server.port)
    sock.sendall(GET + b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n" + GET)
    answers = _answers(sock, 3)
    assert [a[0] for a in answers] == [200, 404, 200]
    assert json.loads(answers[1][2]) == {"error": "no such resource"}
    got = server.request("GET", "/openapi.json")
    head = server.request("HEAD", "/openapi.json")
    assert (head.status, head.body) == (200, b"")
    assert head.headers["content-length"] == str(len(got.body))


def test_a_websocket_upgrade_is_a_plain_request(quick: Server) -> None:
    sock = _connect(quick.port, "127.0.0.2")
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                 b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    assert _answers(sock, 1)[0][0] == 200
    sock.close()
    assert _wait_for(lambda: quick.connections == 0 and not quick.guard.open, 3)


@pytest.mark.parametrize("request_bytes", [
    b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n",
    b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
    b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Evo: a\nb\r\n\r\n",       # bare LF inside a value
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Evo: a\rb\r\n\r\n",       # bare CR inside a value
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Evo: a\x00b\r\n\r\n",     # NUL inside a value
    b"GET / HTTP/1.1\nHost: x\n\n",                            # bare LF line ends
    b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
    b"GARBAGE\r\n\r\n",
], ids=["cl-xb2", "cl-5000-digits", "cl-negative", "cl-twice", "lf-in-value", "cr-in-value",
        "nul-in-value", "bare-lf-lines", "no-colon", "garbage"])
def test_malformed_requests_get_400_and_the_connection_closes(server: Server,
                                                              request_bytes: bytes) -> None:
    sock = _connect(server.port)
    sock.sendall(request_bytes)
    status, _headers, body = _answers(sock, 1)[0]
    assert status == 400, body
    assert body  # a reason, not an empty answer
    assert _closed(sock)
    assert server.request("GET", "/healthz").status == 200  # the server is fine


def test_underscore_content_length_is_not_content_length(server: Server) -> None:
    # Taken as Content-Length, the 36 bytes of the second request would be swallowed as a body.
    sock = _connect(server.port)
    second = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent_Length: "
                 + str(len(second)).encode() + b"\r\n\r\n" + second)
    answers = _answers(sock, 2)
    assert [a[0] for a in answers] == [200, 200]
    assert json.loads(answers[1][2])["openapi"]


def test_underscore_forwarded_for_is_not_believed(server: Server, device: Device) -> None:
    assert send(server, device, wan=HOME_A).status == 201
    mine = server.request("GET", "/", headers={"X-Forwarded-For": HOME_A})
    assert b"EVO-LIVING" in mine.body
    # A visitor from HOME_B behind the trusted proxy (127.0.0.1) adds X_Forwarded_For: HOME_A.
    other = server.request("GET", "/", headers={"X-Forwarded-For": HOME_B,
                                                "X_Forwarded_For": HOME_A})
    assert other.status == 200
    assert b"EVO-LIVING" not in other.body
    alone = server.request("GET", "/", headers={"X_Forwarded_For": HOME_A})
    assert b"EVO-LIVING" not in alone.body


def test_a_request_that_trickles_in_is_cut(quick: Server) -> None:
    sock = _connect(quick.port, "127.0.0.2")
    assert _wait_for(lambda: quick.connections == 1, 2)
    start = time.monotonic()
    closed = False
    for byte in GET[:-2]:  # one byte every 0.2 s: uvicorn's idle timer restarts at each
        try:
            sock.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        time.sleep(0.2)
        if time.monotonic() - start > 4:
            break
    assert closed or _closed(sock, 2.0)
    assert time.monotonic() - start < 5
    assert _wait_for(lambda: quick.connections == 0, 2)


def test_a_connection_that_never_sends_is_cut(quick: Server) -> None:
    sock = _connect(quick.port, "127.0.0.2")
    assert _closed(sock, 4.0)
    assert _wait_for(lambda: quick.connections == 0, 2)


def test_a_client_that_never_reads_is_cut(quick: Server) -> None:
    sock = socket.socket()
    _OPEN.append(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind(("127.0.0.2", 0))
    sock.connect(("127.0.0.1", quick.port))
    sock.setblocking(False)
    request = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"
    sent = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # requests, never reading an answer
        try:
            sent += sock.send(request * 64)
        except BlockingIOError:
            time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            break
    assert sent > 0
    # Another client is served meanwhile.
    assert quick.request("GET", "/healthz").status == 200
    assert _wait_for(lambda: quick.connections == 0, 6), "the never-reading client stays"


def test_a_body_sent_on_after_its_refusal_leaves_no_idle_connection(quick: Server) -> None:
    sock = _connect(quick.port, "127.0.0.2")
    sock.sendall(b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Encoding: gzip\r\nX-Evo-Vpnid: EVO-1\r\nX-Evo-Signature: x\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (16384, b"x" * 16384)
    for _ in range(5):
        sock.sendall(chunk)
    assert _answers(sock, 1)[0][0] == 413
    sock.sendall(chunk + b"0\r\n\r\n")  # the rest of the body, then nothing
    assert _closed(sock, 4.0)
    assert _wait_for(lambda: quick.connections == 0, 2)


def test_one_address_gets_its_share_of_connections(quick: Server) -> None:
    hog = [_connect(quick.port, "127.0.0.2") for _ in range(12)]
    time.sleep(0.3)
    assert quick.connections == 4
    assert sum(_closed(s, 0.1) for s in hog) == 8  # the ones beyond the share: closed at once
    # Everybody else is served, and the trusted proxy (127.0.0.1) is not limited.
    other = _connect(quick.port, "127.0.0.3")
    other.sendall(GET)
    assert _answers(other, 1)[0][0] == 200
    proxied = [_connect(quick.port) for _ in range(8)]
    for s in proxied:
        s.sendall(GET)
        assert _answers(s, 1)[0][0] == 200


def test_bodies_are_refused_as_they_arrive(server: Server, device: Device) -> None:
    # Declared too large: refused from the head, nothing of the body read.
    sock = _connect(server.port)
    _body, headers = device.wire(device.report())
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"POST /v1/reports HTTP/1.1\r\nHost: x\r\n{head}Content-Length: 1000000\r\n\r\n"
                 .encode())
    assert _answers(sock, 1)[0][0] == 413
    # Chunked, no length: refused once 64 KiB have arrived, before the sender is done.
    sock = _connect(server.port)
    sock.sendall(f"POST /v1/reports HTTP/1.1\r\nHost: x\r\n{head}Transfer-Encoding: chunked"
                 "\r\n\r\n".encode())
    chunk = b"%x\r\n%s\r\n" % (16384, b"x" * 16384)
    for _ in range(5):
        sock.sendall(chunk)
    status, _headers, body = _answers(sock, 1)[0]
    assert status == 413, body
    # Enrolment: the token is checked before the body is read.
    sock = _connect(server.port)
    sock.sendall(b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1048576\r\n\r\n")
    assert _answers(sock, 1)[0][0] == 401
    assert server.app.store.counts()["reports"] == 0


def _raw_report(device: Device, text: str) -> tuple[bytes, dict[str, str]]:
    return device.wire(None, raw=gzip.compress(text.encode()))


def test_values_no_database_stores_are_400(server: Server, device: Device) -> None:
    doc = device.report()
    doc["sequence"] = 2**63
    reply = send(server, device, doc)
    assert reply.status == 400
    assert "sequence" in reply.json()["error"]
    doc = device.report()
    doc["sequence"] = 2**63 - 1  # the largest bigint: stored
    assert send(server, device, doc).status == 201
    text = json.dumps(device.report()).replace('"EVO-LIVING"', '"EVO-\\ud800"')
    body, headers = _raw_report(device, text)
    headers["X-Forwarded-For"] = HOME_A
    reply = server.request("POST", "/v1/reports", body, headers)
    assert reply.status == 400
    assert "surrogate" in reply.json()["error"]
    # A pair is one character beyond the BMP: stored.
    text = json.dumps(device.report()).replace('"EVO-LIVING"', '"EVO-\\ud83c\\udfb5"')
    body, headers = _raw_report(device, text)
    assert server.request("POST", "/v1/reports", body, headers).status == 201
    assert server.app.store.counts()["reports"] == 2
    enrolment = Device("EVO-300777").enrolment()
    enrolment["report"]["sequence"] = 2**64
    reply = server.request("POST", "/v1/enroll", json.dumps(enrolment).encode(),
                           {"Content-Type": "application/json",
                            "Authorization": f"Bearer {FACTORY}"})
    assert reply.status == 400
    assert server.app.store.counts()["devices"] == 1


def test_vpnid_with_a_trailing_newline_is_refused(server: Server) -> None:
    dev = Device("EVO-300778")
    enrolment = dev.enrolment()
    enrolment["vpnid"] = "EVO-300778\n"
    enrolment["report"]["functional"]["vpnid"] = "EVO-300778\n"
    reply = server.request("POST", "/v1/enroll", json.dumps(enrolment).encode(),
                           {"Content-Type": "application/json",
                            "Authorization": f"Bearer {FACTORY}"})
    assert reply.status == 400
    assert server.app.store.counts()["devices"] == 0
    for path in ("/v1/devices/EVO-300778%0A", "/v1/devices/EVO-300778%0A/registration-form.pdf"):
        reply = server.request("GET", path, headers={"Authorization": f"Bearer {SUPPORT}"})
        assert reply.status == 400, path


def test_only_declared_collectors_are_stored(server: Server, device: Device) -> None:
    doc = device.report()
    doc["collectors"].update({f"c{n:04d}": {"status": "ok", "duration_ms": 1, "error": None}
                              for n in range(2200)})
    assert send(server, device, doc).status == 201
    latest = get_device(server, device.vpnid).json()["latest_report"]
    assert latest["collectors"] == {"dmi": {"status": "ok", "duration_ms": 12, "error": None}}


def test_what_one_unit_stores_a_day_is_bounded(settings: Settings, clock: object) -> None:
    size = len(json.dumps(Device("EVO-300779").report(), separators=(",", ":")))
    settings.stored_bytes_per_day = 3 * size + size // 2  # three reports a day
    settings.rate_limit_reports = 1000
    db = Database(settings.database)
    db.migrate()
    app = Registry(settings, db=db, geo=Geo(None), clock=clock)  # type: ignore[arg-type]
    srv = Server(app)
    try:
        dev = Device("EVO-300779")
        assert enroll(srv, dev).status == 201
        statuses = [send(srv, dev) for _ in range(4)]
        assert [r.status for r in statuses] == [201, 201, 201, 429]
        assert "24 hours" in statuses[-1].json()["error"]
        assert 0 < int(statuses[-1].headers["retry-after"]) <= 86400 + 1
        assert app.store.counts()["reports"] == 3
        clock.advance(days=1, seconds=1)  # type: ignore[attr-defined]
        assert send(srv, dev).status == 201
    finally:
        srv.close()
        app.close()
        db.close()


def test_postgresql_restart_costs_no_request(tmp_path: Path, geo_db: Path,
                                             clock: object) -> None:
    bindir = pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL binaries absent: apt-get install postgresql")
    with postgres(bindir) as pg:
        _restart_under_a_warm_pool(pg, geo_db, clock)


def _restart_under_a_warm_pool(pg: PgServer, geo_db: Path, clock: object) -> None:
    settings = Settings(database=pg.create_database(), geo_database=str(geo_db),
                        trusted_proxies=["127.0.0.1/32"], factory_tokens=[FACTORY],
                        support_tokens=[SUPPORT], rate_limit_reports=1000, threads=4)
    db = Database(settings.database)
    db.migrate()
    app = Registry(settings, db=db, geo=Geo(None), clock=clock)  # type: ignore[arg-type]
    srv = Server(app)
    try:
        devices = [Device(f"EVO-30080{n}") for n in range(4)]
        for dev in devices:
            assert enroll(srv, dev).status == 201
        # Every thread of the pool and the writer hold a connection.
        for _ in range(3):
            for dev in devices:
                assert send(srv, dev).status == 201
                assert get_device(srv, dev.vpnid).status == 200
        pg.restart()
        statuses = []
        for _ in range(3):
            for dev in devices:
                statuses.append(send(srv, dev).status)
                statuses.append(get_device(srv, dev.vpnid).status)
                statuses.append(srv.request("GET", "/", headers={"X-Forwarded-For": HOME_A})
                                .status)
        assert 503 not in statuses, statuses
        assert set(statuses) == {200, 201}
        assert app.store.counts()["reports"] == 24
    finally:
        srv.close()
        app.close()
        db.close()

