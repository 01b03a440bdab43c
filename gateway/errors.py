"""Errors a client can see, and the one place that renders them as OpenAI error JSON.

    GatewayError                      any error that reaches the client
    ├── InvalidRequest        400     malformed JSON, not a chat request, tool name conflict
    ├── AuthenticationFailed  401     missing or unknown gateway key
    ├── ModelNotFound         404     no upstream serves the model
    ├── MethodNotAllowed      405     a method the endpoint does not serve
    ├── RequestTimeout        408     the body did not arrive within server.body_timeout_s
    ├── BodyTooLarge          413     body over server.max_body_bytes
    └── UpstreamError                 the upstream failed us
        ├── UpstreamUnavailable 502   unreachable, or answered garbage
        ├── UpstreamTimeout     504   no answer in time
        ├── UpstreamStreamError 502   an error event inside a 200 stream, or a cut stream
        └── UpstreamStatus      *     the upstream's own 4xx/5xx, passed through

Tool failures are never GatewayErrors: they become tool messages the model reads.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway import jsoncodec


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        # Extra response headers, e.g. ``x-should-retry: false`` once a tool has run.
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class BodyTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UpstreamError(GatewayError):
    """The upstream failed; ``retryable`` tells the retry policy whether another try may help."""

    status = 502
    type = "upstream_error"
    retryable = False


class UpstreamUnavailable(UpstreamError):
    status = 502
    code = "upstream_unavailable"

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamStreamError(UpstreamError):
    """The upstream reported an error after answering 200, or its stream was cut."""

    code = "upstream_stream_error"

    def __init__(self, message: str, payload: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.payload = payload or error_body(message, self.type, None, self.code)

    def body(self) -> dict[str, Any]:
        return self.payload


class UpstreamStatus(UpstreamError):
    """An HTTP error status from the upstream, with its body as an OpenAI error."""

    # 529: Anthropic's "overloaded", which its own SDKs retry.
    RETRYABLE_STATUSES = frozenset({429, 502, 503, 504, 529})

    def __init__(self, status: int, payload: dict[str, Any], retry_after: float | None = None) -> None:
        error = payload["error"]
        super().__init__(str(error.get("message") or f"upstream answered HTTP {status}"))
        self.status = status
        self.payload = payload
        self.retry_after = retry_after
        self.retryable = status in self.RETRYABLE_STATUSES

    def body(self) -> dict[str, Any]:
        return self.payload


def error_body(
    message: str, type: str = "server_error", param: str | None = None, code: str | int | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def as_openai_error(payload: Any, status: int, fallback_text: str = "") -> dict[str, Any]:
    """Wrap any upstream error payload in OpenAI's shape, keeping what it says.

    Mistral answers ``{"detail": ...}``, vLLM may use an integer ``code`` or a class
    name as ``type``; the client always gets ``{"error": {message, type, param, code}}``.
    """
    kind = "invalid_request_error" if 400 <= status < 500 else "upstream_error"
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        inner = payload["error"]
        message = inner.get("message") or fallback_text or f"upstream answered HTTP {status}"
        code = inner.get("code")
        return error_body(
            str(message),
            str(inner.get("type") or kind),
            inner.get("param") if isinstance(inner.get("param"), str) else None,
            code if isinstance(code, str | int) or code is None else str(code),
        )
    if isinstance(payload, dict):
        detail = payload.get("error") or payload.get("detail") or payload.get("message")
        message = detail if isinstance(detail, str) else orjson.dumps(payload).decode()
    elif isinstance(payload, str) and payload:
        message = payload
    else:
        message = fallback_text or f"upstream answered HTTP {status}"
    return error_body(message[:2000], kind, None, status)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Raises JsonEncodeError for a body no encoder can write (an upstream's, nested too deep)."""
    return Response(jsoncodec.dumps(body), status_code=status, headers=headers, media_type="application/json")


async def handle_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    headers = dict(exc.headers)
    if hasattr(request.state, "request_id"):
        headers["x-request-id"] = request.state.request_id
    return json_response(exc.body(), exc.status, headers)
