"""The loop's events as a Responses API answer: one ``response`` object, or its semantic event stream.

One ``ResponseRenderer`` per request builds the output items as events arrive:
answer text becomes ``message`` items (one per round that spoke), reasoning text
``reasoning`` items, the gateway's own tool runs ``mcp_call`` items, the client's
calls ``function_call`` items, calls waiting for approval ``mcp_approval_request``
items. Streamed, each change is also written as the event the OpenAI SDKs expect,
numbered by ``sequence_number``; not streamed, the same object is returned whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.deltas import ToolCall
from gateway.errors import GatewayError
from gateway.loop_events import (
    AnswerDelta,
    ClientToolCallArguments,
    ClientToolCallDone,
    ClientToolCallStarted,
    Completion,
    DeltaBatch,
    Event,
    RoundFinished,
    ServerToolFinished,
    ServerToolStarted,
)
from gateway.responses_items import new_item_id

ToolLabel = Callable[[str], tuple[str, str]]
"""A server tool's function name → (server_label, the tool's own name on that server)."""

# Why an answer stopped short, in the Responses API's words.
_INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def responses_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat completions' usage, summed over the rounds, in the Responses API's names."""
    if usage is None:
        return None

    def count(value: Any) -> int:
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    prompt = count(usage.get("prompt_tokens"))
    completion = count(usage.get("completion_tokens"))
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    cached = count(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0
    reasoning = count(completion_details.get("reasoning_tokens")) if isinstance(completion_details, dict) else 0
    return {
        "input_tokens": prompt,
        # Both details are required by the SDKs' types; chat servers report no cache writes.
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": count(usage.get("total_tokens")) or prompt + completion,
    }


OUTPUT_TEXT = "output_text"
REASONING_TEXT = "reasoning_text"


def _text_part(kind: str, text: str) -> dict[str, Any]:
    if kind == OUTPUT_TEXT:
        return {"type": kind, "text": text, "annotations": [], "logprobs": []}
    return {"type": kind, "text": text}


def _logprobs(kind: str) -> dict[str, Any]:
    """The answer text's events carry (empty) logprobs; reasoning text's do not."""
    return {"logprobs": []} if kind == OUTPUT_TEXT else {}


@dataclass(slots=True)
class _Open:
    """An output item still being written, its place in the output (which only grows), its text so far."""

    item: dict[str, Any]
    index: int
    pieces: list[str] = field(default_factory=list)


class ResponseRenderer:
    """Builds one response from the loop's events; ``render`` gives the SSE bytes of each change when streamed."""

    def __init__(
        self, response: dict[str, Any], label: ToolLabel, *, stream: bool, approved: frozenset[str] = frozenset()
    ) -> None:
        self.response = response
        self._approved = approved  # ids of calls run on the client's approval: their items name it
        self.output: list[dict[str, Any]] = response["output"]
        self._label = label
        self._stream = stream
        self._sequence = 0
        self._written: list[bytes] = []
        self._message: _Open | None = None  # the open message item, while a round speaks
        self._reasoning: _Open | None = None
        self._calls: dict[str, _Open] = {}  # open mcp_call items by call id
        self._client_items: dict[int, _Open] = {}

    # -- the stream's frame ------------------------------------------------------------------

    def _emit(self, kind: str, **fields: Any) -> None:
        if not self._stream:
            return
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        self._written.append(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n")

    def _take(self) -> bytes | None:
        if not self._written:
            return None
        written = b"".join(self._written)
        self._written.clear()
        return written

    def start(self, listed: list[dict[str, Any]]) -> bytes | None:
        """``response.created`` and ``in_progress``, then the tool lists imported for the request's MCP tools."""
        self._emit("response.created", response=self.response)
        self._emit("response.in_progress", response=self.response)
        for item in listed:
            index = self._add({**item, "id": new_item_id("mcp_list_tools")})
            self._emit("response.mcp_list_tools.in_progress", item_id=self.output[index]["id"], output_index=index)
            self._emit("response.mcp_list_tools.completed", item_id=self.output[index]["id"], output_index=index)
            self._done(index)
        return self._take()

    def _add(self, item: dict[str, Any]) -> int:
        self.output.append(item)
        index = len(self.output) - 1
        self._emit("response.output_item.added", output_index=index, item=item)
        return index

    def _done(self, index: int) -> None:
        self._emit("response.output_item.done", output_index=index, item=self.output[index])

    # -- events ------------------------------------------------------------------------------

    def render(self, event: Event) -> bytes | None:
        """Apply one loop event; the bytes to write for it, when streamed and it showed something."""
        kind = type(event)
        if kind is AnswerDelta:
            self._delta(event)  # type: ignore[arg-type]
        elif kind is DeltaBatch:
            for delta in event.deltas:  # type: ignore[union-attr]
                self._delta(delta)
        elif kind is RoundFinished:
            self._round_finished(event)  # type: ignore[arg-type]
        elif kind is ServerToolStarted:
            self._tool_started(event.call)  # type: ignore[union-attr]
        elif kind is ServerToolFinished:
            self._tool_finished(event)  # type: ignore[arg-type]
        elif kind is ClientToolCallStarted:
            self._client_call_started(event)  # type: ignore[arg-type]
        elif kind is ClientToolCallArguments:
            self._client_call_arguments(event)  # type: ignore[arg-type]
        elif kind is ClientToolCallDone:
            self._client_call_done(event)  # type: ignore[arg-type]
        return self._take()

    def _delta(self, delta: AnswerDelta) -> None:
        if delta.reasoning:
            self._reasoning_delta(delta.reasoning)
        text = delta.text
        # Whitespace between parallel calls (vLLM hermes) is not an answer.
        if text and not (delta.after_tool_call and not text.strip()):
            self._text_delta(text)

    def _text_delta(self, text: str) -> None:
        if self._message is None:
            self._close_reasoning()
            item = {"id": new_item_id("message"), "type": "message", "role": "assistant", "status": "in_progress"}
            self._message = self._open_text(OUTPUT_TEXT, {**item, "content": []})
        self._text_piece(self._message, OUTPUT_TEXT, text)

    def _reasoning_delta(self, text: str) -> None:
        if self._reasoning is None:
            self._close_message()
            item = {"id": new_item_id("reasoning"), "type": "reasoning", "summary": [], "content": []}
            self._reasoning = self._open_text(REASONING_TEXT, item)
        self._text_piece(self._reasoning, REASONING_TEXT, text)

    def _close_message(self, status: str = "completed") -> None:
        message, self._message = self._message, None
        if message is not None:
            message.item["status"] = status
            self._close_text(message, OUTPUT_TEXT)

    def _close_reasoning(self) -> None:
        reasoning, self._reasoning = self._reasoning, None
        if reasoning is not None:
            self._close_text(reasoning, REASONING_TEXT)

    # An item's one text part (``output_text`` of a message, ``reasoning_text`` of a reasoning item), as
    # it opens, grows by deltas and closes: the same three steps and events, named after the part's type.

    def _open_text(self, kind: str, item: dict[str, Any]) -> _Open:
        opened = _Open(item, self._add(item))
        self._emit(
            "response.content_part.added",
            item_id=item["id"],
            output_index=opened.index,
            content_index=0,
            part=_text_part(kind, ""),
        )
        return opened

    def _text_piece(self, opened: _Open, kind: str, text: str) -> None:
        opened.pieces.append(text)
        self._emit(
            f"response.{kind}.delta",
            item_id=opened.item["id"],
            output_index=opened.index,
            content_index=0,
            delta=text,
            **_logprobs(kind),
        )

    def _close_text(self, opened: _Open, kind: str) -> None:
        text = "".join(opened.pieces)
        part = _text_part(kind, text)
        opened.item["content"] = [part]
        item_id, index = opened.item["id"], opened.index
        self._emit(
            f"response.{kind}.done", item_id=item_id, output_index=index, content_index=0, text=text, **_logprobs(kind)
        )
        self._emit("response.content_part.done", item_id=item_id, output_index=index, content_index=0, part=part)
        self._done(index)

    def _round_finished(self, event: RoundFinished) -> None:
        # A round not streamed states its text only now; a streamed one sent it already.
        if event.reasoning:
            self._reasoning_delta(event.reasoning)
        if event.text:
            self._text_delta(event.text)
        self._close_reasoning()
        self._close_message("incomplete" if event.finish_reason in _INCOMPLETE_REASONS else "completed")

    def _tool_started(self, call: ToolCall) -> None:
        server_label, name = self._label(call.name)
        item = {
            "id": new_item_id("mcp_call"),
            "type": "mcp_call",
            "server_label": server_label,
            "name": name,
            "arguments": "",
            "status": "in_progress",
        }
        if call.id in self._approved:
            item["approval_request_id"] = call.id
        index = self._add(item)
        self._calls[call.id] = _Open(item, index)
        item_id = item["id"]
        self._emit("response.mcp_call.in_progress", item_id=item_id, output_index=index)
        self._emit("response.mcp_call_arguments.delta", item_id=item_id, output_index=index, delta=call.arguments)
        item["arguments"] = call.arguments
        self._emit("response.mcp_call_arguments.done", item_id=item_id, output_index=index, arguments=call.arguments)

    def _tool_finished(self, event: ServerToolFinished) -> None:
        opened = self._calls.pop(event.call_id, None)
        if opened is None:
            return
        outcome = event.outcome
        item, index = opened.item, opened.index
        if outcome.error is None:
            item.update(status="completed", output=outcome.content, error=None)
            self._emit("response.mcp_call.completed", item_id=item["id"], output_index=index)
        else:
            # The tool's error text, as MCP states a failed call's result: text content blocks.
            error = {"type": "mcp_tool_execution_error", "content": [{"type": "text", "text": outcome.content}]}
            item.update(status="failed", output=None, error=error)
            self._emit("response.mcp_call.failed", item_id=item["id"], output_index=index)
        self._done(index)

    def _client_call_started(self, event: ClientToolCallStarted) -> None:
        item = {
            "id": new_item_id("function_call"),
            "type": "function_call",
            "call_id": event.call_id,
            "name": event.name,
            "arguments": "",
            "status": "in_progress",
        }
        self._client_items[event.index] = _Open(item, self._add(item))

    def _client_call_arguments(self, event: ClientToolCallArguments) -> None:
        opened = self._client_items[event.index]
        opened.item["arguments"] += event.delta
        self._emit(
            "response.function_call_arguments.delta",
            item_id=opened.item["id"],
            output_index=opened.index,
            delta=event.delta,
        )

    def _client_call_done(self, event: ClientToolCallDone) -> None:
        opened = self._client_items.pop(event.index)
        item, index = opened.item, opened.index
        item["status"] = "completed"
        self._emit(
            "response.function_call_arguments.done", item_id=item["id"], output_index=index, arguments=item["arguments"]
        )
        self._done(index)

    # -- the end ---------------------------------------------------------------------------

    def finish(self, completion: Completion) -> bytes | None:
        """Calls waiting for approval, the status and the summed usage; ``response.completed`` or ``incomplete``."""
        self._close_reasoning()
        self._close_message()
        for call in completion.approvals:
            server_label, name = self._label(call.name)
            # The item's id is the call's: the approval that names it brings that call back.
            item = {
                "id": call.id,
                "type": "mcp_approval_request",
                "server_label": server_label,
                "name": name,
                "arguments": call.arguments,
            }
            self._done(self._add(item))
        response = self.response
        response["usage"] = responses_usage(completion.usage)
        reason = _INCOMPLETE_REASONS.get(completion.finish_reason or "")
        if reason is not None:
            response["status"] = "incomplete"
            response["incomplete_details"] = {"reason": reason}
        else:
            response["status"] = "completed"
        response["completed_at"] = int(time.time())
        self._emit(f"response.{response['status']}", response=response)
        return self._take()

    def fail(self, exc: GatewayError | None) -> bytes | None:
        """The answer failed after it began: ``response.failed`` with the error."""
        self._close_reasoning()
        self._close_message("incomplete")
        if exc is None:
            error = {"code": "server_error", "message": "The gateway failed while streaming the answer."}
        else:
            code = "rate_limit_exceeded" if exc.status == 429 else "server_error"
            error = {"code": code, "message": exc.message}
        self.response["status"] = "failed"
        self.response["error"] = error
        self._emit("response.failed", response=self.response)
        return self._take()
