"""Metrics asserted by value after real requests, multiprocess mode, JSON logs without secrets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.state import MODELS_STARTUP_WAIT_S
from tests.conftest import TOOL_FIXTURES, Gateway, GatewayFactory
from tests.fake_upstream import MODEL, FakeUpstream, Json, Sse, call, chunk, completion
from tests.redis_server import RedisServer
from tests.test_deploy import _dashboard, _exprs, _panels, _template_queries, metric_names
from tests.test_mcp import stdio_config

USER = [{"role": "user", "content": "add things"}]


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def test_two_round_conversation_moves_series_by_exact_amounts(
    upstream: FakeUpstream, make_gateway: GatewayFactory
) -> None:
    gateway = make_gateway(upstream_overrides={"models": [MODEL]})
    before = scrape(gateway.url)
    upstream.enqueue(
        completion(
            None,
            [call("add", {"a": 1, "b": 2}, "a1"), call("add", {"a": 3, "b": 4}, "a2")],
            usage={"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
        ),
        completion(
            None,
            [call("add", {"a": "x", "b": 1}, "a3")],
            usage={"prompt_tokens": 150, "completion_tokens": 10, "total_tokens": 160},
        ),
        completion("done", usage={"prompt_tokens": 200, "completion_tokens": 7, "total_tokens": 207}),
    )
    gateway.client().chat.completions.create(model=MODEL, messages=USER)
    after = scrape(gateway.url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("gateway_tool_calls_total", gen_ai_tool_name="add", outcome="ok") == 2
    assert delta("gateway_tool_calls_total", gen_ai_tool_name="add", outcome="invalid_arguments") == 1
    assert (
        delta(
            "gen_ai_client_operation_duration_seconds_count",
            gen_ai_operation_name="execute_tool",
            gen_ai_tool_name="add",
        )
        == 3
    )
    assert delta("gateway_tool_rounds_count") == 1
    assert delta("gateway_tool_rounds_sum") == 2
    usage = {"gen_ai_request_model": MODEL, "key": "anonymous"}
    assert delta("gen_ai_client_token_usage_sum", **usage, gen_ai_token_type="input") == 450
    assert delta("gen_ai_client_token_usage_sum", **usage, gen_ai_token_type="output") == 37
    assert delta("gateway_requests_total", **usage, stream="false", status="200") == 1
    assert delta("gateway_upstream_requests_total", upstream="fake", outcome="ok") == 3
    assert delta("gateway_upstream_request_duration_seconds_count", upstream="fake") == 3
    assert delta("gateway_overhead_seconds_count", stream="false") == 1
    assert delta("gen_ai_server_request_duration_seconds_count", gen_ai_request_model=MODEL, stream="false") == 1
    assert value(after, "gateway_requests_in_flight") == 0


def test_streamed_round_records_time_to_first_token(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(upstream_overrides={"models": [MODEL]})
    before = scrape(gateway.url)
    upstream.enqueue(Sse([chunk({"role": "assistant", "content": "hi"}), chunk({}, "stop")]))
    list(gateway.client().chat.completions.create(model=MODEL, messages=USER, stream=True))
    after = scrape(gateway.url)
    name = "gen_ai_server_time_to_first_token_seconds_count"
    assert value(after, name, gen_ai_request_model=MODEL) - value(before, name, gen_ai_request_model=MODEL) == 1


def test_unknown_models_and_tools_fold_into_other(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    before = scrape(gateway.url)
    upstream.enqueue(completion(None, [call("made_up_tool", {}, "u1")]), completion("ok"))
    gateway.client().chat.completions.create(model="client-invented-name-123", messages=USER)
    after = scrape(gateway.url)
    assert (
        total(after, "gateway_requests_total", gen_ai_request_model="other")
        - total(before, "gateway_requests_total", gen_ai_request_model="other")
        == 1
    )
    assert not any("client-invented-name-123" in str(labels) for _, labels in after)
    outcome = {"gen_ai_tool_name": "other", "outcome": "unknown_tool"}
    assert (
        value(after, "gateway_tool_calls_total", **outcome) - value(before, "gateway_tool_calls_total", **outcome) == 1
    )
    assert not any("made_up_tool" in str(labels) for _, labels in after)


def test_errors_are_counted_by_status(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"auth": {"api_keys": ["sk-right"]}})
    before = scrape(gateway.url)
    with pytest.raises(openai.AuthenticationError):
        gateway.client(api_key="sk-wrong").chat.completions.create(model=MODEL, messages=USER)
    after = scrape(gateway.url)
    assert (
        total(after, "gateway_requests_total", status="401") - total(before, "gateway_requests_total", status="401")
        == 1
    )


def test_dashboard_queries_only_series_a_live_gateway_exports(
    upstream: FakeUpstream, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    # Every feature a panel covers is in use: server tools, an MCP server, streams and a passthrough path.
    gateway = make_gateway({"tools": {"mcp_servers": [stdio_config(tmp_path / "calls.jsonl")]}})
    upstream.enqueue(completion(None, [call("add", {"a": 1, "b": 1}, "d1")]), completion("2"))
    gateway.client().chat.completions.create(model=MODEL, messages=USER)
    upstream.enqueue(Sse([chunk({"role": "assistant", "content": "hi"}), chunk({}, "stop")]))
    list(gateway.client().chat.completions.create(model=MODEL, messages=USER, stream=True))
    upstream.enqueue(Json({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}]}))
    gateway.client().embeddings.create(model=MODEL, input="x", encoding_format="float")
    deadline = time.monotonic() + 15
    while ("gateway_mcp_server_up", "files") not in _mcp_servers_seen(gateway.url) and time.monotonic() < deadline:
        time.sleep(0.05)
    exported = {name for name, _ in scrape(gateway.url)}
    queries = [e for p in _panels() for e in _exprs(p)] + _template_queries()
    used = set().union(*(metric_names(q) for q in queries))
    assert _dashboard()["panels"]
    assert used and used <= exported, f"dashboard reads series the gateway does not export: {used - exported}"


def _mcp_servers_seen(url: str) -> set[tuple[str, str]]:
    return {(name, dict(labels).get("server", "")) for name, labels in scrape(url) if name == "gateway_mcp_server_up"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_workers_share_metrics_and_log_json_without_secrets(upstream: FakeUpstream, tmp_path: Path) -> None:
    redis_server = RedisServer().start()  # several workers need shared state
    try:
        _two_workers_share_metrics_and_log_json_without_secrets(upstream, tmp_path, redis_server.url)
    finally:
        redis_server.stop()


def _two_workers_share_metrics_and_log_json_without_secrets(upstream: FakeUpstream, tmp_path: Path, redis: str) -> None:
    port = _free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""
server: {{host: 127.0.0.1, port: {port}}}
upstreams:
  - name: fake
    base_url: {upstream.base_url}
    api_key: upstream-secret-value
    models: ["{MODEL}"]
auth:
  api_keys: [sk-client-secret-value]
tools:
  paths: ["{TOOL_FIXTURES}"]
logging: {{level: debug, format: json}}
state: {{backend: redis, redis_url: "{redis}"}}
"""
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "gateway with two workers did not start"
            time.sleep(0.05)
        requests = 12
        upstream.enqueue(completion(None, [call("add", {"a": 1, "b": 1}, "w0")]))
        upstream.enqueue(*(completion("ok") for _ in range(requests)))
        with openai.OpenAI(base_url=f"{url}/v1", api_key="sk-client-secret-value", max_retries=0) as client:
            for _ in range(requests):
                client.chat.completions.create(model=MODEL, messages=USER)
            # Separate connections spread over both workers; every scrape must still see all of them.
            for _ in range(4):
                samples = scrape(url)
                assert total(samples, "gateway_requests_total", gen_ai_request_model=MODEL, status="200") == requests
                assert value(samples, "gateway_tool_calls_total", gen_ai_tool_name="add", outcome="ok") == 1
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, stderr = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    request_lines = [r for r in records if r.get("event") == "request"]
    assert len(request_lines) == requests
    first = request_lines[0]
    assert {
        "request_id",
        "model",
        "upstream",
        "status",
        "duration_ms",
        "rounds",
        "tools_called",
        "prompt_tokens",
        "completion_tokens",
    } <= set(first)
    assert first["tools_called"] == ["add"] and first["rounds"] == 1
    assert any(r.get("event") == "tool_call" and r["tool"] == "add" for r in records)
    assert "upstream-secret-value" not in stderr
    assert "sk-client-secret-value" not in stderr


