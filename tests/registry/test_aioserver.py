"""The registry's own HTTP server, byte by byte over real sockets on 127.0.0.1.

The rest of the registry tests go through it too (tests/registry/conftest.py); these check what
only a server decides: keep-alive, pipelining, HEAD, the limits on heads and bodies, chunked
bodies, idle connections, repeated headers, and clients that vanish mid-request.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from evo_registry.aioserver import HttpServer
from evo_registry.app import Registry
from evo_registry.config import Settings
from evo_registry.db import Database
from evo_registry.geo import Geo
from tests.registry.conftest import FACTORY, HOME_A, Device, Server, enroll, get_device, send
from tests.registry.pgserver import PgServer


@pytest.fixture
def aio(settings: Settings, tmp_path: Path) -> Iterator[Server]:
    db = Database(settings.database)
    db.migrate()
    app = Registry(settings, db=db, geo=Geo(settings.geo_database))
    srv = Server(app, kind="asyncio")
    yield srv
    srv.close()
    app.close()
    db.close()


@contextmanager
def _app_and_listener(settings: Settings) -> Iterator[tuple[Registry, socket.socket, int]]:
    """A migrated app and a listening socket on 127.0.0.1, for a server the test runs itself."""
    db = Database(settings.database)
    db.migrate()
    app = Registry(settings, db=db, geo=Geo(None))
    sock_l = socket.socket()
    sock_l.bind(("127.0.0.1", 0))
    sock_l.listen(16)
    try:
        yield app, sock_l, sock_l.getsockname()[1]
    finally:
        sock_l.close()
        app.close()
        db.close()


_OPEN: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def _connect(server: Server | int) -> socket.socket:
    port = server if isinstance(server, int) else server.port
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    _OPEN.append(sock)
    return sock


def _answers(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """Read ``count`` responses from a socket."""
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
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:  # closed by the server with a reset
        return True
    except TimeoutError:
        return False


def test_keep_alive_and_pipelining(aio: Server) -> None:
    sock = _connect(aio)
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    sock.sendall(get)
    assert _answers(sock, 1)[0][0] == 200
    # Three requests in one write: three answers, in order, on the same connection.
    sock.sendall(get + b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n" + get)
    assert [a[0] for a in _answers(sock, 3)] == [200, 404, 200]
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, _ = _answers(sock, 1)[0]
    assert (status, headers["connection"]) == (200, "close")
    assert _closed(sock)


def test_http10_closes_unless_asked(aio: Server) -> None:
    sock = _connect(aio)
    sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert _answers(sock, 1)[0][0] == 200
    assert _closed(sock)
    sock = _connect(aio)
    sock.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2)
    assert [a[0] for a in _answers(sock, 2)] == [200, 200]


def test_head_has_the_length_of_get_and_no_body(aio: Server) -> None:
    got = aio.request("GET", "/openapi.json")
    sock = _connect(aio)
    sock.sendall(b"HEAD /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while data.count(b"\r\n\r\n") < 2 or not data.endswith(b"}"):
        data += sock.recv(65536)
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    assert f"Content-Length: {len(got.body)}" in head
    # No body after the HEAD answer: the next bytes are the next answer's status line.
    assert data.split(b"\r\n\r\n", 1)[1].startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
    (b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413),
    (b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST /v1/enroll HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    (b"GET / HTTP/1.1\r\nHost x\r\n\r\n", 400),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
])
def test_malformed_requests_get_a_4xx_and_the_connection_closes(
        aio: Server, request_bytes: bytes, status: int) -> None:
    sock = _connect(aio)
    sock.sendall(request_bytes)
    got, _headers, body = _answers(sock, 1)[0]
    assert got == status
    assert json.loads(body)["error"]
    assert _closed(sock)
    assert aio.request("GET", "/healthz").status == 200  # the server is fine


def test_connections_beyond_the_limit_are_refused(settings: Settings) -> None:
    with _app_and_listener(settings) as (app, sock_l, port):
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        server = HttpServer(app, 2, idle_s=30, max_connections=2)
        thread = threading.Thread(target=loop.run_until_complete,
                                  args=(server.serve(sock_l, stop),))
        thread.start()
        try:
            first, second = _connect(port), _connect(port)
            for sock in (first, second):  # both served, kept open
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert _answers(sock, 1)[0][0] == 200
            third = _connect(port)
            assert _closed(third)
            first.close()
            time.sleep(0.3)
            fourth = _connect(port)  # a place is free again
            fourth.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _answers(fourth, 1)[0][0] == 200
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(15)
            loop.close()


def _accept_queue(port: int) -> int:
    """Return how many connections wait in a listening socket's accept queue (ss's Recv-Q)."""
    out = subprocess.run(["ss", "-Hltn", f"( sport = :{port} )"], capture_output=True,
                         text=True, check=True).stdout.split()
    return int(out[1])


def test_one_connection_accepted_per_turn_of_the_loop(settings: Settings) -> None:
    """Workers share one listening socket: each takes one connection per turn of its loop.

    asyncio's own server accepted every queued connection in one go, so the first of several
    workers to wake took a whole burst (in the bench, all 32 connections went to one of two
    workers; test_cli.py checks the spread with two real processes).  Here eight connections
    wait in the backlog before the server starts, and the loop is run one turn at a time: never
    more than one new connection per turn (the old server took all eight in one)."""
    with _app_and_listener(settings) as (app, sock_l, port):
        waiting = [_connect(port) for _ in range(8)]  # queued by the kernel, nobody accepted yet
        loop = asyncio.new_event_loop()
        server = HttpServer(app, 2, idle_s=30)
        stop = asyncio.Event()
        task = loop.create_task(server.serve(sock_l, stop))
        accepted = [0]
        try:
            for _ in range(200):
                # One turn of the loop: stop() before run_forever() polls once and runs what is
                # ready (asyncio's documented behaviour).
                loop.call_soon(loop.stop)
                loop.run_forever()
                accepted.append(len(waiting) - _accept_queue(port))
                if accepted[-1] == len(waiting):
                    break
            steps = [b - a for a, b in itertools.pairwise(accepted)]
            assert accepted[-1] == len(waiting), accepted
            assert max(steps) == 1, accepted
            for sock in waiting:  # and each is served
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            loop.run_until_complete(asyncio.sleep(0.5))
            assert all(_answers(sock, 1)[0][0] == 200 for sock in waiting)
        finally:
            loop.call_soon(stop.set)
            loop.run_until_complete(task)
            loop.close()


def test_idle_and_slow_clients_are_cut(settings: Settings) -> None:
    with _app_and_listener(settings) as (app, sock_l, port):
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        thread = threading.Thread(target=loop.run_until_complete,
                                  args=(HttpServer(app, 2, idle_s=0.5).serve(sock_l, stop),))
        thread.start()
        try:
            idle, slow = _connect(port), _connect(port)
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHo")  # and never the rest
            start = time.monotonic()
            assert _closed(idle) and _closed(slow)
            assert time.monotonic() - start < 5
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(15)
            loop.close()


def test_a_client_gone_mid_body_stores_nothing(aio: Server) -> None:
    dev = Device("EVO-400001")
    assert enroll(aio, dev).status == 201
    body, headers = dev.wire(dev.report())
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock = _connect(aio)
    sock.sendall(f"POST /v1/reports HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}"
                 "\r\n\r\n".encode() + body[: len(body) // 2])
    sock.shutdown(socket.SHUT_RDWR)
    time.sleep(0.2)
    assert aio.app.store.counts()["reports"] == 0
    assert send(aio, dev).status == 201


def test_repeated_forwarded_for_headers_are_one_list(aio: Server) -> None:
    # Two proxies each adding a header line: the registry (trusting 127.0.0.1 only) takes the
    # entry its trusted proxy added last, never the one a client could have written.
    dev = Device("EVO-400002")
    assert enroll(aio, dev).status == 201
    body, headers = dev.wire(dev.report())
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock = _connect(aio)
    sock.sendall(f"POST /v1/reports HTTP/1.1\r\nHost: x\r\n{head}"
                 f"X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: {HOME_A}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert _answers(sock, 1)[0][0] == 201
    assert get_device(aio, dev.vpnid).json()["wan_ip"] == HOME_A


def test_loop_reads_reconnect_after_the_database_cut_them(pg_server: PgServer,
                                                          geo_db: Path) -> None:
    # PostgreSQL only: there the finder and key reads use the loop's own connection.
    settings = Settings(database=pg_server.create_database(), geo_database=str(geo_db),
                        trusted_proxies=["127.0.0.1/32"], factory_tokens=[FACTORY])
    db = Database(settings.database)
    db.migrate()
    app = Registry(settings, db=db, geo=Geo(settings.geo_database))
    srv = Server(app, kind="asyncio")
    try:
        import psycopg

        home = {"X-Forwarded-For": HOME_A}
        assert srv.request("GET", "/", headers=home).status == 200
        dbname = urllib.parse.urlsplit(settings.database).path.lstrip("/")
        with psycopg.connect(pg_server.url("postgres"), autocommit=True) as admin:
            cut_all = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = %s")
            admin.execute(cut_all, (dbname,))
            # The cut connection is noticed on its next use, replaced, and the read (it changes
            # nothing) tried again on the new one.
            assert srv.request("GET", "/", headers=home).status == 200
            # A database that takes no connections: 503 + Retry-After, never a 500.
            admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
            admin.execute(cut_all, (dbname,))
            down = srv.request("GET", "/", headers=home)
            assert down.status == 503, down.body
            assert down.headers["retry-after"]
            admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        assert srv.request("GET", "/", headers=home).status == 200
        dev = Device("EVO-400003")
        assert enroll(srv, dev).status == 201
        assert send(srv, dev).status == 201  # its key read over the new connection
    finally:
        srv.close()
        app.close()
        db.close()
