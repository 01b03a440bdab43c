"""Building the ASGI app: config in, upstream clients, tool registry and routes wired up."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import Authenticator
from gateway.chat import ChatService
from gateway.config import GatewayConfig
from gateway.continuations import MemoryContinuationStore
from gateway.errors import GatewayError, error_body, handle_gateway_error, json_response
from gateway.loop import LoopServices
from gateway.metrics import Labels
from gateway.routes import router
from gateway.routing import Router
from gateway.state import GatewayState
from gateway.tools.executor import ToolExecutor
from gateway.tools.mcp import McpSources
from gateway.tools.registry import ToolRegistry
from gateway.upstream import Upstream, close_all

log = logging.getLogger("gateway")


def build_state(config: GatewayConfig, base_dir: Path | None = None) -> GatewayState:
    """Everything that does not need a running event loop; raises ToolLoadError on a broken tool."""
    registry = ToolRegistry.from_config(config.tools, base_dir=base_dir, max_threads=config.loop.max_global_calls)
    upstreams = {u.name: Upstream(u) for u in config.upstreams}
    models = [m for u in config.upstreams for m in (*u.models, *u.model_map)]
    labels = Labels(models, registry.names())
    loop = config.loop
    services = LoopServices(
        registry=registry,
        executor=ToolExecutor(
            registry,
            labels,
            max_global_calls=loop.max_global_calls,
            max_parallel_calls=loop.max_parallel_calls,
            default_timeout_s=loop.default_timeout_s,
            max_result_chars=loop.max_result_chars,
        ),
        continuations=MemoryContinuationStore(loop.continuation_ttl_s),
        config=loop,
        labels=labels,
    )
    chat = ChatService(
        router=Router(config, upstreams),
        authenticator=Authenticator(config.auth),
        services=services,
        max_body_bytes=config.server.max_body_bytes,
        keepalive_interval_s=config.server.keepalive_interval_s,
    )
    mcp = McpSources(config.tools.mcp_servers, registry, labels.tools)
    return GatewayState(
        config=config, upstreams=upstreams, registry=registry, chat=chat, tool_sources=mcp.status, mcp=mcp
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
    return json_response(error_body(str(exc.detail), kind), exc.status_code)


async def _validation_error(request: Request, exc: Exception) -> Response:
    return json_response(error_body(str(exc), "invalid_request_error"), 400)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc, extra={"request_id": getattr(request.state, "request_id", None)})
    return json_response(error_body("The gateway failed to handle the request.", "server_error"), 500)


def create_app(config: GatewayConfig, base_dir: Path | None = None) -> FastAPI:
    state = build_state(config, base_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state.mcp is not None:
            await state.mcp.start()
        # Everything loaded so far lives as long as the process: keep it out of the
        # collector's full passes, which otherwise cost tens of ms at the tail.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if state.mcp is not None:
                await state.mcp.close()
            await close_all(state.upstreams)
            state.registry.close()

    app = FastAPI(title="LLM tool gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = state
    app.include_router(router)
    app.add_exception_handler(GatewayError, handle_gateway_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
    return app
