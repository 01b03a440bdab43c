"""The gateway as a plain OpenAI-compatible proxy: passthrough, routing, auth, errors, retries."""

from __future__ import annotations

import json
import socket

import httpx
import openai
import pytest

from gateway.jsoncodec import dumps, loads_exact
from tests.conftest import Gateway, GatewayFactory
from tests.fake_upstream import MODEL, FakeUpstream, Hang, Json, Sse, chunk, completion


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_non_streaming_answer_passes_through(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion("Hello there"))
    answer = gateway.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "Hello there"
    assert answer.model == MODEL
    assert answer.usage is not None and answer.usage.total_tokens == 15


def test_unknown_fields_are_forwarded_untouched(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion("ok"))
    gateway.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi", "name": "alice"}],
        temperature=0.3,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}, "guided_json": {"type": "object"}},
    )
    sent = upstream.bodies[0]
    assert sent["chat_template_kwargs"] == {"enable_thinking": False}
    assert sent["guided_json"] == {"type": "object"}
    assert sent["temperature"] == 0.3
    assert sent["messages"] == [{"role": "user", "content": "hi", "name": "alice"}]


def test_model_map_rewrites_both_ways(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(upstream_overrides={"models": ["friendly"], "model_map": {"friendly": "org/real-7b"}})
    upstream.enqueue(completion("ok", model="org/real-7b"))
    answer = gateway.client().chat.completions.create(model="friendly", messages=[{"role": "user", "content": "hi"}])
    assert upstream.bodies[0]["model"] == "org/real-7b"
    assert answer.model == "friendly"


def test_streamed_model_map_rewrites_every_chunk(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(upstream_overrides={"models": ["friendly"], "model_map": {"friendly": "org/real-7b"}})
    upstream.enqueue(
        Sse(
            [
                chunk({"role": "assistant", "content": ""}, model="org/real-7b"),
                chunk({"content": "Hi"}, model="org/real-7b"),
                chunk({}, "stop", model="org/real-7b"),
            ]
        )
    )
    stream = gateway.client().chat.completions.create(
        model="friendly", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(stream)
    assert chunks and {c.model for c in chunks} == {"friendly"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hi"


def test_client_authorization_is_replaced_by_upstream_key(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion("ok"))
    gateway.client(api_key="client-key").chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_headers={"x-custom": "kept"}
    )
    headers = upstream.requests[0].headers
    assert headers["authorization"] == "Bearer upstream-secret"
    assert headers["x-custom"] == "kept"
    assert "client-key" not in str(headers)


def test_api_key_auth_scheme(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(upstream_overrides={"auth_scheme": "api-key", "headers": {"x-team": "ml"}})
    upstream.enqueue(completion("ok"))
    gateway.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert upstream.requests[0].headers["authorization"] == "Api-Key upstream-secret"
    assert upstream.requests[0].headers["x-team"] == "ml"


def test_request_id_is_accepted_forwarded_and_echoed(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion("ok"), completion("ok"))
    with gateway.http() as http:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        given = http.post("/v1/chat/completions", json=body, headers={"x-request-id": "req-123"})
        generated = http.post("/v1/chat/completions", json=body)
    assert given.headers["x-request-id"] == "req-123"
    assert upstream.requests[0].headers["x-request-id"] == "req-123"
    assert len(generated.headers["x-request-id"]) >= 16


def test_auth_required_when_keys_configured(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"auth": {"api_keys": ["sk-good", {"name": "team-b", "key": "sk-b"}]}})
    upstream.enqueue(completion("ok"), completion("ok"))
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError) as wrong:
        gateway.client(api_key="sk-bad").chat.completions.create(model=MODEL, messages=messages)
    assert wrong.value.status_code == 401
    with gateway.http() as http:
        missing = http.post("/v1/chat/completions", json={"model": MODEL, "messages": messages})
    assert missing.status_code == 401
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert gateway.client(api_key="sk-good").chat.completions.create(model=MODEL, messages=messages)
    assert gateway.client(api_key="sk-b").chat.completions.create(model=MODEL, messages=messages)
    assert len(upstream.requests) == 2


@pytest.mark.parametrize(
    ("content", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"model": "m"}', 400, "messages"),
        (b'{"model": "m", "messages": "hi"}', 400, "messages"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model"),
        (b'{"model": "m", "messages": [{"content": "x"}]}', 400, "messages"),
    ],
)
def test_malformed_requests_get_openai_shaped_400(
    upstream: FakeUpstream, gateway: Gateway, content: bytes, status: int, param: str | None
) -> None:
    with gateway.http() as http:
        response = http.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]
    assert upstream.requests == []


def test_unknown_model_is_404(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(upstream_overrides={"models": ["only-this"]})
    with pytest.raises(openai.NotFoundError) as raised:
        gateway.client().chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.code == "model_not_found"
    assert upstream.requests == []


def test_body_over_limit_is_413(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"server": {"max_body_bytes": 1000}})
    with gateway.http() as http:
        response = http.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "x" * 2000}]}
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_unreachable_upstream_is_502(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(upstream_overrides={"base_url": f"http://127.0.0.1:{_free_port()}/v1"})
    with pytest.raises(openai.APIStatusError) as raised:
        gateway.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 502
    assert "upstream-secret" not in raised.value.response.text


def test_upstream_garbage_is_502(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(Json(None, raw=b"<html>oops</html>"))
    with pytest.raises(openai.APIStatusError) as raised:
        gateway.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 502


def test_slow_upstream_is_504(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(upstream_overrides={"timeout_s": {"connect": 1, "read": 0.3}})
    upstream.enqueue(Hang())
    with pytest.raises(openai.APIStatusError) as raised:
        gateway.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 504
    assert len(upstream.requests) == 1


def test_retries_on_503_then_succeeds(upstream: FakeUpstream, gateway: Gateway) -> None:
    busy = Json({"error": {"message": "overloaded"}}, status=503)
    upstream.enqueue(busy, Json({"error": {"message": "slow down"}}, status=429, headers={"retry-after": "0"}))
    upstream.enqueue(completion("finally"))
    answer = gateway.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "finally"
    assert len(upstream.requests) == 3


def test_retries_exhausted_then_fallback(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    backup = FakeUpstream().start()
    try:
        gateway = make_gateway(
            {
                "upstreams": [
                    {
                        "name": "primary",
                        "base_url": upstream.base_url,
                        "retries": {"attempts": 2, "initial_wait_s": 0.01, "max_wait_s": 0.02},
                        "fallbacks": [{"upstream": "backup", "model": "backup-model"}],
                    },
                    {"name": "backup", "base_url": backup.base_url, "models": ["backup-model"]},
                ]
            }
        )
        upstream.enqueue(*(Json({"error": {"message": "down"}}, status=502) for _ in range(2)))
        backup.enqueue(completion("from backup", model="backup-model"))
        answer = gateway.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "from backup"
        assert answer.model == MODEL
        assert len(upstream.requests) == 2
        assert backup.bodies[0]["model"] == "backup-model"
    finally:
        backup.stop()


def test_upstream_4xx_passes_through_without_retry(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(
        Json({"error": {"message": "bad temperature", "type": "BadRequestError", "param": None, "code": 400}}, 400)
    )
    with pytest.raises(openai.BadRequestError) as raised:
        gateway.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert "bad temperature" in raised.value.message
    assert len(upstream.requests) == 1


def test_upstream_error_not_in_openai_shape_is_wrapped(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(Json({"detail": [{"msg": "extra fields not permitted"}], "object": "error"}, 422))
    with gateway.http() as http:
        response = http.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        )
    assert response.status_code == 422
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "extra fields not permitted" in error["message"]


def test_stream_is_relayed_before_upstream_finishes(upstream: FakeUpstream, gateway: Gateway) -> None:
    script = Sse(
        [chunk({"role": "assistant", "content": "First"}), chunk({"content": " second"}), chunk({}, "stop")],
        gate_after=1,
    )
    upstream.enqueue(script)
    stream = gateway.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    iterator = iter(stream)
    first = next(iterator)
    assert first.choices[0].delta.content == "First"
    assert not script.gate_timed_out, "the first chunk only arrived after the upstream finished"
    script.gate.set()
    rest = list(iterator)
    assert "".join(c.choices[0].delta.content or "" for c in rest) == " second"
    assert rest[-1].choices[0].finish_reason == "stop"
    assert not script.gate_timed_out


def test_stream_upstream_error_before_first_byte_is_http_error(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(Json({"error": {"message": "no such lora"}}, 404))
    with pytest.raises(openai.NotFoundError):
        gateway.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)
    assert len(upstream.requests) == 1


def test_models_lists_configured_and_upstream_models(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    backup = FakeUpstream().start()
    try:
        gateway = make_gateway(
            {
                "upstreams": [
                    {"name": "named", "base_url": backup.base_url, "models": ["alias-a"]},
                    {"name": "any", "base_url": upstream.base_url, "models": ["*"]},
                ]
            }
        )
        upstream.models = ["served-1", "served-2"]
        ids = [m.id for m in gateway.client().models.list()]
        assert ids == ["alias-a", "served-1", "served-2"]
    finally:
        backup.stop()


def test_a_models_list_over_its_bound_counts_as_none(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    upstream.models = [f"model-{i:06d}-" + "x" * 100 for i in range(150_000)]  # about 18 MiB of JSON
    with gateway.http() as http:
        listed = http.get("/v1/models")
    assert listed.status_code == 200, listed.text[:300]
    assert not any(m["id"].startswith("model-") for m in listed.json()["data"])


def test_health_and_readiness(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    with gateway.http() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["upstreams"] == {"fake": "ok"}
    down = make_gateway(upstream_overrides={"base_url": f"http://127.0.0.1:{_free_port()}/v1"})
    with down.http() as http:
        not_ready = http.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["upstreams"] == {"fake": "unreachable"}


def test_metrics_endpoint_exposes_request_counter(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion("ok"))
    gateway.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    text = httpx.get(f"{gateway.url}/metrics").text
    assert "gateway_requests_total" in text


def test_model_names_over_the_cap_are_400_and_never_cached(upstream: FakeUpstream, gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        gateway.client().chat.completions.create(model="m" * 257, messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 400
    assert isinstance(raised.value.body, dict) and raised.value.body["param"] == "model"
    assert upstream.requests == []
    assert "m" * 257 not in gateway.app.state.gateway.chat.router._cache


def test_json_nested_past_the_limit_is_400(upstream: FakeUpstream, gateway: Gateway) -> None:
    for depth in (300, 1100):
        deep = (
            '{"model": "' + MODEL + '", "messages": [{"role": "user", "content": ' + "[" * depth + "]" * depth + "}]}"
        )
        with gateway.http() as http:
            response = http.post("/v1/chat/completions", content=deep, headers={"content-type": "application/json"})
        assert response.status_code == 400
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert upstream.requests == []


def test_integers_beyond_64_bits_reach_the_upstream_exactly(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion("ok"))
    big = 2**70
    raw = '{"model": "' + MODEL + '", "messages": [{"role": "user", "content": "hi"}], "seed": ' + str(big) + "}"
    with gateway.http() as http:
        response = http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200
    assert json.loads(upstream.requests[0].raw)["seed"] == big == 1180591620717411303424


def test_non_ascii_header_values_are_forwarded_as_sent(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion("ok"))
    with gateway.http() as http:
        response = http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            headers=[
                (b"x-team", "Zürich".encode()),
                (b"x-latin1", "Zürich".encode("latin-1")),
                (b"x-request-id", b"r\xe9q"),
            ],
        )
    assert response.status_code == 200
    forwarded = upstream.requests[0].headers
    assert forwarded["x-team"].encode("latin-1") == "Zürich".encode()
    # Bytes that are not UTF-8 cannot be sent on unchanged: dropped, never altered.
    assert "x-latin1" not in forwarded
    # A request id that is not plain ASCII is replaced, not echoed.
    assert response.headers["x-request-id"].isascii() and response.headers["x-request-id"] != "r\xe9q"


def test_configured_secrets_are_redacted_from_upstream_errors(
    upstream: FakeUpstream, make_gateway: GatewayFactory
) -> None:
    gateway = make_gateway(upstream_overrides={"api_key": "sk-upstream-very-secret-42"})
    echo = "Incorrect API key provided: sk-upstream-very-secret-42. Check Bearer sk-upstream-very-secret-42."
    upstream.enqueue(Json({"error": {"message": echo, "type": "invalid_request_error"}}, status=401))
    with pytest.raises(openai.AuthenticationError) as raised:
        gateway.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert "sk-upstream-very-secret-42" not in str(raised.value.body)
    assert "[redacted]" in str(raised.value.body)


def test_readiness_details_need_a_valid_key(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"auth": {"api_keys": ["sk-ready-check"]}})
    with gateway.http() as http:
        anonymous = http.get("/readyz")
        wrong = http.get("/readyz", headers={"authorization": "Bearer nope"})
        keyed = http.get("/readyz", headers={"authorization": "Bearer sk-ready-check"})
    assert anonymous.status_code == wrong.status_code == keyed.status_code == 200
    assert anonymous.json() == wrong.json() == {"status": "ready"}
    assert keyed.json()["upstreams"] == {"fake": "ok"}


def test_stream_whose_chunks_carry_no_choices_is_an_error(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(Sse([chunk(choices=[]), chunk(choices=[], usage={"prompt_tokens": 1})]))
    with gateway.http() as http:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        response = http.post("/v1/chat/completions", json=body)
    # Nothing reached the client before the fault, so it is an ordinary HTTP error, not an empty success.
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_stream_error"


@pytest.mark.parametrize("number", [-(2**63) - 1, 2**64, -(2**70)])
def test_integers_orjson_would_round_take_the_exact_path(number: int) -> None:
    raw = b'{"seed":' + str(number).encode() + b"}"
    assert loads_exact(raw) == {"seed": number}
    assert dumps(loads_exact(raw)) == raw


def test_ready_while_every_model_keeps_a_reachable_fallback(
    upstream: FakeUpstream, make_gateway: GatewayFactory
) -> None:
    down = f"http://127.0.0.1:{_free_port()}/v1"
    gateway = make_gateway(
        {
            "upstreams": [
                {"name": "primary", "base_url": down, "models": ["*"], "fallbacks": [{"upstream": "backup"}]},
                {"name": "backup", "base_url": upstream.base_url, "models": ["backup-model"]},
            ]
        }
    )
    with gateway.http() as http:
        ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["upstreams"] == {"primary": "unreachable", "backup": "ok"}
    assert ready.json()["unserved_models"] == []


def test_not_ready_while_one_model_has_no_reachable_target(
    upstream: FakeUpstream, make_gateway: GatewayFactory
) -> None:
    down = f"http://127.0.0.1:{_free_port()}/v1"
    gateway = make_gateway(
        {
            "auth": {
                "api_keys": ["sk-ready-check", {"name": "narrow", "key": "sk-narrow-check", "models": ["served"]}]
            },
            "upstreams": [
                {
                    "name": "up",
                    "base_url": upstream.base_url,
                    "models": ["served"],
                    "fallbacks": [{"upstream": "down"}],
                },
                {"name": "down", "base_url": down, "models": ["stranded"]},
            ],
        }
    )
    with gateway.http() as http:
        anonymous = http.get("/readyz")
        keyed = http.get("/readyz", headers={"authorization": "Bearer sk-ready-check"})
        narrow = http.get("/readyz", headers={"authorization": "Bearer sk-narrow-check"})
    assert anonymous.status_code == keyed.status_code == narrow.status_code == 503
    # A key sees only the unserved models it may use, as on /v1/models.
    assert narrow.json()["unserved_models"] == []
    assert anonymous.json() == {"status": "not_ready"}
    assert keyed.json()["upstreams"] == {"up": "ok", "down": "unreachable"}
    assert keyed.json()["unserved_models"] == ["stranded"]
