"""The tool loop against a real model: server tools, a forced client tool, a mixed turn, a truncated call.

The model is tiny, so these check the protocol and what the gateway did, never the quality of an answer.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from e2e import conversations
from e2e.conftest import GatewayProcess
from e2e.streams import assert_one_stream, collect

FORCE_LOOKUP: Any = {"type": "function", "function": {"name": "lookup_order"}}
TRACE = {"x-gateway-trace": "1"}


def _tool_runs(gateway: GatewayProcess, tool: str) -> float:
    """Calls of a server tool the gateway has run so far, whatever their outcome."""
    return sum(
        value
        for (name, labels), value in gateway.metrics().items()
        if name == "gateway_tool_calls_total" and ("gen_ai_tool_name", tool) in labels
    )


def _counter(gateway: GatewayProcess, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for (sample, have), value in gateway.metrics().items() if sample == name and wanted <= have)


# --- server tools only, tool_choice "required" -----------------------------------------------------------------


def test_required_runs_server_tools_and_answers(client: openai.OpenAI, model: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=conversations.calculation("1234 + 4321"),
        tool_choice="required",
        max_tokens=64,
        extra_headers=TRACE,
    )
    completion = raw.parse()
    assert raw.http_response.status_code == 200
    assert int(raw.headers["x-gateway-tool-rounds"]) >= 1
    choice = completion.choices[0]
    # Only server tools were offered, so every call ran in the gateway and none reaches the client.
    assert not choice.message.tool_calls
    assert choice.finish_reason in {"stop", "length"}
    trace = (completion.model_extra or {})["x_gateway"]
    assert trace["rounds"] >= 1
    names = [call["name"] for call in trace["tool_calls"]]
    assert "calculate" in names, trace
    for call in trace["tool_calls"]:
        assert call["outcome"] in {"ok", "error", "invalid_arguments", "unknown_tool", "timeout"}
    assert completion.usage is not None and completion.usage.prompt_tokens > 0


def test_required_runs_server_tools_and_answers_streamed(
    client: openai.OpenAI, model: str, gateway: GatewayProcess
) -> None:
    before = _tool_runs(gateway, "calculate")
    stream = client.chat.completions.create(
        model=model,
        messages=conversations.calculation("1234 + 4321"),
        tool_choice="required",
        max_tokens=64,
        stream=True,
        stream_options={"include_usage": True},
    )
    collected = collect(stream)
    assert_one_stream(collected, model)
    assert collected.tool_call_deltas == []
    assert collected.finish_reasons[0] in {"stop", "length"}
    assert _tool_runs(gateway, "calculate") >= before + 1


# --- a client tool forced by name ------------------------------------------------------------------------------


def _follow_up(messages: list[dict[str, Any]], calls: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """The history with the client's assistant turn and one result per call."""
    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            for call_id, name, arguments in calls
        ],
    }
    results = [
        {"role": "tool", "tool_call_id": call_id, "content": '{"status": "in transit"}'} for call_id, _, _ in calls
    ]
    return [*messages, assistant, *results]


def test_forced_client_tool_comes_back_to_the_client(client: openai.OpenAI, model: str) -> None:
    messages = conversations.order("B42")
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=messages,
        tools=[conversations.LOOKUP_ORDER],
        tool_choice=FORCE_LOOKUP,
        max_tokens=64,
    )
    completion = raw.parse()
    assert raw.headers["x-gateway-tool-rounds"] == "0"
    choice = completion.choices[0]
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id
    assert call.function.name == "lookup_order"
    assert isinstance(json.loads(call.function.arguments), dict)

    follow_up = client.chat.completions.create(
        model=model,
        messages=_follow_up(messages, [(call.id, call.function.name, call.function.arguments)]),
        tools=[conversations.LOOKUP_ORDER],
        max_tokens=64,
    )
    answer = follow_up.choices[0]
    assert answer.message.role == "assistant"
    assert answer.finish_reason in {"stop", "length", "tool_calls"}
    assert answer.message.content or answer.message.tool_calls


