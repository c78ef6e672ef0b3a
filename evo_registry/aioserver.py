"""The registry's own HTTP/1.1 server: one asyncio loop per process, reports never touch a thread.

Under load, waitress cost the registry more than the reports themselves: each request went from
its I/O loop to a worker thread, from there to the group-commit writer and back, and back to the
loop, four thread hand-overs fighting for the GIL (~0.7 ms of CPU per report measured under the
bench's load, against ~0.45 ms for checking and storing it).  Here a report is read, verified,
decompressed and validated in the loop itself (nothing that blocks; on PostgreSQL the device keys
of the reports that arrive together are one query over the loop's own asyncio connection, as is
the finder's query), then stored by group commit: the process's writer thread takes the batch
(``GroupCommit.submit_async``), stores it, and wakes the loop once per batch.  With
``report_writer = "loop"`` on PostgreSQL the writer is a task of this same loop on its own
asyncio connection (``batch.AsyncGroupCommit``): parse, COMMIT and answer without any thread
hand-over; it measured slower under the bench (see bench/registry_results.md), hence not the
default.  Every other route is the plain WSGI
application run in a small thread pool: those do blocking database reads and are rare.

The server is deliberately small: HTTP/1.1 with keep-alive and Content-Length bodies (the agent,
browsers, schemathesis and curl all send those); chunked request bodies are refused with 411,
header blocks above 64 KiB with 431, bodies above the application's largest limit with 413.
Idle keep-alive connections are closed after ``idle_s``, a request's head must arrive within it;
at most ``max_connections`` are open at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import io
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

from evo_registry.app import Environ, Registry, Response, json_response
from evo_registry.batch import AsyncGroupCommit
from evo_registry.db import Row
from evo_registry.errors import HttpError

LOG = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024 + 1  # the largest body of any route (enrolment); reports stop at 64 KiB
_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized",
            403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            409: "Conflict", 411: "Length Required", 413: "Content Too Large",
            415: "Unsupported Media Type", 429: "Too Many Requests", 431:
            "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable", 505: "HTTP Version Not Supported"}


def _close(conn: socket.socket, _task: object) -> None:
    conn.close()


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _parse_head(head: bytes, peer: tuple[Any, ...] | None, server: tuple[str, int],
                ) -> tuple[Environ, bool]:
    """Return the WSGI environ of a request head, and whether the connection stays open."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # latin-1 decodes anything; kept for clarity
        raise _BadRequest(400, "bad request head") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        if len(parts) == 3 and parts[2].startswith("HTTP/"):
            raise _BadRequest(505, "only HTTP/1.x")
        raise _BadRequest(400, "bad request line")
    method, target, version = parts
    path, _, query = target.partition("?")
    environ: Environ = {
        "REQUEST_METHOD": method.upper(), "SCRIPT_NAME": "",
        "PATH_INFO": unquote(path, encoding="latin-1"), "QUERY_STRING": query,
        "SERVER_PROTOCOL": version, "SERVER_NAME": server[0], "SERVER_PORT": str(server[1]),
        "REMOTE_ADDR": str(peer[0]) if peer else "", "REMOTE_PORT": str(peer[1]) if peer else "",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
    }
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(400, "bad header line")
        key = name.upper().replace("-", "_")
        value = value.strip(" \t")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if key in environ and environ[key] != value:
                raise _BadRequest(400, f"two different {name} headers")
            environ[key] = value
            continue
        key = "HTTP_" + key
        # Repeated headers are one list (RFC 9110 5.3): X-Forwarded-For from two proxies.
        environ[key] = f"{environ[key]}, {value}" if key in environ else value
    connection = str(environ.get("HTTP_CONNECTION", "")).lower()
    keep = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    return environ, keep


