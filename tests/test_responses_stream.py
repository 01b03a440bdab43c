"""The Responses API's event stream: every event checked against the SDK's own types, deltas as they
arrive, tool items, faults before and during the stream, clients that leave, and the Node SDK."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.conftest import Gateway, GatewayFactory
from tests.fake_upstream import MODEL, FakeUpstream, Hang, Json, Reply, Sse, chunk, completion
from tests.fake_upstream import call as tool_call
from tests.responses_wire import stream
from tests.test_disconnects import _until
from tests.test_observability import scrape, total
from tests.test_streaming import NODE_DIR, _node_sdk

WEATHER = {"location": "Paris", "unit": "celsius"}
ROLE = chunk({"role": "assistant", "content": ""})
FAST = {
    "timeout_s": {"connect": 1, "read": 0.3},
    "retries": {"attempts": 3, "initial_wait_s": 0.01, "max_wait_s": 0.05, "max_total_s": 2},
}
UPSTREAM_ERROR = {"error": {"message": "upstream is unhappy", "type": "server_error", "param": None, "code": None}}
CLIENT_TOOL = {
    "type": "function",
    "name": "open_door",
    "description": "Open a door at the client.",
    "parameters": {"type": "object", "properties": {"door": {"type": "string"}}, "required": ["door"]},
}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The usage chunk servers send last when asked to (``stream_options.include_usage``)."""
    total_tokens = prompt_tokens + completion_tokens
    counts = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total_tokens}
    return chunk(choices=[], usage=counts)


def text_round(*pieces: str, finish: str = "stop", used: tuple[int, int] = (10, 5), **sse: Any) -> Sse:
    said = (chunk({"content": piece}) for piece in pieces)
    return Sse([ROLE, *said, chunk({}, finish), usage(*used)], **sse)


def tool_round(name: str, arguments: Any, call_id: str, text: str | None = None) -> Sse:
    fragment = {"index": 0, **tool_call(name, arguments, call_id)}
    said = [chunk({"content": text})] if text else []
    return Sse([ROLE, *said, chunk({"tool_calls": [fragment]}), chunk({}, "tool_calls"), usage(20, 7)])


def item_events(events: list[dict[str, Any]], index: int) -> list[str]:
    return [e["type"] for e in events if e.get("output_index") == index]


def test_text_of_two_rounds_streams_as_it_arrives_around_a_server_tool(
    upstream: FakeUpstream, gateway: Gateway
) -> None:
    second = text_round("It is ", "21 °C.", gate_after=2, gate_timeout_s=5)
    upstream.enqueue(tool_round("get_weather", WEATHER, "call_w", text="Let me look. "), second)
    held: list[bool] = []

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "response.output_text.delta" and event["delta"] == "It is ":
            held.append(not second.gate.is_set())  # the upstream is still holding the rest back
            second.gate.set()

    run = stream(gateway.client(), on_event, model=MODEL, input="Weather in Paris?")
    assert held == [True] and not second.gate_timed_out, "the first delta of round two was held back"
    assert run.deltas() == ["Let me look. ", "It is ", "21 °C."]
    assert [e["item"]["type"] for e in run.of("response.output_item.added")] == ["message", "mcp_call", "message"]
    assert item_events(run.events, 1) == [
        "response.output_item.added",
        "response.mcp_call.in_progress",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_call.completed",
        "response.output_item.done",
    ]
    final = run.final
    assert final.status == "completed" and final.output_text == "Let me look. It is 21 °C."
    mcp_call = final.output[1]
    assert mcp_call.type == "mcp_call" and mcp_call.server_label == "gateway" and mcp_call.status == "completed"
    assert json.loads(mcp_call.arguments) == WEATHER and json.loads(mcp_call.output or "")["temperature"] == 21
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.total_tokens) == (30, 12, 42)
    assert upstream.bodies[0]["stream_options"] == {"include_usage": True}


