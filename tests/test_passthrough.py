"""Passthrough endpoints (embeddings, completions, listed extras): the real SDK, the gateway, a fake upstream."""

from __future__ import annotations

import array
import asyncio
import base64
import json
import logging
import socket
from typing import Any

import openai
import pytest
from pydantic import ValidationError

from gateway.config import GatewayConfig
from tests.conftest import Gateway, GatewayFactory
from tests.fake_upstream import MODEL, FakeUpstream, Hang, Json, Sse
from tests.test_observability import scrape, total, value

EMBEDDING_MODEL = "embed-small"
ERROR_FIELDS = {"message", "type", "param", "code"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _embeddings(vectors: list[list[float]], *, model: str = EMBEDDING_MODEL, as_base64: bool = False) -> Json:
    data: list[dict[str, Any]] = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(array.array("f", v).tobytes()).decode() if as_base64 else v,
        }
        for i, v in enumerate(vectors)
    ]
    usage = {"prompt_tokens": 7, "total_tokens": 7}
    return Json({"object": "list", "data": data, "model": model, "usage": usage})


def _text_completion(text: str, *, model: str = MODEL) -> Json:
    return Json(
        {
            "id": "cmpl-up",
            "object": "text_completion",
            "created": 1700000000,
            "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
    )


def _completion_chunk(text: str, finish_reason: str | None = None, usage: dict[str, int] | None = None) -> Any:
    body: dict[str, Any] = {
        "id": "cmpl-up",
        "object": "text_completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def test_embeddings_reach_the_upstream_and_come_back_through_the_sdk(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(_embeddings([[0.5, -1.25], [2.0, 0.0]], as_base64=True))
    answer = gateway.client().embeddings.create(model=EMBEDDING_MODEL, input=["one", "two"])
    assert [d.embedding for d in answer.data] == [[0.5, -1.25], [2.0, 0.0]]
    assert answer.usage.prompt_tokens == 7
    [sent] = upstream.requests
    assert sent.path == "/v1/embeddings"
    assert sent.body == {"model": EMBEDDING_MODEL, "input": ["one", "two"], "encoding_format": "base64"}
    assert sent.headers["authorization"] == "Bearer upstream-secret"


def test_body_and_answer_pass_byte_for_byte(upstream: FakeUpstream, gateway: Gateway) -> None:
    # Odd spacing, an unknown field and an integer no float can hold: the upstream gets exactly these bytes.
    sent = (
        b'{ "model" : "'
        + EMBEDDING_MODEL.encode()
        + b'", "input": "hi", "x_vendor": {"seed": 1180591620717411303424} }'
    )
    answer = (
        b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1]}],  "model":"m","extra":[1,2]}'
    )
    upstream.enqueue(Json(None, status=200, raw=answer))
    with gateway.http() as http:
        response = http.post("/v1/embeddings", content=sent, headers={"content-type": "application/json"})
    assert response.status_code == 200
    assert response.content == answer
    assert response.headers["content-type"] == "application/json"
    assert upstream.requests[0].raw == sent


