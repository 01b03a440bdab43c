"""``/metrics`` after real traffic: every series moved by what happened."""

from __future__ import annotations

import openai

from e2e import conversations
from e2e.conftest import GatewayProcess
from e2e.streams import collect

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _total(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for (sample, have), value in samples.items() if sample == name and wanted <= have)


def test_metrics_count_what_happened(client: openai.OpenAI, model: str, gateway: GatewayProcess) -> None:
    before = gateway.metrics()
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=conversations.calculation("20 * 30"),
        tool_choice="required",
        max_tokens=64,
    )
    rounds = int(raw.headers["x-gateway-tool-rounds"])
    collect(
        client.chat.completions.create(
            model=model,
            messages=conversations.calculation("20 * 30"),
            tool_choice="required",
            max_tokens=64,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    after = gateway.metrics()

    def grew(name: str, **labels: str) -> float:
        return _total(after, name, **labels) - _total(before, name, **labels)

    assert grew("gateway_requests_total", stream="false", status="200") == 1
    assert grew("gateway_requests_total", stream="true", status="200") == 1
    assert grew("gen_ai_server_request_duration_seconds_count") == 2
    assert grew("gateway_overhead_seconds_count") == 2
    assert _total(after, "gateway_requests_in_flight") == 0
    # Each request made at least two upstream calls: the forced tool round and the answer.
    assert grew("gateway_upstream_requests_total", upstream="e2e") >= 4
    assert grew("gateway_upstream_request_duration_seconds_count", upstream="e2e") >= 4
    assert grew("gateway_tool_calls_total", gen_ai_tool_name="calculate") >= 2
    assert grew("gen_ai_client_operation_duration_seconds_count", gen_ai_tool_name="calculate") >= 2
    # Both requests ran tool rounds; the streamed one's count as well as the non-streamed one's.
    assert grew("gateway_tool_rounds_count") == 2
    assert grew("gateway_tool_rounds_sum") >= rounds + 1
    assert grew("gen_ai_server_time_to_first_token_seconds_count") >= 1
    assert grew("gen_ai_client_token_usage_count", gen_ai_token_type="input") == 2
    assert grew("gen_ai_client_token_usage_count", gen_ai_token_type="output") == 2
