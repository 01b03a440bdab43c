"""Building the ASGI app: config in, upstream clients, tool registry and routes wired up."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway import metrics
from gateway.anthropic_upstream import upstream_for
from gateway.auth import Authenticator
from gateway.chat import ChatService, serve_chat
from gateway.config import GatewayConfig
from gateway.connections import DRAIN_STATE_KEY
from gateway.continuations import ContinuationStore, MemoryContinuationStore
from gateway.errors import GatewayError, MethodNotAllowed, error_body, handle_gateway_error, json_response
from gateway.event_stream import EventStreamResponse
from gateway.loop import LoopServices
from gateway.metrics import Labels
from gateway.passthrough import PassthroughService, serve_passthrough
from gateway.policy import OPEN_POLICY, REFUSAL_REASONS, RateLimiter
from gateway.redaction import Redactor
from gateway.response_store import response_store
from gateway.responses import RESPONSES_PATH, ResponsesService, serve_responses
from gateway.routes import ROUTES
from gateway.routing import Router
from gateway.state import GatewayState
from gateway.tool_selection import ToolSelector
from gateway.tools.executor import ToolExecutor
from gateway.tools.registry import ToolRegistry
from gateway.upstream import close_all

if TYPE_CHECKING:
    from gateway.tools.mcp import McpSources
    from gateway.tracing import Tracing

log = logging.getLogger("gateway")

CHAT_PATH = "/v1/chat/completions"


def build_state(config: GatewayConfig, base_dir: Path | None = None) -> GatewayState:
    """Everything that does not need a running event loop; raises ToolLoadError on a broken tool."""
    registry = ToolRegistry.from_config(config.tools, base_dir=base_dir, max_threads=config.loop.max_global_calls)
    redactor = Redactor.from_config(config)
    upstreams = {u.name: upstream_for(u, redactor) for u in config.upstreams}
    models = [m for u in config.upstreams for m in (*u.models, *u.model_map)]
    labels = Labels(models, registry.names())
    loop = config.loop
    state_client = None
    continuations: ContinuationStore
    if config.state.backend == "redis":
        # Imported only when used: the redis client (and the OpenTelemetry parts it loads when present)
        # cost a tenth of a second of every start-up.
        from gateway.redis_continuations import RedisContinuationStore, redis_client

        state_client = redis_client(config.state)
        continuations = RedisContinuationStore(
            state_client,
            config.state,
            loop.continuation_ttl_s,
            loop.continuation_max_entries,
            loop.continuation_max_bytes,
        )
    else:
        continuations = MemoryContinuationStore(
            loop.continuation_ttl_s, loop.continuation_max_entries, loop.continuation_max_bytes
        )
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
        continuations=continuations,
        config=loop,
        labels=labels,
        selector=ToolSelector(config.tools.selection, registry),
    )
    # Every key's refusal series exists from the start, so dashboards see zeros, not gaps.
    for name in [k.name for k in config.auth.api_keys] or [OPEN_POLICY.name]:
        for reason in REFUSAL_REASONS:
            metrics.POLICY_REFUSALS.labels(name, reason)
    tracing: Tracing | None = None
    if config.tracing.enabled:
        # Like MCP's SDK, OpenTelemetry's is loaded only when asked for: tracing off costs nothing.
        from gateway.tracing import Tracing

        tracing = Tracing()
    chat = ChatService(
        router=Router(config, upstreams),
        authenticator=Authenticator(config.auth),
        limiter=RateLimiter(config.state),
        services=services,
        max_body_bytes=config.server.max_body_bytes,
        keepalive_interval_s=config.server.keepalive_interval_s,
        body_timeout_s=config.server.body_timeout_s,
        max_model_chars=config.server.max_model_chars,
        tracing=tracing,
    )
    responses = ResponsesService(
        chat, response_store(config, state_client), {server.name: server.url for server in config.tools.mcp_servers}
    )
    mcp: McpSources | None = None
    if config.tools.mcp_servers:
        # The MCP SDK is the heaviest import (about 1 s and 15 MB); a gateway without MCP servers never loads it.
        from gateway.tools import mcp as mcp_sources

        mcp = mcp_sources.McpSources(config.tools.mcp_servers, registry, labels.tools)
    return GatewayState(
        config=config,
        upstreams=upstreams,
        registry=registry,
        chat=chat,
        responses=responses,
        tool_sources=mcp.status if mcp is not None else {},
        mcp=mcp,
        state_client=state_client,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        # OpenAI's words for a path it does not serve (a passthrough path not listed, say).
        return json_response(error_body(f"Invalid URL ({request.method} {request.url.path})", "not_found"), 404)
    return json_response(error_body(str(exc.detail), "invalid_request_error"), exc.status_code)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc, extra={"request_id": getattr(request.state, "request_id", None)})
    return json_response(error_body("The gateway failed to handle the request.", "server_error"), 500)


class GatewayApp:
    """The ASGI app: chat completions, responses and passthrough paths served directly, the rest through Starlette.

    The chat route is the hot path. A framework's middleware, routing and dependency
    layers cost about as much CPU as the gateway's own work per request, and the
    route needs none of them: it parses its own body and renders its own errors
    through the same handler the other routes use. Passthrough paths are served the
    same way, as they may stream.
    """

    def __init__(
        self, api: Starlette, chat: ChatService, passthrough: PassthroughService, responses: ResponsesService
    ) -> None:
        self.api = api
        self.chat = chat
        self.passthrough = passthrough
        self.responses = responses

    @property
    def state(self) -> State:
        return self.api.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path == CHAT_PATH:
                await _serve_post(serve_chat, self.chat, scope, receive, send)
                return
            if path == RESPONSES_PATH:
                await _serve_post(serve_responses, self.responses, scope, receive, send)
                return
            if path in self.passthrough.paths:
                await _serve_post(serve_passthrough, self.passthrough, scope, receive, send)
                return
        await self.api(scope, receive, send)


Service = TypeVar("Service")


async def _serve_post(
    serve: Callable[[Service, Request], Awaitable[Response | EventStreamResponse]],
    service: Service,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """One POST route served directly, its errors rendered by the same handlers the other routes use."""
    request = Request(scope, receive, send)
    response: Response | EventStreamResponse
    try:
        if scope["method"] != "POST":
            raise MethodNotAllowed(f"{scope['method']} is not allowed on {scope['path']}; use POST.")
        response = await serve(service, request)
    except GatewayError as exc:
        response = await handle_gateway_error(request, exc)
    except Exception as exc:
        response = await _unexpected_error(request, exc)
    await response(scope, receive, send)


def create_app(config: GatewayConfig, base_dir: Path | None = None) -> GatewayApp:
    state = build_state(config, base_dir)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if state.mcp is not None:
            await state.mcp.start()
        if state.chat.services.selector is not None:
            await state.chat.services.selector.warm()
        await state.start_watching_models()
        # Everything loaded so far lives as long as the process: keep it out of the
        # collector's full passes, which otherwise cost tens of ms at the tail.
        gc.collect()
        gc.freeze()
        try:
            # Lifespan state reaches the server's protocol, which marks the app draining on shutdown.
            yield {DRAIN_STATE_KEY: state}  # type: ignore[misc]
        finally:
            await state.stop_watching_models()
            if state.mcp is not None:
                await state.mcp.close()
            await close_all(state.upstreams)
            if state.state_client is not None:
                await state.state_client.aclose()
            state.registry.close()
            if state.chat.tracing is not None:
                # The last batch of spans is exported before the process goes (blocking, so off the loop).
                await asyncio.to_thread(state.chat.tracing.shutdown)

    # Starlette, not FastAPI, for these few routes: FastAPI's import alone is 0.3 s of every start-up,
    # and nothing here uses what it adds (validation of parameters, OpenAPI).
    app = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers={
            GatewayError: handle_gateway_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
    )
    app.state.gateway = state
    passthrough = PassthroughService(state.chat, frozenset(config.server.passthrough_paths))
    return GatewayApp(app, state.chat, passthrough, state.responses)
