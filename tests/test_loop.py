"""The non-streaming tool loop, end to end: fake upstream, real gateway, real openai client."""

from __future__ import annotations

import json
import threading
from typing import Any

import openai
import pytest

from tests.conftest import Gateway, GatewayFactory
from tests.fake_upstream import MODEL, FakeUpstream, Json, call, completion

USER = [{"role": "user", "content": "What's the weather in Paris?"}]
CLIENT_TOOL = {
    "type": "function",
    "function": {
        "name": "open_door",
        "description": "Open a door at the client.",
        "parameters": {"type": "object", "properties": {"door": {"type": "string"}}, "required": ["door"]},
    },
}


def _tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body["messages"] if m["role"] == "tool"]


def test_server_tools_are_offered_after_client_tools(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion("hi"))
    gateway.client().chat.completions.create(model=MODEL, messages=USER, tools=[CLIENT_TOOL])  # type: ignore[list-item]
    names = [t["function"]["name"] for t in upstream.bodies[0]["tools"]]
    assert names[0] == "open_door"
    assert {"add", "get_weather", "fail", "slow"} <= set(names[1:])
    weather = next(t for t in upstream.bodies[0]["tools"] if t["function"]["name"] == "get_weather")
    assert weather["function"]["parameters"]["required"] == ["location"]
    assert weather["function"]["parameters"]["properties"]["unit"]["enum"] == ["celsius", "fahrenheit"]


