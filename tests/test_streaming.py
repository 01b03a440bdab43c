"""The streaming tool loop: one continuous OpenAI stream across server tool rounds, every quirk."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway, GatewayFactory
from tests.fake_upstream import MODEL, FakeUpstream, Hang, Sse, chunk

USER = [{"role": "user", "content": "Weather in Paris?"}]
USAGE_1 = {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
USAGE_2 = {"prompt_tokens": 30, "completion_tokens": 6, "total_tokens": 36}
CLIENT_TOOL = {
    "type": "function",
    "function": {"name": "open_door", "parameters": {"type": "object", "properties": {"door": {"type": "string"}}}},
}


def _tool_round(*deltas: dict[str, Any], id: str = "chatcmpl-r1", usage: dict[str, Any] | None = None) -> Sse:
    """A round whose answer is tool calls: role chunk, the given tool_call deltas, finish, usage."""
    items: list[Any] = [chunk({"role": "assistant", "content": ""}, id=id)]
    items += [chunk({"tool_calls": [d]}, id=id) for d in deltas]
    items.append(chunk({}, "tool_calls", id=id))
    items.append(chunk(choices=[], usage=usage or USAGE_1, id=id))
    return Sse(items)


def _answer_round(text: str = "It is sunny.", id: str = "chatcmpl-r2", usage: dict[str, Any] | None = None) -> Sse:
    words = text.split(" ")
    items: list[Any] = [chunk({"role": "assistant", "content": ""}, id=id)]
    items += [chunk({"content": w if i == 0 else f" {w}"}, id=id) for i, w in enumerate(words)]
    items.append(chunk({}, "stop", id=id))
    items.append(chunk(choices=[], usage=usage or USAGE_2, id=id))
    return Sse(items)


def _weather_call(id: str = "call_w", index: int | None = 0) -> list[dict[str, Any]]:
    first: dict[str, Any] = {"id": id, "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    rest: dict[str, Any] = {"function": {"arguments": '{"location": "Paris", "unit": "celsius"}'}}
    if index is not None:
        first["index"] = index
        rest["index"] = index
    return [first, rest]


def _stream(gateway: Gateway, **kwargs: Any) -> list[Any]:
    params: dict[str, Any] = {"model": MODEL, "messages": USER, "stream": True, **kwargs}
    return list(gateway.client().chat.completions.create(**params))


def _text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def _tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body["messages"] if m["role"] == "tool"]


def test_two_rounds_make_one_continuous_stream(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(_tool_round(*_weather_call()), _answer_round())
    chunks = _stream(gateway, stream_options={"include_usage": True})
    assert _text(chunks) == "It is sunny."
    assert {c.id for c in chunks} == {"chatcmpl-r1"}
    assert {c.model for c in chunks} == {MODEL}
    assert len({c.created for c in chunks}) == 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and chunks[-1] is usage_chunks[0] and chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (40, 10)
    assert all(not (c.choices and c.choices[0].delta.tool_calls) for c in chunks)
    second = upstream.bodies[1]
    assert second["stream"] is True and second["stream_options"] == {"include_usage": True}
    assert second["messages"][-2]["tool_calls"] == [
        {
            "id": "call_w",
            "type": "function",
            "function": {"name": "get_weather", "arguments": _weather_call()[1]["function"]["arguments"]},
        }
    ]
    assert json.loads(_tool_messages(second)[0]["content"])["temperature"] == 21


def test_usage_chunk_only_when_client_asked(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(_tool_round(*_weather_call()), _answer_round())
    chunks = _stream(gateway)
    assert all(c.usage is None for c in chunks)
    assert upstream.bodies[0]["stream_options"] == {"include_usage": True}


def test_first_content_delta_arrives_before_round_ends(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(_tool_round(*_weather_call()))
    gated = _answer_round("Sunny and warm today")
    gated.gate_after = 2  # role chunk, then "Sunny"
    upstream.enqueue(gated)
    stream = gateway.client().chat.completions.create(model=MODEL, messages=USER, stream=True)
    iterator = iter(stream)
    seen = ""
    while not seen:
        seen = _text([next(iterator)])
    assert seen == "Sunny"
    assert not gated.gate_timed_out
    gated.gate.set()
    assert seen + _text(list(iterator)) == "Sunny and warm today"


def test_text_before_tool_call_reaches_client(upstream: FakeUpstream, gateway: Gateway) -> None:
    items = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Let me check. "}),
        *(chunk({"tool_calls": [d]}) for d in _weather_call()),
        chunk({}, "tool_calls"),
    ]
    upstream.enqueue(Sse(items), _answer_round("Sunny."))
    chunks = _stream(gateway)
    assert _text(chunks) == "Let me check. Sunny."
    assert upstream.bodies[1]["messages"][-2]["content"] == "Let me check. "


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(
            [
                chunk(
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"index": 0, "id": "o1", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
                        ],
                    }
                ),
                chunk({}, "tool_calls"),
            ],
            id="whole-call-one-chunk",
        ),
        pytest.param(
            [
                chunk({"role": "assistant", "content": None}),
                chunk(
                    {
                        "tool_calls": [
                            {"index": 0, "id": "o1", "type": "function", "function": {"name": "add", "arguments": ""}}
                        ]
                    }
                ),
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "o1",
                                "type": "function",
                                "function": {"name": "add", "arguments": '{"a": 1,'},
                            }
                        ]
                    }
                ),
                chunk(
                    {
                        "tool_calls": [
                            {"index": 0, "id": "o1", "type": "function", "function": {"arguments": ' "b": 2}'}}
                        ]
                    }
                ),
                chunk({}, "tool_calls"),
            ],
            id="id-and-name-repeated",
        ),
        pytest.param(
            [
                chunk({"role": "assistant", "content": ""}),
                chunk({"tool_calls": [{"id": "o1", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]}),
                chunk({}, "stop"),
            ],
            id="missing-index-and-stop",
        ),
        pytest.param(
            [
                chunk({"role": "assistant", "content": ""}),
                chunk({"tool_calls": [{"index": 0, "id": "o1", "type": "function", "function": {"name": "add"}}]}),
                chunk({"tool_calls": [{"index": 0, "id": None, "function": {"name": None, "arguments": '{"a": 1, '}}]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"b": 2}'}}]}, "tool_calls"),
            ],
            id="vllm-last-fragment-on-finish-chunk",
        ),
        pytest.param(
            [
                b": keep-alive\n\n",
                chunk({"role": "assistant", "content": ""}),
                b": still here\n\n",
                chunk(
                    {
                        "tool_calls": [
                            {"index": 0, "id": "o1", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
                        ]
                    }
                ),
                chunk({}, "tool_calls", usage=USAGE_1),
            ],
            id="comments-and-usage-on-finish-chunk",
        ),
    ],
)
def test_upstream_quirks_yield_the_same_call(upstream: FakeUpstream, gateway: Gateway, script: list[Any]) -> None:
    upstream.enqueue(Sse(script, done="missing-index" not in str(script)), _answer_round("3."))
    chunks = _stream(gateway)
    assert _text(chunks) == "3."
    assert upstream.bodies[1]["messages"][-2]["tool_calls"][0]["function"] == {
        "name": "add",
        "arguments": '{"a": 1, "b": 2}',
    }
    assert _tool_messages(upstream.bodies[1])[0]["content"] == "3"


def test_old_ollama_parallel_calls_at_same_index(upstream: FakeUpstream, gateway: Gateway) -> None:
    items = [
        chunk(
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"index": 0, "id": "p1", "function": {"name": "add", "arguments": '{"a": 1, "b": 1}'}}],
            }
        ),
        chunk(
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"index": 0, "id": "p2", "function": {"name": "add", "arguments": '{"a": 2, "b": 2}'}}],
            }
        ),
        chunk({"role": "assistant", "content": ""}, "tool_calls"),
    ]
    upstream.enqueue(Sse(items), _answer_round("2 and 4."))
    chunks = _stream(gateway)
    assert _text(chunks) == "2 and 4."
    tools = _tool_messages(upstream.bodies[1])
    assert [(m["tool_call_id"], m["content"]) for m in tools] == [("p1", "2"), ("p2", "4")]
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.role) == 1


def test_usage_in_groq_extension_and_on_content_chunks(upstream: FakeUpstream, gateway: Gateway) -> None:
    groq_round = _tool_round(*_weather_call())
    groq_round.items[-1] = {**chunk(choices=[]), "x_groq": {"usage": USAGE_1}}
    answer = _answer_round("Ok.")
    answer.items[-1] = chunk({"content": ""}, usage=USAGE_2)  # Gemini: usage on a chunk with a choice
    upstream.enqueue(groq_round, answer)
    chunks = _stream(gateway, stream_options={"include_usage": True})
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 50


def test_mixed_turn_forwards_client_calls_reindexed(upstream: FakeUpstream, gateway: Gateway) -> None:
    items = [
        chunk({"role": "assistant", "content": ""}),
        chunk(
            {"tool_calls": [{"index": 0, "id": "srv", "function": {"name": "add", "arguments": '{"a": 1, "b": 1}'}}]}
        ),
        chunk({"tool_calls": [{"index": 1, "id": "cli", "function": {"name": "open_door", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"door": "front"}'}}]}),
        chunk({}, "tool_calls"),
    ]
    upstream.enqueue(Sse(items))
    chunks = _stream(gateway, tools=[CLIENT_TOOL])
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    [minted] = [d.id for d in deltas]
    assert minted and minted != "cli" and minted.isalnum() and len(minted) == 9
    assert [(d.index, d.function.name, d.function.arguments) for d in deltas] == [(0, "open_door", '{"door": "front"}')]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    upstream.enqueue(_answer_round("Door open."))
    follow_up = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": minted, "type": "function", "function": {"name": "open_door", "arguments": '{"door": "front"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": minted, "content": "opened"},
    ]
    assert _text(_stream(gateway, messages=follow_up, tools=[CLIENT_TOOL])) == "Door open."
    sent = upstream.bodies[1]["messages"]
    assert [c["id"] for c in sent[1]["tool_calls"]] == ["srv", minted]
    assert [m.get("tool_call_id") for m in sent[2:]] == ["srv", minted]


def test_client_only_calls_pass_through_complete(upstream: FakeUpstream, gateway: Gateway) -> None:
    items = [
        chunk({"role": "assistant", "content": ""}),
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "c1", "type": "function", "function": {"name": "open_door", "arguments": ""}}
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"door":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "side"}'}}]}),
        chunk({}, "stop"),
    ]
    upstream.enqueue(Sse(items))
    chunks = _stream(gateway, tools=[CLIENT_TOOL])
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert len(deltas) == 1 and deltas[0].function.arguments == '{"door": "side"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_mid_stream_error_event_then_clean_end(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(
        Sse(
            [
                chunk({"role": "assistant", "content": "Partial"}),
                {"error": {"message": "CUDA out of memory", "type": "InternalServerError", "code": 500}},
            ]
        )
    )
    stream = gateway.client().chat.completions.create(model=MODEL, messages=USER, stream=True)
    received: list[Any] = []
    with pytest.raises(openai.APIError) as raised:
        for item in stream:
            received.append(item)
    assert "CUDA out of memory" in raised.value.message
    assert _text(received) == "Partial"


def test_mid_stream_error_event_on_the_wire(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(Sse([chunk({"role": "assistant", "content": "Hi"}), b'error: {"message": "slot lost"}\n\n']))
    with gateway.http() as http:
        body = {"model": MODEL, "messages": USER, "stream": True}
        lines = [
            line for line in http.post("/v1/chat/completions", json=body).text.split("\n") if line.startswith("data:")
        ]
    errors = [json.loads(line[5:]) for line in lines if '"error"' in line]
    assert len(errors) == 1
    assert set(errors[0]["error"]) == {"message", "type", "param", "code"}
    assert "slot lost" in errors[0]["error"]["message"]
    assert lines[-1] == "data: [DONE]"


def test_cut_stream_is_an_error_and_its_call_never_runs(upstream: FakeUpstream, gateway: Gateway) -> None:
    runs = gateway.tool_state()["RUNS"]
    before = len(runs)
    items = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"tool_calls": [{"index": 0, "id": "x", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]}),
    ]
    upstream.enqueue(Sse(items, done=False))
    stream = gateway.client().chat.completions.create(model=MODEL, messages=USER, stream=True)
    with pytest.raises(openai.APIError):
        list(stream)
    assert len(runs) == before
    assert len(upstream.bodies) == 1


def test_mid_stream_timeout_is_an_error_event(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(upstream_overrides={"timeout_s": {"connect": 1, "read": 0.3}})
    upstream.enqueue(Sse([chunk({"role": "assistant", "content": "Hi"})], done=False, hang_at_end=True))
    stream = gateway.client().chat.completions.create(model=MODEL, messages=USER, stream=True)
    with pytest.raises(openai.APIError) as raised:
        list(stream)
    assert "in time" in raised.value.message


def test_keepalive_comments_while_a_tool_runs(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"server": {"keepalive_interval_s": 0.05}})
    state = gateway.tool_state("wait_for_release")
    state["RELEASE"].clear()
    state["STARTED"].clear()
    upstream.enqueue(
        _tool_round({"index": 0, "id": "k", "function": {"name": "wait_for_release", "arguments": "{}"}}),
        _answer_round("Released."),
    )
    comments_during_tool = 0
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        body = {"model": MODEL, "messages": USER, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            for line in lines:
                if state["STARTED"].is_set() and line.startswith(":"):
                    comments_during_tool += 1
                    if comments_during_tool == 3:
                        state["RELEASE"].set()
                if line == "data: [DONE]":
                    break
    assert comments_during_tool >= 3


def test_progress_comments_on_opt_in_leave_sdk_stream_unchanged(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(_tool_round(*_weather_call()), _answer_round())
    with gateway.http() as http:
        body = {"model": MODEL, "messages": USER, "stream": True}
        text = http.post("/v1/chat/completions", json=body, headers={"x-gateway-trace": "1"}).text
    progress = [line for line in text.split("\n") if line.startswith((": tool_call ", ": tool_result "))]
    assert [p.split(" ")[1] for p in progress] == ["tool_call", "tool_result"]
    result = json.loads(progress[1].split(" ", 2)[2])
    assert result["name"] == "get_weather" and result["outcome"] == "ok" and "duration_ms" in result

    upstream.enqueue(_tool_round(*_weather_call()), _answer_round())
    chunks = _stream(gateway, extra_headers={"x-gateway-trace": "1"})
    assert _text(chunks) == "It is sunny."
    assert all(c.object == "chat.completion.chunk" and c.choices for c in chunks)


def test_client_disconnect_cancels_running_tools(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    # Keep-alives give the client lines to read while the tool runs, so it can leave mid-tool.
    gateway = make_gateway({"server": {"keepalive_interval_s": 0.05}})
    state = gateway.tool_state("wait_for_release")
    state["RELEASE"].clear()
    state["STARTED"].clear()
    state["CANCELLED"].clear()
    upstream.enqueue(_tool_round({"index": 0, "id": "k", "function": {"name": "wait_for_release", "arguments": "{}"}}))
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        body = {"model": MODEL, "messages": USER, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            for _ in response.iter_lines():
                if state["STARTED"].wait(0):
                    break
            assert state["STARTED"].wait(5)
    assert state["CANCELLED"].wait(5), "the tool kept running after the client left"


def test_client_disconnect_cancels_upstream_stream(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(Sse([chunk({"role": "assistant", "content": "Hi"})], done=False, hang_at_end=True))
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        body = {"model": MODEL, "messages": USER, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    break
    assert upstream.disconnected.wait(5), "the upstream request outlived the client"


def test_hanging_upstream_before_first_byte_times_out(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(upstream_overrides={"timeout_s": {"connect": 1, "read": 0.3}})
    upstream.enqueue(Hang())
    with pytest.raises(openai.APIStatusError) as raised:
        _stream(gateway)
    assert raised.value.status_code == 504


def test_streaming_without_tools_relays_upstream_bytes(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(upstream_overrides={"server_tools": False})
    upstream.enqueue(_answer_round("Plain text.", id="chatcmpl-x"))
    with gateway.http() as http:
        text = http.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "stream": True}).text
    expected = json.dumps(chunk({"content": " text."}, id="chatcmpl-x"), separators=(",", ":"))
    assert f"data: {expected}" in text.replace("\r\n", "\n")


def test_concurrent_streams_do_not_mix(upstream: FakeUpstream, gateway: Gateway) -> None:
    release = threading.Event()
    results: dict[str, str] = {}

    def run(name: str) -> None:
        results[name] = _text(_stream(gateway))

    upstream.enqueue(_answer_round("one two", id="a"), _answer_round("three four", id="b"))
    threads = [threading.Thread(target=run, args=(n,)) for n in ("x", "y")]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(10)
    assert sorted(results.values()) == ["one two", "three four"]


NODE_DIR = Path(__file__).parent / "node"


def _node_sdk() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: the openai Node SDK test needs `node` and `npm` on PATH")
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: cannot install the openai Node SDK")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300)
    return node


def test_node_sdk_streams_two_rounds_ending_in_client_call(upstream: FakeUpstream, gateway: Gateway) -> None:
    node = _node_sdk()
    client_call = [
        chunk({"role": "assistant", "content": ""}, id="r2"),
        chunk({"content": "Opening the door."}, id="r2"),
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "door1", "type": "function", "function": {"name": "open_door", "arguments": ""}}
                ]
            },
            id="r2",
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"door": "front"}'}}]}, id="r2"),
        chunk({}, "tool_calls", id="r2"),
        chunk(choices=[], usage=USAGE_2, id="r2"),
    ]
    upstream.enqueue(_tool_round(*_weather_call()), Sse(client_call))
    request = {"model": MODEL, "messages": USER, "tools": [CLIENT_TOOL], "stream_options": {"include_usage": True}}
    result = subprocess.run(
        [node, str(NODE_DIR / "stream_chat.mjs"), f"{gateway.url}/v1", json.dumps(request)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = json.loads(result.stdout)
    assert seen["content"] == "Opening the door."
    assert set(seen["ids"]) == {"chatcmpl-r1"} and set(seen["models"]) == {MODEL}
    assert seen["finishReasons"] == ["tool_calls"]
    assert seen["toolCalls"] == [
        {
            "index": 0,
            "id": "door1",
            "type": "function",
            "function": {"name": "open_door", "arguments": '{"door": "front"}'},
        }
    ]
    assert seen["usage"]["total_tokens"] == 50
    assert len(upstream.bodies) == 2


def test_finished_streams_leave_the_upstream_connection_reusable(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(_answer_round("one"), _answer_round("two"))
    assert _text(_stream(gateway)) == "one"
    assert _text(_stream(gateway)) == "two"
    first, second = upstream.requests
    assert first.peer == second.peer, "each stream opened a new upstream connection"


def test_a_streamed_round_cut_by_the_token_limit_runs_no_tool(upstream: FakeUpstream, gateway: Gateway) -> None:
    runs = gateway.tool_state()["RUNS"]
    before = list(runs)
    items = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "add", "arguments": '{"a": 1,'}}]}),
        chunk({}, "length"),
    ]
    upstream.enqueue(Sse(items))
    chunks = _stream(gateway)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert runs == before and len(upstream.bodies) == 1


def test_stream_ends_with_the_round_count_in_a_comment(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(_tool_round(*_weather_call()), _answer_round())
    with gateway.http() as http:
        body = {"model": MODEL, "messages": USER, "stream": True}
        text = http.post("/v1/chat/completions", json=body).text
    lines = [line for line in text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    assert lines[-2].startswith(": gateway ")
    assert json.loads(lines[-2].split(" ", 2)[2]) == {"tool_rounds": 1, "max_rounds_reached": False}
