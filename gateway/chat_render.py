"""The loop's events as a chat completion: one JSON body, or SSE chunks with one identity across every round.

The client sees one ``id``, ``created`` and client-facing ``model`` however many
upstream rounds run behind its stream. A chunk that needs no change is relayed as
the upstream's exact bytes; the rest is rebuilt with tool-call deltas held back
(the loop assembles and decides on them) and no ``finish_reason`` until the end.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from gateway.errors import GatewayError, error_body
from gateway.loop_events import (
    AnswerDelta,
    AnswerStarted,
    ClientToolCallDone,
    Completion,
    DeltaBatch,
    Event,
    LoopStats,
    ServerToolFinished,
    ServerToolStarted,
)
from gateway.protocol import first_choice
from gateway.sse import DONE, encode_comment, encode_data, encode_raw


def _has_payload(delta: dict[str, Any]) -> bool:
    return any(v not in (None, "", [], {}) for k, v in delta.items() if k != "tool_calls")


class ChunkShaper:
    """The stream's identity, taken from the first upstream chunk, and the SSE chunks built on it."""

    __slots__ = ("_created", "_role_sent", "_stream_id", "model")

    def __init__(self, model: str) -> None:
        self.model = model
        self._stream_id = ""
        self._created = 0
        self._role_sent = False

    def adopt_identity(self, response_id: Any, created: Any) -> None:
        """Take the first upstream chunk's id and created time for the whole stream."""
        if not self._stream_id:
            self._stream_id = str(response_id or f"chatcmpl-{secrets.token_hex(12)}")
            self._created = created if isinstance(created, int) else int(time.time())

    def relay(self, answer: AnswerDelta, withheld: bool) -> bytes | None:
        """The SSE event to forward for an upstream chunk: its bytes as received when nothing
        must change, None when nothing of it is for the client."""
        data = answer.upstream.data
        unchanged_identity = (
            data.get("id") == self._stream_id
            and data.get("model") == self.model
            and data.get("created") == self._created
            and data.get("usage") is None
            and len(data["choices"]) == 1
        )
        # The per-chunk hot path: nothing is withheld, so a chunk under the stream's identity goes as it came.
        if unchanged_identity and not withheld:
            return encode_raw(answer.upstream.raw)
        # The loop passes on only chunks whose first choice is an object.
        choice: dict[str, Any] = data["choices"][0]
        delta = choice.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        repeats_role = "role" in delta and self._role_sent
        if "role" in delta:
            self._role_sent = True
        holds_back = withheld and ("tool_calls" in delta or choice.get("finish_reason") is not None or repeats_role)
        if unchanged_identity and not holds_back:
            return encode_raw(answer.upstream.raw)
        out_delta = delta
        if withheld:
            out_delta = {k: v for k, v in delta.items() if k != "tool_calls" and not (k == "role" and repeats_role)}
            text = out_delta.get("content")
            if answer.after_tool_call and isinstance(text, str) and not text.strip():
                # Whitespace between parallel calls (vLLM hermes) is not an answer.
                out_delta.pop("content")
            if not _has_payload(out_delta) and choice.get("logprobs") is None:
                return None
        out_choice = {**choice, "delta": out_delta}
        if withheld:
            out_choice["finish_reason"] = None
        out = {**data, "id": self._stream_id, "created": self._created, "model": self.model}
        out["choices"] = [out_choice, *data["choices"][1:]]
        out.pop("usage", None)
        return encode_data(out)

    def make(self, choice: dict[str, Any] | None, usage: dict[str, Any] | None = None) -> bytes:
        """A chunk of the gateway's own: client tool calls, the finish, the summed usage."""
        data: dict[str, Any] = {
            "id": self._stream_id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self.model,
            "choices": [] if choice is None else [choice],
        }
        if usage is not None:
            data["usage"] = usage
        return encode_data(data)


