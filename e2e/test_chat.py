"""Plain chat through the gateway, and the upstream's own errors passed through."""

from __future__ import annotations

import openai
import pytest

from e2e.conftest import Upstream
from e2e.streams import assert_one_stream, collect

HELLO = [{"role": "user", "content": "Say hello in one short sentence."}]


def test_plain_chat(client: openai.OpenAI, model: str) -> None:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=HELLO, max_tokens=48)
    completion = raw.parse()
    assert raw.http_response.status_code == 200
    assert raw.headers["x-request-id"]
    assert completion.object == "chat.completion"
    assert completion.model == model
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in {"stop", "length", "tool_calls"}
    if choice.finish_reason != "tool_calls":
        assert choice.message.content
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_plain_chat_streamed(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(
        model=model,
        messages=HELLO,
        max_tokens=48,
        stream=True,
        stream_options={"include_usage": True},
    )
    collected = collect(stream)
    assert_one_stream(collected, model)
    assert collected.content
    assert collected.chunks[0].choices[0].delta.role == "assistant"


def _overflow_messages(upstream: Upstream) -> list[dict[str, str]]:
    if upstream.context_tokens is None:
        pytest.skip("the upstream's context size is unknown: set E2E_CONTEXT_TOKENS")
    # At least one token per word, and more words than the context holds.
    words = " ".join(f"word{i % 100}" for i in range(upstream.context_tokens + 200))
    return [{"role": "user", "content": f"Repeat this: {words}"}]


def test_context_overflow_is_a_400(client: openai.OpenAI, model: str, upstream: Upstream) -> None:
    messages = _overflow_messages(upstream)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=messages, max_tokens=8)
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict) and body.get("message"), body


def test_context_overflow_is_a_400_when_streamed(client: openai.OpenAI, model: str, upstream: Upstream) -> None:
    messages = _overflow_messages(upstream)
    with pytest.raises(openai.BadRequestError) as caught:
        stream = client.chat.completions.create(model=model, messages=messages, max_tokens=8, stream=True)
        collect(stream)
    assert caught.value.status_code == 400
