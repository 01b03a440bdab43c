"""Assembling streamed tool-call deltas into whole calls, across every server's quirks.

The rules, each from a real server (see UPSTREAMS.md):
- ``index`` alone does not identify a call: older Ollama sends parallel calls all at
  index 0 with different ids, so a new non-empty id at an occupied index starts a call.
- ``index`` may be missing (Gemini, old Ollama): match by id if there is one; without an id,
  a new name starts a call and bare argument text continues the open one.
- continuation fragments may repeat the id (Together), or carry ``null``, ``""`` or the
  string ``"null"`` as id and name (SGLang, Mistral relays): none of these start a call.
- a name may be re-sent longer as parsing proceeds (llama.cpp): replace, never append.
- ``arguments`` may be absent on the first fragment (vLLM hermes) or arrive whole.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from typing import Any

import orjson

_ID_ALPHABET = string.ascii_letters + string.digits


def new_call_id() -> str:
    """Nine alphanumerics: the one id shape every server accepts back, Mistral's included."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(9))


def _meaningful(value: Any) -> str | None:
    if isinstance(value, str) and value and value != "null":
        return value
    return None


@dataclass(slots=True)
class PartialCall:
    index: int | None
    id: str | None = None
    name: str | None = None
    type: str = "function"
    argument_parts: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete tool call as the model emitted it (arguments still a JSON string)."""

    id: str
    name: str
    arguments: str

    def as_message_part(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def as_history_part(self) -> dict[str, Any]:
        """The call as sent back upstream in the history: arguments always valid JSON.

        Chat templates (llama.cpp, vLLM, Mistral) parse history arguments and fail the
        whole request on broken JSON; the model learns what was wrong from the tool
        result, which quotes the arguments it sent.
        """
        if self.arguments_are_json():
            return self.as_message_part()
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": "{}"}}

    def arguments_are_json(self) -> bool:
        if not self.arguments.strip():
            return False
        try:
            orjson.loads(self.arguments)
        except orjson.JSONDecodeError:
            return False
        return True

    def with_id(self, call_id: str) -> ToolCall:
        return ToolCall(call_id, self.name, self.arguments)


class ToolCallAssembler:
    """Feed it ``delta.tool_calls`` lists in arrival order; ``calls()`` gives the result."""

    def __init__(self) -> None:
        self._calls: list[PartialCall] = []
        self._by_index: dict[int, PartialCall] = {}
        self._by_id: dict[str, PartialCall] = {}

    def __bool__(self) -> bool:
        return bool(self._calls)

    def feed(self, deltas: Any) -> None:
        if not isinstance(deltas, list):
            return
        for delta in deltas:
            if isinstance(delta, dict):
                self._feed_one(delta)

    def _start(self, index: int | None) -> PartialCall:
        call = PartialCall(index=index)
        self._calls.append(call)
        if index is not None:
            self._by_index[index] = call
        return call

    def _feed_one(self, delta: dict[str, Any]) -> None:
        index = delta.get("index")
        index = index if isinstance(index, int) and not isinstance(index, bool) else None
        call_id = _meaningful(delta.get("id"))
        if index is None:
            call = self._match_unindexed(delta, call_id)
        else:
            current = self._by_index.get(index)
            if current is None or (call_id and current.id and call_id != current.id):
                call = self._start(index)
            else:
                call = current
        if call_id and call.id is None:
            call.id = call_id
            self._by_id[call_id] = call
        function = delta.get("function")
        if isinstance(function, dict):
            name = _meaningful(function.get("name"))
            if name:
                call.name = name
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                call.argument_parts.append(arguments)
            elif isinstance(arguments, dict):
                # A few servers send the object itself; a whole object replaces fragments.
                call.argument_parts = [orjson.dumps(arguments).decode()]

    def _match_unindexed(self, delta: dict[str, Any], call_id: str | None) -> PartialCall:
        """A delta without ``index``: by id when it has one; else a name starts a call and
        bare argument text continues the call that is open."""
        if call_id:
            known = self._by_id.get(call_id)
            return known if known is not None else self._start(None)
        open_call = self._calls[-1] if self._calls else None
        function = delta.get("function")
        name = _meaningful(function.get("name")) if isinstance(function, dict) else None
        # A name after the open call already has its name and some arguments is the next call.
        if open_call is None or (name is not None and open_call.name is not None and any(open_call.argument_parts)):
            return self._start(None)
        return open_call

    def calls(self) -> list[ToolCall]:
        """The complete calls in order of first appearance; ids generated where missing."""
        done = []
        for partial in self._calls:
            if partial.name is None and not partial.argument_parts:
                continue
            done.append(
                ToolCall(
                    id=partial.id or new_call_id(),
                    name=partial.name or "",
                    arguments="".join(partial.argument_parts),
                )
            )
        return done


def calls_from_message(message: dict[str, Any]) -> list[ToolCall]:
    """Tool calls of a non-streamed assistant message, normalised like streamed ones."""
    assembler = ToolCallAssembler()
    raw = message.get("tool_calls")
    if isinstance(raw, list):
        # Non-streamed calls are whole; index them by position so repeated ids stay apart.
        assembler.feed([{**c, "index": i, "id": c.get("id")} for i, c in enumerate(raw) if isinstance(c, dict)])
    return assembler.calls()
