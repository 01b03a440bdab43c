"""The MCP server the tests talk to, built with the ``mcp`` SDK; stdio and HTTP variants share it.

Every ``tools/call`` that reaches the server is appended to a JSON-lines log
before the SDK validates it, so a test can prove what the gateway did or did
not send.

On a handshake-era (pre-2026) connection the server marks ``batch`` as needing
MCP tasks (``execution.taskSupport: "required"``) and ``echo`` as able to use them
(``"optional"``), as servers of the 2025-11-25 revision do; that field does not
exist on 2026-07-28 connections.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import EmbeddedResource, ImageContent, ResourceLink, TextContent, TextResourceContents
from mcp.types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

PNG_BYTES = bytes(range(256)) * 4  # 1024 bytes, base64 on the wire


class Stats(BaseModel):
    count: int
    total: float
    mean: float


def build_server(name: str, call_log: Path | None, request_log: Path | None = None) -> MCPServer:
    """``request_log``, if given, gets the method of every request, one a line (pings included)."""

    async def record_calls(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method == "tools/call" and call_log is not None:
            with call_log.open("a", encoding="utf-8") as log:
                log.write(json.dumps(ctx.params) + "\n")
        if request_log is not None:
            with request_log.open("a", encoding="utf-8") as log:
                log.write(ctx.method + "\n")
        return await call_next(ctx)

    async def task_support(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        result = await call_next(ctx)
        if ctx.method == "tools/list" and ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            assert isinstance(result, dict)
            needs = {"batch": "required", "echo": "optional"}
            for listed in result["tools"]:
                if listed["name"] in needs:
                    listed["execution"] = {"taskSupport": needs[listed["name"]]}
        return result

    server = MCPServer(name, log_level="WARNING", middleware=[record_calls, task_support])

    @server.tool(structured_output=False)
    def echo(text: str) -> str:
        """Repeat the text."""
        return f"echo: {text}"

    @server.tool()
    def stats(numbers: list[float]) -> Stats:
        """Count, sum and average a list of numbers."""
        total = sum(numbers)
        return Stats(count=len(numbers), total=total, mean=total / len(numbers) if numbers else 0.0)

    @server.tool(structured_output=False)
    def fail(reason: str) -> str:
        """Always fails with the given reason."""
        raise ToolError(f"refused: {reason}")

    @server.tool(structured_output=False)
    def media() -> list[Any]:
        """Returns one block of every non-text kind."""
        import base64

        return [
            TextContent(type="text", text="here you go"),
            ImageContent(type="image", data=base64.b64encode(PNG_BYTES).decode(), mime_type="image/png"),
            EmbeddedResource(
                type="resource",
                resource=TextResourceContents(uri="file:///notes.txt", mime_type="text/plain", text="x" * 300),
            ),
            ResourceLink(type="resource_link", uri="file:///big.csv", name="big.csv", mime_type="text/csv"),
        ]

    @server.tool(structured_output=False)
    async def hang(seconds: float) -> str:
        """Sleep, then answer."""
        await asyncio.sleep(seconds)
        return "woke up"

    @server.tool(structured_output=False)
    async def block(seconds: float) -> str:
        """Hold the server's one event loop, as a synchronous tool run on it does: nothing else is answered."""
        time.sleep(seconds)  # noqa: ASYNC251 - blocking on purpose
        return "unblocked"

    @server.tool(structured_output=False)
    def die() -> str:
        """End the server process in the middle of the call."""
        os._exit(3)

    @server.tool(structured_output=False)
    def batch(items: list[str]) -> str:
        """Process items as a long-running job (a task-only tool on handshake-era connections)."""
        return f"processed {len(items)}"

    @server.tool(structured_output=False)
    def whoami() -> str:
        """The server process id."""
        return str(os.getpid())

    @server.tool(structured_output=False)
    async def grow(tool_name: str, ctx: Context) -> str:
        """Add a tool named tool_name and announce the change."""

        def greet(person: str) -> str:
            return f"hello {person}"

        server.add_tool(greet, name=tool_name, description="Greet someone.", structured_output=False)
        await ctx.notify_tools_changed()
        return f"added {tool_name}"

    @server.tool(structured_output=False)
    async def shrink(tool_name: str, ctx: Context) -> str:
        """Remove the tool named tool_name and announce the change."""
        server.remove_tool(tool_name)
        await ctx.notify_tools_changed()
        return f"removed {tool_name}"

    return server


def call_log_from_env() -> Path | None:
    path = os.environ.get("MCP_TEST_CALL_LOG")
    return Path(path) if path else None


def request_log_from_env() -> Path | None:
    path = os.environ.get("MCP_TEST_REQUEST_LOG")
    return Path(path) if path else None