def test_model_map_renames_only_the_model(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(upstream_overrides={"models": ["friendly"], "model_map": {"friendly": "org/embed-7b"}})
    upstream.enqueue(_embeddings([[1.0]], model="org/embed-7b"))
    with gateway.http() as http:
        raw = b'{"input": ["a"], "model": "friendly", "dimensions": 1, "seed": 1180591620717411303424}'
        response = http.post("/v1/embeddings", content=raw)
    assert response.status_code == 200
    assert (
        upstream.requests[0].raw
        == b'{"input":["a"],"model":"org/embed-7b","dimensions":1,"seed":1180591620717411303424}'
    )
    # The answer is the upstream's own, name included.
    assert response.json()["model"] == "org/embed-7b"


def test_completions_non_streaming(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(_text_completion(" world"))
    answer = gateway.client().completions.create(model=MODEL, prompt="hello", max_tokens=2, temperature=0)
    assert answer.choices[0].text == " world"
    assert answer.usage is not None and answer.usage.total_tokens == 5
    assert upstream.requests[0].path == "/v1/completions"
    assert upstream.requests[0].body == {"model": MODEL, "prompt": "hello", "max_tokens": 2, "temperature": 0}


def test_streamed_completion_arrives_event_by_event_before_the_upstream_finishes(
    upstream: FakeUpstream, gateway: Gateway
) -> None:
    script = Sse([_completion_chunk("Once"), _completion_chunk(" upon"), _completion_chunk("", "stop")], gate_after=1)
    upstream.enqueue(script)
    stream = gateway.client().completions.create(model=MODEL, prompt="tell", stream=True)
    iterator = iter(stream)
    assert next(iterator).choices[0].text == "Once"
    assert not script.gate_timed_out, "the first event only arrived after the upstream finished"
    script.gate.set()
    rest = list(iterator)
    assert [c.choices[0].text for c in rest] == [" upon", ""]
    assert rest[-1].choices[0].finish_reason == "stop"
    assert upstream.requests[0].body["stream"] is True


def test_streamed_bytes_are_relayed_unchanged(upstream: FakeUpstream, gateway: Gateway) -> None:
    # An event split across two writes, a comment, CRLF line endings and a named event: all as sent.
    items: list[Any] = [
        b'data: {"id":"c","choices":[{"index":0,"te',
        b'xt":"a"}]}\n\n',
        b": keep-alive\n\n",
        b'event: message\r\ndata: {"id":"c","choices":[{"index":0,"text":"b"}]}\r\n\r\n',
        b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}\n\n',
    ]
    upstream.enqueue(Sse(items))
    before = scrape(gateway.url)
    with gateway.http() as http:
        body = {"model": MODEL, "prompt": "x", "stream": True}
        response = http.post("/v1/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.content == b"".join(items) + b"data: [DONE]\n\n"
    after = scrape(gateway.url)
    usage = {"gen_ai_request_model": MODEL, "key": "anonymous"}
    for kind, tokens in (("input", 4), ("output", 2)):
        name = "gen_ai_client_token_usage_sum"
        assert (
            value(after, name, **usage, gen_ai_token_type=kind) - value(before, name, **usage, gen_ai_token_type=kind)
            == tokens
        )


def test_a_client_that_leaves_mid_stream_cancels_the_upstream(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(Sse([_completion_chunk("first")], done=False, hang_at_end=True))
    with (
        gateway.http() as http,
        http.stream("POST", "/v1/completions", json={"model": MODEL, "prompt": "x", "stream": True}) as response,
    ):
        assert response.status_code == 200
        assert b'"first"' in next(response.iter_raw())
    assert upstream.disconnected.wait(5), "the upstream request outlived the client"


def test_a_client_that_leaves_before_the_answer_cancels_the_upstream(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(Hang())
    with pytest.raises(openai.APITimeoutError):
        gateway.client(timeout=0.5).embeddings.create(model=EMBEDDING_MODEL, input="x")
    assert upstream.disconnected.wait(5), "the upstream request outlived the client"


def test_keepalive_comments_never_land_inside_an_event(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"server": {"keepalive_interval_s": 0.05}})
    items = [b'data: {"id":"c","choices":[{"index":0,"te', b'xt":"a","finish_reason":"stop"}]}\n\n']
    script = Sse(items, gate_after=1)
    upstream.enqueue(script)
    with (
        gateway.http() as http,
        http.stream("POST", "/v1/completions", json={"model": MODEL, "prompt": "x", "stream": True}) as response,
    ):
        pieces = response.iter_raw()
        received = next(pieces)
        # The upstream is paused mid-event: the client gets keep-alives, not half an event.
        assert received.startswith(b": ping\n\n")
        script.gate.set()
        received += b"".join(pieces)
    assert not script.gate_timed_out
    assert received.replace(b": ping\n\n", b"") == b"".join(items) + b"data: [DONE]\n\n"


def test_a_stream_that_stalls_mid_event_ends_in_one_error_event(
    upstream: FakeUpstream, make_gateway: GatewayFactory
) -> None:
    gateway = make_gateway(upstream_overrides={"timeout_s": {"connect": 1, "read": 0.3}})
    whole = b'data: {"id":"c","choices":[{"index":0,"text":"a"}]}\n\n'
    upstream.enqueue(Sse([whole, b'data: {"id":"c","choi'], done=False, hang_at_end=True))
    with gateway.http() as http:
        response = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "stream": True})
    events = response.content.split(b"\n\n")
    assert response.content.startswith(whole)
    assert b'"choi' not in response.content.removeprefix(whole)
    error = json.loads(events[1].removeprefix(b"data: "))
    assert set(error["error"]) == ERROR_FIELDS and error["error"]["code"] == "upstream_timeout"
    assert events[2:] == [b"data: [DONE]", b""]
    upstream.enqueue(Sse([whole, b'data: {"id":"c","choi'], done=False, hang_at_end=True))
    stream = gateway.client().completions.create(model=MODEL, prompt="x", stream=True)
    with pytest.raises(openai.APIError, match="in time"):
        list(stream)


def test_streamed_request_answered_with_json_is_relayed_as_json(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(_text_completion("whole"))
    with gateway.http() as http:
        response = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "stream": True})
    assert response.status_code == 200
    assert response.json()["choices"][0]["text"] == "whole"


