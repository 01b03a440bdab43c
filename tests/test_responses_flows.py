"""Responses API flows end to end: every kind of output checked against the SDK's own types,
multi-turn conversations, per-key storage and token limits. Fake upstream and gateway on
loopback, the official openai client (MCP tools: ``test_responses_mcp``; streams: ``test_responses_stream``)."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.conftest import Gateway, GatewayFactory
from tests.fake_upstream import MODEL, FakeUpstream, Json, Sse, chunk, completion
from tests.fake_upstream import call as tool_call
from tests.responses_wire import create, input_items, stream
from tests.test_responses import CLIENT_TOOL, WEATHER

KEYS = {"auth": {"api_keys": [{"name": "alice", "key": "sk-alice-0001"}, {"name": "bob", "key": "sk-bob-00002"}]}}


def with_reasoning(reply: Json, reasoning: str) -> Json:
    reply.body["choices"][0]["message"]["reasoning_content"] = reasoning
    return reply


def messages(upstream: FakeUpstream, index: int = -1) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = upstream.bodies[index]["messages"]
    return sent


# -- each kind of output, as the SDK's types have it ----------------------------------------------


def test_text_answer_is_a_valid_response(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion("Hello there."))
    response = create(gateway.client(), model=MODEL, input="Say hello.", instructions="Be brief.")
    assert response.status == "completed" and response.error is None
    assert [item.type for item in response.output] == ["message"]
    assert response.output_text == "Hello there."
    assert response.instructions == "Be brief." and response.model == MODEL


def test_reasoning_content_becomes_a_reasoning_item_before_the_message(
    upstream: FakeUpstream, gateway: Gateway
) -> None:
    upstream.enqueue(with_reasoning(completion("42."), "Six times seven."))
    client = gateway.client()
    response = create(client, model=MODEL, input="What is six times seven?")
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and message.type == "message"
    assert [part.text for part in reasoning.content or []] == ["Six times seven."]
    assert response.output_text == "42."
    # Chat servers take no reasoning back: the next turn's history holds the answer only.
    upstream.enqueue(completion("Yes."))
    create(client, model=MODEL, input="Sure?", previous_response_id=response.id)
    assert messages(upstream) == [
        {"role": "user", "content": "What is six times seven?"},
        {"role": "assistant", "content": "42."},
        {"role": "user", "content": "Sure?"},
    ]


def test_server_tool_round_is_a_valid_mcp_call(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion(None, [tool_call("get_weather", WEATHER, "call_w")]), completion("It is 21 °C."))
    response = create(gateway.client(), model=MODEL, input="Weather in Paris?")
    mcp_call, message = response.output
    assert mcp_call.type == "mcp_call" and message.type == "message"
    assert (mcp_call.server_label, mcp_call.name, mcp_call.status) == ("gateway", "get_weather", "completed")
    assert json.loads(mcp_call.arguments) == WEATHER
    assert json.loads(mcp_call.output or "") == {"location": "Paris", "temperature": 21, "unit": "celsius"}
    assert mcp_call.error is None
    assert messages(upstream)[-1] == {"role": "tool", "tool_call_id": "call_w", "content": mcp_call.output}


def test_failing_server_tool_is_a_failed_mcp_call_the_model_reads(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion(None, [tool_call("fail", {"reason": "no"}, "call_f")]), completion("It failed."))
    response = create(gateway.client(), model=MODEL, input="Try it.")
    failed, message = response.output
    assert failed.type == "mcp_call" and failed.status == "failed" and failed.output is None
    assert failed.error is not None and failed.error.type == "mcp_tool_execution_error"
    assert "tool exploded: no" in json.dumps(failed.error.model_dump())
    assert "tool exploded: no" in messages(upstream)[-1]["content"]
    assert message.type == "message" and response.status == "completed"


def test_client_function_call_is_a_valid_function_call_item(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion("Opening.", [tool_call("open_door", {"door": "front"}, "call_d")]))
    response = create(gateway.client(), model=MODEL, input="Open the door.", tools=[CLIENT_TOOL])
    message, function_call = response.output
    assert message.type == "message" and response.output_text == "Opening."
    assert function_call.type == "function_call" and function_call.status == "completed"
    assert function_call.name == "open_door" and json.loads(function_call.arguments) == {"door": "front"}
    assert response.tools[0].type == "function"


# -- conversations -----------------------------------------------------------------------------


def test_three_turns_send_the_whole_history_with_only_the_current_instructions(
    upstream: FakeUpstream, gateway: Gateway
) -> None:
    client = gateway.client()
    upstream.enqueue(completion("Hello Ada."))
    first = create(client, model=MODEL, input="Hi, I am Ada.", instructions="Be brief.")
    upstream.enqueue(completion(None, [tool_call("get_weather", WEATHER, "call_w")]), completion("It is 21 °C."))
    second = create(
        client, model=MODEL, input="Weather in Paris?", instructions="Be helpful.", previous_response_id=first.id
    )
    upstream.enqueue(completion("Ada."))
    third = create(
        client, model=MODEL, input="And my name?", instructions="Answer in French.", previous_response_id=second.id
    )
    assert third.output_text == "Ada." and third.previous_response_id == second.id
    assert messages(upstream, 1)[0] == {"role": "system", "content": "Be helpful."}
    weather = second.output[0]
    assert weather.type == "mcp_call"
    assert messages(upstream) == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hi, I am Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": weather.id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": weather.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": weather.id, "content": weather.output},
        {"role": "assistant", "content": "It is 21 °C."},
        {"role": "user", "content": "And my name?"},
    ]
    items = input_items(client, third.id, order="asc")
    assert [(item.type, getattr(item, "role", None)) for item in items.data] == [("message", "user")]
    assert client.responses.retrieve(second.id) == second


def test_a_turn_of_server_and_client_calls_continues_with_each_result_once(
    upstream: FakeUpstream, gateway: Gateway
) -> None:
    client = gateway.client()
    calls = [tool_call("get_weather", WEATHER, "call_0"), tool_call("open_door", {"door": "front"}, "call_1")]
    upstream.enqueue(completion(None, calls))
    first = create(client, model=MODEL, input="Check the weather, then open the door.", tools=[CLIENT_TOOL])
    weather, door = first.output
    assert weather.type == "mcp_call" and weather.status == "completed"
    assert door.type == "function_call" and door.name == "open_door"
    upstream.enqueue(completion("Done."))
    output = {"type": "function_call_output", "call_id": door.call_id, "output": "opened"}
    follow = create(client, model=MODEL, previous_response_id=first.id, input=[output], tools=[CLIENT_TOOL])
    assert follow.output_text == "Done."
    assert messages(upstream) == [
        {"role": "user", "content": "Check the weather, then open the door."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": weather.id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": weather.arguments},
                },
                {
                    "id": door.call_id,
                    "type": "function",
                    "function": {"name": "open_door", "arguments": door.arguments},
                },
            ],
        },
        {"role": "tool", "tool_call_id": weather.id, "content": weather.output},
        {"role": "tool", "tool_call_id": door.call_id, "content": "opened"},
    ]


def test_a_failed_server_call_reads_the_same_to_the_model_on_later_turns(
    upstream: FakeUpstream, gateway: Gateway
) -> None:
    client = gateway.client()
    upstream.enqueue(completion(None, [tool_call("fail", {"reason": "no"}, "call_f")]), completion("It failed."))
    first = create(client, model=MODEL, input="Try it.")
    upstream.enqueue(completion("Still failed."))
    create(client, model=MODEL, input="Why?", previous_response_id=first.id)
    [live] = [m for m in messages(upstream, 1) if m["role"] == "tool"]
    [replayed] = [m for m in messages(upstream, 2) if m["role"] == "tool"]
    assert replayed["content"] == live["content"]
    assert json.loads(live["content"])["error"] == "RuntimeError: tool exploded: no"


def test_an_unstored_response_can_be_neither_retrieved_nor_continued(upstream: FakeUpstream, gateway: Gateway) -> None:
    client = gateway.client()
    upstream.enqueue(completion("Not kept."))
    response = create(client, model=MODEL, input="Forget this.", store=False)
    assert response.output_text == "Not kept."
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model=MODEL, input="And then?", previous_response_id=response.id)
    error: Any = caught.value.body
    assert error["param"] == "previous_response_id"
    assert len(upstream.bodies) == 1


def test_another_keys_response_is_not_found_anywhere(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(KEYS)
    alice, bob = gateway.client("sk-alice-0001"), gateway.client("sk-bob-00002")
    upstream.enqueue(completion("Alice's secret."))
    response = create(alice, model=MODEL, input="Keep my secret.")
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.input_items.list(response.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.create(model=MODEL, input="What was it?", previous_response_id=response.id)
    assert len(upstream.bodies) == 1, "bob's continuation reached the upstream"
    assert alice.responses.retrieve(response.id).output_text == "Alice's secret."


# -- token limits ------------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "stream"])
def test_length_finish_is_incomplete_for_max_output_tokens(
    upstream: FakeUpstream, gateway: Gateway, streamed: bool
) -> None:
    if streamed:
        upstream.enqueue(Sse([chunk({"role": "assistant", "content": "Once upon"}), chunk({}, "length")]))
        run = stream(gateway.client(), model=MODEL, input="Tell a story.", max_output_tokens=5)
        assert run.types[-1] == "response.incomplete"
        response = run.final
    else:
        upstream.enqueue(completion("Once upon", finish_reason="length"))
        response = create(gateway.client(), model=MODEL, input="Tell a story.", max_output_tokens=5)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.max_output_tokens == 5 and response.output_text == "Once upon"
    assert response.output[0].type == "message" and response.output[0].status == "incomplete"
    assert upstream.bodies[0]["max_tokens"] == 5 and "max_output_tokens" not in upstream.bodies[0]


def test_an_integer_past_64_bits_in_a_tool_schema_is_stored_and_echoed_exactly(
    upstream: FakeUpstream, gateway: Gateway
) -> None:
    huge = 123456789012345678901234567890
    schema = f'{{"type": "object", "properties": {{"n": {{"type": "integer", "maximum": {huge}}}}}}}'
    body = (
        f'{{"model": "{MODEL}", "input": "hi", "tools": [{{"type": "function", "name": "f", "parameters": {schema}}}]}}'
    )
    upstream.enqueue(completion("ok"))
    with gateway.http() as http:
        created = http.post("/v1/responses", content=body, headers={"content-type": "application/json"})
        assert created.status_code == 200, created.text
        stored = http.get(f"/v1/responses/{created.json()['id']}")
    assert stored.status_code == 200
    assert f'"maximum":{huge}' in stored.text.replace(" ", "")
