"""The test MCP server over stdio: ``python -m tests.mcp_servers.stdio_server [name]``."""

from __future__ import annotations

import sys

from tests.mcp_servers.tools import build_server, call_log_from_env

if __name__ == "__main__":
    build_server(sys.argv[1] if len(sys.argv) > 1 else "stdio-test", call_log_from_env()).run("stdio")
