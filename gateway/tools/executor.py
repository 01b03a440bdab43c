"""Running the model's server tool calls: validate, bound, time out, and turn every failure into data.

Nothing a tool does can fail the request: bad JSON, a schema violation, an unknown
name, a timeout or an exception all become a tool message ``{"error", "type"}``
the model can act on; stack traces go to the log only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from gateway import metrics
from gateway.deltas import ToolCall
from gateway.metrics import Labels
from gateway.tools.base import InvalidArguments, ToolContext, ToolFailed
from gateway.tools.registry import ToolRegistry

log = logging.getLogger("gateway.tools")

Outcome = Literal["ok", "error", "timeout", "invalid_arguments", "unknown_tool"]


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    call: ToolCall
    content: str
    outcome: Outcome
    duration_s: float
    error: str | None = None

    def message(self) -> dict[str, Any]:
        return {"role": "tool", "tool_call_id": self.call.id, "content": self.content}

    def trace(self) -> dict[str, Any]:
        """What an opted-in client is shown about this call."""
        entry: dict[str, Any] = {
            "id": self.call.id,
            "name": self.call.name,
            "arguments": self.call.arguments,
            "outcome": self.outcome,
            "duration_ms": round(self.duration_s * 1000, 3),
        }
        if self.error is None:
            entry["result"] = self.content
        else:
            entry["error"] = self.error
        return entry


def error_content(message: str, kind: str) -> str:
    """A failed call's result as the model reads it, whoever failed it (the tool, a limit, the client)."""
    return orjson.dumps({"error": message, "type": kind}).decode()


def render_result(result: Any, max_chars: int) -> str:
    """Strings as they are, anything else as JSON; long outputs cut with a note."""
    if isinstance(result, str):
        text = result
    else:
        try:
            text = orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS, default=str).decode()
        except TypeError:
            # orjson refuses integers past 64 bits; the stdlib encoder does not.
            text = json.dumps(result, default=str, ensure_ascii=False)
    if len(text) > max_chars:
        dropped = len(text) - max_chars
        text = f"{text[:max_chars]}\n[output truncated: {dropped} more characters not shown]"
    return text


class ToolExecutor:
    """Runs calls with a per-request and a process-wide cap on concurrent runs."""

    def __init__(
        self,
        registry: ToolRegistry,
        labels: Labels,
        *,
        max_global_calls: int,
        max_parallel_calls: int,
        default_timeout_s: float,
        max_result_chars: int,
    ) -> None:
        self.registry = registry
        self.labels = labels
        self._global = asyncio.Semaphore(max_global_calls)
        self.max_parallel_calls = max_parallel_calls
        self.default_timeout_s = default_timeout_s
        self.max_result_chars = max_result_chars

    def request_slots(self) -> asyncio.Semaphore:
        """The per-request cap; one semaphore is shared by all rounds of a request."""
        return asyncio.Semaphore(self.max_parallel_calls)

    async def run(
        self,
        call: ToolCall,
        context: ToolContext,
        slots: asyncio.Semaphore,
        allowed: Callable[[str], bool] | None = None,
    ) -> ToolOutcome:
        """Run one call; a tool the caller may not use (``allowed``) fails exactly like an unknown one."""
        started = time.perf_counter()
        outcome = await self._run(call, context, slots, started, allowed)
        tool_label = self.labels.tool(call.name)
        metrics.TOOL_CALLS.labels(tool_label, outcome.outcome).inc()
        metrics.TOOL_DURATION.labels("execute_tool", tool_label).observe(outcome.duration_s)
        log.debug(
            "tool call",
            extra={
                "event": "tool_call",
                "request_id": context.request_id,
                "tool": call.name,
                "outcome": outcome.outcome,
                "duration_ms": round(outcome.duration_s * 1000, 3),
                "error": outcome.error,
            },
        )
        return outcome

    async def _run(
        self,
        call: ToolCall,
        context: ToolContext,
        slots: asyncio.Semaphore,
        started: float,
        allowed: Callable[[str], bool] | None,
    ) -> ToolOutcome:
        def failed(kind: Outcome, message: str) -> ToolOutcome:
            return ToolOutcome(call, error_content(message, kind), kind, time.perf_counter() - started, message)

        tool = self.registry.get(call.name)
        if tool is None or (allowed is not None and not allowed(call.name)):
            known = ", ".join(t.name for t in self.registry.available() if allowed is None or allowed(t.name))
            return failed("unknown_tool", f"Unknown tool {call.name!r}. Available tools: {known}.")
        try:
            arguments = orjson.loads(call.arguments) if call.arguments.strip() else {}
        except orjson.JSONDecodeError as exc:
            # The history carries "{}" in place of broken arguments, so quote what was sent.
            sent = call.arguments if len(call.arguments) <= 200 else call.arguments[:200] + "…"
            return failed("invalid_arguments", f"Arguments are not valid JSON ({exc}): {sent!r}. Send a JSON object.")
        if not isinstance(arguments, dict):
            return failed("invalid_arguments", "Arguments must be a JSON object.")
        try:
            validated = tool.validate(arguments)
        except InvalidArguments as exc:
            return failed("invalid_arguments", f"Invalid arguments for {call.name}: {exc}")
        timeout = min(tool.timeout_s or self.default_timeout_s, context.remaining_s())
        tool_context = ToolContext(
            context.request_id,
            context.key_name,
            context.deadline,
            dict(self.registry.settings_for(call.name)),
        )
        try:
            async with slots, self._global:
                async with asyncio.timeout(timeout) as limit:
                    result = await tool.invoke(validated, tool_context)
            content = render_result(result, self.max_result_chars)
        except TimeoutError as exc:
            if limit.expired():
                return failed("timeout", f"Tool {call.name} did not finish within {timeout:.3g} s.")
            return failed("error", f"{type(exc).__name__}: {exc}")
        except ToolFailed as exc:
            return failed("error", str(exc))
        except Exception as exc:
            log.exception("tool %s failed", call.name, extra={"request_id": context.request_id})
            return failed("error", f"{type(exc).__name__}: {exc}")
        return ToolOutcome(call, content, "ok", time.perf_counter() - started)
