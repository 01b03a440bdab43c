"""The test MCP server over streamable HTTP, on a loopback port in a thread of the test process."""

from __future__ import annotations

from pathlib import Path

from tests.mcp_servers.tools import build_server
from tests.servers import ServerThread


def http_server(call_log: Path | None = None, port: int = 0) -> ServerThread:
    """A server bound to ``port`` (a free one by default); it accepts connections once ``start()`` is called."""
    app = build_server("http-test", call_log).streamable_http_app()
    return ServerThread(app, port)
