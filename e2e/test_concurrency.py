"""Many streams with tools at once: each is one complete stream of its own."""

from __future__ import annotations

import asyncio
import json

import openai

from e2e import conversations
from e2e.conftest import GatewayProcess
from e2e.streams import Collected, assert_one_stream

STREAMS = 10


async def _traced_stream(client: openai.AsyncOpenAI, model: str, number: int) -> tuple[Collected, list[dict]]:
    """One streamed request; its chunks, and the tool calls the gateway reported running for it."""
    collected = Collected()
    traced: list[dict] = []
    async with client.chat.completions.with_streaming_response.create(
        model=model,
        messages=conversations.calculation(f"{number} + {number}"),
        tool_choice="required",
        max_tokens=64,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-gateway-trace": "1"},
    ) as response:
        assert response.http_response.status_code == 200
        # The SDK's own parser skips the trace comments, so read the lines as the SDK receives them.
        async for line in response.http_response.aiter_lines():
            if line.startswith(": tool_call "):
                traced.append(json.loads(line.removeprefix(": tool_call ")))
            elif line.startswith("data: ") and line != "data: [DONE]":
                collected.add(openai.types.chat.ChatCompletionChunk.model_validate_json(line.removeprefix("data: ")))
    return collected, traced


def test_concurrent_streams_with_tools_stay_apart(
    async_client: openai.AsyncOpenAI, model: str, gateway: GatewayProcess
) -> None:
    numbers = [101 + i for i in range(STREAMS)]

    async def run_all() -> list[tuple[Collected, list[dict]]]:
        async with async_client:
            return await asyncio.gather(*(_traced_stream(async_client, model, n) for n in numbers))

    results = asyncio.run(run_all())
    completion_ids = set()
    call_ids: list[str] = []
    for number, (collected, traced) in zip(numbers, results, strict=True):
        assert_one_stream(collected, model)
        assert collected.tool_call_deltas == [], "only server tools were offered"
        completion_ids |= collected.ids
        # Every stream ran its own calls: at least one, with its own question's number, each reported once.
        assert traced, f"no tool ran for {number}"
        assert any(str(number) in call["arguments"] for call in traced), (number, traced)
        call_ids += [call["id"] for call in traced]
    assert len(completion_ids) == STREAMS
    assert len(call_ids) == len(set(call_ids))
    in_flight = gateway.metrics()[("gateway_requests_in_flight", frozenset())]
    assert in_flight == 0