def test_models_listed_by_a_wildcard_upstream_get_their_own_label(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.models = ["served-by-upstream"]
    assert [m.id for m in gateway.client().models.list()] == ["served-by-upstream"]
    upstream.enqueue(completion("ok", model="served-by-upstream"))
    gateway.client().chat.completions.create(model="served-by-upstream", messages=USER)
    samples = scrape(gateway.url)
    assert total(samples, "gateway_requests_total", gen_ai_request_model="served-by-upstream") == 1


def test_every_upstream_attempt_is_counted_by_outcome(upstream: FakeUpstream, gateway: Gateway) -> None:
    before = scrape(gateway.url)
    upstream.enqueue(Json({"error": {"message": "busy"}}, status=503), completion("ok"))
    gateway.client().chat.completions.create(model=MODEL, messages=USER)
    after = scrape(gateway.url)
    for outcome, expected in (("UpstreamStatus", 1), ("ok", 1)):
        labels = {"upstream": "fake", "outcome": outcome}
        assert (
            value(after, "gateway_upstream_requests_total", **labels)
            - value(before, "gateway_upstream_requests_total", **labels)
            == expected
        )


def test_wildcard_models_have_their_own_label_from_the_first_request(
    upstream: FakeUpstream, make_gateway: GatewayFactory
) -> None:
    upstream.models = ["listed-at-start-up"]
    gateway = make_gateway()  # models: ["*"]; nobody calls /v1/models
    before = scrape(gateway.url)
    upstream.enqueue(completion("ok", model="listed-at-start-up"))
    gateway.client().chat.completions.create(model="listed-at-start-up", messages=USER)
    after = scrape(gateway.url)
    assert total(after, "gateway_requests_total", gen_ai_request_model="listed-at-start-up") == 1
    other = {"gen_ai_request_model": "other"}
    assert total(after, "gateway_requests_total", **other) == total(before, "gateway_requests_total", **other)


def test_a_slow_model_list_does_not_hold_up_start_up(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    upstream.models = ["listed-late"]
    upstream.models_gate = threading.Event()
    started = time.monotonic()
    gateway = make_gateway()
    # Unbounded, start-up would wait for the list request's own 5 s timeout.
    assert time.monotonic() - started < MODELS_STARTUP_WAIT_S + 2
    labels = gateway.app.state.gateway.chat.services.labels
    assert labels.model("listed-late") == "other"
    upstream.models_gate.set()
    # The list asked for at start-up is still awaited in the background; it lands without anyone calling /v1/models.
    deadline = time.monotonic() + 10
    while labels.model("listed-late") != "listed-late":
        assert time.monotonic() < deadline, "the late model list never named its models"
        time.sleep(0.01)
    upstream.enqueue(completion("ok", model="listed-late"))
    gateway.client().chat.completions.create(model="listed-late", messages=USER)
    assert total(scrape(gateway.url), "gateway_requests_total", gen_ai_request_model="listed-late") == 1
