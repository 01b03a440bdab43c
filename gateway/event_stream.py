"""The streaming HTTP response: SSE bytes out, keep-alive comments, disconnects, stalled readers.

Every chunk of every streamed answer passes through here, so the per-chunk path
is one ``send`` and two attribute writes. Everything periodic lives in one
watchdog task per stream, woken once per keep-alive interval:

- it writes a ``: ping`` comment when nothing was sent for a whole interval (tools
  running, a slow model), so proxies do not time the connection out;
- it cancels the stream when a single write has been blocked longer than
  ``send_timeout_s``: a client that stops reading must not hold the upstream
  request, its buffers and its tools forever.

When the client disconnects, the stream is cancelled, which closes the events'
generator (the upstream request and running tools with it): by the connection
itself on the gateway's own server (``connections.ClientLeft``), else by a second
task waiting for the disconnect message.
When the server stops, a stream runs on to its end within ``server.shutdown_grace_s``;
one still running then is ended with an error event and ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.types import Message, Receive, Scope, Send

from gateway.connections import CLIENT_LEFT_KEY, ClientLeft
from gateway.errors import error_body
from gateway.sse import DONE, encode_data

PING = b": ping\n\n"
# The message uvicorn cancels running requests with when its graceful-shutdown timeout passes.
SHUTDOWN_CANCEL = "timeout graceful shutdown exceeded"


async def until_disconnected(receive: Receive) -> None:
    """Return once the client has closed the connection (a request's body must be read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStreamResponse:
    """An ASGI response streaming ``body`` (already-encoded SSE bytes) to the client."""

    def __init__(
        self,
        body: AsyncIterator[bytes],
        headers: dict[str, str],
        ping_interval_s: float,
        send_timeout_s: float = 60.0,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.body = body
        # Runs however the response ends, even when ``body`` never started (closing an
        # unstarted generator runs none of its cleanup).
        self.on_close = on_close
        self.headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
            *((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()),
        ]
        self.ping_interval_s = ping_interval_s
        self.send_timeout_s = send_timeout_s
        self._last_sent = 0.0
        self._blocked_since: float | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.current_task()
        assert streaming is not None
        watchers = [asyncio.ensure_future(self._watchdog(send, streaming))]
        # The gateway's own connections cancel the stream when the client leaves; elsewhere a task waits for it.
        left = scope.get(CLIENT_LEFT_KEY)
        if isinstance(left, ClientLeft):
            left.waiting = streaming
            if left.gone:
                streaming.cancel()
        else:
            left = None
            watchers.append(asyncio.ensure_future(self._until_disconnect(receive, streaming)))
        try:
            await self._send(send, {"type": "http.response.start", "status": 200, "headers": self.headers})
            async for chunk in self.body:
                await self._send(send, {"type": "http.response.body", "body": chunk, "more_body": True})
            await self._send(send, {"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError as exc:
            if SHUTDOWN_CANCEL in str(exc):
                # The server's shutdown grace ran out: end the stream as an error, not a silent cut.
                await self._end_with_error(send)
            elif left is not None and left.gone and streaming.uncancel() == 0:
                pass  # the client left: the request is over, not the server
            elif not any(w.done() and not w.cancelled() for w in watchers):
                raise
            # Otherwise a watcher cancelled it (client gone, or not reading): the request is over, not the server.
        finally:
            if left is not None:
                left.waiting = None
            for watcher in watchers:
                watcher.cancel()
            with contextlib.suppress(BaseException):
                await self.body.aclose()  # type: ignore[attr-defined]
            if self.on_close is not None:
                with contextlib.suppress(BaseException):
                    await self.on_close()

    async def _end_with_error(self, send: Send) -> None:
        error = error_body("The gateway is shutting down; the answer was cut short.", "server_error", None, "shutdown")
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": encode_data(error) + DONE, "more_body": False})

    async def _send(self, send: Send, message: Message) -> None:
        # When the last send began is close enough to when it ended for the ping interval.
        self._blocked_since = self._last_sent = time.monotonic()
        await send(message)
        self._blocked_since = None

    async def _until_disconnect(self, receive: Receive, streaming: asyncio.Task[None]) -> None:
        await until_disconnected(receive)
        streaming.cancel()

    async def _watchdog(self, send: Send, streaming: asyncio.Task[None]) -> None:
        interval = self.ping_interval_s
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            blocked = self._blocked_since
            if blocked is not None and now - blocked > self.send_timeout_s:
                streaming.cancel()
                return
            if blocked is None and now - self._last_sent >= interval:
                await self._send(send, {"type": "http.response.body", "body": PING, "more_body": True})
