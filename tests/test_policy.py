"""Per-key policy through a real gateway and the real SDK: model and tool allowlists, limits, hashed keys."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway, GatewayFactory
from tests.fake_upstream import MODEL, FakeUpstream, Json, call, completion
from tests.redis_server import RedisServer
from tests.test_observability import scrape, total

USER = [{"role": "user", "content": "hello"}]


def _keys(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"auth": {"api_keys": list(entries)}}


def _post(gateway: Gateway, key: str, **body: Any) -> httpx.Response:
    payload = {"model": MODEL, "messages": USER, **body}
    return httpx.post(
        f"{gateway.url}/v1/chat/completions", json=payload, headers={"authorization": f"Bearer {key}"}, timeout=10
    )


def test_a_model_outside_the_keys_patterns_is_exactly_a_missing_model(
    upstream: FakeUpstream, make_gateway: GatewayFactory
) -> None:
    gateway = make_gateway(
        _keys(
            {"name": "narrow", "key": "sk-narrow-001", "models": ["other-*"]}, {"name": "wide", "key": "sk-wide-0001"}
        )
    )
    forbidden = _post(gateway, "sk-narrow-001")
    assert forbidden.status_code == 404 and forbidden.json()["error"]["code"] == "model_not_found"
    assert (
        forbidden.json()["error"]["message"] == f"The model '{MODEL}' does not exist or you do not have access to it."
    )
    assert upstream.requests == []
    upstream.enqueue(completion("hi"))
    assert _post(gateway, "sk-wide-0001").status_code == 200


def test_models_list_shows_only_the_keys_models(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(
        _keys(
            {"name": "narrow", "key": "sk-narrow-001", "models": ["test-*"]},
            {"name": "none", "key": "sk-none-0001", "models": ["zzz"]},
        ),
    )
    upstream.models = [MODEL, "another-model"]
    listed = {
        key: [m.id for m in gateway.client(api_key=key).models.list().data] for key in ("sk-narrow-001", "sk-none-0001")
    }
    assert listed == {"sk-narrow-001": [MODEL], "sk-none-0001": []}


def test_tools_outside_the_key_are_never_offered_and_never_run(
    upstream: FakeUpstream, make_gateway: GatewayFactory
) -> None:
    gateway = make_gateway(_keys({"name": "adder", "key": "sk-adder-001", "tools": ["add"]}))
    weather_runs = gateway.tool_state("get_weather").get("RUNS", [])
    before = list(weather_runs)
    upstream.enqueue(completion(None, [call("get_weather", {"location": "Rome"}, "w1")]), completion("no weather"))
    answer = gateway.client(api_key="sk-adder-001").chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "no weather"
    offered = [t["function"]["name"] for t in upstream.bodies[0]["tools"]]
    assert offered == ["add"]
    result = json.loads(upstream.bodies[1]["messages"][-1]["content"])
    assert result["type"] == "unknown_tool" and "get_weather" not in result["error"].split("Available tools:")[1]
    assert weather_runs == before


def test_requests_per_minute_answers_429_the_way_openai_does(
    upstream: FakeUpstream, make_gateway: GatewayFactory
) -> None:
    gateway = make_gateway(_keys({"name": "tight", "key": "sk-tight-001", "limits": {"requests_per_minute": 2}}))
    before = total(scrape(gateway.url), "gateway_policy_refusals_total", key="tight", reason="requests_per_minute")
    upstream.enqueue(completion("one"), completion("two"))
    first = _post(gateway, "sk-tight-001")
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    assert _post(gateway, "sk-tight-001").status_code == 200
    refused = _post(gateway, "sk-tight-001")
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert 1 <= int(refused.headers["retry-after"]) <= 61
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(upstream.requests) == 2
    after = total(scrape(gateway.url), "gateway_policy_refusals_total", key="tight", reason="requests_per_minute")
    assert after == before + 1


def test_tokens_per_minute_counts_upstream_usage(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(_keys({"name": "tokens", "key": "sk-tokens-01", "limits": {"tokens_per_minute": 20}}))
    upstream.enqueue(completion("a"), completion("b"))  # 15 tokens each
    assert _post(gateway, "sk-tokens-01").status_code == 200
    second = _post(gateway, "sk-tokens-01")
    assert second.status_code == 200 and second.headers["x-ratelimit-remaining-tokens"] == "5"
    refused = _post(gateway, "sk-tokens-01")
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "tokens"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"


def test_the_sdk_retry_honours_retry_after_of_a_concurrency_limit(
    upstream: FakeUpstream, make_gateway: GatewayFactory
) -> None:
    gateway = make_gateway(_keys({"name": "solo", "key": "sk-solo-0001", "limits": {"max_concurrent": 1}}))
    state = gateway.tool_state("wait_for_release")
    for event in ("RELEASE", "STARTED"):
        state[event].clear()
    upstream.enqueue(completion(None, [call("wait_for_release", {}, "h1")]), completion("first"))
    holder = threading.Thread(target=lambda: _post(gateway, "sk-solo-0001"))
    holder.start()
    assert state["STARTED"].wait(5)
    with pytest.raises(openai.RateLimitError) as raised:
        gateway.client(api_key="sk-solo-0001").chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
    assert raised.value.response.headers["retry-after"] == "1"
    # The SDK waits Retry-After (1 s); the holder finishes meanwhile, so its retry gets through.
    threading.Timer(0.3, state["RELEASE"].set).start()
    upstream.enqueue(completion("second"))
    retrying = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-solo-0001", max_retries=2)
    answer = retrying.chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
    retrying.close()
    holder.join(10)
    assert answer.choices[0].message.content in ("first", "second")


def test_a_keys_max_rounds_is_tighter_than_the_loops(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(_keys({"name": "short", "key": "sk-short-001", "limits": {"max_rounds": 1}}))
    upstream.enqueue(completion(None, [call("add", {"a": 1, "b": 2}, "r1")]), completion("three"))
    response = _post(gateway, "sk-short-001")
    assert response.headers["x-gateway-max-rounds-reached"] == "true"
    assert upstream.bodies[1]["tool_choice"] == "none"


def test_hashed_keys_and_every_key_header(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    digest = hashlib.sha256(b"sk-hashed-secret").hexdigest()
    gateway = make_gateway(_keys({"name": "hashed", "key_sha256": digest}))
    for headers in (
        {"authorization": "Bearer sk-hashed-secret"},
        {"api-key": "sk-hashed-secret"},
        {"x-api-key": "sk-hashed-secret"},
    ):
        upstream.enqueue(completion("ok"))
        response = httpx.post(
            f"{gateway.url}/v1/chat/completions", json={"model": MODEL, "messages": USER}, headers=headers
        )
        assert response.status_code == 200, headers
    assert _post(gateway, digest).status_code == 401  # the digest itself is not a key


def test_requests_and_tokens_are_labelled_by_key_name_never_the_secret(
    upstream: FakeUpstream, make_gateway: GatewayFactory
) -> None:
    gateway = make_gateway(_keys({"name": "team-a", "key": "sk-team-a-secret"}))
    upstream.enqueue(completion("ok"))
    before = total(scrape(gateway.url), "gateway_requests_total", key="team-a")
    assert _post(gateway, "sk-team-a-secret").status_code == 200
    text = httpx.get(f"{gateway.url}/metrics").text
    assert total(scrape(gateway.url), "gateway_requests_total", key="team-a") == before + 1
    assert 'key="team-a"' in text and "sk-team-a-secret" not in text


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def test_replicas_share_one_keys_request_budget(
    upstream: FakeUpstream, make_gateway: GatewayFactory, redis_server: RedisServer
) -> None:
    shared = {
        **_keys({"name": "shared", "key": "sk-shared-001", "limits": {"requests_per_minute": 3}}),
        "state": {"backend": "redis", "redis_url": redis_server.url},
    }
    replicas = [make_gateway(shared), make_gateway(shared)]
    upstream.enqueue(*[completion("ok") for _ in range(3)])
    statuses = [_post(replicas[i % 2], "sk-shared-001").status_code for i in range(4)]
    assert statuses == [200, 200, 200, 429]


def test_rate_limits_let_traffic_through_when_redis_is_down(
    upstream: FakeUpstream, make_gateway: GatewayFactory, redis_server: RedisServer
) -> None:
    gateway = make_gateway(
        {
            **_keys({"name": "shared", "key": "sk-shared-001", "limits": {"requests_per_minute": 1}}),
            "state": {"backend": "redis", "redis_url": redis_server.url, "timeout_s": 0.3},
        }
    )
    redis_server.stop()
    upstream.enqueue(completion("a"), completion("b"))
    assert [_post(gateway, "sk-shared-001").status_code for _ in range(2)] == [200, 200]


def test_an_upstream_error_still_carries_the_rate_limit_headers(
    upstream: FakeUpstream, make_gateway: GatewayFactory
) -> None:
    gateway = make_gateway(_keys({"name": "tight", "key": "sk-tight-001", "limits": {"requests_per_minute": 5}}))
    upstream.enqueue(Json({"error": {"message": "bad", "type": "invalid_request_error"}}, status=400))
    response = _post(gateway, "sk-tight-001")
    assert response.status_code == 400 and response.headers["x-ratelimit-remaining-requests"] == "4"


def test_models_retrieve_finds_the_keys_models_only(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(
        _keys(
            {"name": "narrow", "key": "sk-narrow-001", "models": ["test-*"]},
            {"name": "none", "key": "sk-none-0001", "models": ["zzz"]},
        )
    )
    upstream.models = [MODEL]
    assert gateway.client(api_key="sk-narrow-001").models.retrieve(MODEL).id == MODEL
    for key, model in (("sk-none-0001", MODEL), ("sk-narrow-001", "test-missing")):
        with pytest.raises(openai.NotFoundError) as raised:
            gateway.client(api_key=key).models.retrieve(model)
        assert isinstance(raised.value.body, dict) and raised.value.body["code"] == "model_not_found"
