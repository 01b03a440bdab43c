"""An upstream speaking Anthropic's Messages API: the same loop, server tools and clients, through the OpenAI SDK.

The upstream is a scripted server on a real socket that answers ``/v1/messages`` in
Anthropic's shapes: whole messages, and event streams with text, several ``tool_use``
blocks whose ``input_json_delta`` arrive whole or cut mid-token, errors and overload.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.conftest import Gateway, GatewayFactory
from tests.fake_upstream import MODEL, FakeUpstream, Json, Sse

USER = [{"role": "user", "content": "What's the weather in Paris?"}]
CLIENT_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "open_door",
        "description": "Open a door at the client.",
        "parameters": {"type": "object", "properties": {"door": {"type": "string"}}, "required": ["door"]},
    },
}
WEATHER = {"location": "Paris", "unit": "celsius"}
CLAUDE = {"api": "anthropic", "api_key": "sk-ant-secret", "default_max_tokens": 1000}


@pytest.fixture
def claude(make_gateway: GatewayFactory) -> Gateway:
    return make_gateway(upstream_overrides=CLAUDE)


def message(*blocks: dict[str, Any], stop_reason: str = "end_turn", usage: dict[str, int] | None = None) -> Json:
    return Json(
        {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-test",
            "content": list(blocks),
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage or {"input_tokens": 10, "output_tokens": 5},
        }
    )


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool_use(block_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": block_id, "name": name, "input": arguments}


def event(payload: dict[str, Any]) -> bytes:
    return f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n".encode()


def stream(
    before: str,
    calls: list[tuple[str, str, list[str]]],
    stop_reason: str,
    usage: tuple[int, int] = (10, 5),
) -> Sse:
    """A Messages event stream: text (in two deltas), then tool_use blocks with their JSON in the given pieces."""
    items = [
        event(
            {
                "type": "message_start",
                "message": {
                    "id": "msg_s1",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-test",
                    "content": [],
                    "stop_reason": None,
                    "usage": {"input_tokens": usage[0], "output_tokens": 1},
                },
            }
        ),
        event({"type": "ping"}),
    ]
    index = 0
    if before:
        half = len(before) // 2
        items.append(event({"type": "content_block_start", "index": 0, "content_block": text("")}))
        for piece in (before[:half], before[half:]):
            delta = {"type": "text_delta", "text": piece}
            items.append(event({"type": "content_block_delta", "index": 0, "delta": delta}))
        items.append(event({"type": "content_block_stop", "index": 0}))
        index = 1
    for block_id, name, pieces in calls:
        items.append(
            event({"type": "content_block_start", "index": index, "content_block": tool_use(block_id, name, {})})
        )
        for piece in pieces:
            delta = {"type": "input_json_delta", "partial_json": piece}
            items.append(event({"type": "content_block_delta", "index": index, "delta": delta}))
        items.append(event({"type": "content_block_stop", "index": index}))
        index += 1
    items.append(
        event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": usage[1]},
            }
        )
    )
    items.append(event({"type": "message_stop"}))
    return Sse(items, done=False)


def test_a_server_tool_round_runs_in_two_messages_calls(upstream: FakeUpstream, claude: Gateway) -> None:
    upstream.enqueue(
        message(text("Let me check."), tool_use("toolu_01", "get_weather", WEATHER), stop_reason="tool_use"),
        message(text("It is 21 °C."), usage={"input_tokens": 30, "output_tokens": 7}),
    )
    answer = claude.client().chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "It is 21 °C."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (40, 12)
    first, second = upstream.requests[0], upstream.requests[1]
    assert first.path == "/v1/messages"
    assert first.headers["x-api-key"] == "sk-ant-secret" and "authorization" not in first.headers
    assert first.headers["anthropic-version"] == "2023-06-01"
    assert first.body["max_tokens"] == 1000
    assert first.body["messages"] == [{"role": "user", "content": [text(USER[0]["content"])]}]
    weather = next(t for t in first.body["tools"] if t["name"] == "get_weather")
    assert weather["input_schema"]["required"] == ["location"]
    history = second.body["messages"]
    assert [turn["role"] for turn in history] == ["user", "assistant", "user"]
    assert {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": WEATHER} in history[1]["content"]
    result = history[2]["content"][0]
    assert result["type"] == "tool_result" and result["tool_use_id"] == "toolu_01"
    assert json.loads(result["content"])["temperature"] == 21


def test_streamed_parallel_tool_uses_cut_mid_token_run_and_the_answer_streams(
    upstream: FakeUpstream, claude: Gateway
) -> None:
    upstream.enqueue(
        stream(
            "Checking both.",
            [
                ("toolu_a", "get_weather", ['{"locat', 'ion": "Pa', 'ris", "unit": "celsius"}']),
                ("toolu_b", "add", ['{"a": 2, "b": 3}']),
            ],
            "tool_use",
        ),
        stream("Sunny, and 5.", [], "end_turn", usage=(40, 9)),
    )
    chunks = list(
        claude.client().chat.completions.create(
            model=MODEL,
            messages=USER,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "Checking both.Sunny, and 5."
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert not any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and (usage[0].prompt_tokens, usage[0].completion_tokens) == (50, 14)
    turn = upstream.bodies[1]["messages"]
    assert [t["role"] for t in turn] == ["user", "assistant", "user"]
    assert [b["type"] for b in turn[1]["content"]] == ["text", "tool_use", "tool_use"]
    assert turn[1]["content"][1]["input"] == WEATHER
    results = turn[2]["content"]
    assert [(r["type"], r["tool_use_id"]) for r in results] == [("tool_result", "toolu_a"), ("tool_result", "toolu_b")]
    assert json.loads(results[1]["content"]) == 5


def test_a_client_tool_comes_back_exactly_and_its_result_goes_up_as_a_tool_result(
    upstream: FakeUpstream, claude: Gateway
) -> None:
    upstream.enqueue(
        stream("", [("toolu_c", "open_door", ['{"do', 'or": "front"}'])], "tool_use"),
        message(text("The door is open.")),
    )
    client = claude.client()
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=USER, tools=[CLIENT_TOOL], stream=True)  # type: ignore[arg-type]
    )
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert len(calls) == 1 and calls[0].function is not None
    assert calls[0].function.name == "open_door" and json.loads(calls[0].function.arguments or "") == {"door": "front"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    call_id = calls[0].id
    assert call_id
    follow: Any = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": "open_door", "arguments": '{"door": "front"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "opened"},
    ]
    answer = client.chat.completions.create(model=MODEL, messages=follow, tools=[CLIENT_TOOL])
    assert answer.choices[0].message.content == "The door is open."
    turns = upstream.bodies[1]["messages"]
    assert turns[1]["content"] == [{"type": "tool_use", "id": call_id, "name": "open_door", "input": {"door": "front"}}]
    assert turns[2]["content"] == [{"type": "tool_result", "tool_use_id": call_id, "content": "opened"}]


def test_a_failed_server_tool_goes_up_as_an_error_result(upstream: FakeUpstream, claude: Gateway) -> None:
    upstream.enqueue(
        message(tool_use("toolu_f", "fail", {}), stop_reason="tool_use"),
        message(text("It failed.")),
    )
    claude.client().chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
    result = upstream.bodies[1]["messages"][2]["content"][0]
    assert result["tool_use_id"] == "toolu_f" and result["is_error"] is True


def test_overloaded_is_retried_and_an_error_keeps_anthropics_words(upstream: FakeUpstream, claude: Gateway) -> None:
    overloaded = Json({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, status=529)
    upstream.enqueue(overloaded, message(text("Back.")))
    answer = claude.client().chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "Back."
    upstream.enqueue(overloaded, overloaded, overloaded)
    with pytest.raises(openai.APIStatusError) as caught:
        claude.client().chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
    assert caught.value.status_code == 529
    body: Any = caught.value.body
    assert body["message"] == "Overloaded" and body["type"] == "overloaded_error"


def test_an_error_event_mid_stream_ends_the_stream_with_an_error(upstream: FakeUpstream, claude: Gateway) -> None:
    start = stream("Hel", [], "end_turn").items[:5]
    error = event({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    upstream.enqueue(Sse([*start, error], done=False))
    with pytest.raises(openai.APIError) as caught:
        list(claude.client().chat.completions.create(model=MODEL, messages=USER, stream=True))  # type: ignore[arg-type]
    assert "Overloaded" in str(caught.value)


def test_a_field_anthropic_has_no_equivalent_for_is_a_400_naming_it(upstream: FakeUpstream, claude: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        claude.client().chat.completions.create(model=MODEL, messages=USER, seed=7)  # type: ignore[arg-type]
    body: Any = caught.value.body
    assert body["param"] == "seed"
    assert upstream.requests == []


def test_the_responses_api_runs_over_it_unchanged(upstream: FakeUpstream, claude: Gateway) -> None:
    upstream.enqueue(
        message(tool_use("toolu_r", "get_weather", WEATHER), stop_reason="tool_use"),
        message(text("21 °C in Paris.")),
    )
    response = claude.client().responses.create(model=MODEL, input="Weather in Paris?")
    assert [item.type for item in response.output] == ["mcp_call", "message"]
    assert response.output_text == "21 °C in Paris."
    assert upstream.requests[1].body["messages"][2]["content"][0]["tool_use_id"] == "toolu_r"


def test_a_model_pattern_routes_and_lists_only_what_it_matches(
    upstream: FakeUpstream, make_gateway: GatewayFactory
) -> None:
    upstream.models = ["claude-sonnet-9", "claude-haiku-9", "gpt-9"]
    gateway = make_gateway(upstream_overrides={**CLAUDE, "models": ["claude-*"]})
    client = gateway.client()
    assert sorted(m.id for m in client.models.list()) == ["claude-haiku-9", "claude-sonnet-9"]
    upstream.enqueue(message(text("Hi.")))
    assert client.chat.completions.create(model="claude-haiku-9", messages=USER).choices[0].message.content == "Hi."  # type: ignore[arg-type]
    assert upstream.bodies[0]["model"] == "claude-haiku-9"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=USER)  # type: ignore[arg-type]
