"""Rendering the loop's neutral events as chat completions: relayed bytes, withheld calls, the closing chunks."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.chat_render import ChatStreamRenderer, completion_body
from gateway.deltas import ToolCall
from gateway.loop_events import (
    AnswerDelta,
    AnswerStarted,
    ClientToolCallDone,
    Completion,
    DeltaBatch,
    LoopStats,
    RoundFinished,
    ServerToolStarted,
)
from gateway.sse import SSEData


def _delta(data: dict[str, Any], after_tool_call: bool = False) -> AnswerDelta:
    raw = orjson.dumps(data)
    # Spacing the upstream's own way: a relayed chunk keeps it, a rebuilt one would not.
    raw = raw.replace(b'":', b'": ')
    content = data["choices"][0]["delta"].get("content")
    return AnswerDelta(content, None, after_tool_call, SSEData(data, raw))


def _chunk(delta: dict[str, Any], finish_reason: str | None = None, model: str = "m") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def _events(encoded: bytes | None) -> list[dict[str, Any]]:
    assert encoded is not None
    return [orjson.loads(line[6:]) for line in encoded.split(b"\n\n") if line.startswith(b"data: ")]


def _completion(finish_reason: str | None, calls: list[ToolCall], withheld: bool, usage: Any = None) -> Completion:
    return Completion(finish_reason, usage, LoopStats(), calls, withheld)


def test_chunk_that_needs_no_change_is_relayed_as_the_upstreams_bytes() -> None:
    renderer = ChatStreamRenderer("m", withheld=False, wants_usage=False, trace=False)
    assert renderer.render(AnswerStarted("chatcmpl-1", 7, "m")) is None
    answer = _delta(_chunk({"content": "Hi"}))
    assert renderer.render(answer) == b"data: " + answer.upstream.raw + b"\n\n"


def test_chunk_under_another_model_name_is_rebuilt_under_the_clients() -> None:
    renderer = ChatStreamRenderer("alias", withheld=False, wants_usage=False, trace=False)
    renderer.render(AnswerStarted("chatcmpl-1", 7, "served"))
    (event,) = _events(renderer.render(_delta(_chunk({"content": "Hi"}, model="served"))))
    assert event["model"] == "alias"
    assert event["choices"][0]["delta"] == {"content": "Hi"}


def test_withheld_tool_call_fragments_and_finish_are_left_out() -> None:
    renderer = ChatStreamRenderer("m", withheld=True, wants_usage=False, trace=False)
    renderer.render(AnswerStarted("chatcmpl-1", 7, "m"))
    fragment = {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]}
    assert renderer.render(_delta(_chunk(fragment))) is None
    assert renderer.render(_delta(_chunk({}, "tool_calls"))) is None
    # Whitespace between parallel calls, in a chunk rebuilt anyway (another model name), is dropped.
    assert renderer.render(_delta(_chunk({"content": "\n"}, model="served"), after_tool_call=True)) is None


def test_batch_is_one_write_and_none_when_nothing_shows() -> None:
    renderer = ChatStreamRenderer("m", withheld=True, wants_usage=False, trace=False)
    renderer.render(AnswerStarted("chatcmpl-1", 7, "m"))
    first, second = _delta(_chunk({"content": "a"})), _delta(_chunk({"content": "b"}))
    assert renderer.render(DeltaBatch([first, second])) == (
        b"data: " + first.upstream.raw + b"\n\ndata: " + second.upstream.raw + b"\n\n"
    )
    assert renderer.render(DeltaBatch([_delta(_chunk({}, "stop"))])) is None


def test_finish_states_the_clients_calls_then_the_finish_then_usage() -> None:
    renderer = ChatStreamRenderer("m", withheld=True, wants_usage=True, trace=False)
    renderer.render(AnswerStarted("chatcmpl-1", 7, "m"))
    call = ToolCall("call_1", "lookup", '{"q": 1}')
    assert renderer.render(ClientToolCallDone(0, call)) is None
    assert renderer.render(RoundFinished("tool_calls", None, "m")) is None
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    calls, finish, summed = (
        _events(part)[0] for part in renderer.finish(_completion("tool_calls", [call], True, usage))
    )
    assert calls["choices"][0]["delta"]["tool_calls"] == [{"index": 0, **call.as_message_part()}]
    assert finish["choices"][0]["finish_reason"] == "tool_calls"
    assert summed == {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": "m",
        "choices": [],
        "usage": usage,
    }


def test_finish_adds_nothing_when_the_upstreams_finish_was_relayed() -> None:
    renderer = ChatStreamRenderer("m", withheld=False, wants_usage=False, trace=False)
    assert renderer.finish(_completion("stop", [], False)) == []


def test_server_tool_progress_shows_only_when_traced() -> None:
    started = ServerToolStarted(ToolCall("c1", "clock", "{}"))
    assert ChatStreamRenderer("m", withheld=True, wants_usage=False, trace=False).render(started) is None
    traced = ChatStreamRenderer("m", withheld=True, wants_usage=False, trace=True).render(started)
    assert traced == b': tool_call {"id":"c1","name":"clock","arguments":"{}"}\n\n'


def test_completion_body_keeps_only_the_clients_calls_under_the_clients_model() -> None:
    server_call = {"id": "s", "type": "function", "function": {"name": "clock", "arguments": "{}"}}
    body = {
        "id": "chatcmpl-9",
        "model": "served",
        "choices": [{"index": 0, "message": {"role": "assistant", "tool_calls": [server_call]}, "finish_reason": "x"}],
        "system_fingerprint": "fp",
    }
    usage = {"total_tokens": 9}
    completion = Completion("stop", usage, LoopStats(), [], True, body)
    rendered = completion_body(completion, "alias")
    assert rendered["model"] == "alias"
    assert rendered["usage"] == usage
    assert rendered["system_fingerprint"] == "fp"
    assert rendered["choices"][0] == {"index": 0, "message": {"role": "assistant"}, "finish_reason": "stop"}