def _head_bytes(status: int, headers: Iterable[tuple[str, str]], keep: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines.append("Server: evo-registry")
    if not keep:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HttpServer:
    """Serve one Registry on one listening socket from the running asyncio loop."""

    def __init__(self, app: Registry, threads: int = 8, idle_s: float = 60.0,
                 max_connections: int = 1000) -> None:
        self.app = app
        self.idle_s = idle_s
        # Beyond this many open connections a new one is closed at once: a flood of idle
        # connections must not take every file descriptor (waitress had the same guard, at 100).
        self.max_connections = max_connections
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads),
                                       thread_name_prefix="evo-registry")
        self._connections: set[asyncio.Task[None]] = set()
        # Key reads of reports, coalesced (see _key).
        self._key_waiters: dict[str, list[asyncio.Future[str | None]]] = {}
        self._key_reading = False
        self._key_tasks: set[asyncio.Task[None]] = set()
        # PostgreSQL: the two reads of the hot paths (device keys, the finder) go over one
        # asyncio connection of this loop, without a thread hand-over; SQLite reads are
        # blocking calls, so those stay in the pool.
        self._async_reads = app.db.dialect == "postgresql"
        self._aconn: Any = None
        self._aconn_lock = asyncio.Lock()
        # report_writer = "loop" (PostgreSQL): reports are stored by a writer task of this loop
        # on its own asyncio connection, with no thread hand-over between parse and COMMIT.
        # Measured slower than the writer thread under the bench (each command of psycopg's
        # async pipeline waits for a turn of the loop, behind the requests being parsed), so
        # the thread stays the default; SQLite always uses the thread (its calls block).
        loop_writer = self._async_reads and app.settings.report_writer == "loop"
        self.writer = AsyncGroupCommit(app.store, app.limits) if loop_writer else None

    async def serve(self, sock: socket.socket, stop: asyncio.Event) -> None:
        """Accept connections until ``stop`` is set, then finish the requests under way."""
        sock.setblocking(False)
        accepting = asyncio.ensure_future(self._accept(sock))
        LOG.info("process %s accepting connections", os.getpid())
        try:
            await stop.wait()
        finally:
            accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await accepting
            sock.close()  # as asyncio's server did (a forked worker closes only its copy)
            for task in list(self._connections):
                task.cancel()
            if self._connections:
                await asyncio.wait(self._connections, timeout=10)
            self.pool.shutdown(wait=False, cancel_futures=True)
            await self.close()

    async def _accept(self, sock: socket.socket) -> None:
        """Take connections from the listening socket one at a time.

        With ``--workers N`` the N processes share one listening socket.  asyncio's own server
        (``start_server``) accepts up to its backlog of connections per wake-up, so whichever
        worker woke first took a whole burst: in the bench all 32 keep-alive connections went to
        one process while the other stayed idle (per-thread CPU: 9.8 s against < 0.05 s).  One
        accept per turn of the loop lets every worker race for each connection, and a busy
        worker, slower back to its loop, takes fewer of them.  (SO_REUSEPORT would spread
        connections by a hash of their addresses whatever each worker's load, and drop the
        queued ones of a worker that exits.)
        """
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _peer = await loop.sock_accept(sock)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: wait instead of spinning
                LOG.warning("cannot accept a connection: %s", exc.strerror or exc)
                await asyncio.sleep(0.5)
                continue
            if len(self._connections) >= self.max_connections:
                LOG.warning("%s connections open: refusing one more", len(self._connections))
                conn.close()
                continue
            task = loop.create_task(self._accepted(conn))
            self._connections.add(task)  # shutdown cancels it, even before it started
            task.add_done_callback(functools.partial(_close, conn))  # idempotent
            # Back to the loop before the next accept, so another worker may take it.
            await asyncio.sleep(0)

    async def _accepted(self, conn: socket.socket) -> None:
        task = asyncio.current_task()
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=MAX_HEAD)
        except (OSError, asyncio.CancelledError):
            if task is not None:
                self._connections.discard(task)
            return
        await self._connection(reader, writer, task)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          task: asyncio.Task[None] | None) -> None:
        peer = writer.get_extra_info("peername")
        sockname = writer.get_extra_info("sockname") or ("", 0)
        try:
            while True:
                keep = await self._one(reader, writer, peer, (str(sockname[0]), int(sockname[1])))
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   peer: Any, server: tuple[str, int]) -> bool:
        """Serve one request of a connection; return True to keep the connection."""
        # Idle or slow clients are cut by a timer, cheaper than wait_for on every request.
        timer = asyncio.get_running_loop().call_later(self.idle_s, writer.transport.abort)
        try:
            return await self._request(reader, writer, peer, server, timer)
        finally:
            timer.cancel()

    async def _request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       peer: Any, server: tuple[str, int], timer: asyncio.TimerHandle) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            await self._send(writer, json_response(431, {"error": "request head too large"}),
                             False, "GET")
            return False
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                LOG.debug("connection closed in the middle of a request head")
            return False
        try:
            environ, keep = _parse_head(head[:-4], peer, server)
            if "HTTP_TRANSFER_ENCODING" in environ:
                raise _BadRequest(411, "send the body with a Content-Length")
            length_text = str(environ.get("CONTENT_LENGTH") or "0")
            if not length_text.isdigit():
                raise _BadRequest(400, "Content-Length is not a number")
            length = int(length_text)
            if length > MAX_BODY:
                raise _BadRequest(413, f"body larger than {MAX_BODY - 1} bytes")
        except _BadRequest as exc:
            await self._send(writer, json_response(exc.status, {"error": exc.reason}), False,
                             "GET")
            return False
        body = await reader.readexactly(length) if length else b""
        timer.cancel()  # the request is in: its answer may take as long as the database needs
        environ["wsgi.input"] = io.BytesIO(body)
        if environ["REQUEST_METHOD"] == "POST" and environ["PATH_INFO"] == "/v1/reports":
            response = await self._report(environ, body)
        elif environ["REQUEST_METHOD"] == "GET" and environ["PATH_INFO"] == "/":
            response = await self._finder(environ)
        else:
            response = await self._wsgi(environ)
        await self._send(writer, response, keep, environ["REQUEST_METHOD"])
        return keep

    async def _report(self, environ: Environ, body: bytes) -> Response:
        """POST /v1/reports without a thread: checks in the loop, storage by the writer."""
        app = self.app
        try:
            vpnid, signature = app.report_headers(environ)
            if len(body) > 64 * 1024:
                app.read_body(environ, 64 * 1024)  # raises the same 413 as under WSGI
            key = await self._key(vpnid)
            item = app.check_report(environ, vpnid, signature, body, key)
            if self.writer is not None:
                outcome = await self.writer.submit(item)
            else:
                outcome = await app.writer.submit_async(item)
            return app.report_response(item, outcome)
        except HttpError as exc:
            return json_response(exc.status, {"error": exc.reason}, exc.headers)
        except Exception as exc:
            return app.failure(environ, exc)

    async def _read(self, sql: str, params: tuple[Any, ...],
                    blocking: Callable[[], list[Row]]) -> list[Row]:
        """Run a read over this loop's PostgreSQL connection, or ``blocking`` in the pool."""
        if not self._async_reads:
            return await asyncio.get_running_loop().run_in_executor(self.pool, blocking)
        import psycopg

        # A connection found broken (the server restarted, or cut it) is replaced and the read,
        # which changes nothing, tried once more on the new one; a server still down fails it.
        for attempt in (1, 2):
            async with self._aconn_lock:  # one connect, even when many requests start together
                if self._aconn is None or self._aconn.closed:
                    self._aconn = await self.app.db.connect_async()
                conn = self._aconn
            try:
                cur = await conn.execute(sql.replace("%", "%%").replace("?", "%s"), params)
                rows: list[Row] = await cur.fetchall()
            except psycopg.OperationalError:
                if not (conn.closed or conn.broken):
                    raise
                if self._aconn is conn:
                    self._aconn = None
                if attempt == 2:
                    raise
                continue
            return rows
        raise AssertionError("unreachable")

    async def _finder(self, environ: Environ) -> Response:
        """GET / without a thread on PostgreSQL."""
        app = self.app
        try:
            visitor = app.wan_ip(environ)
            rows: list[Row] = []
            if visitor:
                sql, params = app.store.finder_query(visitor, app.clock(),
                                                     app.settings.finder_days)
                rows = await self._read(sql, params,
                                        lambda: app.store.finder(visitor, app.clock(),
                                                                 app.settings.finder_days))
            return app.finder_page(rows, environ)
        except HttpError as exc:
            return json_response(exc.status, {"error": exc.reason}, exc.headers)
        except Exception as exc:
            return app.failure(environ, exc)

    async def _key(self, vpnid: str) -> str | None:
        """Return the enrolled key of a VPNID, or None (refused like a wrong signature).

        The reads of the reports that arrive together are one query: the VPNIDs asked for while
        a read is under way wait for it to end and then go in the next one.  (A key cache would
        not help: each unit reports once a day.  One read per report cost 0.4 ms of registry CPU
        and 0.15 ms of PostgreSQL's per report when each report came from another device:
        bench/registry_results.md.)
        """
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._key_waiters.setdefault(vpnid, []).append(future)
        if not self._key_reading:
            self._key_reading = True
            asyncio.get_running_loop().call_soon(self._read_keys)
        return await future

    def _read_keys(self) -> None:
        """Start one read for every VPNID waiting (called once the loop's turn is over)."""
        waiters, self._key_waiters = self._key_waiters, {}
        task = asyncio.get_running_loop().create_task(self._keys_task(waiters))
        self._key_tasks.add(task)
        task.add_done_callback(self._key_tasks.discard)

    async def _keys_task(self, waiters: dict[str, list[asyncio.Future[str | None]]]) -> None:
        store = self.app.store
        sql, params = store.keys_query(sorted(waiters))
        try:
            rows = await self._read(sql, params, lambda: store.db.read(sql, params))
            keys = {str(r["vpnid"]): str(r["public_key"]) for r in rows}
        except Exception as exc:  # every waiter gets it: the app answers 503 or 500
            for futures in waiters.values():
                for f in futures:
                    if not f.done():
                        f.set_exception(exc)
        else:
            for vpnid, futures in waiters.items():
                for f in futures:
                    if not f.done():
                        f.set_result(keys.get(vpnid))
        finally:
            if self._key_waiters:  # arrived during this read: the next one
                self._read_keys()
            else:
                self._key_reading = False

    async def close(self) -> None:
        """Store the reports queued, then close this loop's database connections."""
        if self.writer is not None:
            await self.writer.close()
        if self._aconn is not None:
            await self._aconn.close()
            self._aconn = None

    async def _wsgi(self, environ: Environ) -> Response:
        """Run the WSGI application for one request in the thread pool."""
        captured: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], None]:
            captured["status"] = int(status.split(" ", 1)[0])
            captured["headers"] = headers
            return lambda _data: None

        def run() -> bytes:
            return b"".join(self.app(environ, start_response))

        body = await asyncio.get_running_loop().run_in_executor(self.pool, run)
        headers = dict(captured.get("headers", []))
        content_type = headers.pop("Content-Type", "application/octet-stream")
        headers.pop("Content-Length", None)
        if environ["REQUEST_METHOD"] == "HEAD":
            # The app sent the GET's Content-Length and no body: keep its length.
            length = dict(captured.get("headers", [])).get("Content-Length", "0")
            return Response(captured.get("status", 500), b"", content_type,
                            {**headers, "Content-Length": length})
        return Response(captured.get("status", 500), body, content_type, headers)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, response: Response, keep: bool,
                    method: str) -> None:
        headers = [("Content-Type", response.content_type)]
        extra = dict(response.headers or {})
        length = extra.pop("Content-Length", None) if method == "HEAD" else None
        headers.append(("Content-Length", length or str(len(response.body))))
        headers += list(extra.items())
        writer.write(_head_bytes(response.status, headers, keep)
                     + (b"" if method == "HEAD" else response.body))
        if writer.transport.get_write_buffer_size() > 256 * 1024:
            await writer.drain()


def run(app: Registry, sock: socket.socket, threads: int) -> None:
    """Serve until SIGTERM or SIGINT (the process's main thread)."""
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await HttpServer(app, threads).serve(sock, stop)

    # What start-up built (modules, the compiled schema, the app) lives as long as the process:
    # out of the collector's sight, full collections under load do not walk it again and again.
    gc.collect()
    gc.freeze()
    try:
        asyncio.run(main())
    finally:
        app.close()
