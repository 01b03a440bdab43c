"""The test MCP server over stdio: ``python -m tests.mcp_servers.stdio_server [name]``.

Environment:
    MCP_TEST_CALL_LOG: append every tools/call here (see ``tools.py``).
    MCP_TEST_LEGACY=1: serve the handshake era only, as servers written before 2026 do.
    MCP_TEST_GATE: while a file exists at this path, the server refuses to start (exit status 1),
        so a test can keep it down after killing it, then let it come back.

It writes one line to stderr as it starts, as many servers do.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp.types import METHOD_NOT_FOUND, ErrorData, JSONRPCError, JSONRPCRequest

from tests.mcp_servers.tools import build_server, call_log_from_env


async def serve_handshake_era_only(server: MCPServer) -> None:
    """Answer ``server/discover`` with "method not found", so clients fall back to ``initialize``."""
    lowlevel = server._lowlevel_server  # the SDK decides the era from the first request it sees
    async with stdio_server() as (read_stream, write_stream):
        send, receive = anyio.create_memory_object_stream[SessionMessage | Exception](0)

        async def refuse_discover() -> None:
            async with send:
                async for item in read_stream:
                    message = item.message if isinstance(item, SessionMessage) else None
                    if isinstance(message, JSONRPCRequest) and message.method == "server/discover":
                        error = ErrorData(code=METHOD_NOT_FOUND, message="Method not found")
                        await write_stream.send(SessionMessage(JSONRPCError(jsonrpc="2.0", id=message.id, error=error)))
                    else:
                        await send.send(item)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(refuse_discover)
            await lowlevel.run(receive, write_stream, lowlevel.create_initialization_options())


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "stdio-test"
    gate = os.environ.get("MCP_TEST_GATE")
    if gate and Path(gate).exists():
        print(f"{name} refuses to start: {gate} exists", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"{name} starting (pid {os.getpid()})", file=sys.stderr, flush=True)
    server = build_server(name, call_log_from_env())
    if os.environ.get("MCP_TEST_LEGACY") == "1":
        anyio.run(serve_handshake_era_only, server)
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