class ChatStreamRenderer:
    """One streamed request's events as SSE bytes.

    ``withheld``: the loop holds back the upstream's tool calls and finish reasons
    (it offers server tools), so they are left out of relayed chunks and stated at the end.
    ``trace``: the client opted in to see server tool progress, as SSE comments.
    """

    __slots__ = ("_calls", "_shaper", "_trace", "_wants_usage", "_withheld")

    def __init__(self, model: str, withheld: bool, wants_usage: bool, trace: bool) -> None:
        self._shaper = ChunkShaper(model)
        self._withheld = withheld
        self._wants_usage = wants_usage
        self._trace = trace
        self._calls: list[ClientToolCallDone] = []

    def render(self, event: Event) -> bytes | None:
        """The bytes to write for one event, in one write; None when it shows nothing."""
        if type(event) is AnswerDelta:
            return self._shaper.relay(event, self._withheld)
        if isinstance(event, DeltaBatch):
            relay, withheld = self._shaper.relay, self._withheld
            parts: list[bytes] = []
            for answer in event.deltas:
                encoded = relay(answer, withheld)
                if encoded is not None:
                    parts.append(encoded)
            return b"".join(parts) if parts else None
        if isinstance(event, AnswerStarted):
            self._shaper.adopt_identity(event.response_id, event.created)
        elif isinstance(event, ClientToolCallDone):
            self._calls.append(event)
        elif self._trace and isinstance(event, ServerToolStarted):
            return encode_comment("tool_call", {"id": event.call_id, "name": event.name, "arguments": event.arguments})
        elif self._trace and isinstance(event, ServerToolFinished):
            return encode_comment("tool_result", event.outcome.trace())
        return None

    def finish(self, completion: Completion) -> list[bytes]:
        """The gateway's own closing chunks, one write each: the client's calls, the finish, the summed usage."""
        shaper = self._shaper
        out: list[bytes] = []
        if completion.calls_withheld:
            if self._calls:
                parts = [{"index": done.index, **done.call.as_message_part()} for done in self._calls]
                out.append(
                    shaper.make({"index": 0, "delta": {"tool_calls": parts}, "logprobs": None, "finish_reason": None})
                )
            out.append(
                shaper.make(
                    {"index": 0, "delta": {}, "logprobs": None, "finish_reason": completion.finish_reason or "stop"}
                )
            )
        if self._wants_usage and completion.usage is not None:
            out.append(shaper.make(None, completion.usage))
        return out

    @staticmethod
    def error(exc: GatewayError | None) -> bytes:
        """An error inside the stream: the gateway's own, or a failure of the gateway itself."""
        if exc is not None:
            return encode_data(exc.body())
        return encode_data(error_body("The gateway failed while streaming the answer.", "server_error"))

    def end(self, stats: LoopStats) -> tuple[bytes, bytes]:
        """The stream's last two writes: the loop's summary, then ``[DONE]``."""
        # The round count is only known at the end: a comment every SSE parser skips.
        summary: dict[str, Any] = {"tool_rounds": stats.rounds, "max_rounds_reached": stats.max_rounds_reached}
        if self._trace and stats.offered is not None:
            summary["offered_tools"] = stats.offered.trace()
        return encode_comment("gateway", summary), DONE


def completion_body(completion: Completion, model: str) -> dict[str, Any]:
    """The JSON answer: the last round's body under the client's model, with summed usage
    and, when the loop withheld them, only the client's calls and the loop's finish reason."""
    body = completion.upstream_body
    assert body is not None
    body["model"] = model
    if completion.usage is not None:
        body["usage"] = completion.usage
    choice = first_choice(body)
    if choice is not None and completion.calls_withheld:
        message = dict(choice.get("message") or {})
        if completion.client_calls:
            message["tool_calls"] = [c.as_message_part() for c in completion.client_calls]
        else:
            message.pop("tool_calls", None)
        choice["message"] = message
        choice["finish_reason"] = completion.finish_reason
    return body