def test_reasoning_deltas_stream_as_a_reasoning_item_before_the_answer(
    upstream: FakeUpstream, gateway: Gateway
) -> None:
    upstream.enqueue(
        Sse(
            [
                chunk({"role": "assistant", "reasoning_content": "Six "}),
                chunk({"reasoning_content": "times seven."}),
                chunk({"content": "42."}),
                chunk({}, "stop"),
            ]
        )
    )
    run = stream(gateway.client(), model=MODEL, input="What is six times seven?")
    assert run.deltas("response.reasoning_text.delta") == ["Six ", "times seven."]
    assert [e["text"] for e in run.of("response.reasoning_text.done")] == ["Six times seven."]
    assert item_events(run.events, 0)[-1] == "response.output_item.done"
    assert run.types.index("response.output_text.delta") > run.types.index("response.reasoning_text.done")
    reasoning, message = run.final.output
    assert reasoning.type == "reasoning" and [p.text for p in reasoning.content or []] == ["Six times seven."]
    assert message.type == "message" and run.final.output_text == "42."


def test_client_function_call_streams_its_arguments(upstream: FakeUpstream, gateway: Gateway) -> None:
    start = {"index": 0, "id": "call_d", "type": "function", "function": {"name": "open_door", "arguments": ""}}
    pieces = ['{"door"', ': "front"}']
    upstream.enqueue(
        Sse(
            [
                ROLE,
                chunk({"tool_calls": [start]}),
                *(chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in pieces),
                chunk({}, "tool_calls"),
            ]
        )
    )
    run = stream(gateway.client(), model=MODEL, input="Open the front door.", tools=[CLIENT_TOOL])
    assert item_events(run.events, 0)[0] == "response.output_item.added"
    assert item_events(run.events, 0)[-2:] == ["response.function_call_arguments.done", "response.output_item.done"]
    assert "".join(run.deltas("response.function_call_arguments.delta")) == '{"door": "front"}'
    [done] = run.of("response.function_call_arguments.done")
    assert done["arguments"] == '{"door": "front"}'
    [function_call] = run.final.output
    assert function_call.type == "function_call" and function_call.status == "completed"
    assert function_call.name == "open_door" and function_call.arguments == '{"door": "front"}'
    assert run.final.status == "completed"


