"""The tool loop: upstream → server tool calls → executor → upstream, until the model answers.

The loop knows nothing of HTTP. It yields events; the JSON route keeps the
``Completion``, the streaming route encodes ``Chunk``s (and, on opt-in, tool
progress) as SSE. Streamed and non-streamed requests share every rule here.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from gateway import metrics
from gateway.config import LoopConfig
from gateway.continuations import Continuation, ContinuationStore, splice
from gateway.deltas import ToolCall, ToolCallAssembler, calls_from_message
from gateway.errors import (
    InvalidRequest,
    UpstreamError,
    UpstreamStreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    as_openai_error,
)
from gateway.metrics import Labels
from gateway.protocol import ChatRequest, add_usage, chunk_usage, first_choice, forced_function
from gateway.routing import Route
from gateway.tools.base import ToolContext
from gateway.tools.executor import ToolExecutor, ToolOutcome
from gateway.tools.registry import ToolRegistry


@dataclass(slots=True)
class Chunk:
    """A chunk for a streaming client; ``raw`` is set when it is byte-for-byte the upstream's."""

    data: dict[str, Any]
    raw: bytes | None = None


@dataclass(slots=True)
class ToolStarted:
    call: ToolCall


@dataclass(slots=True)
class ToolFinished:
    outcome: ToolOutcome


@dataclass(slots=True)
class Completion:
    """The final response body of a non-streaming request."""

    body: dict[str, Any]


Event = Chunk | ToolStarted | ToolFinished | Completion


@dataclass(slots=True)
class LoopStats:
    """What the loop did, for response headers, logs and metrics."""

    rounds: int = 0
    max_rounds_reached: bool = False
    usage: dict[str, Any] | None = None
    upstream: str | None = None
    upstream_wait_s: float = 0.0
    tool_wait_s: float = 0.0
    tools_called: list[str] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class _Round:
    message: dict[str, Any]
    calls: list[ToolCall]
    finish_reason: str | None
    body: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class LoopServices:
    """What the app gives every loop: tools, their runner, the continuation store, the rules."""

    registry: ToolRegistry
    executor: ToolExecutor
    continuations: ContinuationStore
    config: LoopConfig
    labels: Labels


async def _drain(payloads: AsyncIterator[Any]) -> None:
    """Read the little left after ``[DONE]`` (the chunked body's end) so the pooled
    connection can be reused instead of torn down; bounded, for servers that linger."""
    with contextlib.suppress(TimeoutError, UpstreamError):
        async with asyncio.timeout(0.05):
            async for _ in payloads:
                pass


def _has_payload(delta: dict[str, Any]) -> bool:
    return any(v not in (None, "", [], {}) for k, v in delta.items() if k != "tool_calls")


