"""The connections under an MCP session: stdio, with the server's stderr in the log, and streamable HTTP.

Both report the end of their read stream to the caller. For stdio that end is the
server's stdout closing, which happens the moment the process exits: the loss is
known at once, not at the next call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import anyio
import httpx2
from mcp import StdioServerParameters
from mcp.client._transport import TransportStreams
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import SessionMessage

# Its own logger, so the servers' chatter can be told (and filtered) apart from the gateway's own records.
stderr_log = logging.getLogger("gateway.tools.mcp.stderr")

STDERR_LINE_BYTES = 4096
"""Longer stderr lines are logged in pieces of this size, so a server cannot grow a log line without end."""
STDERR_DRAIN_S = 1.0
"""How long a closing stdio transport waits for the server's last stderr lines (a crash's traceback)."""

Item = SessionMessage | Exception


class EndWatch:
    """A transport's read stream that calls ``on_end`` once when it ends, however it ends."""

    def __init__(self, inner: Any, on_end: Callable[[], None]) -> None:
        self._inner = inner
        self._on_end: Callable[[], None] | None = on_end

    @property
    def last_context(self) -> Any:
        # The SDK reads the sender's context off streams that carry one (streamable HTTP's do).
        return getattr(self._inner, "last_context", None)

    def _ended(self) -> None:
        if self._on_end is not None:
            on_end, self._on_end = self._on_end, None
            on_end()

    async def receive(self) -> Item:
        try:
            item: Item = await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._ended()
            raise
        return item

    def __aiter__(self) -> EndWatch:
        return self

    async def __anext__(self) -> Item:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> EndWatch:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _log_stderr_line(server: str, raw: bytes) -> None:
    line = raw.decode(errors="replace").rstrip()
    if line:
        stderr_log.info(
            "MCP server %s stderr: %s",
            server,
            line,
            extra={"event": "mcp_stderr", "mcp_server": server, "mcp_stderr": line},
        )


async def _log_stderr(fd: int, server: str, drained: anyio.Event) -> None:
    """Each line the server writes to stderr, as one log record; ends at EOF (every writer gone)."""
    pending = b""
    try:
        while True:
            await anyio.wait_readable(fd)
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not data:
                break
            *lines, pending = (pending + data).split(b"\n")
            while len(pending) > STDERR_LINE_BYTES:
                lines.append(pending[:STDERR_LINE_BYTES])
                pending = pending[STDERR_LINE_BYTES:]
            for line in lines:
                _log_stderr_line(server, line)
        _log_stderr_line(server, pending)
    finally:
        drained.set()


@asynccontextmanager
async def stdio_transport(
    params: StdioServerParameters, server: str, on_end: Callable[[], None]
) -> AsyncIterator[TransportStreams]:
    """The SDK's stdio transport with the server's stderr read through a pipe into the log.

    ``on_end`` is called when the server's stdout closes: the process has exited.
    """
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    errlog = os.fdopen(write_fd, "w")
    drained = anyio.Event()
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_log_stderr, read_fd, server, drained)
            try:
                async with stdio_client(params, errlog=errlog) as (read_stream, write_stream):
                    # The server holds its own copy now; with ours closed, EOF means every writer is gone.
                    errlog.close()
                    yield EndWatch(read_stream, on_end), write_stream
            finally:
                errlog.close()
                with anyio.move_on_after(STDERR_DRAIN_S, shield=True):
                    await drained.wait()
                tasks.cancel_scope.cancel()
    finally:
        os.close(read_fd)


@asynccontextmanager
async def http_transport(
    url: str, headers: dict[str, str], connect_timeout_s: float, on_end: Callable[[], None]
) -> AsyncIterator[TransportStreams]:
    """The SDK's streamable HTTP transport on a client owned here (the SDK leaves a caller's client open)."""
    timeout = httpx2.Timeout(connect_timeout_s, read=300.0)
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
        streamable_http_client(url, http_client=http) as (read_stream, write_stream),
    ):
        yield EndWatch(read_stream, on_end), write_stream
