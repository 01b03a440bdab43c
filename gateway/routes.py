"""HTTP routes: each parses, calls one function, renders the result.

Chat completions and ``POST /v1/responses`` are served by ``gateway.app.GatewayApp`` directly, outside FastAPI.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway import metrics
from gateway.errors import AuthenticationFailed, ModelNotFound, json_response
from gateway.responses import delete_response, list_input_items, retrieve_response
from gateway.routing import not_found_message
from gateway.state import GatewayState

router = APIRouter()


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    state = _state(request)
    policy = state.chat.authenticator.caller(request.headers)
    models = [m for m in await state.model_list() if policy.allows_model(m["id"])]
    return json_response({"object": "list", "data": models})


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: str) -> Response:
    """One model, as ``client.models.retrieve`` expects; 404 for a model the key may not use, as for a missing one."""
    state = _state(request)
    policy = state.chat.authenticator.caller(request.headers)
    if policy.allows_model(model_id):
        for model in await state.model_list():
            if model["id"] == model_id:
                return json_response(model)
    raise ModelNotFound(not_found_message(model_id), param="model")


@router.get("/v1/responses/{response_id}")
async def get_response(request: Request, response_id: str) -> Response:
    return await retrieve_response(_state(request).responses, request, response_id)


@router.delete("/v1/responses/{response_id}")
async def remove_response(request: Request, response_id: str) -> Response:
    return await delete_response(_state(request).responses, request, response_id)


@router.get("/v1/responses/{response_id}/input_items")
async def get_input_items(request: Request, response_id: str) -> Response:
    return await list_input_items(_state(request).responses, request, response_id)


@router.get("/healthz")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """Ready or not to anyone; which upstream or tool source is failing only to a valid key."""
    state = _state(request)
    report = await state.readiness()
    status = 200 if report["status"] == "ready" else 503
    try:
        policy = state.chat.authenticator.caller(request.headers)
    except AuthenticationFailed:
        return json_response({"status": report["status"]}, status)
    # The report is shared by every caller: a key sees only the unserved models it may use, as on /v1/models.
    unserved = [m for m in report.get("unserved_models", ()) if policy.allows_model(m)]
    return json_response({**report, "unserved_models": unserved}, status)


@router.get("/metrics")
async def prometheus_metrics() -> Response:
    content, content_type = metrics.render()
    return Response(content, media_type=content_type)
