"""Passthrough endpoints: a JSON request forwarded to the upstream serving its ``model``, the answer relayed as sent.

``server.passthrough_paths`` lists them (embeddings and legacy completions by default; vLLM's ``/v1/rerank``,
``/v1/score`` or ``/tokenize`` when listed). They pass chat's gate (gateway key, the key's models, its limits),
are routed by ``model`` as chat is (``model_map``, ``*`` routes, retries and fallbacks before the first byte),
and upstream errors reach the client as chat's do. The body goes upstream as the client sent it, only ``model``
renamed when the route maps it; the answer comes back as the upstream sent it. ``stream: true`` is relayed as
SSE, each event as soon as it is whole, and a client that leaves cancels the upstream request.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway import jsoncodec, metrics
from gateway.chat import (
    CLIENT_CLOSED,
    ChatService,
    ClientGone,
    admit,
    read_body,
    request_id_from,
    unless_client_leaves,
)
from gateway.errors import GatewayError, InvalidRequest, UpstreamTimeout, UpstreamUnavailable, error_body
from gateway.event_stream import EventStreamResponse
from gateway.protocol import parse_model_request
from gateway.request_record import RequestRecord, write_log
from gateway.routing import Target
from gateway.sse import DONE, MAX_LINE_BYTES, encode_data
from gateway.upstream import Upstream, UpstreamHeaders

log = logging.getLogger("gateway.request")

T = TypeVar("T")

# Only events that may carry usage are parsed; every other one is relayed without a look inside.
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
# The blank line that ends an SSE event, in each of the line endings SSE allows.
_EVENT_ENDS = (b"\n\n", b"\n\r\n", b"\r\r")
# Splits whole events apart, each keeping the blank line that ends it.
_EVENT_SPLIT = re.compile(rb"(?<=\n\n)|(?<=\n\r\n)|(?<=\r\r)")


@dataclass(frozen=True, slots=True)
class PassthroughService:
    """The passthrough paths, served with chat's keys, limits, routing and request bounds."""

    chat: ChatService
    paths: frozenset[str]


class PassthroughRecord(RequestRecord):
    """A passthrough request's metrics (by path) and log line, written once however it ends."""

    def __init__(self, request_id: str, path: str) -> None:
        super().__init__(request_id, stream=False)
        self.path = path
        self.upstream: str | None = None
        self.usage: dict[str, Any] | None = None

    def finish(self, status: int, labels: metrics.Labels, error: str | None = None) -> None:
        duration = self.settle()
        if duration is None:
            return
        model = labels.model(self.model)
        stream = "true" if self.stream else "false"
        metrics.child(metrics.PASSTHROUGH_REQUESTS, self.path, model, stream, str(status), self.key).inc()
        metrics.child(metrics.PASSTHROUGH_DURATION, self.path, model, stream).observe(duration)
        usage = self.usage or {}
        self.count_tokens(model, usage)
        fields: dict[str, Any] = {
            "event": "request",
            "request_id": self.request_id,
            "path": self.path,
            "key": self.key,
            "model": self.model,
            "stream": self.stream,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
            "upstream": self.upstream,
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
        }
        if error is not None:
            fields["error"] = error
        if self.trace is not None:
            fields["trace_id"] = self.trace.trace_id
            self.trace.end(status, self.model, self.usage, upstream=self.upstream)
        write_log(fields)


@dataclass(frozen=True, slots=True)
class _Exchange:
    """One request, ready to go to any target of its route."""

    path: str
    raw: bytes
    body: dict[str, Any]
    model: str
    headers: UpstreamHeaders
    # A streamed request of a key with a token limit whose client did not ask for usage: asked for upstream,
    # so the tokens are counted, and the usage chunk is kept from the client, who did not ask for it.
    forces_usage: bool = False

    def content(self, target: Target) -> bytes:
        asks_usage = self.forces_usage and target.upstream.config.stream_usage
        if target.model == self.model and not asks_usage:
            return self.raw  # the client's own bytes
        # Only the name (and the usage request) change; every other field, integers of any size included, stays.
        body = {**self.body, "model": target.model}
        if asks_usage:
            body["stream_options"] = {**(self.body.get("stream_options") or {}), "include_usage": True}
        try:
            return jsoncodec.dumps(body)
        except jsoncodec.JsonEncodeError as exc:
            raise InvalidRequest(f"The request body cannot be re-encoded: {exc}") from exc

    async def forward(self, target: Target) -> tuple[Target, int, bytes]:
        status, content = await target.upstream.forward(self.path, self.content(target), self.headers)
        return target, status, content

    def opener(self, stack: AsyncExitStack) -> Callable[[Target], Awaitable[tuple[Target, aiohttp.ClientResponse]]]:
        """Opens a stream on a target; the response stays open in ``stack``."""

        async def open_target(target: Target) -> tuple[Target, aiohttp.ClientResponse]:
            opened = target.upstream.forward_stream(self.path, self.content(target), self.headers)
            return target, await stack.enter_async_context(opened)

        return open_target