def test_forced_client_tool_comes_back_to_the_client_streamed(client: openai.OpenAI, model: str) -> None:
    messages = conversations.order("B42")
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        tools=[conversations.LOOKUP_ORDER],
        tool_choice=FORCE_LOOKUP,
        max_tokens=64,
        stream=True,
        stream_options={"include_usage": True},
    )
    collected = collect(stream)
    assert_one_stream(collected, model)
    assert collected.finish_reasons == ["tool_calls"]
    assert {delta["index"] for delta in collected.tool_call_deltas} == {0}
    [call] = collected.tool_calls
    assert call.first.get("id") and call.first.get("type") == "function"
    assert call.first["function"]["name"] == "lookup_order"
    assert call.name == "lookup_order"
    assert isinstance(call.parsed_arguments(), dict)

    assert call.id is not None
    follow_up = collect(
        client.chat.completions.create(
            model=model,
            messages=_follow_up(messages, [(call.id, call.name, call.arguments)]),
            tools=[conversations.LOOKUP_ORDER],
            max_tokens=64,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert_one_stream(follow_up, model)
    assert follow_up.content or follow_up.tool_calls


# --- a mixed turn: server and client calls in one message ------------------------------------------------------


def _mixed_turn(client: openai.OpenAI, model: str, gateway: GatewayProcess, *, stream: bool) -> None:
    messages = conversations.mixed("6 * 7", "C3")
    stored_before = _counter(gateway, "gateway_continuations_total", event="stored")
    resumed_before = _counter(gateway, "gateway_continuations_total", event="resumed")
    request: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "tools": [conversations.LOOKUP_ORDER],
        "parallel_tool_calls": True,
        "max_tokens": 96,
    }
    if stream:
        collected = collect(
            client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
        )
        assert_one_stream(collected, model)
        calls = [(c.id or "", c.name, c.arguments) for c in collected.tool_calls]
        indexes = [c.index for c in collected.tool_calls]
        finish = collected.finish_reasons[0]
    else:
        completion = client.chat.completions.create(**request)
        message = completion.choices[0].message
        calls = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []]
        indexes = list(range(len(calls)))
        finish = completion.choices[0].finish_reason
    if _counter(gateway, "gateway_continuations_total", event="stored") == stored_before:
        pytest.skip(f"the model did not call a server and a client tool in one message (calls: {calls})")
    # The client sees only its own calls, re-indexed from 0, and is asked for their results.
    assert calls and {name for _, name, _ in calls} == {"lookup_order"}
    assert indexes == list(range(len(calls)))
    assert finish == "tool_calls"
    for _, _, arguments in calls:
        assert isinstance(json.loads(arguments), dict)

    follow_up = client.chat.completions.create(
        model=model,
        messages=_follow_up(messages, calls),
        tools=[conversations.LOOKUP_ORDER],
        max_tokens=64,
    )
    assert follow_up.choices[0].message.role == "assistant"
    # The hidden half (the server call and its result) was spliced back in.
    assert _counter(gateway, "gateway_continuations_total", event="resumed") == resumed_before + 1


def test_mixed_turn(client: openai.OpenAI, model: str, gateway: GatewayProcess) -> None:
    _mixed_turn(client, model, gateway, stream=False)


def test_mixed_turn_streamed(client: openai.OpenAI, model: str, gateway: GatewayProcess) -> None:
    _mixed_turn(client, model, gateway, stream=True)


# --- a round cut off by max_tokens -----------------------------------------------------------------------------


def test_truncated_tool_call_does_not_run(client: openai.OpenAI, model: str, gateway: GatewayProcess) -> None:
    before = _tool_runs(gateway, "calculate")
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=conversations.calculation("1234 + 4321"),
        tool_choice="required",
        # Enough to start the call, not to finish its arguments.
        max_tokens=12,
    )
    completion = raw.parse()
    assert raw.http_response.status_code == 200
    assert completion.choices[0].finish_reason == "length"
    assert raw.headers["x-gateway-tool-rounds"] == "0"
    assert _tool_runs(gateway, "calculate") == before


def test_truncated_tool_call_does_not_run_streamed(client: openai.OpenAI, model: str, gateway: GatewayProcess) -> None:
    before = _tool_runs(gateway, "calculate")
    collected = collect(
        client.chat.completions.create(
            model=model,
            messages=conversations.calculation("1234 + 4321"),
            tool_choice="required",
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert_one_stream(collected, model)
    assert collected.finish_reasons == ["length"]
    assert _tool_runs(gateway, "calculate") == before
