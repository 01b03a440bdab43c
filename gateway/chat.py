"""Serving one chat completion: HTTP request in, JSON or SSE response out, one log line and its metrics.

Parse, run the loop, render its events (``gateway.chat_render``) as one JSON body or an SSE stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway import metrics
from gateway.auth import Authenticator
from gateway.chat_render import ChatStreamRenderer, completion_body
from gateway.connections import CLIENT_LEFT_KEY, ClientLeft
from gateway.errors import (
    BodyTooLarge,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    RequestTimeout,
    UpstreamUnavailable,
    json_response,
)
from gateway.event_stream import EventStreamResponse, until_disconnected
from gateway.jsoncodec import JsonEncodeError
from gateway.loop import LoopServices, ToolLoop
from gateway.loop_events import Completion, Event, LoopStats, ServerToolFinished, ServerToolStarted
from gateway.policy import OPEN_POLICY, KeyPolicy, RateLimiter
from gateway.protocol import parse_chat_request
from gateway.request_record import RequestRecord
from gateway.routing import Route, Router, not_found_message
from gateway.tool_offer import DEFAULT_OPTIONS, LoopOptions
from gateway.tool_selection import TOOLS_HEADER, header_filter
from gateway.tools.base import ToolContext
from gateway.upstream import UpstreamHeaders, forwardable_headers

if TYPE_CHECKING:
    from gateway.tracing import Tracing

log = logging.getLogger("gateway.request")

TRACE_HEADER = "x-gateway-trace"
CLIENT_CLOSED = 499  # nginx's status for a request whose client went away

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ChatService:
    router: Router
    authenticator: Authenticator
    limiter: RateLimiter
    services: LoopServices
    max_body_bytes: int
    keepalive_interval_s: float
    body_timeout_s: float = 30.0
    max_model_chars: int = 256
    # Set only when tracing is on (OpenTelemetry is then loaded; otherwise never).
    tracing: Tracing | None = None


class ClientGone(Exception):
    """The client closed its connection before the answer was ready."""


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"Request body is larger than the gateway's limit of {limit} bytes.")
    parts: list[bytes] = []
    size = 0
    try:
        # A body trickled in byte by byte would hold a connection and its buffer forever.
        async with asyncio.timeout(timeout_s):
            async for part in request.stream():
                size += len(part)
                if size > limit:
                    raise BodyTooLarge(f"Request body is larger than the gateway's limit of {limit} bytes.")
                parts.append(part)
    except ClientDisconnect as exc:
        raise InvalidRequest("The client closed the connection while sending the body.") from exc
    except TimeoutError as exc:
        metrics.CONNECTIONS_REFUSED.labels("body_timeout").inc()
        raise RequestTimeout(f"The request body did not arrive within {timeout_s:g} s.") from exc
    return b"".join(parts)


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise ClientGone.

    Cancelling reaches everything the work started: the upstream call, running
    tools (a sync tool's thread finishes, its result is dropped) and later rounds.
    """
    left = request.scope.get(CLIENT_LEFT_KEY)
    if not isinstance(left, ClientLeft):
        return await _watching_disconnect(request, work)  # served by a server other than the gateway's own
    if left.gone:
        if asyncio.iscoroutine(work):
            work.close()
        raise ClientGone("client disconnected")
    waiting = asyncio.current_task()
    left.waiting = waiting
    try:
        return await work
    except asyncio.CancelledError:
        # Ours only when the client left and nothing else cancelled the request as well (a server stopping).
        if not left.gone or waiting is None or waiting.uncancel() > 0:
            raise
        raise ClientGone("client disconnected") from None
    finally:
        left.waiting = None