async def serve_passthrough(service: PassthroughService, request: Request) -> Response | EventStreamResponse:
    chat = service.chat
    labels = chat.services.labels
    request_id = request_id_from(request.headers.get("x-request-id"))
    request.state.request_id = request_id
    record = PassthroughRecord(request_id, request.scope["path"])
    if chat.tracing is not None:
        record.trace = chat.tracing.request("POST", record.path, request.headers)
    stack = AsyncExitStack()
    try:
        policy = chat.authenticator.caller(request.headers)
        record.key = policy.name
        raw = await read_body(request, chat.max_body_bytes, chat.body_timeout_s)
        body, model = parse_model_request(raw, chat.max_model_chars)
        record.model = model
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            # A server may stream on a truthy value the gateway would read whole: say so instead.
            raise InvalidRequest("'stream' must be a boolean.", param="stream")
        record.stream = stream is True
        route, context, headers = await admit(chat, request, record, policy, model, request_id)
        if record.trace is not None:
            # One upstream span for the exchange, retries and fallbacks included; it ends with the request.
            target = route.targets[0]
            span = record.trace.upstream(target.model, target.upstream.name, target.upstream.config.base_url)
            headers = span.headers(headers)
        options = body.get("stream_options")
        forces_usage = (
            record.stream
            and policy.limits.tokens_per_minute is not None
            and (options is None or (isinstance(options, dict) and options.get("include_usage") is not True))
        )
        exchange = _Exchange(record.path, raw, body, model, headers, forces_usage)
        deadline = context.deadline
        if record.stream:
            opening = _within(deadline, route.first_answer(exchange.opener(stack)))
            target, opened = await unless_client_leaves(request, opening)
            record.upstream = target.upstream.name
            if opened.content_type == "text/event-stream":
                relay = _Relay(target.upstream, opened, stack, record, labels, deadline, forces_usage)
                return EventStreamResponse(
                    relay.events(),
                    headers={"x-request-id": request_id, **record.admission.headers},
                    ping_interval_s=chat.keepalive_interval_s,
                    on_close=relay.end,
                )
            # A server that answers a streamed request with one JSON body: relayed as such.
            status = opened.status
            content = await unless_client_leaves(request, _within(deadline, _read(target.upstream, opened)))
            await stack.aclose()
        else:
            answer = _within(deadline, route.first_answer(exchange.forward))
            target, status, content = await unless_client_leaves(request, answer)
            record.upstream = target.upstream.name
        record.usage = _usage(target.upstream, content)
        await record.admission.spend_tokens(record.usage)
        response = Response(
            content,
            status,
            headers={"x-request-id": request_id, **record.admission.headers},
            media_type="application/json",
        )
        record.finish(status, labels)
        return response
    except GatewayError as exc:
        await stack.aclose()
        exc.headers = {**record.admission.headers, **exc.headers}
        record.finish(exc.status, labels, exc.message)
        raise
    except (ClientGone, asyncio.CancelledError) as exc:
        await stack.aclose()
        record.finish(CLIENT_CLOSED, labels, "client disconnected")
        if isinstance(exc, asyncio.CancelledError):
            raise
        return Response(status_code=CLIENT_CLOSED)
    except BaseException as exc:
        await stack.aclose()
        record.finish(500, labels, f"{type(exc).__name__}: {exc}")
        raise


