"""The passthrough paths against a real server: legacy completions, whole and streamed, as the server sent them."""

from __future__ import annotations

import time

import httpx
import openai

from e2e.conftest import GatewayProcess

PROMPT = "1, 2, 3, 4,"


def _passthrough_requests(gateway: GatewayProcess, stream: str) -> float:
    return sum(
        value
        for (name, labels), value in gateway.metrics().items()
        if name == "gateway_passthrough_requests_total"
        and {("path", "/v1/completions"), ("stream", stream), ("status", "200")} <= labels
    )


def _counted(gateway: GatewayProcess, stream: str, expected: float) -> bool:
    """The request is counted once its record closes, just after the last byte went out."""
    deadline = time.monotonic() + 10
    while _passthrough_requests(gateway, stream) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return _passthrough_requests(gateway, stream) == expected


def test_completions_pass_through(client: openai.OpenAI, model: str, gateway: GatewayProcess) -> None:
    before = _passthrough_requests(gateway, "false")
    completion = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0)
    assert completion.object == "text_completion"
    assert completion.choices[0].text
    assert completion.choices[0].finish_reason in {"stop", "length"}
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert _counted(gateway, "false", before + 1)


def test_completions_stream_through(client: openai.OpenAI, model: str, gateway: GatewayProcess) -> None:
    before = _passthrough_requests(gateway, "true")
    chunks = list(client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0, stream=True))
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert len(chunks) > 1 and text
    assert [c for c in chunks if c.choices and c.choices[0].finish_reason in {"stop", "length"}]
    assert _counted(gateway, "true", before + 1)


def test_completions_answer_is_plain_json(model: str, gateway: GatewayProcess) -> None:
    body = {"model": model, "prompt": PROMPT, "max_tokens": 4, "temperature": 0}
    through = httpx.post(f"{gateway.url}/v1/completions", json=body, timeout=60)
    assert through.status_code == 200
    assert through.headers["content-type"].startswith("application/json")
    assert through.json()["choices"][0]["text"]


def test_unknown_passthrough_path_is_an_openai_404(gateway: GatewayProcess) -> None:
    answer = httpx.post(f"{gateway.url}/v1/not-a-path", json={"model": "x"}, timeout=10)
    assert answer.status_code == 404
    assert answer.json()["error"]["message"] == "Invalid URL (POST /v1/not-a-path)"
