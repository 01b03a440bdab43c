"""Anthropic Messages answers read back as chat completions, whole or streamed.

Pure translation, no I/O: the Anthropic upstream adapter hands the loop what an
OpenAI-compatible server would have sent, so the loop, the renderers and the
clients stay unchanged. A streamed answer goes through one ``ChunkTranslator``,
event by event, into ``chat.completion.chunk`` payloads; the tool-use blocks become
``delta.tool_calls`` fragments indexed 0, 1... in order, the shape
``gateway.deltas.ToolCallAssembler`` expects from any server.

The upstream is trusted for nothing: a body or event of the wrong shape is an
``UpstreamUnavailable`` (not retryable: the same request would get the same answer).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from gateway import jsoncodec
from gateway.errors import UpstreamUnavailable
from gateway.sse import SSEData

Json = dict[str, Any]

OVERLOADED_STATUS = 529  # Anthropic's "overloaded": a busy upstream, not a broken request

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    # Only server tools (never offered through the gateway) pause a turn; what came is the answer.
    "pause_turn": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}

_USAGE_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")


def is_overloaded_status(status: int) -> bool:
    """Whether an HTTP status is Anthropic's overloaded answer (529), worth a retry like a 503."""
    return status == OVERLOADED_STATUS


def finish_reason(stop_reason: Any) -> str | None:
    """An Anthropic ``stop_reason`` as a chat ``finish_reason``.

    A reason newer than this table is "stop": the loop decides on the calls it assembled,
    never on the reason alone, and every client knows "stop".
    """
    if stop_reason is None:
        return None
    if not isinstance(stop_reason, str):
        raise _malformed("stop_reason is not a string")
    return _FINISH_REASONS.get(stop_reason, "stop")


def _count(usage: Json, key: str) -> int:
    value = usage.get(key)
    # Bounded so a hostile count cannot break the JSON encoder (64-bit integers at most).
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53:
        return value
    return 0


