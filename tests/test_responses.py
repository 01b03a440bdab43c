"""The Responses API over the tool loop: fake upstream, real gateway, the official openai SDK as client."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.conftest import Gateway
from tests.fake_upstream import MODEL, FakeUpstream, Sse, call, chunk, completion

WEATHER = {"location": "Paris", "unit": "celsius"}
CLIENT_TOOL = {
    "type": "function",
    "name": "open_door",
    "description": "Open a door at the client.",
    "parameters": {"type": "object", "properties": {"door": {"type": "string"}}, "required": ["door"]},
}


def test_text_answer(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion("Hello there."))
    response = gateway.client().responses.create(model=MODEL, input="Say hello.", instructions="Be brief.")
    assert response.status == "completed"
    assert response.output_text == "Hello there."
    assert response.id.startswith("resp_")
    assert response.usage is not None and response.usage.total_tokens == 15
    sent = upstream.bodies[0]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello."},
    ]


def test_server_tool_round_is_an_mcp_call_item(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(
        completion(None, [call("get_weather", WEATHER, "call_1")]),
        completion("It is 21 °C."),
    )
    response = gateway.client().responses.create(model=MODEL, input="Weather in Paris?")
    kinds = [item.type for item in response.output]
    assert kinds == ["mcp_call", "message"]
    mcp_call = response.output[0]
    assert mcp_call.type == "mcp_call"
    assert mcp_call.server_label == "gateway" and mcp_call.name == "get_weather"
    assert json.loads(mcp_call.output or "")["temperature"] == 21
    assert response.output_text == "It is 21 °C."
    assert response.usage is not None and response.usage.input_tokens == 20


def test_client_function_call_ends_the_response(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion(None, [call("open_door", {"door": "front"}, "call_9")]))
    client = gateway.client()
    response = client.responses.create(model=MODEL, input="Open the front door.", tools=[CLIENT_TOOL])  # type: ignore[list-item]
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "open_door"
    assert json.loads(calls[0].arguments) == {"door": "front"}
    upstream.enqueue(completion("The door is open."))
    follow = client.responses.create(
        model=MODEL,
        previous_response_id=response.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "opened"}],
        tools=[CLIENT_TOOL],  # type: ignore[list-item]
    )
    assert follow.output_text == "The door is open."
    messages = upstream.bodies[1]["messages"]
    assert messages[0] == {"role": "user", "content": "Open the front door."}
    assert messages[1]["tool_calls"][0]["id"] == calls[0].call_id
    assert messages[2] == {"role": "tool", "tool_call_id": calls[0].call_id, "content": "opened"}


def test_stream_events_in_order(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(
        Sse(
            [
                chunk({"role": "assistant", "content": ""}),
                chunk({"content": "Hel"}),
                chunk({"content": "lo"}),
                chunk({}, "stop"),
            ]
        )
    )
    with gateway.client().responses.stream(model=MODEL, input="Say hello.") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == ["Hel", "lo"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output_text == "Hello"


def test_retrieve_delete_and_input_items(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion("Hi."))
    client = gateway.client()
    response = client.responses.create(model=MODEL, input="Hi?")
    assert client.responses.retrieve(response.id).output_text == "Hi."
    items = client.responses.input_items.list(response.id)
    assert [item.type for item in items.data] == ["message"]
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_unknown_parameter_is_400(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().responses.create(model=MODEL, input="x", extra_body={"frobnicate": 1})
    error: Any = caught.value.body
    assert error["param"] == "frobnicate"