def test_failing_server_tool_streams_mcp_call_failed(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(tool_round("fail", {"reason": "no"}, "call_f"), text_round("It failed."))
    run = stream(gateway.client(), model=MODEL, input="Try it.")
    assert item_events(run.events, 0) == [
        "response.output_item.added",
        "response.mcp_call.in_progress",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_call.failed",
        "response.output_item.done",
    ]
    failed = run.final.output[0]
    assert failed.type == "mcp_call" and failed.status == "failed" and failed.error is not None
    assert "tool exploded: no" in json.dumps(failed.error.model_dump())
    assert run.final.status == "completed" and run.final.output_text == "It failed."


def test_parallel_server_calls_each_stream_their_own_item(upstream: FakeUpstream, gateway: Gateway) -> None:
    fragments = [
        {"index": 0, **tool_call("get_weather", WEATHER, "call_w")},
        {"index": 1, **tool_call("add", {"a": 2, "b": 3}, "call_a")},
    ]
    upstream.enqueue(Sse([ROLE, chunk({"tool_calls": fragments}), chunk({}, "tool_calls")]), text_round("Done."))
    run = stream(gateway.client(), model=MODEL, input="Weather, and 2 + 3?")
    weather, add, message = run.final.output
    assert weather.type == "mcp_call" and add.type == "mcp_call" and message.type == "message"
    assert (weather.name, add.name, add.output) == ("get_weather", "add", "5")
    assert sorted(e["output_index"] for e in run.of("response.mcp_call.completed")) == [0, 1]
    assert [m["tool_call_id"] for m in upstream.bodies[1]["messages"] if m["role"] == "tool"] == ["call_w", "call_a"]


def test_stream_helpers_final_response_is_the_stored_response(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(tool_round("get_weather", WEATHER, "call_w"), text_round("It is ", "21 °C."))
    client = gateway.client()
    with client.responses.stream(model=MODEL, input="Weather in Paris?", instructions="Be brief.") as events:
        kinds = [event.type for event in events]
        final = events.get_final_response()
    assert kinds[-1] == "response.completed"
    stored = client.responses.retrieve(final.id)
    assert stored.status == "completed" and stored.output_text == "It is 21 °C."
    # The helper's text parts carry ``parsed`` (structured outputs), null here; nothing else may differ.
    assert _without_parsed(final.to_dict()) == stored.to_dict()


def _without_parsed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_parsed(v) for k, v in value.items() if not (k == "parsed" and v is None)}
    if isinstance(value, list):
        return [_without_parsed(v) for v in value]
    return value


# -- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("status", [500, 429])
def test_upstream_error_before_any_output_is_an_http_error(
    upstream: FakeUpstream, make_gateway: GatewayFactory, status: int, streamed: bool
) -> None:
    gateway = make_gateway(upstream_overrides=FAST)
    upstream.enqueue(*[Json(UPSTREAM_ERROR, status=status)] * 3)
    client = gateway.client(timeout=10)
    with pytest.raises(openai.APIStatusError) as caught:
        if streamed:
            list(client.responses.create(model=MODEL, input="Hi.", stream=True))
        else:
            client.responses.create(model=MODEL, input="Hi.")
    assert caught.value.status_code == status


MID_STREAM: dict[str, Callable[[], list[Reply]]] = {
    "cut": lambda: [Sse([ROLE, chunk({"content": "Partial"})], done=False)],
    "error-event": lambda: [
        Sse([ROLE, chunk({"content": "Partial"}), {"error": {"message": "CUDA out of memory", "code": 500}}])
    ],
    "stall": lambda: [Sse([ROLE, chunk({"content": "Partial"})], done=False, hang_at_end=True)],
    "cut-after-tool": lambda: [tool_round("get_weather", WEATHER, "call_w"), Sse([ROLE], done=False)],
}


@pytest.mark.parametrize("fault", sorted(MID_STREAM))
def test_upstream_failure_mid_stream_ends_in_response_failed(
    upstream: FakeUpstream, make_gateway: GatewayFactory, fault: str
) -> None:
    gateway = make_gateway(upstream_overrides=FAST)
    client = gateway.client(timeout=10)
    upstream.enqueue(*MID_STREAM[fault]())
    run = stream(client, model=MODEL, input="Go on.")
    assert run.types[-1] == "response.failed"
    failed = run.final
    assert failed.status == "failed" and failed.error is not None and failed.error.message
    assert failed.error.code == "server_error"
    for item in failed.output:
        assert item.type != "message" or item.status == "incomplete"
    # Stored as it ended, as OpenAI does: the client saw its id in response.created.
    assert client.responses.retrieve(failed.id).status == "failed"
    # The official client's own iteration ends there too, typed.
    upstream.enqueue(*MID_STREAM[fault]())
    events = list(client.responses.create(model=MODEL, input="Go on.", stream=True))
    assert events[-1].type == "response.failed"


@pytest.mark.parametrize("fault", ["error-body", "cut-body", "error-after-tool"])
def test_upstream_failure_without_streaming_raises(upstream: FakeUpstream, gateway: Gateway, fault: str) -> None:
    error = Json({"error": {"message": "CUDA out of memory", "code": 500}})
    replies: dict[str, list[Reply]] = {
        "error-body": [error],
        "cut-body": [Json(None, raw=b'{"id": "chatcmpl-up", "choices": [{')],
        "error-after-tool": [completion(None, [tool_call("get_weather", WEATHER, "call_w")]), error],
    }
    upstream.enqueue(*replies[fault])
    with pytest.raises(openai.APIStatusError) as caught:
        gateway.client().responses.create(model=MODEL, input="Hi.")
    assert caught.value.status_code == 502
    body: Any = caught.value.body
    assert isinstance(body, dict) and body["message"]
    # Once a server tool ran, a retry by the SDK would run it again: the gateway tells it not to.
    retry = caught.value.response.headers.get("x-should-retry")
    assert (retry == "false") == (fault == "error-after-tool")


# -- a client that leaves ------------------------------------------------------------------------


def _open_stream(gateway: Gateway, body: dict[str, Any]) -> socket.socket:
    payload = json.dumps({**body, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", gateway.server.port), timeout=5)
    sock.sendall(
        b"POST /v1/responses HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def _read_until(sock: socket.socket, marker: bytes) -> None:
    received = b""
    while marker not in received:
        piece = sock.recv(65536)
        assert piece, f"the stream ended before {marker!r}: {received[-300:]!r}"
        received += piece


def _wait_for_499(gateway: Gateway, before: float) -> None:
    assert _until(lambda: total(scrape(gateway.url), "gateway_requests_total", status="499", stream="true") > before)


@pytest.mark.parametrize("when", ["before-first-byte", "mid-answer"])
def test_leaving_a_stream_cancels_the_upstream_request(upstream: FakeUpstream, gateway: Gateway, when: str) -> None:
    before = total(scrape(gateway.url), "gateway_requests_total", status="499", stream="true")
    if when == "before-first-byte":
        upstream.enqueue(Hang())
        sock = _open_stream(gateway, {"model": MODEL, "input": "Hi."})
        assert _until(lambda: bool(upstream.requests))
    else:
        upstream.enqueue(Sse([ROLE, chunk({"content": "Hel"})], done=False, hang_at_end=True))
        sock = _open_stream(gateway, {"model": MODEL, "input": "Hi."})
        _read_until(sock, b"response.output_text.delta")
    sock.close()
    assert upstream.disconnected.wait(5), "the upstream request outlived the client"
    _wait_for_499(gateway, before)


def test_leaving_during_a_server_tool_cancels_it_and_sends_no_more_rounds(
    upstream: FakeUpstream, gateway: Gateway
) -> None:
    state = gateway.tool_state("wait_for_release")
    for event in ("RELEASE", "STARTED", "CANCELLED"):
        state[event].clear()
    upstream.enqueue(tool_round("wait_for_release", {}, "call_r"), text_round("round two"))
    sock = _open_stream(gateway, {"model": MODEL, "input": "Wait."})
    _read_until(sock, b"response.mcp_call.in_progress")
    assert state["STARTED"].wait(5)
    sock.close()
    assert state["CANCELLED"].wait(5), "the tool kept running after the client left"
    assert len(upstream.bodies) == 1, "a later round was sent for a client that had left"


# -- the Node SDK --------------------------------------------------------------------------------


def test_node_sdk_streams_a_response_around_a_server_tool(upstream: FakeUpstream, gateway: Gateway) -> None:
    node = _node_sdk()
    upstream.enqueue(tool_round("get_weather", WEATHER, "call_w", text="Let me look. "), text_round("It is ", "21 °C."))
    request = {"model": MODEL, "input": "Weather in Paris?"}
    result = subprocess.run(
        [node, str(NODE_DIR / "stream_response.mjs"), f"{gateway.url}/v1", json.dumps(request)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = json.loads(result.stdout)
    assert seen["deltas"] == ["Let me look. ", "It is ", "21 °C."]
    assert seen["status"] == "completed" and seen["outputText"] == "Let me look. It is 21 °C."
    assert seen["sequenceNumbers"] == list(range(len(seen["types"])))
    assert seen["outputTypes"] == ["message", "mcp_call", "message"]
    assert "response.mcp_call.completed" in seen["types"]
    stored = gateway.client().responses.retrieve(seen["id"])
    assert stored.output_text == seen["outputText"]
