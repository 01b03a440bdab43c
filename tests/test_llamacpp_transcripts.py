"""Recorded llama.cpp streams (e2e/transcripts), replayed byte for byte through the gateway.

The transcripts carry llama.cpp's wire facts: a first tool-call delta with index, a
32-character id, the full name and ``arguments: "{"``; ``created`` changing within a
stream; a usage chunk with ``choices: []`` and a ``timings`` object; ``length`` cutting
a call mid-arguments.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway, GatewayFactory
from tests.fake_upstream import FakeUpstream, Sse

TRANSCRIPTS = Path(__file__).resolve().parent.parent / "e2e" / "transcripts"
BUILT_IN_TOOLS = Path(__file__).resolve().parent.parent / "tools"
MODEL = "SmolLM2-135M-Instruct"
USER = [{"role": "user", "content": "Calculate 1234 * 5678."}]


def _recorded(name: str) -> Sse:
    """The recorded body as one raw write: the gateway sees exactly llama.cpp's bytes."""
    return Sse([(TRANSCRIPTS / f"{name}.sse").read_bytes()], done=False)


@pytest.fixture
def gateway(make_gateway: GatewayFactory) -> Gateway:
    return make_gateway({"tools": {"paths": [str(BUILT_IN_TOOLS)]}})


def _stream(gateway: Gateway, **extra: Any) -> list[Any]:
    client = gateway.client()
    return list(
        client.chat.completions.create(
            model=MODEL,
            messages=USER,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            **extra,
        )
    )


def test_a_recorded_tool_round_is_answered_and_continues_on_one_stream(
    upstream: FakeUpstream, gateway: Gateway
) -> None:
    upstream.enqueue(_recorded("tool_call_auto"), _recorded("tool_result_follow_up"))
    chunks = _stream(gateway)
    # One identity over both rounds, although llama.cpp changes `created` and the id per round.
    assert len({(c.id, c.created, c.model) for c in chunks}) == 1
    assert not any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    round_one = json.loads(
        next(line for line in (TRANSCRIPTS / "tool_call_auto.sse").read_text().splitlines() if '"usage"' in line)[6:]
    )["usage"]
    assert chunks[-1].usage.prompt_tokens == round_one["prompt_tokens"] + 668
    sent = upstream.bodies[1]["messages"]
    call = sent[-2]["tool_calls"][0]
    # The recorded model called `lookup_order`, which no gateway tool is: the loop answers it as unknown.
    assert call["function"]["name"] == "lookup_order" and len(call["id"]) == 32
    assert json.loads(call["function"]["arguments"])  # assembled from one-token fragments into valid JSON
    assert sent[-1]["role"] == "tool" and sent[-1]["tool_call_id"] == call["id"]
    assert json.loads(sent[-1]["content"])["type"] == "unknown_tool"


def test_a_recorded_call_cut_by_length_is_returned_not_run(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(_recorded("truncated_tool_call"))
    chunks = _stream(gateway)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert len(upstream.bodies) == 1


def test_recorded_parallel_calls_to_client_tools_come_back_whole_and_reindexed(
    upstream: FakeUpstream, make_gateway: GatewayFactory
) -> None:
    gateway = make_gateway()  # no `calculate` among the server tools: both calls are the client's
    upstream.enqueue(_recorded("parallel_tool_calls"))
    tools = [
        {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
        for name in ("calculate", "lookup_order")
    ]
    chunks = _stream(gateway, tools=tools)
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert [(tc.index, tc.function.name) for tc in calls] == [(0, "calculate"), (1, "lookup_order")]
    assert all(json.loads(tc.function.arguments or "") is not None for tc in calls)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
