"""HTTP routes: each parses, calls one function, renders the result."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway import metrics
from gateway.chat import serve_chat
from gateway.errors import json_response
from gateway.state import GatewayState

router = APIRouter()


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await serve_chat(_state(request).chat, request)


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    state = _state(request)
    state.chat.authenticator.key_name(request.headers)
    return json_response({"object": "list", "data": await state.model_list()})


@router.get("/healthz")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    state = _state(request)
    names = list(state.upstreams)
    reachable = await asyncio.gather(*(u.probe() for u in state.upstreams.values()))
    upstreams = {name: "ok" if ok else "unreachable" for name, ok in zip(names, reachable, strict=True)}
    sources = state.tool_source_status()
    ready = all(reachable) and all(s == "ok" for s in sources.values())
    body = {
        "status": "ready" if ready else "not_ready",
        "upstreams": upstreams,
        "tool_sources": sources,
        "checked_at": int(time.time()),
    }
    return json_response(body, 200 if ready else 503)


@router.get("/metrics")
async def prometheus_metrics() -> Response:
    content, content_type = metrics.render()
    return Response(content, media_type=content_type)
