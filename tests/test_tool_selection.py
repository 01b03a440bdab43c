"""tools.selection through the gateway: which server tools each request offers the upstream, and why."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.conftest import Gateway, GatewayFactory
from tests.fake_upstream import MODEL, FakeUpstream, Sse, call, chunk, completion
from tests.test_observability import scrape, total

WEATHER_QUESTION = [{"role": "user", "content": "What's the current weather in Paris?"}]


def _offered(body: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in body.get("tools") or []]


@pytest.fixture
def relevant(make_gateway: GatewayFactory) -> Gateway:
    return make_gateway({"tools": {"selection": {"mode": "relevant", "max_tools": 2, "always": ["whoami"]}}})


def test_all_is_the_default_and_offers_every_tool(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion("Sunny."))
    gateway.client().chat.completions.create(model=MODEL, messages=WEATHER_QUESTION)  # type: ignore[arg-type]
    assert {"add", "get_weather", "fail", "slow", "whoami", "big_output"} <= set(_offered(upstream.bodies[0]))


def test_relevant_offers_the_top_ranked_plus_always(upstream: FakeUpstream, relevant: Gateway) -> None:
    before = total(scrape(relevant.url), "gateway_offered_tools_count")
    upstream.enqueue(completion("Sunny."))
    raw = relevant.client().chat.completions.create(
        model=MODEL,
        messages=WEATHER_QUESTION,  # type: ignore[arg-type]
        extra_headers={"x-gateway-trace": "1"},
    )
    offered = _offered(upstream.bodies[0])
    assert "get_weather" in offered and "whoami" in offered
    assert len(offered) <= 3
    trace = (raw.model_extra or {})["x_gateway"]["offered_tools"]
    assert {entry["name"] for entry in trace} == set(offered)
    scores = {entry["name"]: entry["score"] for entry in trace}
    assert scores["whoami"] is None and isinstance(scores["get_weather"], float)
    assert total(scrape(relevant.url), "gateway_offered_tools_count") == before + 1


def test_a_forced_tool_and_tools_called_earlier_are_never_dropped(upstream: FakeUpstream, relevant: Gateway) -> None:
    upstream.enqueue(completion(None, [call("add", {"a": 1, "b": 2}, "c1")]), completion("3"))
    relevant.client().chat.completions.create(
        model=MODEL,
        messages=WEATHER_QUESTION,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "add"}},
    )
    assert "add" in _offered(upstream.bodies[0])
    earlier: Any = [
        {"role": "user", "content": "Add 1 and 2."},
        {"role": "assistant", "content": None, "tool_calls": [call("big_output", {"size": 1}, "c0")]},
        {"role": "tool", "tool_call_id": "c0", "content": "x"},
        *WEATHER_QUESTION,
    ]
    upstream.enqueue(completion("Sunny."))
    relevant.client().chat.completions.create(model=MODEL, messages=earlier)
    assert "big_output" in _offered(upstream.bodies[-1])


def test_an_intent_group_comes_first(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    groups = {"failures": {"keywords": ["broken", "outage"], "tools": ["fail"]}}
    gateway = make_gateway({"tools": {"selection": {"mode": "relevant", "max_tools": 1, "groups": groups}}})
    upstream.enqueue(completion("Noted."))
    gateway.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Is the weather service broken?"}],
    )
    assert _offered(upstream.bodies[0]) == ["fail"]


def test_the_header_narrows_within_what_the_key_allows(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    keys = {"auth": {"api_keys": [{"name": "a", "key": "sk-a-000001", "tools": ["add", "get_*"]}]}}
    gateway = make_gateway(keys)
    client = gateway.client("sk-a-000001")
    upstream.enqueue(completion("ok"))
    client.chat.completions.create(
        model=MODEL,
        messages=WEATHER_QUESTION,  # type: ignore[arg-type]
        extra_headers={"x-gateway-tools": "get_weather, fail, slo*"},
    )
    assert _offered(upstream.bodies[0]) == ["get_weather"]
    upstream.enqueue(Sse([chunk({"role": "assistant", "content": "ok"}), chunk({}, "stop")]))
    list(
        client.chat.completions.create(
            model=MODEL,
            messages=WEATHER_QUESTION,  # type: ignore[arg-type]
            stream=True,
            extra_headers={"x-gateway-tools": "add"},
        )
    )
    assert _offered(upstream.bodies[1]) == ["add"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=WEATHER_QUESTION,  # type: ignore[arg-type]
            extra_headers={"x-gateway-tools": ",".join(f"t{i}" for i in range(65))},
        )
    assert (caught.value.body or {})["param"] == "x-gateway-tools"  # type: ignore[index]


def test_the_responses_api_takes_the_header_too(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion("ok"))
    gateway.client().responses.create(model=MODEL, input="Weather?", extra_headers={"x-gateway-tools": "get_weather"})
    assert _offered(upstream.bodies[0]) == ["get_weather"]