def test_single_server_call_runs_and_loops(upstream: FakeUpstream, gateway: Gateway) -> None:
    assistant_call = call("get_weather", {"location": "Paris", "unit": "celsius"}, "call_1")
    upstream.enqueue(
        completion(None, [assistant_call], usage={"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}),
        completion("It is 21 °C.", usage={"prompt_tokens": 30, "completion_tokens": 6, "total_tokens": 36}),
    )
    raw = gateway.client().chat.completions.with_raw_response.create(model=MODEL, messages=USER)
    answer = raw.parse()
    assert answer.choices[0].message.content == "It is 21 °C."
    assert answer.choices[0].message.tool_calls is None
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (40, 10, 50)
    assert raw.headers["x-gateway-tool-rounds"] == "1"
    second = upstream.bodies[1]["messages"]
    assert second[:-2] == USER
    assert second[-2] == {"role": "assistant", "content": None, "tool_calls": [assistant_call]}
    assert second[-1]["role"] == "tool" and second[-1]["tool_call_id"] == "call_1"
    assert json.loads(second[-1]["content"]) == {"location": "Paris", "temperature": 21, "unit": "celsius"}


def test_parallel_calls_keep_order_and_ids(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(
        completion(
            "",
            [
                call("slow", {"seconds": 0.1}, "c_slow"),
                call("add", {"a": 2, "b": 3}, "c_add"),
                call("get_weather", {"location": "Oslo"}, "c_weather"),
            ],
        ),
        completion("done"),
    )
    gateway.client().chat.completions.create(model=MODEL, messages=USER)
    tools = _tool_messages(upstream.bodies[1])
    assert [m["tool_call_id"] for m in tools] == ["c_slow", "c_add", "c_weather"]
    assert [m["content"] for m in tools[:2]] == ["done waiting", "5"]


def test_two_sequential_rounds(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(
        completion(None, [call("add", {"a": 1, "b": 2}, "r1")]),
        completion(None, [call("add", {"a": 3, "b": 4}, "r2")]),
        completion("3 then 7"),
    )
    raw = gateway.client().chat.completions.with_raw_response.create(model=MODEL, messages=USER)
    assert raw.parse().choices[0].message.content == "3 then 7"
    assert raw.headers["x-gateway-tool-rounds"] == "2"
    assert len(upstream.bodies) == 3
    assert [m["content"] for m in _tool_messages(upstream.bodies[2])] == ["3", "7"]


@pytest.mark.parametrize(
    ("tool_call", "kind", "fragment"),
    [
        (call("add", '{"a": 1, "b": ', "e1"), "invalid_arguments", "not valid JSON"),
        (call("add", {"a": "one", "b": 2}, "e2"), "invalid_arguments", "a:"),
        (call("add", {"a": 1}, "e3"), "invalid_arguments", "b: Field required"),
        (call("add", "[1, 2]", "e4"), "invalid_arguments", "JSON object"),
        (call("no_such_tool", {}, "e5"), "unknown_tool", "Unknown tool"),
        (call("fail", {"reason": "boom"}, "e6"), "error", "tool exploded: boom"),
        (call("slow", {"seconds": 5}, "e7"), "timeout", "did not finish"),
    ],
)
def test_tool_errors_are_fed_back_to_the_model(
    upstream: FakeUpstream, gateway: Gateway, tool_call: dict[str, Any], kind: str, fragment: str
) -> None:
    upstream.enqueue(completion(None, [tool_call]), completion("sorry"))
    answer = gateway.client().chat.completions.create(model=MODEL, messages=USER)
    assert answer.choices[0].message.content == "sorry"
    [message] = _tool_messages(upstream.bodies[1])
    error = json.loads(message["content"])
    assert error["type"] == kind
    assert fragment in error["error"]
    assert "Traceback" not in message["content"]


def test_empty_arguments_mean_no_parameters(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion(None, [call("whoami", "", "w1")]), completion("ok"))
    gateway.client(api_key="anything").chat.completions.create(
        model=MODEL, messages=USER, extra_headers={"x-request-id": "rid-7"}
    )
    [message] = _tool_messages(upstream.bodies[1])
    assert json.loads(message["content"]) == {"request_id": "rid-7", "key_name": None}


def test_slow_tool_times_out_while_sibling_succeeds(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(
        completion(None, [call("slow", {"seconds": 10}, "s1"), call("add", {"a": 1, "b": 1}, "s2")]),
        completion("partial"),
    )
    gateway.client().chat.completions.create(model=MODEL, messages=USER)
    slow, fast = _tool_messages(upstream.bodies[1])
    assert json.loads(slow["content"])["type"] == "timeout"
    assert fast["content"] == "2"


def test_long_output_is_truncated_with_note(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"loop": {"max_result_chars": 1000}})
    upstream.enqueue(completion(None, [call("big_output", {"size": 5000}, "b1")]), completion("ok"))
    gateway.client().chat.completions.create(model=MODEL, messages=USER)
    [message] = _tool_messages(upstream.bodies[1])
    assert message["content"].startswith("x" * 1000)
    assert "truncated: 4000 more characters" in message["content"]


def test_max_rounds_forces_a_final_answer(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"loop": {"max_rounds": 2}})
    upstream.enqueue(
        completion(None, [call("add", {"a": 1, "b": 1}, "m1")]),
        completion(None, [call("add", {"a": 2, "b": 2}, "m2")]),
        completion("giving up with what I have"),
    )
    raw = gateway.client().chat.completions.with_raw_response.create(model=MODEL, messages=USER)
    assert raw.parse().choices[0].message.content == "giving up with what I have"
    assert raw.headers["x-gateway-max-rounds-reached"] == "true"
    assert raw.headers["x-gateway-tool-rounds"] == "2"
    assert upstream.bodies[2]["tool_choice"] == "none"
    assert "tool_choice" not in upstream.bodies[0]


def test_tool_call_cap_per_request(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"loop": {"max_tool_calls": 2}})
    upstream.enqueue(
        completion(None, [call("add", {"a": i, "b": 0}, f"cap{i}") for i in range(3)]),
        completion("capped"),
    )
    gateway.client().chat.completions.create(model=MODEL, messages=USER)
    contents = [m["content"] for m in _tool_messages(upstream.bodies[1])]
    assert contents[:2] == ["0", "1"]
    assert json.loads(contents[2])["type"] == "limit"
    assert upstream.bodies[1]["tool_choice"] == "none"


def test_tool_choice_none_runs_no_server_tools(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion("plain"))
    gateway.client().chat.completions.create(
        model=MODEL,
        messages=USER,
        tools=[CLIENT_TOOL],
        tool_choice="none",  # type: ignore[list-item]
    )
    assert [t["function"]["name"] for t in upstream.bodies[0]["tools"]] == ["open_door"]
    assert upstream.bodies[0]["tool_choice"] == "none"


def test_required_applies_to_first_round_only(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion(None, [call("add", {"a": 1, "b": 1}, "q1")]), completion("two"))
    gateway.client().chat.completions.create(model=MODEL, messages=USER, tool_choice="required")
    assert upstream.bodies[0]["tool_choice"] == "required"
    assert upstream.bodies[1]["tool_choice"] == "auto"


def test_forced_server_function_applies_to_first_round_only(upstream: FakeUpstream, gateway: Gateway) -> None:
    forced = {"type": "function", "function": {"name": "add"}}
    # OpenAI reports finish_reason "stop" for a named tool_choice: the calls decide, not the reason.
    upstream.enqueue(completion(None, [call("add", {"a": 1, "b": 1}, "f1")], "stop"), completion("two"))
    answer = gateway.client().chat.completions.create(model=MODEL, messages=USER, tool_choice=forced)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "two"
    assert upstream.bodies[0]["tool_choice"] == forced
    assert upstream.bodies[1]["tool_choice"] == "auto"


def test_forced_client_function_passes_through(upstream: FakeUpstream, gateway: Gateway) -> None:
    forced = {"type": "function", "function": {"name": "open_door"}}
    upstream.enqueue(completion(None, [call("open_door", {"door": "front"}, "d1")], "stop"))
    answer = gateway.client().chat.completions.create(
        model=MODEL,
        messages=USER,
        tools=[CLIENT_TOOL],
        tool_choice=forced,  # type: ignore[list-item, arg-type]
    )
    assert upstream.bodies[0]["tool_choice"] == forced
    calls = answer.choices[0].message.tool_calls
    assert calls is not None and calls[0].id == "d1" and calls[0].function.name == "open_door"  # type: ignore[union-attr]
    assert answer.choices[0].finish_reason == "tool_calls"
    assert len(upstream.bodies) == 1


def test_client_tool_name_conflict_is_400(upstream: FakeUpstream, gateway: Gateway) -> None:
    clash = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as raised:
        gateway.client().chat.completions.create(model=MODEL, messages=USER, tools=[clash])  # type: ignore[list-item]
    assert raised.value.code == "tool_name_conflict"
    assert upstream.requests == []


def test_mixed_turn_returns_client_calls_and_splices_follow_up(upstream: FakeUpstream, gateway: Gateway) -> None:
    server_call = call("get_weather", {"location": "Rome"}, "srv_1")
    client_call = call("open_door", {"door": "back"}, "cli_1")
    upstream.enqueue(completion("Checking.", [server_call, client_call]))
    client = gateway.client()
    first = client.chat.completions.create(model=MODEL, messages=USER, tools=[CLIENT_TOOL])  # type: ignore[list-item]
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    [returned] = message.tool_calls or []
    # The client sees an id minted by the gateway, not the upstream's reusable one.
    assert returned.id != "cli_1" and returned.id.isalnum() and len(returned.id) == 9
    assert (returned.function.name, returned.function.arguments) == ("open_door", client_call["function"]["arguments"])
    assert message.content == "Checking."
    assert len(upstream.bodies) == 1

    upstream.enqueue(completion("Door open, Rome is warm."))
    follow_up = [
        *USER,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": returned.id, "content": "opened"},
    ]
    final = client.chat.completions.create(model=MODEL, messages=follow_up, tools=[CLIENT_TOOL])  # type: ignore[arg-type, list-item]
    assert final.choices[0].message.content == "Door open, Rome is warm."
    sent = upstream.bodies[1]["messages"]
    assert sent[1]["tool_calls"] == [server_call, {**client_call, "id": returned.id}]
    assert sent[2]["role"] == "tool" and sent[2]["tool_call_id"] == "srv_1"
    assert json.loads(sent[2]["content"])["location"] == "Rome"
    assert sent[3] == {"role": "tool", "tool_call_id": returned.id, "content": "opened"}


def test_trace_extension_on_opt_in(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion(None, [call("add", {"a": 2, "b": 2}, "t1")]), completion("4"))
    answer = gateway.client().chat.completions.create(
        model=MODEL, messages=USER, extra_headers={"x-gateway-trace": "true"}
    )
    extension = (answer.model_extra or {})["x_gateway"]
    assert extension["rounds"] == 1
    [entry] = extension["tool_calls"]
    assert (entry["name"], entry["arguments"], entry["result"], entry["outcome"]) == ("add", '{"a":2,"b":2}', "4", "ok")
    assert entry["duration_ms"] >= 0


def test_no_trace_without_opt_in(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion(None, [call("add", {"a": 2, "b": 2}, "t1")]), completion("4"))
    answer = gateway.client().chat.completions.create(model=MODEL, messages=USER)
    assert "x_gateway" not in (answer.model_extra or {})


def test_missing_call_ids_are_generated_and_sent_back(upstream: FakeUpstream, gateway: Gateway) -> None:
    no_id = {"type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
    upstream.enqueue(completion(None, [no_id]), completion("3"))
    gateway.client().chat.completions.create(model=MODEL, messages=USER)
    history = upstream.bodies[1]["messages"]
    generated = history[-2]["tool_calls"][0]["id"]
    assert generated.isalnum() and len(generated) == 9
    assert history[-1]["tool_call_id"] == generated


def test_retry_repeats_only_the_failed_upstream_call(upstream: FakeUpstream, gateway: Gateway) -> None:
    runs = gateway.tool_state()["RUNS"]
    runs_before = runs.count("add")
    upstream.enqueue(
        completion(None, [call("add", {"a": 1, "b": 1}, "once")]),
        Json({"error": {"message": "busy"}}, status=503),
        completion("two"),
    )
    answer = gateway.client().chat.completions.create(model=MODEL, messages=USER)
    assert answer.choices[0].message.content == "two"
    assert runs.count("add") == runs_before + 1
    assert len(upstream.bodies) == 3
    assert upstream.bodies[1] == upstream.bodies[2]


def test_sync_tool_does_not_block_other_requests(upstream: FakeUpstream, gateway: Gateway) -> None:
    state = gateway.tool_state()
    upstream.enqueue(
        completion(None, [call("blocking_wait", {}, "z1")]),
        completion("served while the tool blocked"),
        completion("tool finished"),
    )
    client = gateway.client(timeout=5)
    blocked: list[Any] = []
    worker = threading.Thread(target=lambda: blocked.append(client.chat.completions.create(model=MODEL, messages=USER)))
    worker.start()
    try:
        assert state["SYNC_STARTED"].wait(5)
        # The sync tool now holds its thread; the event loop must still serve others.
        other = client.chat.completions.create(model=MODEL, messages=USER)
        assert other.choices[0].message.content == "served while the tool blocked"
    finally:
        state["SYNC_RELEASE"].set()
        worker.join(timeout=10)
    assert blocked[0].choices[0].message.content == "tool finished"


def test_a_round_cut_by_the_token_limit_runs_no_tool(upstream: FakeUpstream, gateway: Gateway) -> None:
    runs = gateway.tool_state()["RUNS"]
    before = list(runs)
    cut = call("add", '{"a": 1, "b":', "cut1")
    upstream.enqueue(completion("", [cut], "length"))
    answer = gateway.client().chat.completions.create(model=MODEL, messages=USER)
    assert answer.choices[0].finish_reason == "length"
    assert runs == before and len(upstream.bodies) == 1


def test_broken_arguments_are_never_sent_back_upstream(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion(None, [call("add", '{"a": 1, "b"', "bad1")]), completion("sorry"))
    gateway.client().chat.completions.create(model=MODEL, messages=USER)
    history = upstream.bodies[1]["messages"]
    assert history[-2]["tool_calls"][0]["function"]["arguments"] == "{}"
    error = json.loads(history[-1]["content"])
    assert error["type"] == "invalid_arguments" and '{"a": 1, "b"' in error["error"]


def test_n_above_one_with_server_tools_is_400(upstream: FakeUpstream, gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        gateway.client().chat.completions.create(model=MODEL, messages=USER, n=2)
    assert isinstance(raised.value.body, dict) and raised.value.body["param"] == "n"
    upstream.enqueue(completion("two answers"))
    gateway.client().chat.completions.create(model=MODEL, messages=USER, n=2, tool_choice="none")
    assert upstream.bodies[0]["n"] == 2


def test_errors_after_a_tool_ran_tell_the_sdk_not_to_retry(upstream: FakeUpstream, gateway: Gateway) -> None:
    runs = gateway.tool_state()["RUNS"]
    before = runs.count("add")
    upstream.enqueue(
        completion(None, [call("add", {"a": 1, "b": 1}, "r1")]),
        *[Json({"error": {"message": "overloaded"}}, status=503) for _ in range(3)],
    )
    retrying = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-test", max_retries=2)
    with pytest.raises(openai.APIStatusError) as raised:
        retrying.chat.completions.create(model=MODEL, messages=USER)
    retrying.close()
    assert raised.value.status_code == 503
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert runs.count("add") == before + 1, "the SDK retried and ran the tool again"


def test_errors_before_any_tool_ran_leave_retrying_to_the_client(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(*[Json({"error": {"message": "overloaded"}}, status=503) for _ in range(3)])
    with pytest.raises(openai.APIStatusError) as raised:
        gateway.client().chat.completions.create(model=MODEL, messages=USER)
    assert "x-should-retry" not in raised.value.response.headers
