"""The tool loop: upstream → server tool calls → executor → upstream, until the model answers.

The loop knows nothing of HTTP or of any client's wire format. It yields the
neutral events of ``gateway.loop_events``; each client protocol renders them
(``gateway.chat_render``). Streamed and non-streamed requests share every rule here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway import metrics
from gateway.config import LoopConfig
from gateway.continuations import Continuation, ContinuationStore, splice
from gateway.deltas import ToolCall, ToolCallAssembler, calls_from_message, new_call_id
from gateway.errors import (
    UpstreamError,
    UpstreamStreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.loop_events import (
    AnswerDelta,
    AnswerStarted,
    ClientToolCallArguments,
    ClientToolCallDone,
    ClientToolCallStarted,
    Completion,
    DeltaBatch,
    Event,
    LoopStats,
    RoundFinished,
    ServerToolFinished,
    ServerToolStarted,
)
from gateway.metrics import Labels
from gateway.policy import OPEN_POLICY, KeyPolicy
from gateway.protocol import ChatRequest, add_usage, chunk_usage, first_choice, forced_function, reasoning_text
from gateway.routing import Route
from gateway.tool_offer import DEFAULT_OPTIONS, LoopOptions, offered_tools, with_results_after_calls
from gateway.tools.base import ToolContext
from gateway.tools.executor import ToolExecutor, ToolOutcome, error_content
from gateway.tools.registry import ToolRegistry
from gateway.upstream import UpstreamHeaders

if TYPE_CHECKING:
    from gateway.tool_selection import ToolSelector
    from gateway.tracing import RequestTrace, UpstreamSpan


@dataclass(slots=True)
class _Round:
    message: dict[str, Any]
    calls: list[ToolCall]
    finish_reason: str | None
    body: dict[str, Any] | None = None
    model: Any = None  # the upstream's, as it answered
    usage: Any = None
    text: str | None = None  # a round not streamed: its answer text and reasoning, for renderers of their own
    reasoning: str | None = None


@dataclass(frozen=True, slots=True)
class LoopServices:
    """What the app gives every loop: tools, their runner, the continuation store, the rules."""

    registry: ToolRegistry
    executor: ToolExecutor
    continuations: ContinuationStore
    config: LoopConfig
    labels: Labels
    selector: ToolSelector | None = None


async def _drain(payloads: AsyncIterator[Any]) -> None:
    """Read the little left after ``[DONE]`` (the chunked body's end) so the pooled
    connection can be reused instead of torn down; bounded, for servers that linger."""
    with contextlib.suppress(TimeoutError, UpstreamError):
        async with asyncio.timeout(0.05):
            async for _ in payloads:
                pass


class ToolLoop:
    """One request's run of the loop. Construct, then iterate ``run()`` once."""

    def __init__(
        self,
        services: LoopServices,
        route: Route,
        body: dict[str, Any],
        request: ChatRequest,
        context: ToolContext,
        headers: UpstreamHeaders,
        policy: KeyPolicy = OPEN_POLICY,
        trace: RequestTrace | None = None,
        options: LoopOptions = DEFAULT_OPTIONS,
    ) -> None:
        self.services = services
        self.trace = trace
        self.policy = policy
        self.route = route
        self.body = body
        self.request = request
        self.context = context
        self.headers = headers
        self.stream = bool(request.stream)
        self.stats = LoopStats(upstream=route.primary.name)
        self.options = options
        self.client_tools = {t.function.name for t in request.tools or [] if t.function is not None}
        self.server_tools: dict[str, dict[str, Any]] = {}
        if route.primary.config.server_tools and request.tool_choice != "none":
            self.server_tools, selection = offered_tools(
                services.registry, policy, options, body, self.client_tools, services.selector
            )
            self.stats.offered = selection
        self._slots = services.executor.request_slots()

    @property
    def withholds_calls(self) -> bool:
        """Whether the upstream's tool calls and finish reasons are held back from the
        answer's deltas (server tools are offered): the loop decides on them, and
        ``Completion`` then states the client's calls and the finish reason."""
        return bool(self.server_tools)

    async def run(self) -> AsyncIterator[Event]:
        body = self.body
        scope = self.context.key_name or ""
        spliced = await splice(body["messages"], self.services.continuations, scope)
        if spliced is not None:
            body["messages"] = spliced
        intercept = self.withholds_calls
        if intercept:
            body["tools"] = list(body.get("tools") or []) + list(self.server_tools.values())
        choice = self.request.tool_choice
        relax_after_first = choice == "required" or forced_function(choice) in self.server_tools
        if self.stream and self.route.primary.config.stream_usage:
            body["stream_options"] = {**(self.request.stream_options or {}), "include_usage": True}

        config = self.services.config
        max_rounds = self.policy.max_rounds(config.max_rounds)
        calls_left = min(config.max_tool_calls, self.options.max_tool_calls or config.max_tool_calls)
        approved, over = list(self.options.approved[:calls_left]), self.options.approved[calls_left:]
        if approved or over:
            # Calls the client approved after an earlier answer stopped for them: run, then go on.
            calls_left -= len(approved)
            results: list[dict[str, Any]] = []
            async for progress in self._run_tools(approved):
                yield progress
                if isinstance(progress, ServerToolFinished):
                    results.append(progress.outcome.message())
            results += [_over_the_limit(c) for c in over]
            body["messages"] = with_results_after_calls(body["messages"], results)
        # Calls are assembled whenever the loop decides on them or the client protocol states them itself.
        assemble = intercept or self.options.assemble_calls
        needs_approval = self.options.needs_approval
        while True:
            final = self.stats.rounds >= max_rounds or calls_left <= 0
            if final and intercept:
                body["tool_choice"] = "none"
                self.stats.max_rounds_reached = True
            span = None if self.trace is None else self._upstream_span()
            headers = self.headers if span is None else span.headers(self.headers)
            rounds = (
                self._stream_round(body, assemble, headers)
                if self.stream
                else self._complete_round(body, assemble, headers)
            )
            result: _Round | None = None
            try:
                async for item in rounds:
                    if isinstance(item, _Round):
                        result = item
                    else:
                        yield item
            except BaseException as exc:
                if span is not None:
                    span.fail(exc)
                raise
            assert result is not None
            if span is not None:
                span.finish(result.model, result.usage, result.finish_reason)
            yield RoundFinished(result.finish_reason, result.usage, result.model, result.text, result.reasoning)
            if not intercept:
                # No server tools offered: every call is the client's, as the upstream sent it.
                for final_event in self._finish(result, result.calls, withheld=False):
                    yield final_event
                return
            client_calls = [c for c in result.calls if c.name in self.client_tools]
            server_calls = [c for c in result.calls if c.name not in self.client_tools]
            # A round cut off by the token limit may hold a call cut mid-arguments: never run it.
            truncated = result.finish_reason == "length"
            if not server_calls or final or truncated:
                for final_event in self._finish(result, client_calls, withheld=True):
                    yield final_event
                return
            gated: list[ToolCall] = []
            if needs_approval is not None:
                gated = [c.with_id(new_call_id()) for c in server_calls if needs_approval(c.name)]
                server_calls = [c for c in server_calls if not needs_approval(c.name)]

            runnable, refused = server_calls[:calls_left], server_calls[calls_left:]
            calls_left -= len(runnable)
            outcomes: dict[int, ToolOutcome] = {}
            async for progress in self._run_tools(runnable):
                yield progress
                if isinstance(progress, ServerToolFinished):
                    outcomes[id(progress.outcome.call)] = progress.outcome
            results = [outcomes[id(c)].message() for c in runnable] + [_over_the_limit(c) for c in refused]
            self.stats.rounds += 1
            if gated:
                # The answer ends here; the client's approval brings these calls back (``LoopOptions.approved``).
                for final_event in self._finish(result, client_calls, withheld=True, approvals=gated):
                    yield final_event
                return
            if client_calls:
                # The client sees ids minted here, never the upstream's (servers reuse ``call_0``):
                # only the caller who received them can bring this turn back.
                sent = [c.with_id(new_call_id()) if c.name in self.client_tools else c for c in result.calls]
                client_calls = [c for c in sent if c.name in self.client_tools]
                assistant = {**result.message, "tool_calls": [c.as_history_part() for c in sent]}
                stored = tuple((c.id, c.name, c.arguments) for c in client_calls)
                await self.services.continuations.put(scope, Continuation(assistant, results, stored))
                for final_event in self._finish(result, client_calls, withheld=True):
                    yield final_event
                return
            assistant = {**result.message, "tool_calls": [c.as_history_part() for c in result.calls]}
            body["messages"] = [*body["messages"], assistant, *results]
            if relax_after_first:
                body["tool_choice"] = "auto"
                relax_after_first = False

    def _upstream_span(self) -> UpstreamSpan:
        assert self.trace is not None
        target = self.route.targets[0]
        return self.trace.upstream(target.model, target.upstream.name, target.upstream.config.base_url)

    async def _run_tools(self, calls: list[ToolCall]) -> AsyncIterator[ServerToolStarted | ServerToolFinished]:
        for call in calls:
            yield ServerToolStarted(call)
        trace = self.trace
        spans = None if trace is None else {id(call): trace.tool(call.id, call.name) for call in calls}
        started = time.perf_counter()
        executor = self.services.executor
        # Only offered tools run: one the key may not use, or that was not offered, is an unknown tool.
        allowed = self.server_tools.__contains__
        tasks = [asyncio.create_task(executor.run(call, self.context, self._slots, allowed)) for call in calls]
        try:
            for next_done in asyncio.as_completed(tasks):
                outcome = await next_done
                if spans is not None:
                    spans.pop(id(outcome.call)).finish(outcome.outcome)
                self.stats.tools_called.append(outcome.call.name)
                self.stats.trace.append(outcome.trace())
                yield ServerToolFinished(outcome)
        finally:
            # A closed stream (client gone) must not leave tools running behind it.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if spans:
                for span in spans.values():
                    span.cancelled()
            self.stats.tool_wait_s += time.perf_counter() - started

    def _remaining(self) -> float:
        remaining = self.context.remaining_s()
        if remaining <= 0:
            raise UpstreamTimeout("The request's deadline passed before the model answered.")
        return remaining

    async def _complete_round(
        self, body: dict[str, Any], assemble: bool, headers: UpstreamHeaders
    ) -> AsyncIterator[_Round]:
        body["stream"] = False
        try:
            async with asyncio.timeout(self._remaining()):
                answer, waited = await self.route.complete(body, headers)
        except TimeoutError as exc:
            raise UpstreamTimeout("The request's deadline passed before the model answered.") from exc
        self.stats.upstream_wait_s += waited
        self.stats.usage = add_usage(self.stats.usage, answer.get("usage"))
        choice = first_choice(answer)
        if choice is None:
            if "error" in answer:
                error = self.route.primary.error_payload(answer, 502)
                raise UpstreamStreamError("upstream answered with an error", error)
            raise UpstreamUnavailable("upstream answered without choices", retryable=False)
        received = choice.get("message")
        message: dict[str, Any] = received if isinstance(received, dict) else {}
        calls = calls_from_message(message) if assemble else []
        history = {k: v for k, v in message.items() if k in ("role", "content")}
        history.setdefault("role", "assistant")
        text = message.get("content")
        reasoning = reasoning_text(message)
        yield _Round(
            history,
            calls,
            choice.get("finish_reason"),
            answer,
            answer.get("model"),
            answer.get("usage"),
            text if isinstance(text, str) else None,
            reasoning,
        )

    async def _stream_round(
        self, body: dict[str, Any], assemble: bool, headers: UpstreamHeaders
    ) -> AsyncIterator[AnswerStarted | AnswerDelta | DeltaBatch | _Round]:
        body["stream"] = True
        assembler = ToolCallAssembler()
        content: list[str] = []
        finish_reason: str | None = None
        answered = False
        done = False
        usage: Any = None
        model: Any = None
        started = time.perf_counter()
        model_label = self.services.labels.model(self.request.model)
        async with self.route.stream(body, headers) as (_, payloads):
            first = True
            async for batch in payloads:
                out: list[AnswerDelta] = []
                failure: UpstreamError | None = None
                for item in batch:
                    if item is None:
                        done = True
                        break
                    data = item.data
                    if first:
                        metrics.TIME_TO_FIRST_TOKEN.labels(model_label).observe(time.perf_counter() - started)
                        first = False
                        model = data.get("model")
                        yield AnswerStarted(data.get("id"), data.get("created"), model)
                    if data.get("error") is not None and not data.get("choices"):
                        error = self.route.primary.error_payload(data, 502)
                        failure = UpstreamStreamError("upstream reported an error mid-stream", error)
                        break
                    chunk_use = chunk_usage(data)
                    if chunk_use is not None:
                        usage = chunk_use  # cumulative where it repeats (vLLM continuous stats): keep the last
                    choice = first_choice(data)
                    if choice is None:
                        continue
                    answered = True
                    delta = choice.get("delta")
                    delta = delta if isinstance(delta, dict) else {}
                    fragments = delta.get("tool_calls")
                    if assemble and fragments:
                        assembler.feed(fragments)
                    text = delta.get("content")
                    if isinstance(text, str):
                        content.append(text)
                    else:
                        text = None
                    reason = choice.get("finish_reason")
                    if reason is not None:
                        finish_reason = reason
                    out.append(AnswerDelta(text, reasoning_text(delta), bool(assembler), item))
                # What arrived together goes out together: one write, not one per event.
                if len(out) == 1:
                    yield out[0]
                elif out:
                    yield DeltaBatch(out)
                if failure is not None:
                    raise failure
                if done:
                    break
                if self.context.remaining_s() <= 0:
                    raise UpstreamTimeout("The request's deadline passed while the model was answering.")
            if done:
                await _drain(payloads)
        self.stats.upstream_wait_s += time.perf_counter() - started
        if not done and finish_reason is None:
            raise UpstreamStreamError("upstream stream ended before the answer was complete")
        if not answered:
            raise UpstreamStreamError("upstream stream ended without any choice")
        self.stats.usage = add_usage(self.stats.usage, usage)
        text = "".join(content)
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        yield _Round(message, assembler.calls(), finish_reason, None, model, usage)

    def _finish(
        self, result: _Round, client_calls: list[ToolCall], withheld: bool, approvals: list[ToolCall] | None = None
    ) -> list[Event]:
        """The answer's end: the client's calls, the calls awaiting approval, summed usage.

        ``withheld``: the loop held back the upstream's calls and finish reason, so it states its own."""
        finish_reason = result.finish_reason
        if withheld and finish_reason != "length":
            finish_reason = (
                "tool_calls"
                if client_calls or approvals
                else ("stop" if finish_reason in (None, "tool_calls") else finish_reason)
            )
        events: list[Event] = []
        for index, call in enumerate(client_calls):
            events.append(ClientToolCallStarted(index, call.id, call.name))
            events.append(ClientToolCallArguments(index, call.arguments))
            events.append(ClientToolCallDone(index, call))
        stats = self.stats
        events.append(
            Completion(finish_reason, stats.usage, stats, client_calls, withheld, result.body, approvals or [])
        )
        return events


def _over_the_limit(call: ToolCall) -> dict[str, Any]:
    """The result of a call not run: the request's tool calls are used up."""
    return {
        "role": "tool",
        "tool_call_id": call.id,
        "content": error_content("Tool call limit for this request reached.", "limit"),
    }
