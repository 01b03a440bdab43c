"""Shaping chat-completion chunks for a streaming client: one identity across every round.

The client sees one ``id``, ``created`` and client-facing ``model`` however many
upstream rounds run behind its stream. A chunk that needs no change is relayed as
the upstream's exact bytes; the rest is rebuilt with tool-call deltas held back
(the loop assembles and decides on them) and no ``finish_reason`` until the end.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Chunk:
    """A chunk for a streaming client; ``raw`` is set when it is byte-for-byte the upstream's."""

    data: dict[str, Any]
    raw: bytes | None = None


def _has_payload(delta: dict[str, Any]) -> bool:
    return any(v not in (None, "", [], {}) for k, v in delta.items() if k != "tool_calls")


class ChunkShaper:
    """The stream's identity, taken from the first upstream chunk, and the chunks built on it."""

    __slots__ = ("_created", "_role_sent", "_stream_id", "model")

    def __init__(self, model: str) -> None:
        self.model = model
        self._stream_id = ""
        self._created = 0
        self._role_sent = False

    def adopt_identity(self, data: dict[str, Any]) -> None:
        """Take the first upstream chunk's id and created time for the whole stream."""
        if not self._stream_id:
            self._stream_id = str(data.get("id") or f"chatcmpl-{secrets.token_hex(12)}")
            created = data.get("created")
            self._created = created if isinstance(created, int) else int(time.time())

    def relay(
        self,
        data: dict[str, Any],
        raw: bytes,
        choice: dict[str, Any],
        delta: dict[str, Any],
        intercept: bool,
        calls_started: bool,
    ) -> Chunk | None:
        """The chunk to forward for an upstream chunk: as received when nothing must change,
        None when nothing of it is for the client."""
        repeats_role = "role" in delta and self._role_sent
        if "role" in delta:
            self._role_sent = True
        holds_back = intercept and ("tool_calls" in delta or choice.get("finish_reason") is not None or repeats_role)
        if (
            not holds_back
            and data.get("id") == self._stream_id
            and data.get("model") == self.model
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
        out = {**data, "id": self._stream_id, "created": self._created, "model": self.model}
        out["choices"] = [out_choice, *data["choices"][1:]]
        out.pop("usage", None)
        return Chunk(out)

    def make(self, choice: dict[str, Any] | None, usage: dict[str, Any] | None = None) -> Chunk:
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
        return Chunk(data)