def test_retries_then_fallbacks_before_the_first_byte(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    backup = FakeUpstream().start()
    try:
        gateway = make_gateway(
            {
                "upstreams": [
                    {
                        "name": "primary",
                        "base_url": upstream.base_url,
                        "models": [EMBEDDING_MODEL],
                        "retries": {"attempts": 2, "initial_wait_s": 0.01, "max_wait_s": 0.02},
                        "fallbacks": [{"upstream": "backup", "model": "backup-embed"}],
                    },
                    {"name": "backup", "base_url": backup.base_url, "models": ["backup-embed"]},
                ]
            }
        )
        upstream.enqueue(Json({"error": {"message": "busy"}}, status=503), Json({"error": {"message": "down"}}, 502))
        backup.enqueue(_embeddings([[3.0]], model="backup-embed"))
        answer = gateway.client().embeddings.create(model=EMBEDDING_MODEL, input="x", encoding_format="float")
        assert answer.data[0].embedding == [3.0]
        assert len(upstream.requests) == 2
        assert backup.requests[0].body["model"] == "backup-embed"

        # A stream is retried too, while nothing has reached the client.
        upstream.enqueue(Json({"error": {"message": "busy"}}, status=503), Sse([_completion_chunk("ok", "stop")]))
        chunks = list(gateway.client().completions.create(model=EMBEDDING_MODEL, prompt="x", stream=True))
        assert [c.choices[0].text for c in chunks] == ["ok"]
        assert len(upstream.requests) == 4
    finally:
        backup.stop()


def test_listed_extra_paths_reach_vllm_endpoints(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"server": {"passthrough_paths": ["/v1/embeddings", "/v1/rerank", "/tokenize"]}})
    upstream.enqueue(Json({"results": [{"index": 1, "relevance_score": 0.9}]}), Json({"tokens": [1, 2], "count": 2}))
    with gateway.http() as http:
        rerank = http.post("/v1/rerank", json={"model": MODEL, "query": "q", "documents": ["a", "b"]})
        tokenize = http.post("/tokenize", json={"model": MODEL, "prompt": "hi"})
        unlisted = http.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert rerank.json()["results"][0]["index"] == 1
    assert tokenize.json() == {"tokens": [1, 2], "count": 2}
    # vLLM serves /tokenize beside /v1, not under it.
    assert [r.path for r in upstream.requests] == ["/v1/rerank", "/tokenize"]
    assert unlisted.status_code == 404
    assert set(unlisted.json()["error"]) == ERROR_FIELDS
    assert "/v1/completions" in unlisted.json()["error"]["message"]