async def _watching_disconnect(request: Request, work: Awaitable[T]) -> T:
    """``unless_client_leaves`` by a task that waits for the disconnect message."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnected(request.receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            if not watcher.cancelled() and watcher.done():
                raise ClientGone("client disconnected")
    return task.result()


def request_id_from(value: str | None) -> str:
    """The client's id when it is a sane token (it is echoed and logged), else a new one."""
    if value and len(value) <= 128 and value.isascii() and value.isprintable():
        return value
    return os.urandom(16).hex()  # as unique as a uuid4, at a fifth of its cost


def _response_headers(request_id: str, stats: LoopStats) -> dict[str, str]:
    headers = {"x-request-id": request_id, "x-gateway-tool-rounds": str(stats.rounds)}
    if stats.max_rounds_reached:
        headers["x-gateway-max-rounds-reached"] = "true"
    return headers


async def admit(
    service: ChatService, request: Request, record: RequestRecord, policy: KeyPolicy, model: str, request_id: str
) -> tuple[Route, ToolContext, UpstreamHeaders]:
    """What every request for a model passes before its loop: the key's allowlist, a route, the rate limits.
    The route to take, the tools' context and the headers to send upstream."""
    if not policy.allows_model(model):
        # Exactly what an unknown model gets: a key does not learn what other keys may use.
        raise ModelNotFound(not_found_message(model), param="model")
    route = service.router.route(model)
    record.admission = await service.limiter.admit(policy)
    headers = forwardable_headers(request.headers.raw)
    headers["x-request-id"] = request_id
    key_name = None if policy is OPEN_POLICY else policy.name
    return route, ToolContext(request_id, key_name, time.monotonic() + service.services.config.deadline_s), headers


def settle_failure(
    record: RequestRecord, stats: LoopStats | None, labels: metrics.Labels, exc: BaseException
) -> Response:
    """A request that failed before its answer began: its record closed, the exception raised again,
    except for a client gone (499, nginx's convention), whose empty response is returned."""
    if isinstance(exc, GatewayError):
        exc.headers = {**record.admission.headers, **exc.headers}
        if stats is not None and stats.tools_called:
            # A server tool has run: a client retry would run it again (the SDKs honour this header).
            exc.headers["x-should-retry"] = "false"
        record.close(exc.status, stats, labels, exc.message)
        raise exc
    if isinstance(exc, ClientGone | asyncio.CancelledError):
        record.close(CLIENT_CLOSED, stats, labels, "client disconnected")
        if isinstance(exc, asyncio.CancelledError):
            raise exc
        return Response(status_code=CLIENT_CLOSED)
    record.close(500, stats, labels, f"{type(exc).__name__}: {exc}")
    raise exc


def begin(service: ChatService, request: Request) -> tuple[str, RequestRecord]:
    """A request's id (the client's when sane) and its record, traced when tracing is on."""
    request_id = request_id_from(request.headers.get("x-request-id"))
    request.state.request_id = request_id
    record = RequestRecord(request_id, stream=False)
    if service.tracing is not None:
        record.trace = service.tracing.request("POST", request.scope["path"], request.headers)
    return request_id, record


async def caller_and_body(service: ChatService, request: Request, record: RequestRecord) -> tuple[KeyPolicy, bytes]:
    """The caller's key policy, then the body, within the size and time limits."""
    policy = service.authenticator.caller(request.headers)
    record.key = policy.name
    return policy, await read_body(request, service.max_body_bytes, service.body_timeout_s)


