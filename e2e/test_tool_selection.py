"""tools.selection against a real model: what offering only the relevant tools saves in prompt tokens."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from e2e.conftest import ROOT, GatewayProcess, Upstream

HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module", params=["lexical", "hybrid"])
def selective(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[GatewayProcess]:
    tools = {
        "paths": [str(ROOT / "tools")],
        "enabled": ["calculate", "current_time"],
        "selection": {"mode": "relevant", "max_tools": 1, "ranker": request.param},
    }
    process = GatewayProcess(upstream, tmp_path_factory.mktemp("selective"), {"tools": tools})
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def _prompt_tokens(base_url: str, api_key: str, model: str, messages: list[dict[str, str]]) -> int:
    with openai.OpenAI(base_url=base_url, api_key=api_key or "none", max_retries=0, timeout=300) as client:
        answer = client.chat.completions.create(model=model, messages=messages, max_tokens=1)  # type: ignore[arg-type]
    assert answer.usage is not None
    return answer.usage.prompt_tokens


def test_a_question_no_tool_fits_costs_what_it_costs_direct(
    upstream: Upstream, gateway: GatewayProcess, selective: GatewayProcess, model: str
) -> None:
    direct = _prompt_tokens(upstream.base_url, upstream.api_key, model, HELLO)
    every_tool = _prompt_tokens(f"{gateway.url}/v1", "e2e", model, HELLO)
    relevant = _prompt_tokens(f"{selective.url}/v1", "e2e", model, HELLO)
    # No tool shares a word with "Say hello", nor comes near it in meaning: none is offered, the prompt is direct.
    assert relevant == direct < every_tool, (direct, relevant, every_tool)


def test_a_calculation_is_offered_the_calculator_alone(
    upstream: Upstream, gateway: GatewayProcess, selective: GatewayProcess, model: str
) -> None:
    question = [{"role": "user", "content": "Calculate 12 * 7."}]
    every_tool = _prompt_tokens(f"{gateway.url}/v1", "e2e", model, question)
    relevant = _prompt_tokens(f"{selective.url}/v1", "e2e", model, question)
    direct = _prompt_tokens(upstream.base_url, upstream.api_key, model, question)
    assert direct < relevant < every_tool, (direct, relevant, every_tool)
