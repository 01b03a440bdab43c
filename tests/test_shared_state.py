"""Shared state in a real Redis: mixed turns across replicas and workers, isolation, bounds, Redis down."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from gateway.config import ConfigError, StateConfig, parse_config
from gateway.continuations import Continuation
from gateway.redis_continuations import RedisContinuationStore, redis_client
from tests.conftest import TOOL_FIXTURES, Gateway, GatewayFactory
from tests.fake_upstream import MODEL, FakeUpstream, call, completion
from tests.redis_server import RedisServer, _free_port
from tests.servers import serve_process
from tests.test_loop import CLIENT_TOOL, USER
from tests.test_observability import scrape, total

HIDDEN = "Bergen-hidden-9"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def _shared(redis_server: RedisServer, **state: Any) -> dict[str, Any]:
    return {
        "state": {"backend": "redis", "redis_url": redis_server.url, **state},
        "auth": {"api_keys": [{"name": "alice", "key": "sk-alice-0001"}, {"name": "bob", "key": "sk-bob-00002"}]},
    }


def _mixed_turn_reply() -> Any:
    return completion("Checking.", [call("get_weather", {"location": HIDDEN}, "call_0"), call("open_door", {}, "c1")])


def _chat(gateway_url: str, key: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    body = {"model": MODEL, "messages": messages, "tools": [CLIENT_TOOL]}
    response = httpx.post(
        f"{gateway_url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _start_turn(gateway_url: str, key: str) -> dict[str, Any]:
    message: dict[str, Any] = _chat(gateway_url, key, USER)["choices"][0]["message"]
    assert message["tool_calls"][0]["id"] != "c1"
    return message


def _finish_turn(gateway_url: str, key: str, message: dict[str, Any]) -> None:
    messages = [*USER, message, {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "ok"}]
    _chat(gateway_url, key, messages)


def test_a_turn_started_on_one_replica_is_finished_on_another(
    upstream: FakeUpstream, make_gateway: GatewayFactory, redis_server: RedisServer
) -> None:
    replica_a, replica_b = make_gateway(_shared(redis_server)), make_gateway(_shared(redis_server))
    upstream.enqueue(_mixed_turn_reply(), completion("done"))
    message = _start_turn(replica_a.url, "sk-alice-0001")
    _finish_turn(replica_b.url, "sk-alice-0001", message)
    sent = upstream.bodies[-1]["messages"]
    assert sent[1]["content"] == "Checking." and sent[1]["tool_calls"][0]["id"] == "call_0"
    assert sent[2]["tool_call_id"] == "call_0" and HIDDEN in sent[2]["content"]


def test_another_key_on_another_replica_gets_nothing(
    upstream: FakeUpstream, make_gateway: GatewayFactory, redis_server: RedisServer
) -> None:
    replica_a, replica_b = make_gateway(_shared(redis_server)), make_gateway(_shared(redis_server))
    upstream.enqueue(_mixed_turn_reply(), completion("done"))
    message = _start_turn(replica_a.url, "sk-alice-0001")
    _finish_turn(replica_b.url, "sk-bob-00002", message)
    assert HIDDEN not in json.dumps(upstream.bodies[-1])


def test_redis_down_degrades_to_no_continuations_and_says_so(
    upstream: FakeUpstream, make_gateway: GatewayFactory, redis_server: RedisServer
) -> None:
    gateway = make_gateway(_shared(redis_server, timeout_s=0.3))
    redis_server.stop()
    before = total(scrape(gateway.url), "gateway_state_errors_total")
    upstream.enqueue(_mixed_turn_reply(), completion("plain answer"))
    message = _start_turn(gateway.url, "sk-alice-0001")  # stored nowhere, answered all the same
    _finish_turn(gateway.url, "sk-alice-0001", message)
    assert HIDDEN not in json.dumps(upstream.bodies[-1])
    assert total(scrape(gateway.url), "gateway_state_errors_total") >= before + 2
    ready = httpx.get(f"{gateway.url}/readyz", headers={"authorization": "Bearer sk-alice-0001"})
    assert ready.status_code == 200
    assert ready.json()["state"] == {"backend": "redis", "status": "unreachable"}


def _turn(call_id: str, size: int = 10) -> Continuation:
    return Continuation({"role": "assistant", "content": "x" * size}, [], ((call_id, "open_door", "{}"),))


def test_redis_store_bounds_each_scope_alone(redis_server: RedisServer) -> None:
    async def scenario() -> tuple[list[bool], list[bool], list[bool]]:
        client = redis_client(StateConfig(backend="redis", redis_url=redis_server.url))
        store = RedisContinuationStore(
            client, StateConfig(redis_url=redis_server.url), ttl_s=60, max_entries=3, max_bytes=4000
        )
        await store.put("alice", _turn("a0"))
        for i in range(10):
            await store.put("bob", _turn(f"b{i}"))
        for i in range(5):
            await store.put("carol", _turn(f"c{i}", size=1500))
        kept = (
            [await store.get("alice", "a0") is not None],
            [await store.get("bob", f"b{i}") is not None for i in range(10)],
            [await store.get("carol", f"c{i}") is not None for i in range(5)],
        )
        await client.aclose()
        return kept

    alice, bob, carol = asyncio.run(scenario())
    assert alice == [True]
    assert bob == [False] * 7 + [True] * 3
    assert carol[-2:] == [True, True] and sum(carol) == 2


def test_entries_carry_the_ttl(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        client = redis_client(StateConfig(backend="redis", redis_url=redis_server.url))
        store = RedisContinuationStore(client, StateConfig(), ttl_s=900, max_entries=10, max_bytes=10**6)
        await store.put("alice", _turn("t1"))
        await client.aclose()

    asyncio.run(scenario())
    keys = redis_server.command("KEYS", "*:e:t1").split(b"\r\n")
    key = next(k for k in keys if k.endswith(b":e:t1")).decode()
    ttl = int(redis_server.command("PTTL", key)[1:].strip())
    assert 890_000 < ttl <= 900_000


def test_memory_state_with_several_workers_is_refused() -> None:
    text = yaml.safe_dump({"server": {"workers": 2}, "upstreams": [{"name": "u", "base_url": "http://127.0.0.1:1/v1"}]})
    with pytest.raises(ConfigError, match=r"state\.backend: redis"):
        parse_config(text, "gateway.yaml")


def test_serve_refuses_workers_flag_with_memory_state(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"upstreams": [{"name": "u", "base_url": "http://127.0.0.1:1/v1"}]}))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "state.backend: redis" in result.stderr


def _serve(config: dict[str, Any], tmp_path: Path, name: str) -> tuple[subprocess.Popen[bytes], str]:
    return serve_process(config, tmp_path / f"{name}.yaml")


def _process_config(upstream: FakeUpstream, redis_server: RedisServer, workers: int = 1) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": _free_port(), "workers": workers},
        "upstreams": [{"name": "fake", "base_url": upstream.base_url}],
        "tools": {"paths": [str(TOOL_FIXTURES)]},
        **_shared(redis_server),
    }


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()


def test_two_replica_processes_share_turns_through_redis(
    upstream: FakeUpstream, redis_server: RedisServer, tmp_path: Path
) -> None:
    a, url_a = _serve(_process_config(upstream, redis_server), tmp_path, "a")
    b, url_b = _serve(_process_config(upstream, redis_server), tmp_path, "b")
    try:
        upstream.enqueue(_mixed_turn_reply(), completion("done"))
        _finish_turn(url_b, "sk-alice-0001", _start_turn(url_a, "sk-alice-0001"))
        assert HIDDEN in json.dumps(upstream.bodies[-1])
    finally:
        _stop(a)
        _stop(b)


def test_two_workers_behind_one_port_share_turns_through_redis(
    upstream: FakeUpstream, redis_server: RedisServer, tmp_path: Path
) -> None:
    process, url = _serve(_process_config(upstream, redis_server, workers=2), tmp_path, "workers")
    try:
        # Each request on a new connection: the kernel spreads them over both workers.
        for _ in range(6):
            upstream.enqueue(_mixed_turn_reply(), completion("done"))
            _finish_turn(url, "sk-alice-0001", _start_turn(url, "sk-alice-0001"))
            assert HIDDEN in json.dumps(upstream.bodies[-1])
    finally:
        _stop(process)


def test_spliced_history_is_the_same_whatever_the_backend(
    upstream: FakeUpstream, make_gateway: GatewayFactory, redis_server: RedisServer
) -> None:
    sent: list[list[dict[str, Any]]] = []
    for overrides in ({"auth": _shared(redis_server)["auth"]}, _shared(redis_server)):
        gateway: Gateway = make_gateway(overrides)
        upstream.enqueue(_mixed_turn_reply(), completion("done"))
        message = _start_turn(gateway.url, "sk-alice-0001")
        _finish_turn(gateway.url, "sk-alice-0001", message)
        history = upstream.bodies[-1]["messages"]
        for item in history:  # minted ids differ between the two runs
            for tool_call in item.get("tool_calls", []):
                tool_call["id"] = "x" if tool_call["id"] != "call_0" else "call_0"
            if item.get("tool_call_id") not in (None, "call_0"):
                item["tool_call_id"] = "x"
        sent.append(history)
    assert sent[0] == sent[1]


def test_a_response_stored_on_one_replica_continues_on_another(
    upstream: FakeUpstream, make_gateway: GatewayFactory, redis_server: RedisServer
) -> None:
    replica_a, replica_b = make_gateway(_shared(redis_server)), make_gateway(_shared(redis_server))
    upstream.enqueue(completion("It is sunny."), completion("Still sunny."))
    alice_a, alice_b = replica_a.client("sk-alice-0001"), replica_b.client("sk-alice-0001")
    first = alice_a.responses.create(model=MODEL, input="Weather?")
    assert alice_b.responses.retrieve(first.id).output_text == "It is sunny."
    follow = alice_b.responses.create(model=MODEL, input="And now?", previous_response_id=first.id)
    assert follow.output_text == "Still sunny."
    assert [m["content"] for m in upstream.bodies[-1]["messages"]] == ["Weather?", "It is sunny.", "And now?"]
    bob_b = replica_b.client("sk-bob-00002")
    with pytest.raises(openai.NotFoundError):
        bob_b.responses.retrieve(first.id)
    alice_b.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        alice_a.responses.retrieve(first.id)