async def _within(deadline: float, work: Awaitable[T]) -> T:
    """``work``, unless the request's deadline (``loop.deadline_s``, as for chat) passes first."""
    try:
        async with asyncio.timeout_at(asyncio.get_running_loop().time() + deadline - time.monotonic()):
            return await work
    except TimeoutError as exc:
        raise UpstreamTimeout("The request's deadline passed before the upstream answered.") from exc


async def _until(deadline: float, pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``pieces`` as they come, until the request's deadline: a stream that outlives it ends in an error."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            async with asyncio.timeout_at(loop.time() + deadline - time.monotonic()):
                piece = await anext(pieces, None)
        except TimeoutError as exc:
            raise UpstreamTimeout("The request's deadline passed while the upstream was answering.") from exc
        if piece is None:
            return
        yield piece


async def _read(upstream: Upstream, response: aiohttp.ClientResponse) -> bytes:
    return b"".join([piece async for piece in upstream.pieces(response)])


def _usage(upstream: Upstream, content: bytes) -> dict[str, Any] | None:
    """The answer's usage, if it reports one; an answer that is not JSON is the upstream's fault (502)."""
    answer = upstream.parse_answer(content)
    usage = answer.get("usage") if isinstance(answer, dict) else None
    return usage if isinstance(usage, dict) else None


def _events_end(data: bytes) -> int:
    """Where the last whole SSE event in ``data`` ends; 0 when none has ended."""
    end = 0
    for separator in _EVENT_ENDS:
        found = data.rfind(separator)
        if found >= 0:
            end = max(end, found + len(separator))
    return end


@dataclass(slots=True)
class _Relay:
    """An upstream SSE answer relayed to the client unchanged, whole events only.

    Holding back a partial event means keep-alive comments and an error event always
    land between events, never inside one. Ends once, however the stream ends: the
    upstream response released, the record written, the tokens counted.
    """

    upstream: Upstream
    response: aiohttp.ClientResponse
    stack: AsyncExitStack
    record: PassthroughRecord
    labels: metrics.Labels
    deadline: float
    strips_usage: bool = False

    async def events(self) -> AsyncIterator[bytes]:
        status, error = 200, None
        pending = b""
        try:
            async for piece in _until(self.deadline, self.upstream.pieces(self.response)):
                data = pending + piece if pending else piece
                cut = _events_end(data)
                pending = data[cut:]
                if len(pending) > MAX_LINE_BYTES:
                    raise UpstreamUnavailable("upstream sent an SSE event over the size limit", retryable=False)
                if cut:
                    whole = data[:cut] if pending else data
                    if _USAGE.search(whole) is not None:
                        whole = self._take_usage(whole)
                    if whole:
                        yield whole
            if pending:
                yield pending
        except GatewayError as exc:
            error = exc.message
            yield encode_data(exc.body()) + DONE
        except Exception as exc:
            log.exception("passthrough stream failed", extra={"request_id": self.record.request_id})
            error = f"{type(exc).__name__}: {exc}"
            yield encode_data(error_body("The gateway failed while streaming the answer.", "server_error")) + DONE
        except BaseException:
            # Cancelled or closed from outside: the client left mid-stream.
            status, error = CLIENT_CLOSED, "client disconnected"
            raise
        finally:
            await self.end(status, error)

    def _take_usage(self, events: bytes) -> bytes:
        """Note the usage these whole events report; return them less a usage chunk the client did not ask for."""
        kept: list[bytes] = []
        for event in _EVENT_SPLIT.split(events):
            dropped = False
            for line in event.splitlines():
                if line.startswith(b"data:") and _USAGE.search(line) is not None:
                    try:
                        payload = orjson.loads(line[5:])
                    except orjson.JSONDecodeError:
                        continue
                    usage = payload.get("usage") if isinstance(payload, dict) else None
                    if isinstance(usage, dict):
                        self.record.usage = usage
                        dropped = self.strips_usage and payload.get("choices") == []
            if not dropped:
                kept.append(event)
        return b"".join(kept)

    async def end(self, status: int = CLIENT_CLOSED, error: str | None = "client disconnected") -> None:
        if self.record.closed:
            return
        await self.stack.aclose()
        self.record.finish(status, self.labels, error)
        await self.record.admission.spend_tokens(self.record.usage)
