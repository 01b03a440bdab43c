"""Reading a streamed chat completion from the SDK and checking it is one well-formed stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass, field
from typing import Any

from openai.types.chat import ChatCompletionChunk


@dataclass
class StreamedCall:
    index: int
    id: str | None = None
    name: str = ""
    arguments: str = ""
    # The first delta of this call as sent, to check its shape.
    first: dict[str, Any] = field(default_factory=dict)

    def parsed_arguments(self) -> Any:
        return json.loads(self.arguments or "{}")


@dataclass
class Collected:
    chunks: list[ChatCompletionChunk] = field(default_factory=list)

    def add(self, chunk: ChatCompletionChunk) -> None:
        self.chunks.append(chunk)

    @property
    def ids(self) -> set[str]:
        return {c.id for c in self.chunks}

    @property
    def models(self) -> set[str]:
        return {c.model for c in self.chunks}

    @property
    def content(self) -> str:
        return "".join(c.choices[0].delta.content or "" for c in self.chunks if c.choices)

    @property
    def finish_reasons(self) -> list[str]:
        return [c.choices[0].finish_reason for c in self.chunks if c.choices and c.choices[0].finish_reason]

    @property
    def usage_chunks(self) -> list[ChatCompletionChunk]:
        return [c for c in self.chunks if c.usage is not None]

    @property
    def tool_call_deltas(self) -> list[dict[str, Any]]:
        return [
            delta.model_dump(exclude_unset=True)
            for c in self.chunks
            if c.choices
            for delta in c.choices[0].delta.tool_calls or []
        ]

    @property
    def tool_calls(self) -> list[StreamedCall]:
        calls: dict[int, StreamedCall] = {}
        for delta in self.tool_call_deltas:
            index = delta["index"]
            call = calls.get(index)
            if call is None:
                call = calls[index] = StreamedCall(index, first=delta)
            function = delta.get("function") or {}
            call.id = delta.get("id") or call.id
            call.name = function.get("name") or call.name
            call.arguments += function.get("arguments") or ""
        return [calls[i] for i in sorted(calls)]


def collect(stream: Iterable[ChatCompletionChunk]) -> Collected:
    collected = Collected()
    for chunk in stream:
        collected.add(chunk)
    return collected


async def collect_async(stream: AsyncIterable[ChatCompletionChunk]) -> Collected:
    collected = Collected()
    async for chunk in stream:
        collected.add(chunk)
    return collected


def assert_one_stream(collected: Collected, model: str, *, usage: bool = True) -> None:
    """One completion: one id and model, one finish_reason (on the last choice chunk), one usage chunk last."""
    assert collected.chunks, "the stream was empty"
    assert len(collected.ids) == 1, collected.ids
    assert collected.models == {model}
    assert len(collected.finish_reasons) == 1, collected.finish_reasons
    with_choices = [c for c in collected.chunks if c.choices]
    assert with_choices[-1].choices[0].finish_reason is not None
    if usage:
        assert len(collected.usage_chunks) == 1
        last = collected.chunks[-1]
        assert last.usage is not None and last.choices == []
        assert last.usage.completion_tokens > 0
