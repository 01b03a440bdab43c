"""The Responses API against a real model: server tools as ``mcp_call`` items, the event stream, a client call
answered with ``previous_response_id``. The model is tiny: these check the protocol, never an answer's quality."""

from __future__ import annotations

import json
from typing import Any

import openai
from openai.types.responses import Response

from e2e import conversations

ENDED = {"completed", "incomplete"}


def test_server_tool_calls_come_back_as_mcp_call_items(client: openai.OpenAI, model: str) -> None:
    items: Any = conversations.as_response_items(conversations.calculation("1234 + 4321"))
    response = client.responses.create(
        model=model,
        input=items,
        tool_choice="required",
        max_output_tokens=64,
    )
    Response.model_validate(response.model_dump())
    assert response.status in ENDED
    calls = [item for item in response.output if item.type == "mcp_call"]
    assert calls, [item.type for item in response.output]
    assert {(call.server_label, call.name) for call in calls} >= {("gateway", "calculate")}
    for call in calls:
        json.loads(call.arguments)  # the gateway sends valid JSON back upstream, and shows it here
        assert (call.output is None) != (call.error is None)
    assert response.usage is not None and response.usage.input_tokens > 0
    assert client.responses.retrieve(response.id).output == response.output


def test_stream_is_one_ordered_event_sequence(client: openai.OpenAI, model: str) -> None:
    kinds: list[str] = []
    numbers: list[int] = []
    deltas: list[str] = []
    with client.responses.stream(
        model=model, input="Say hello in three words.", max_output_tokens=24, tool_choice="none"
    ) as stream:
        for event in stream:
            kinds.append(event.type)
            numbers.append(event.sequence_number)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in {"response.completed", "response.incomplete"}
    assert numbers == list(range(len(numbers)))
    assert deltas and "".join(deltas) == final.output_text
    assert final.status in ENDED


def test_client_call_and_its_output_continue_the_conversation(client: openai.OpenAI, model: str) -> None:
    tool: Any = conversations.flat_tool(conversations.LOOKUP_ORDER)
    items: Any = conversations.as_response_items(conversations.order("B5"))
    first = client.responses.create(
        model=model,
        input=items,
        tools=[tool],
        tool_choice={"type": "function", "name": "lookup_order"},
        max_output_tokens=64,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and calls[0].name == "lookup_order", first.output
    follow = client.responses.create(
        model=model,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"status": "shipped"}'}],
        tools=[tool],
        tool_choice="none",
        max_output_tokens=32,
    )
    assert follow.status in ENDED
    assert follow.previous_response_id == first.id
    assert follow.output and follow.output[-1].type == "message"