class ToolLoop:
    """One request's run of the loop. Construct, then iterate ``run()`` once."""

    def __init__(
        self,
        services: LoopServices,
        route: Route,
        body: dict[str, Any],
        request: ChatRequest,
        context: ToolContext,
        headers: dict[str, str],
    ) -> None:
        self.services = services
        self.route = route
        self.body = body
        self.request = request
        self.context = context
        self.headers = headers
        self.stream = bool(request.stream)
        self.client_model = request.model
        self.stats = LoopStats(upstream=route.primary.name)
        self.client_tools = {t.function.name for t in request.tools or [] if t.function is not None}
        self.server_tools = self._offered_tools()
        self.wants_usage = bool((request.stream_options or {}).get("include_usage"))
        self._slots = services.executor.request_slots()
        self._stream_id = ""
        self._created = 0
        self._role_sent = False

    def _offered_tools(self) -> dict[str, dict[str, Any]]:
        if not self.route.primary.config.server_tools or self.request.tool_choice == "none":
            return {}
        offered = {d["function"]["name"]: d for d in self.services.registry.definitions()}
        clash = sorted(self.client_tools & offered.keys())
        if clash:
            raise InvalidRequest(
                f"Client tool name(s) {', '.join(clash)} clash with the gateway's server tools; rename them.",
                param="tools",
                code="tool_name_conflict",
            )
        return offered

    async def run(self) -> AsyncIterator[Event]:
        body = self.body
        spliced = await splice(body["messages"], self.services.continuations)
        if spliced is not None:
            body["messages"] = spliced
        intercept = bool(self.server_tools)
        if intercept:
            body["tools"] = list(body.get("tools") or []) + list(self.server_tools.values())
        choice = self.request.tool_choice
        relax_after_first = choice == "required" or forced_function(choice) in self.server_tools
        if self.stream and self.route.primary.config.stream_usage:
            body["stream_options"] = {**(self.request.stream_options or {}), "include_usage": True}

        config = self.services.config
        calls_left = config.max_tool_calls
        while True:
            final = self.stats.rounds >= config.max_rounds or calls_left <= 0
            if final and intercept:
                body["tool_choice"] = "none"
                self.stats.max_rounds_reached = True
            rounds = self._stream_round(body, intercept) if self.stream else self._complete_round(body, intercept)
            result: _Round | None = None
            async for item in rounds:
                if isinstance(item, _Round):
                    result = item
                else:
                    yield item
            assert result is not None
            client_calls = [c for c in result.calls if c.name in self.client_tools]
            server_calls = [c for c in result.calls if c.name not in self.client_tools]
            if not intercept or not server_calls or final:
                async for final_event in self._finish(result, client_calls if intercept else None):
                    yield final_event
                return

            runnable, refused = server_calls[:calls_left], server_calls[calls_left:]
            calls_left -= len(runnable)
            outcomes: dict[int, ToolOutcome] = {}
            async for progress in self._run_tools(runnable):
                yield progress
                if isinstance(progress, ToolFinished):
                    outcomes[id(progress.outcome.call)] = progress.outcome
            results = [outcomes[id(c)].message() for c in runnable] + [
                {
                    "role": "tool",
                    "tool_call_id": c.id,
                    "content": '{"error": "Tool call limit for this request reached.", "type": "limit"}',
                }
                for c in refused
            ]
            self.stats.rounds += 1
            assistant = {**result.message, "tool_calls": [c.as_message_part() for c in result.calls]}
            if client_calls:
                await self.services.continuations.put([c.id for c in client_calls], Continuation(assistant, results))
                async for final_event in self._finish(result, client_calls):
                    yield final_event
                return
            body["messages"] = [*body["messages"], assistant, *results]
            if relax_after_first:
                body["tool_choice"] = "auto"
                relax_after_first = False

    async def _run_tools(self, calls: list[ToolCall]) -> AsyncIterator[ToolStarted | ToolFinished]:
        for call in calls:
            yield ToolStarted(call)
        started = time.perf_counter()
        executor = self.services.executor
        tasks = [asyncio.create_task(executor.run(call, self.context, self._slots)) for call in calls]
        try:
            for next_done in asyncio.as_completed(tasks):
                outcome = await next_done
                self.stats.tools_called.append(outcome.call.name)
                self.stats.trace.append(outcome.trace())
                yield ToolFinished(outcome)
        finally:
            # A closed stream (client gone) must not leave tools running behind it.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.stats.tool_wait_s += time.perf_counter() - started

    def _remaining(self) -> float:
        remaining = self.context.remaining_s()
        if remaining <= 0:
            raise UpstreamTimeout("The request's deadline passed before the model answered.")
        return remaining

    async def _complete_round(self, body: dict[str, Any], intercept: bool) -> AsyncIterator[_Round]:
        body["stream"] = False
        try:
            async with asyncio.timeout(self._remaining()):
                answer, waited = await self.route.complete(body, self.headers)
        except TimeoutError as exc:
            raise UpstreamTimeout("The request's deadline passed before the model answered.") from exc
        self.stats.upstream_wait_s += waited
        self.stats.usage = add_usage(self.stats.usage, answer.get("usage"))
        choice = first_choice(answer)
        if choice is None:
            if "error" in answer:
                raise UpstreamStreamError("upstream answered with an error", as_openai_error(answer, 502))
            raise UpstreamUnavailable("upstream answered without choices", retryable=False)
        received = choice.get("message")
        message: dict[str, Any] = received if isinstance(received, dict) else {}
        calls = calls_from_message(message) if intercept else []
        history = {k: v for k, v in message.items() if k in ("role", "content")}
        history.setdefault("role", "assistant")
        yield _Round(history, calls, choice.get("finish_reason"), answer)

    async def _stream_round(self, body: dict[str, Any], intercept: bool) -> AsyncIterator[Chunk | _Round]:
        body["stream"] = True
        assembler = ToolCallAssembler()
        content: list[str] = []
        finish_reason: str | None = None
        done = False
        usage: Any = None
        started = time.perf_counter()
        model_label = self.services.labels.model(self.client_model)
        async with self.route.stream(body, self.headers) as (_, payloads):
            first = True
            async for item in payloads:
                if item is None:
                    done = True
                    break
                data = item.data
                if first:
                    metrics.TIME_TO_FIRST_TOKEN.labels(model_label).observe(time.perf_counter() - started)
                    first = False
                    if not self._stream_id:
                        self._stream_id = str(data.get("id") or f"chatcmpl-{secrets.token_hex(12)}")
                        created = data.get("created")
                        self._created = created if isinstance(created, int) else int(time.time())
                if data.get("error") is not None and not data.get("choices"):
                    raise UpstreamStreamError("upstream reported an error mid-stream", as_openai_error(data, 502))
                chunk_use = chunk_usage(data)
                if chunk_use is not None:
                    usage = chunk_use  # cumulative where it repeats (vLLM continuous stats): keep the last
                choice = first_choice(data)
                if choice is None:
                    continue
                delta = choice.get("delta")
                delta = delta if isinstance(delta, dict) else {}
                fragments = delta.get("tool_calls")
                if intercept and fragments:
                    assembler.feed(fragments)
                text = delta.get("content")
                if isinstance(text, str):
                    content.append(text)
                reason = choice.get("finish_reason")
                if reason is not None:
                    finish_reason = reason
                out = self._client_chunk(data, item.raw, choice, delta, intercept, bool(assembler))
                if out is not None:
                    yield out
                if self.context.remaining_s() <= 0:
                    raise UpstreamTimeout("The request's deadline passed while the model was answering.")
            if done:
                await _drain(payloads)
        self.stats.upstream_wait_s += time.perf_counter() - started
        if not done and finish_reason is None:
            raise UpstreamStreamError("upstream stream ended before the answer was complete")
        self.stats.usage = add_usage(self.stats.usage, usage)
        text = "".join(content)
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        yield _Round(message, assembler.calls(), finish_reason)

    def _client_chunk(
        self,
        data: dict[str, Any],
        raw: bytes,
        choice: dict[str, Any],
        delta: dict[str, Any],
        intercept: bool,
        calls_started: bool,
    ) -> Chunk | None:
        """The chunk to forward for an upstream chunk: as received when nothing must change."""
        repeats_role = "role" in delta and self._role_sent
        if "role" in delta:
            self._role_sent = True
        holds_back = intercept and ("tool_calls" in delta or choice.get("finish_reason") is not None or repeats_role)
        if (
            not holds_back
            and data.get("id") == self._stream_id
            and data.get("model") == self.client_model
            and data.get("created") == self._created
            and data.get("usage") is None
            and len(data["choices"]) == 1
        ):
            return Chunk(data, raw)
        out_delta = delta
        if intercept:
            out_delta = {k: v for k, v in delta.items() if k != "tool_calls" and not (k == "role" and repeats_role)}
            text = out_delta.get("content")
            if calls_started and isinstance(text, str) and not text.strip():
                # Whitespace between parallel calls (vLLM hermes) is not an answer.
                out_delta.pop("content")
            if not _has_payload(out_delta) and choice.get("logprobs") is None:
                return None
        out_choice = {**choice, "delta": out_delta}
        if intercept:
            out_choice["finish_reason"] = None
        out = {**data, "id": self._stream_id, "created": self._created, "model": self.client_model}
        out["choices"] = [out_choice, *data["choices"][1:]]
        out.pop("usage", None)
        return Chunk(out)

    def _chunk(self, choice: dict[str, Any] | None, usage: dict[str, Any] | None = None) -> Chunk:
        data: dict[str, Any] = {
            "id": self._stream_id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self.client_model,
            "choices": [] if choice is None else [choice],
        }
        if usage is not None:
            data["usage"] = usage
        return Chunk(data)

    async def _finish(self, result: _Round, client_calls: list[ToolCall] | None) -> AsyncIterator[Event]:
        """Render the last round: only the client's calls, summed usage, the client's model."""
        finish_reason = result.finish_reason
        if client_calls is not None:
            finish_reason = (
                "tool_calls" if client_calls else ("stop" if finish_reason in (None, "tool_calls") else finish_reason)
            )
        if not self.stream:
            body = result.body
            assert body is not None
            body["model"] = self.client_model
            if self.stats.usage is not None:
                body["usage"] = self.stats.usage
            choice = first_choice(body)
            if choice is not None and client_calls is not None:
                message = dict(choice.get("message") or {})
                if client_calls:
                    message["tool_calls"] = [c.as_message_part() for c in client_calls]
                else:
                    message.pop("tool_calls", None)
                choice["message"] = message
                choice["finish_reason"] = finish_reason
            yield Completion(body)
            return
        if client_calls is not None:
            if client_calls:
                parts = [{"index": i, **c.as_message_part()} for i, c in enumerate(client_calls)]
                yield self._chunk({"index": 0, "delta": {"tool_calls": parts}, "logprobs": None, "finish_reason": None})
            yield self._chunk({"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish_reason or "stop"})
        if self.wants_usage and self.stats.usage is not None:
            yield self._chunk(None, self.stats.usage)