async def serve_chat(service: ChatService, request: Request) -> Response | EventStreamResponse:
    request_id, record = begin(service, request)
    labels = service.services.labels
    stats: LoopStats | None = None
    try:
        policy, raw = await caller_and_body(service, request, record)
        body, chat = parse_chat_request(raw, service.max_model_chars)
        record.model = chat.model
        record.stream = bool(chat.stream)
        route, context, headers = await admit(service, request, record, policy, chat.model, request_id)
        narrowed = header_filter(request.headers.get(TOOLS_HEADER))
        options = DEFAULT_OPTIONS if narrowed is None else LoopOptions(offers=narrowed)
        loop = ToolLoop(service.services, route, body, chat, context, headers, policy, record.trace, options)
        stats = loop.stats
        trace = request.headers.get(TRACE_HEADER, "").lower() in ("1", "true", "yes")
        events = loop.run()
        if not chat.stream:
            completion = completion_body(await unless_client_leaves(request, _completion(events)), chat.model)
            if trace:
                completion["x_gateway"] = {"rounds": stats.rounds, "tool_calls": stats.trace}
                if stats.offered is not None:
                    completion["x_gateway"]["offered_tools"] = stats.offered.trace()
            await record.admission.spend_tokens(stats.usage)
            try:
                response = json_response(
                    completion, 200, {**_response_headers(request_id, stats), **record.admission.headers}
                )
            except JsonEncodeError as exc:
                raise UpstreamUnavailable("The upstream's answer could not be re-encoded.", retryable=False) from exc
            record.close(200, stats, labels)
            return response
        wants_usage = bool((chat.stream_options or {}).get("include_usage"))
        renderer = ChatStreamRenderer(chat.model, loop.withholds_calls, wants_usage, trace)
        # Render up to the first event before answering: an upstream that fails before its
        # first byte is then an ordinary HTTP error, not an error inside a 200 stream.
        first = await unless_client_leaves(request, _first(events, renderer))
    except BaseException as exc:
        return settle_failure(record, stats, labels, exc)
    assert stats is not None
    end = _StreamEnd(events, record, stats, labels)
    return EventStreamResponse(
        _sse(events, first, renderer, stats, end),
        headers={"x-request-id": request_id, **record.admission.headers},
        ping_interval_s=service.keepalive_interval_s,
        # A client gone before the stream began: the body never started, so its cleanup never runs.
        on_close=end,
    )


@dataclass(slots=True)
class _StreamEnd:
    """Ends a streamed request once, however it ends: its loop closed, its record written, its tokens counted."""

    events: AsyncIterator[Event]
    record: RequestRecord
    stats: LoopStats
    labels: metrics.Labels

    async def __call__(self, status: int = CLIENT_CLOSED, error: str | None = "client disconnected") -> None:
        if self.record.closed:
            return
        await self.events.aclose()  # type: ignore[attr-defined]
        self.record.close(status, self.stats, self.labels, error)
        await self.record.admission.spend_tokens(self.stats.usage)


async def _completion(events: AsyncIterator[Event]) -> Completion:
    completion = None
    async for event in events:
        if isinstance(event, Completion):
            completion = event
    assert completion is not None
    return completion


async def _first(events: AsyncIterator[Event], renderer: ChatStreamRenderer) -> list[bytes]:
    """Render events until the stream must begin: something to write, a server tool's
    progress, or the end of the answer. Their bytes, to be written first."""
    async for event in events:
        if isinstance(event, Completion):
            return renderer.finish(event)
        encoded = renderer.render(event)
        if encoded is not None:
            return [encoded]
        if isinstance(event, ServerToolStarted | ServerToolFinished):
            return []
    return []


async def _sse(
    events: AsyncIterator[Event], first: list[bytes], renderer: ChatStreamRenderer, stats: LoopStats, end: _StreamEnd
) -> AsyncIterator[bytes]:
    error: str | None = None
    status = 200
    try:
        for written in first:
            yield written
        async for event in events:
            if type(event) is Completion:
                for written in renderer.finish(event):
                    yield written
                continue
            encoded = renderer.render(event)
            if encoded is not None:
                yield encoded
    except GatewayError as exc:
        error = exc.message
        yield renderer.error(exc)
    except Exception as exc:
        log.exception("stream failed", extra={"request_id": end.record.request_id})
        error = f"{type(exc).__name__}: {exc}"
        yield renderer.error(None)
    except BaseException:
        # Cancelled or closed from outside: the client left mid-stream.
        status, error = CLIENT_CLOSED, "client disconnected"
        raise
    finally:
        await end(status, error)
    for written in renderer.end(stats):
        yield written