def chat_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """Anthropic usage as OpenAI's: cached and cache-written input counts as prompt tokens."""
    cached = _count(usage, "cache_read_input_tokens")
    prompt = _count(usage, "input_tokens") + _count(usage, "cache_creation_input_tokens") + cached
    completion = _count(usage, "output_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _malformed(why: str) -> UpstreamUnavailable:
    return UpstreamUnavailable(f"upstream sent a malformed stream event: {why}", retryable=False)


def _garbage(why: str) -> UpstreamUnavailable:
    return UpstreamUnavailable(f"upstream answered with something other than a message: {why}", retryable=False)


def _arguments(tool_input: Any, fail: Callable[[str], UpstreamUnavailable]) -> str:
    """A tool_use ``input`` as chat ``arguments``: compact JSON, exact for integers of any size."""
    if not isinstance(tool_input, dict):
        raise fail("a tool_use input is not an object")
    try:
        return jsoncodec.dumps(tool_input).decode()
    except jsoncodec.JsonEncodeError as exc:
        raise fail("a tool_use input cannot be encoded") from exc


def _error_payload(error: Any) -> Json:
    """An Anthropic error object as the ``{"error": ...}`` payload the loop reports."""
    error = error if isinstance(error, dict) else {}
    kind, message = error.get("type"), error.get("message")
    return {
        "error": {
            "type": kind if isinstance(kind, str) else "api_error",
            "message": message if isinstance(message, str) else "upstream reported an error",
        }
    }


def chat_completion(message: dict[str, Any]) -> dict[str, Any]:
    """A Messages response as a ``chat.completion``.

    An error body (``{"type": "error", "error": {...}}``) becomes ``{"error": {...}}`` with
    no choices, which the loop reports like any server's error answer.
    """
    if message.get("type") == "error":
        return _error_payload(message.get("error"))
    content, message_id = message.get("content"), message.get("id")
    if not isinstance(content, list):
        raise _garbage("no content list")
    if not isinstance(message_id, str):
        raise _garbage("no message id")
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[Json] = []
    for block in content:
        if not isinstance(block, dict):
            raise _garbage("a content block is not an object")
        kind = block.get("type")
        if kind == "text":
            texts.append(_block_str(block, "text"))
        elif kind == "thinking":
            thoughts.append(_block_str(block, "thinking"))
        elif kind == "tool_use":
            arguments = _arguments(block.get("input"), _garbage)
            function = {"name": _block_str(block, "name"), "arguments": arguments}
            calls.append({"id": _block_str(block, "id"), "type": "function", "function": function})
        # redacted_thinking is opaque, and server-tool blocks never come: tools are the gateway's.
    reply: Json = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        reply["tool_calls"] = calls
    if thoughts:
        reply["reasoning_content"] = "".join(thoughts)
    usage = message.get("usage")
    model = message.get("model")
    try:
        reason = finish_reason(message.get("stop_reason"))
    except UpstreamUnavailable as exc:
        raise _garbage("stop_reason is not a string") from exc
    return {
        "id": message_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model if isinstance(model, str) else None,
        "choices": [{"index": 0, "message": reply, "logprobs": None, "finish_reason": reason}],
        "usage": chat_usage(usage) if isinstance(usage, dict) else None,
    }


def _block_str(block: Json, key: str) -> str:
    value = block.get(key)
    if not isinstance(value, str):
        raise _garbage(f"a {block.get('type')} block has no string {key!r}")
    return value


def _field(event: Json, key: str, kind: type[Any]) -> Any:
    value = event.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _malformed(f"{event.get('type')} has no {kind.__name__} {key!r}")
    return value


class ChunkTranslator:
    """One stream's Anthropic events in, chat.completion.chunk payloads out.

    Feed each parsed event in arrival order; ``None`` in the output stands for
    ``[DONE]``. Every chunk carries the id, ``created`` and model of the first.
    """

    __slots__ = ("_argued", "_created", "_id", "_model", "_tools", "_usage")

    def __init__(self) -> None:
        self._id: str | None = None
        self._model = ""
        self._created = 0
        self._usage: Json = {}
        self._tools: dict[int, int] = {}  # content block index → tool call index in this message
        self._argued: set[int] = set()  # tool blocks that brought argument text

    def feed(self, event: dict[str, Any]) -> list[SSEData | None]:
        """The chunks one event becomes; an unknown event type becomes none."""
        kind = event.get("type")
        if not isinstance(kind, str):
            raise _malformed("an event without a type")
        handler = _HANDLERS.get(kind)
        return [] if handler is None else handler(self, event)

    def _envelope(self, what: str, **fields: Any) -> SSEData:
        """A chat completion chunk of this message with ``fields``; ``what`` names the event that needs one."""
        if self._id is None:
            raise _malformed(f"{what} before message_start")
        chunk = {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model}
        chunk.update(fields)
        return SSEData(chunk, orjson.dumps(chunk))

    def _chunk(self, delta: Json, reason: str | None = None) -> SSEData:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        return self._envelope("content", choices=[choice])

    def _keep_usage(self, usage: Any) -> None:
        if usage is None:
            return
        if not isinstance(usage, dict):
            raise _malformed("usage is not an object")
        # message_delta's counts are cumulative: later values replace earlier ones.
        self._usage.update((k, usage[k]) for k in _USAGE_KEYS if usage.get(k) is not None)

    def _message_start(self, event: Json) -> list[SSEData | None]:
        message = _field(event, "message", dict)
        self._id = _field(message, "id", str)
        self._model = _field(message, "model", str)
        self._created = int(time.time())
        self._keep_usage(message.get("usage"))
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, event: Json) -> list[SSEData | None]:
        index = _field(event, "index", int)
        block = _field(event, "content_block", dict)
        kind = block.get("type")
        if kind == "tool_use":
            call_index = self._tools[index] = len(self._tools)
            # Anthropic starts with ``input: {}`` and streams the JSON; a server that sends it whole here
            # has nothing left to stream.
            tool_input = block.get("input")
            arguments = _arguments(tool_input, _malformed) if tool_input else ""
            if arguments:
                self._argued.add(index)
            call = {
                "index": call_index,
                "id": _field(block, "id", str),
                "type": "function",
                "function": {"name": _field(block, "name", str), "arguments": arguments},
            }
            return [self._chunk({"tool_calls": [call]})]
        if kind == "text" and block.get("text"):
            return [self._chunk({"content": _field(block, "text", str)})]
        if kind == "thinking" and block.get("thinking"):
            return [self._chunk({"reasoning_content": _field(block, "thinking", str)})]
        return []

    def _block_delta(self, event: Json) -> list[SSEData | None]:
        delta = _field(event, "delta", dict)
        kind = delta.get("type")
        if kind == "text_delta":
            return [self._chunk({"content": _field(delta, "text", str)})]
        if kind == "input_json_delta":
            index = _field(event, "index", int)
            call_index = self._tools.get(index)
            if call_index is None:
                raise _malformed("input_json_delta for a block that is not a tool_use")
            fragment = _field(delta, "partial_json", str)
            if fragment:
                self._argued.add(index)
            return [self._chunk({"tool_calls": [{"index": call_index, "function": {"arguments": fragment}}]})]
        if kind == "thinking_delta":
            return [self._chunk({"reasoning_content": _field(delta, "thinking", str)})]
        if not isinstance(kind, str):
            raise _malformed("content_block_delta has no delta type")
        return []  # signature_delta, citations_delta: nothing a chat client reads

    def _block_stop(self, event: Json) -> list[SSEData | None]:
        index = _field(event, "index", int)
        call_index = self._tools.get(index)
        if call_index is None or index in self._argued:
            return []
        # A call without parameters streams no JSON; OpenAI clients parse "{}" there, never "".
        self._argued.add(index)
        return [self._chunk({"tool_calls": [{"index": call_index, "function": {"arguments": "{}"}}]})]

    def _message_delta(self, event: Json) -> list[SSEData | None]:
        delta = _field(event, "delta", dict)
        self._keep_usage(event.get("usage"))
        return [self._chunk({}, finish_reason(delta.get("stop_reason")))]

    def _message_stop(self, event: Json) -> list[SSEData | None]:
        return [self._envelope("message_stop", choices=[], usage=chat_usage(self._usage)), None]

    def _error(self, event: Json) -> list[SSEData | None]:
        payload = _error_payload(event.get("error"))
        return [SSEData(payload, orjson.dumps(payload))]

    def _nothing(self, event: Json) -> list[SSEData | None]:
        return []


_HANDLERS: dict[str, Callable[[ChunkTranslator, Json], list[SSEData | None]]] = {
    "message_start": ChunkTranslator._message_start,
    "content_block_start": ChunkTranslator._block_start,
    "content_block_delta": ChunkTranslator._block_delta,
    "content_block_stop": ChunkTranslator._block_stop,
    "message_delta": ChunkTranslator._message_delta,
    "message_stop": ChunkTranslator._message_stop,
    "error": ChunkTranslator._error,
    "ping": ChunkTranslator._nothing,
}
