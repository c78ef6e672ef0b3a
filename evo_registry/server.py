"""Serve the registry with uvicorn: its HTTP parser (httptools), keep-alive, limits and workers.

uvicorn does the HTTP: parsing (llhttp, strict: a bad Content-Length, a bare CR, LF or NUL in a
header is a 400), keep-alive and its idle timeout, the connection limit (``max_connections``:
503 beyond it) and, with ``workers`` > 1, the supervisor that restarts a worker that died (and
logs it).  Three things it does not have (uvicorn issue #157: no timeout while a request
arrives; nothing per client), added here to its own protocol class, ``GuardedHttpTools``:

- a request (head and body) must arrive within ``REQUEST_TIMEOUT_S`` of the connection being
  ready for it: its idle timer is reset by every byte, so one byte every few seconds held a
  connection for ever;
- an answer the client does not read is dropped after ``SEND_TIMEOUT_S``: a client that sends
  requests and never reads would otherwise hold its connection, and the answers, for ever;
- one client address (an IPv6 /64, as the finder counts a home) may hold at most
  ``connections_per_client`` connections of a process: beyond, the connection is closed at once,
  so one address cannot take every connection.  Trusted proxies are not counted (behind one,
  every visitor has its address; limiting per visitor is then the proxy's work).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import socket
from collections import Counter
from collections.abc import Sequence
from typing import Any

from starlette.applications import Starlette
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from evo_registry import __version__, wire
from evo_registry.app import GUARD_STATE, create_app
from evo_registry.config import Settings, parse_listen
from evo_registry.errors import RegistryError

LOG = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0
SEND_TIMEOUT_S = 10.0
# Between requests uvicorn closes a connection idle this long (its timeout_keep_alive).
KEEP_ALIVE_S = 5


class ConnectionGuard:
    """Count the open connections of each client address in this process."""

    def __init__(self, per_client: int, trusted: Sequence[wire.Network]) -> None:
        self.per_client = per_client
        self.trusted = list(trusted)
        self.open: Counter[str] = Counter()
        self.refused = 0

    def admit(self, peer: str | None) -> str | None:
        """Count a new connection; return its client key, or raise ``LookupError`` if over."""
        address = wire.canonical_ip(peer or "")
        if address is None or wire.in_networks(address, self.trusted):
            return None
        key = wire.home_key(address)
        if self.open[key] >= self.per_client:
            self.refused += 1
            if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
                LOG.warning("%s has %s connections open: refusing more (%s refused so far)",
                            key, self.open[key], self.refused)
            raise LookupError(key)
        self.open[key] += 1
        return key

    def release(self, key: str | None) -> None:
        """Count a connection closed."""
        if key is None:
            return
        self.open[key] -= 1
        if self.open[key] <= 0:
            del self.open[key]


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request deadline, a send deadline and a per-client
    share (see the module docstring)."""

    request_timeout_s = REQUEST_TIMEOUT_S
    send_timeout_s = SEND_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._request_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._client_key: str | None = None
        self._guard: ConnectionGuard | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self.app_state.get(GUARD_STATE)
        if isinstance(guard, ConnectionGuard):
            try:
                self._client_key = guard.admit(self.client[0] if self.client else None)
            except LookupError:
                self.transport.abort()
                return
            self._guard = guard
        self._arm_request_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if self._guard is not None:
            self._guard.release(self._client_key)
            self._guard = None
        super().connection_lost(exc)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self.cycle is not None and self.cycle.response_complete:
            # Answered before its body was in (413): the rest was read, the next request waits.
            self._arm_request_timer()
        elif self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Waiting for the next request (none queued, none being answered): it gets its deadline.
        if not self.transport.is_closing() and not self.pipeline and (
                self.cycle is None or self.cycle.response_complete):
            self._arm_request_timer()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.send_timeout_s, self._expired,
                                                    "its answer unread")

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _arm_request_timer(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
        self._request_timer = self.loop.call_later(self.request_timeout_s, self._expired,
                                                   "no complete request")

    def _cancel_timers(self) -> None:
        for timer in (self._request_timer, self._send_timer):
            if timer is not None:
                timer.cancel()
        self._request_timer = self._send_timer = None

    def _expired(self, why: str) -> None:
        LOG.debug("closing a connection of %s: %s in time", self._client_key, why)
        self._cancel_timers()
        self.transport.abort()


def worker_app(settings: Settings) -> Starlette:
    """Return the app of one worker process (uvicorn calls it in each, as a factory)."""
    guard = ConnectionGuard(settings.connections_per_client, settings.networks())
    app = create_app(settings, guard=guard)
    # What start-up built (modules, the compiled schema, the app) lives as long as the process:
    # out of the collector's sight, full collections under load do not walk it again and again.
    gc.collect()
    gc.freeze()
    return app


def log_config(level: int) -> dict[str, Any]:
    """Return the logging set-up of every process: the root logger to stderr (journald)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain",
                                "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["stderr"]},
        # uvicorn's own loggers propagate to the root; no access log (client addresses).
        "loggers": {"uvicorn": {"level": level, "handlers": [], "propagate": True},
                    "uvicorn.error": {"level": level, "handlers": [], "propagate": True},
                    "uvicorn.access": {"level": logging.WARNING, "handlers": [],
                                       "propagate": True}},
    }


def uvicorn_config(settings: Settings, app: Any, level: int | None = logging.INFO) -> Any:
    """Return the uvicorn configuration of the registry (``app``: an app or a factory).

    ``level`` None: logging is left as it is (a test's server, in the test's process).
    """
    import uvicorn

    return uvicorn.Config(
        app, factory=not isinstance(app, Starlette), http=f"{__name__}:GuardedHttpTools",
        lifespan="on", workers=settings.workers, limit_concurrency=settings.max_connections,
        # No route takes a WebSocket: an upgrade is a plain request (a protocol switched away
        # would leave the per-client count of GuardedHttpTools behind).
        ws="none",
        timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=20,
        # X-Forwarded-For is read by the app, from trusted_proxies only (wire.client_address).
        proxy_headers=False, server_header=False, access_log=False,
        log_config=log_config(level) if level is not None else None)


def listening_socket(listen: str) -> socket.socket:
    """Bind the address of ``listen`` (HOST:PORT) or raise RegistryError."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise RegistryError(f"cannot listen on {listen}: {exc.strerror}") from exc
    sock.listen(2048)
    return sock


def run(settings: Settings, level: int = logging.INFO) -> int:
    """Serve until SIGTERM or SIGINT: one process, or a supervisor and ``workers`` processes."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    sock = listening_socket(settings.listen)
    host, port = sock.getsockname()[:2]
    LOG.info("evo-registry %s serving on %s:%s with %s worker(s)", __version__, host, port,
             settings.workers)
    config = uvicorn_config(settings, functools.partial(worker_app, settings), level)
    if settings.workers > 1:
        Multiprocess(config, sockets=[sock]).run()
        return 0
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return 0 if server.started else 1
