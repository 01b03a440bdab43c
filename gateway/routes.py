"""HTTP routes: each parses, calls one function, renders the result.

Chat completions, ``POST /v1/responses`` and the passthrough paths are served by ``gateway.app.GatewayApp``
directly; these few GET and DELETE routes go through Starlette's router.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway import metrics
from gateway.errors import AuthenticationFailed, ModelNotFound, json_response
from gateway.responses import delete_response, list_input_items, retrieve_response
from gateway.routing import not_found_message
from gateway.state import GatewayState


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


async def list_models(request: Request) -> Response:
    state = _state(request)
    policy = state.chat.authenticator.caller(request.headers)
    models = [m for m in await state.model_list() if policy.allows_model(m["id"])]
    return json_response({"object": "list", "data": models})


async def retrieve_model(request: Request) -> Response:
    """One model, as ``client.models.retrieve`` expects; 404 for a model the key may not use, as for a missing one."""
    model_id: str = request.path_params["model_id"]
    state = _state(request)
    policy = state.chat.authenticator.caller(request.headers)
    if policy.allows_model(model_id):
        for model in await state.model_list():
            if model["id"] == model_id:
                return json_response(model)
    raise ModelNotFound(not_found_message(model_id), param="model")


async def get_response(request: Request) -> Response:
    return await retrieve_response(_state(request).responses, request, request.path_params["response_id"])


async def remove_response(request: Request) -> Response:
    return await delete_response(_state(request).responses, request, request.path_params["response_id"])


async def get_input_items(request: Request) -> Response:
    return await list_input_items(_state(request).responses, request, request.path_params["response_id"])


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


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


async def prometheus_metrics(request: Request) -> Response:
    content, content_type = metrics.render()
    return Response(content, media_type=content_type)


ROUTES: list[BaseRoute] = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model_id:path}", retrieve_model, methods=["GET"]),
    Route("/v1/responses/{response_id}", get_response, methods=["GET"]),
    Route("/v1/responses/{response_id}", remove_response, methods=["DELETE"]),
    Route("/v1/responses/{response_id}/input_items", get_input_items, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", prometheus_metrics, methods=["GET"]),
]
