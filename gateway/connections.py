"""Client connections: a cap on how many are open, deadlines on slow headers, JSON refusals.

uvicorn keeps a connection that never sends a full request for as long as the
client likes, so a few hundred silent sockets exhaust the process's file
descriptors and every real request fails. This protocol (uvicorn's httptools
protocol with guards) closes such connections:

- over ``max_connections`` open connections, a new one is answered 503 and closed;
- headers must arrive within ``header_timeout_s`` of the connection opening or of
  the request's first byte, else 408; headers over ``max_header_bytes``, 431;
- a request uvicorn cannot parse gets the same OpenAI-shaped JSON error as the app's.

Each refusal is counted in ``gateway_connections_refused_total`` and logged, at
most once a second per reason. (Slow bodies are bounded in ``chat.read_body``.)

The protocol also tells a request the moment its client leaves (``ClientLeft``):
cancelling the waiting request directly costs nothing per request, where a task
watching ``receive()`` for the disconnect costs a task and its wake-ups on each one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway import metrics
from gateway.config import ServerConfig
from gateway.errors import error_body
from gateway.jsoncodec import dumps

log = logging.getLogger("gateway.connections")

# The lifespan state key under which the app hands its state to the protocol (see ``shutdown``).
DRAIN_STATE_KEY = "gateway_state"
# The scope key of each request's ``ClientLeft``, set by ``GuardedHttpProtocol``.
CLIENT_LEFT_KEY = "gateway.client_left"


class ClientLeft:
    """Fired by the connection when its client goes away: cancels the task waiting on the client's behalf."""

    __slots__ = ("gone", "waiting")

    def __init__(self) -> None:
        self.gone = False
        self.waiting: asyncio.Task[Any] | None = None

    def fire(self) -> None:
        self.gone = True
        if self.waiting is not None:
            self.waiting.cancel()


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int = 1000
    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024


class HeadersTooLarge(Exception):
    """Raised from a parser callback to stop parsing headers over the size limit."""


class _RefusalLog:
    """One warning per reason per second: a flood must not become a flood of log lines."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def record(self, reason: str, message: str) -> None:
        metrics.CONNECTIONS_REFUSED.labels(reason).inc()
        now = time.monotonic()
        if now - self._last.get(reason, 0.0) >= 1.0:
            self._last[reason] = now
            log.warning(message, extra={"event": "connection_refused", "reason": reason})


_refusals = _RefusalLog()


def refusal(status: int, message: str, code: str) -> bytes:
    """A complete HTTP/1.1 response carrying an OpenAI error, closing the connection."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = dumps(error_body(message, kind, None, code))
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the gateway's connection guards."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = getattr(self.config, "connection_limits", None)
        self.limits: ConnectionLimits = limits if isinstance(limits, ConnectionLimits) else ConnectionLimits()
        self._header_deadline: asyncio.TimerHandle | None = None
        self._awaiting_headers = True
        self._header_bytes = 0
        self._parsed_header_bytes = 0
        self._oversized = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio sets this only on sockets it created as IPPROTO_TCP; uvicorn's worker
            # sockets are not, and a reused connection then waits ~40 ms for a delayed ACK.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if len(self.connections) > self.limits.max_connections:
            _refusals.record(
                "too_many_connections",
                f"refusing a connection: {self.limits.max_connections} client connections are open",
            )
            self._refuse(503, "The gateway has too many open connections; retry shortly.", "too_many_connections")
            return
        self._start_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            left = cycle.scope.get(CLIENT_LEFT_KEY)
            if isinstance(left, ClientLeft):
                left.fire()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._awaiting_headers and not self.transport.is_closing():
            # Everything read while headers are still incomplete is header bytes.
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse_large_headers()

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value))
        super().on_header(name, value)

    def _count_header_bytes(self, size: int) -> None:
        """Headers that arrive in one read are parsed whole: count them as they are parsed too."""
        self._parsed_header_bytes += size
        if self._parsed_header_bytes > self.limits.max_header_bytes:
            # Raising from a parser callback stops parsing; uvicorn then calls send_400_response.
            self._oversized = True
            raise HeadersTooLarge

    def _refuse_large_headers(self) -> None:
        _refusals.record("malformed", "refusing a request whose headers are over the size limit")
        self._refuse(431, "Request headers are too large.", "headers_too_large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_headers = True
        self._header_bytes = 0
        self._parsed_header_bytes = 0
        if self._header_deadline is None:
            self._start_header_deadline()

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._cancel_header_deadline()
        self.scope[CLIENT_LEFT_KEY] = ClientLeft()  # type: ignore[literal-required]
        super().on_headers_complete()

    def shutdown(self) -> None:
        """uvicorn calls this on every open connection when the server begins to stop
        (SIGTERM): the app learns it is draining, so ``/readyz`` turns 503 at once."""
        state = self.app_state.get(DRAIN_STATE_KEY)
        if state is not None:
            state.draining = True
        super().shutdown()

    def send_400_response(self, msg: str) -> None:
        if self._oversized:
            self._refuse_large_headers()
            return
        _refusals.record("malformed", f"refusing a malformed request: {msg}")
        self._refuse(400, msg, "invalid_http_request")

    def _refuse(self, status: int, message: str, code: str) -> None:
        self._cancel_header_deadline()
        if not self.transport.is_closing():
            self.transport.write(refusal(status, message, code))
            self.transport.close()

    def _start_header_deadline(self) -> None:
        self._header_deadline = self.loop.call_later(self.limits.header_timeout_s, self._headers_too_slow)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self._awaiting_headers or self.transport.is_closing():
            return
        _refusals.record("header_timeout", "closing a connection whose request headers did not arrive in time")
        self._refuse(408, "The request headers did not arrive in time.", "request_timeout")


class GatewayServerConfig(uvicorn.Config):
    """uvicorn's config, serving with the guarded protocol and carrying its limits."""

    def __init__(self, app: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, http=GuardedHttpProtocol, **kwargs)
        self.connection_limits = limits


# Descriptors kept for everything but client sockets: upstream pools, MCP servers, logs, files.
_RESERVED_DESCRIPTORS = 256


def limits_from(server: ServerConfig) -> ConnectionLimits:
    """The configured limits, with the connection cap kept below the descriptor limit.

    The soft ``RLIMIT_NOFILE`` is raised to the hard one first (commonly 1024 → 1M);
    a cap the process could not honour would fail requests instead of refusing them.
    """
    cap = server.max_connections
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        room = max(16, soft - _RESERVED_DESCRIPTORS)
        if cap > room:
            log.warning(
                "server.max_connections lowered to fit the file descriptor limit",
                extra={"configured": cap, "applied": room, "nofile": soft},
            )
            cap = room
    except (ImportError, ValueError, OSError):
        pass
    return ConnectionLimits(max_connections=cap, header_timeout_s=server.header_timeout_s)