@pytest.mark.parametrize(
    ("content", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"input": "x"}', 400, "model"),
        (b'{"model": 7, "input": "x"}', 400, "model"),
        (b'{"model": "' + b"m" * 300 + b'", "input": "x"}', 400, "model"),
        (b'{"model": "not-served", "input": "x"}', 404, "model"),
        (b'{"model": "' + MODEL.encode() + b'", "input": "' + b"x" * 2000 + b'"}', 413, None),
    ],
)
def test_hostile_bodies_get_openai_errors_and_never_reach_the_upstream(
    upstream: FakeUpstream, make_gateway: GatewayFactory, content: bytes, status: int, param: str | None
) -> None:
    gateway = make_gateway({"server": {"max_body_bytes": 1000}}, upstream_overrides={"models": [MODEL]})
    with gateway.http() as http:
        response = http.post("/v1/embeddings", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == ERROR_FIELDS and error["message"]
    assert error["param"] == param
    assert upstream.requests == []


def test_wrong_method_is_405(upstream: FakeUpstream, gateway: Gateway) -> None:
    with gateway.http() as http:
        response = http.get("/v1/embeddings")
    assert response.status_code == 405
    assert set(response.json()["error"]) == ERROR_FIELDS


def test_keys_models_and_limits_apply_as_on_chat(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    keys = [
        {"name": "narrow", "key": "sk-narrow", "models": ["chat-*"], "limits": {"requests_per_minute": 1}},
        {"name": "wide", "key": "sk-wide"},
    ]
    gateway = make_gateway({"auth": {"api_keys": keys}})
    with pytest.raises(openai.AuthenticationError):
        gateway.client(api_key="sk-nope").embeddings.create(model=EMBEDDING_MODEL, input="x")
    with pytest.raises(openai.NotFoundError) as hidden:
        gateway.client(api_key="sk-narrow").embeddings.create(model=EMBEDDING_MODEL, input="x")
    assert hidden.value.code == "model_not_found"
    upstream.enqueue(_text_completion("ok", model="chat-small"))
    first = gateway.client(api_key="sk-narrow").completions.with_raw_response.create(model="chat-small", prompt="x")
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as limited:
        gateway.client(api_key="sk-narrow").completions.create(model="chat-small", prompt="x")
    assert limited.value.response.headers["retry-after"]
    upstream.enqueue(_embeddings([[1.0]]))
    assert gateway.client(api_key="sk-wide").embeddings.create(
        model=EMBEDDING_MODEL, input="x", encoding_format="float"
    )
    assert [r.path for r in upstream.requests] == ["/v1/completions", "/v1/embeddings"]
    assert "sk-wide" not in str(upstream.requests[1].headers)


def test_upstream_errors_are_mapped_as_on_chat(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(upstream_overrides={"api_key": "sk-upstream-very-secret-42"})
    upstream.enqueue(
        Json({"error": {"message": "input too long", "type": "BadRequestError", "param": "input", "code": 400}}, 400),
        Json({"detail": "bad key sk-upstream-very-secret-42"}, 422),
        Json(None, raw=b"<html>oops</html>"),
    )
    client = gateway.client()
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model=EMBEDDING_MODEL, input="x")
    assert "input too long" in bad.value.message
    with pytest.raises(openai.UnprocessableEntityError) as wrapped:
        client.embeddings.create(model=EMBEDDING_MODEL, input="x")
    assert isinstance(wrapped.value.body, dict) and set(wrapped.value.body) == ERROR_FIELDS
    assert "sk-upstream-very-secret-42" not in str(wrapped.value.body)
    with pytest.raises(openai.APIStatusError) as garbage:
        client.embeddings.create(model=EMBEDDING_MODEL, input="x")
    assert garbage.value.status_code == 502
    assert len(upstream.requests) == 3  # none of these is retried


def test_unreachable_upstream_is_502(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(upstream_overrides={"base_url": f"http://127.0.0.1:{_free_port()}/v1"})
    with pytest.raises(openai.APIStatusError) as raised:
        gateway.client().completions.create(model=MODEL, prompt="x", stream=True)
    assert raised.value.status_code == 502


def test_requests_are_counted_by_path_and_logged(
    upstream: FakeUpstream, make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = make_gateway(upstream_overrides={"models": [EMBEDDING_MODEL]})
    before = scrape(gateway.url)
    upstream.enqueue(_embeddings([[1.0]]))
    with caplog.at_level(logging.INFO, logger="gateway.request"):
        gateway.client().embeddings.create(model=EMBEDDING_MODEL, input="x", encoding_format="float")
        with pytest.raises(openai.NotFoundError):
            gateway.client().embeddings.create(model="unknown-model", input="x")
    after = scrape(gateway.url)
    series = "gateway_passthrough_requests_total"
    labels = {"path": "/v1/embeddings", "stream": "false", "key": "anonymous"}
    ok = {**labels, "gen_ai_request_model": EMBEDDING_MODEL, "status": "200"}
    assert value(after, series, **ok) - value(before, series, **ok) == 1
    missing = {**labels, "gen_ai_request_model": "other", "status": "404"}
    assert value(after, series, **missing) - value(before, series, **missing) == 1
    duration = "gateway_passthrough_request_duration_seconds_count"
    assert total(after, duration, path="/v1/embeddings") - total(before, duration, path="/v1/embeddings") == 2
    tokens = {"gen_ai_request_model": EMBEDDING_MODEL, "gen_ai_token_type": "input", "key": "anonymous"}
    usage = "gen_ai_client_token_usage_sum"
    assert value(after, usage, **tokens) - value(before, usage, **tokens) == 7
    # Chat's own series are left alone.
    assert total(after, "gateway_requests_total") == total(before, "gateway_requests_total")
    lines = [r for r in caplog.records if getattr(r, "event", None) == "request"]
    assert [(r.path, r.model, r.status, r.upstream) for r in lines] == [
        ("/v1/embeddings", EMBEDDING_MODEL, 200, "fake"),
        ("/v1/embeddings", "unknown-model", 404, None),
    ]
    assert lines[0].prompt_tokens == 7


@pytest.mark.parametrize(
    "path", ["v1/embeddings", "/v1/chat/completions", "/v1/models", "/v1/models/x", "/metrics", "/v1/../admin", "/a?b"]
)
def test_passthrough_paths_must_be_plain_and_not_the_gateways_own(path: str) -> None:
    with pytest.raises(ValidationError, match="passthrough_paths"):
        GatewayConfig.model_validate(
            {"upstreams": [{"name": "u", "base_url": "http://x/v1"}], "server": {"passthrough_paths": [path]}}
        )


def test_passthrough_paths_default_to_embeddings_and_completions() -> None:
    config = GatewayConfig.model_validate({"upstreams": [{"name": "u", "base_url": "http://x/v1"}]})
    assert config.server.passthrough_paths == ["/v1/embeddings", "/v1/completions"]


def test_async_sdk_streams_completions(upstream: FakeUpstream, gateway: Gateway) -> None:
    async def scenario() -> list[str]:
        async with gateway.async_client() as client:
            stream = await client.completions.create(model=MODEL, prompt="x", stream=True)
            return [chunk.choices[0].text async for chunk in stream]

    upstream.enqueue(Sse([_completion_chunk("a"), _completion_chunk("b", "stop")]))
    assert asyncio.run(scenario()) == ["a", "b"]


@pytest.mark.parametrize("stream", ['"true"', "1", "null"])
def test_stream_must_be_a_boolean(upstream: FakeUpstream, gateway: Gateway, stream: str) -> None:
    upstream.enqueue(_text_completion("ok"))
    body = f'{{"model": "{MODEL}", "prompt": "x", "stream": {stream}}}'
    with gateway.http() as http:
        answer = http.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    if stream == "null":  # absent in effect: an ordinary answer
        assert answer.status_code == 200
        return
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "stream"
    assert upstream.requests == []


def test_a_body_that_cannot_be_re_encoded_is_a_400(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(upstream_overrides={"models": ["friendly"], "model_map": {"friendly": "org/embed-7b"}})
    # A lone surrogate beside a big integer: parsed exactly, but not encodable as UTF-8 once renamed.
    body = '{"model": "friendly", "input": "\\ud800", "seed": 123456789012345678901234567890}'
    with gateway.http() as http:
        answer = http.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert set(answer.json()["error"]) == ERROR_FIELDS
    assert upstream.requests == []


@pytest.mark.parametrize("stream", [False, True])
def test_the_request_deadline_bounds_passthrough(
    upstream: FakeUpstream, make_gateway: GatewayFactory, stream: bool
) -> None:
    gateway = make_gateway({"loop": {"deadline_s": 0.5}})
    upstream.enqueue(Hang())
    with gateway.http() as http:
        answer = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "stream": stream})
    if answer.headers["content-type"].startswith("text/event-stream"):
        # The upstream had sent its headers: the deadline ends the stream with an error event.
        assert '"code":"upstream_timeout"' in answer.text and answer.text.endswith("data: [DONE]\n\n")
    else:
        assert answer.status_code == 504
        assert answer.json()["error"]["code"] == "upstream_timeout"


@pytest.mark.parametrize("asked", [False, True], ids=["usage-not-asked", "usage-asked"])
def test_a_streamed_answer_counts_toward_a_token_limit(
    upstream: FakeUpstream, make_gateway: GatewayFactory, asked: bool
) -> None:
    keys = [{"name": "metered", "key": "sk-metered-01", "limits": {"tokens_per_minute": 100}}]
    gateway = make_gateway({"auth": {"api_keys": keys}})
    usage_chunk = {**_completion_chunk(""), "choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 10}}
    stream = Sse([_completion_chunk("Once"), _completion_chunk("", "stop"), usage_chunk])
    upstream.enqueue(stream, _text_completion("x"))
    body: dict[str, Any] = {"model": MODEL, "prompt": "x", "stream": True}
    if asked:
        body["stream_options"] = {"include_usage": True}
    auth = {"authorization": "Bearer sk-metered-01"}
    with gateway.http() as http:
        streamed = http.post("/v1/completions", json=body, headers=auth)
        after = http.post("/v1/completions", json={"model": MODEL, "prompt": "x"}, headers=auth)
    assert streamed.status_code == 200, streamed.text
    # Asked for upstream either way, so the 40 tokens (no total given: the parts) are spent before the next request.
    assert upstream.requests[0].body["stream_options"] == {"include_usage": True}
    assert after.headers["x-ratelimit-remaining-tokens"] == "60"
    # The usage chunk reaches only a client that asked for it.
    assert ('"usage"' in streamed.text) is asked
    assert '"text":"Once"' in streamed.text.replace(" ", "") and streamed.text.endswith("data: [DONE]\n\n")
