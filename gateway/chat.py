"""Serving one chat completion: HTTP request in, JSON or SSE response out, one log line and its metrics."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sse_starlette import EventSourceResponse
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway import metrics
from gateway.auth import Authenticator
from gateway.errors import BodyTooLarge, GatewayError, InvalidRequest, error_body, json_response
from gateway.loop import Chunk, Completion, Event, LoopServices, LoopStats, ToolFinished, ToolLoop, ToolStarted
from gateway.protocol import parse_chat_request
from gateway.routing import Router
from gateway.sse import DONE, encode_comment, encode_data, encode_raw
from gateway.tools.base import ToolContext
from gateway.upstream import forwardable_headers

log = logging.getLogger("gateway.request")

TRACE_HEADER = "x-gateway-trace"


@dataclass(frozen=True, slots=True)
class ChatService:
    router: Router
    authenticator: Authenticator
    services: LoopServices
    max_body_bytes: int
    keepalive_interval_s: float


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"Request body is larger than the gateway's limit of {limit} bytes.")
    parts: list[bytes] = []
    size = 0
    try:
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise BodyTooLarge(f"Request body is larger than the gateway's limit of {limit} bytes.")
            parts.append(part)
    except ClientDisconnect as exc:
        raise InvalidRequest("The client closed the connection while sending the body.") from exc
    return b"".join(parts)


class _RequestRecord:
    """Times one request and writes its metrics and log line exactly once."""

    def __init__(self, request_id: str, stream: bool) -> None:
        self.request_id = request_id
        self.stream = stream
        self.model = "unknown"
        self.started = time.perf_counter()
        metrics.REQUESTS_IN_FLIGHT.inc()

    def close(self, status: int, stats: LoopStats | None, labels: metrics.Labels, error: str | None = None) -> None:
        duration = time.perf_counter() - self.started
        metrics.REQUESTS_IN_FLIGHT.dec()
        model = labels.model(self.model)
        stream = "true" if self.stream else "false"
        metrics.REQUESTS.labels(model, stream, str(status)).inc()
        metrics.REQUEST_DURATION.labels(model, stream).observe(duration)
        fields: dict[str, Any] = {
            "event": "request",
            "request_id": self.request_id,
            "model": self.model,
            "stream": self.stream,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
        }
        if stats is not None:
            waited = stats.upstream_wait_s + stats.tool_wait_s
            metrics.OVERHEAD.labels(stream).observe(max(0.0, duration - waited))
            metrics.TOOL_ROUNDS.observe(stats.rounds)
            usage = stats.usage or {}
            for kind, key in (("input", "prompt_tokens"), ("output", "completion_tokens")):
                count = usage.get(key)
                if isinstance(count, int):
                    metrics.TOKEN_USAGE.labels(model, kind).observe(count)
            fields.update(
                upstream=stats.upstream,
                rounds=stats.rounds,
                tools_called=stats.tools_called,
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
            )
        if error is not None:
            fields["error"] = error
        log.info("request", extra=fields)


def _response_headers(request_id: str, stats: LoopStats) -> dict[str, str]:
    headers = {"x-request-id": request_id, "x-gateway-tool-rounds": str(stats.rounds)}
    if stats.max_rounds_reached:
        headers["x-gateway-max-rounds-reached"] = "true"
    return headers


async def serve_chat(service: ChatService, request: Request) -> Response:
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    request.state.request_id = request_id
    labels = service.services.labels
    record = _RequestRecord(request_id, stream=False)
    stats: LoopStats | None = None
    try:
        key_name = service.authenticator.key_name(request.headers)
        body, chat = parse_chat_request(await read_body(request, service.max_body_bytes))
        record.model = chat.model
        record.stream = bool(chat.stream)
        route = service.router.route(chat.model)
        headers = forwardable_headers(request.headers)
        headers["x-request-id"] = request_id
        context = ToolContext(request_id, key_name, time.monotonic() + service.services.config.deadline_s)
        loop = ToolLoop(service.services, route, body, chat, context, headers)
        stats = loop.stats
        trace = request.headers.get(TRACE_HEADER, "").lower() in ("1", "true", "yes")
        events = loop.run()
        if not chat.stream:
            completion = None
            async for event in events:
                if isinstance(event, Completion):
                    completion = event.body
            assert completion is not None
            if trace:
                completion["x_gateway"] = {"rounds": stats.rounds, "tool_calls": stats.trace}
            record.close(200, stats, labels)
            return json_response(completion, 200, _response_headers(request_id, stats))
        # Pull the first event before answering: an upstream that fails before its
        # first byte is then an ordinary HTTP error, not an error inside a 200 stream.
        first = await anext(events)
    except GatewayError as exc:
        record.close(exc.status, stats, labels, exc.message)
        raise
    except StopAsyncIteration:
        first = None
    except BaseException as exc:
        # 499: the client went away (nginx's convention); anything else is the gateway's fault.
        status = 499 if isinstance(exc, asyncio.CancelledError) else 500
        record.close(status, stats, labels, f"{type(exc).__name__}: {exc}")
        raise
    assert stats is not None
    return EventSourceResponse(
        _sse(events, first, trace, record, stats, labels),
        headers={"x-request-id": request_id},
        ping=service.keepalive_interval_s,
    )


def _encode(event: Event, trace: bool) -> bytes | None:
    if isinstance(event, Chunk):
        return encode_raw(event.raw) if event.raw is not None else encode_data(event.data)
    if not trace:
        return None
    if isinstance(event, ToolStarted):
        call = event.call
        return encode_comment("tool_call", {"id": call.id, "name": call.name, "arguments": call.arguments})
    if isinstance(event, ToolFinished):
        return encode_comment("tool_result", event.outcome.trace())
    return None


async def _sse(
    events: AsyncIterator[Event],
    first: Event | None,
    trace: bool,
    record: _RequestRecord,
    stats: LoopStats,
    labels: metrics.Labels,
) -> AsyncIterator[bytes]:
    error: str | None = None
    try:
        if first is not None:
            encoded = _encode(first, trace)
            if encoded is not None:
                yield encoded
            async for event in events:
                encoded = _encode(event, trace)
                if encoded is not None:
                    yield encoded
    except GatewayError as exc:
        error = exc.message
        yield encode_data(exc.body())
    except Exception as exc:
        log.exception("stream failed", extra={"request_id": record.request_id})
        error = f"{type(exc).__name__}: {exc}"
        yield encode_data(error_body("The gateway failed while streaming the answer.", "server_error"))
    finally:
        await events.aclose()  # type: ignore[attr-defined]
        record.close(200, stats, labels, error)
    yield DONE
