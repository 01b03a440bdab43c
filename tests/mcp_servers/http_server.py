"""The test MCP server over streamable HTTP, on a loopback port in a thread of the test process,
or as a process of its own: ``python -m tests.mcp_servers.http_server [--legacy]`` prints its port
(``MCP_TEST_CALL_LOG`` and ``MCP_TEST_REQUEST_LOG`` name its logs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.mcp_servers.tools import build_server, call_log_from_env, request_log_from_env
from tests.servers import ServerThread


class HandshakeEraOnly:
    """Answers ``server/discover`` with "method not found", as servers written before 2026 do,
    so clients fall back to the ``initialize`` handshake."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            request: Any = json.loads(body)
        except ValueError:
            request = None
        if isinstance(request, dict) and request.get("method") == "server/discover":
            error = {"code": -32601, "message": "Method not found"}
            await JSONResponse({"jsonrpc": "2.0", "id": request.get("id"), "error": error})(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def http_server(
    call_log: Path | None = None, port: int = 0, legacy: bool = False, request_log: Path | None = None
) -> ServerThread:
    """A server bound to ``port`` (a free one by default); it accepts connections once ``start()`` is called."""
    app: ASGIApp = build_server("http-test", call_log, request_log).streamable_http_app()
    return ServerThread(HandshakeEraOnly(app) if legacy else app, port)


if __name__ == "__main__":
    legacy = "--legacy" in sys.argv[1:]
    server = http_server(call_log_from_env(), legacy=legacy, request_log=request_log_from_env()).start()
    print(server.port, flush=True)
    server.thread.join()
