"""Stored responses, in memory and in a real Redis: round trips, isolation, TTL, bounds, bad ids, Redis down."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from gateway import metrics
from gateway.config import GatewayConfig, ResponsesConfig
from gateway.redis_scoped_store import redis_client
from gateway.response_store import ResponseStore, StoredResponse, response_store
from gateway.scoped_store import MemoryScopedStore
from tests.redis_server import RedisServer, _free_port

T = TypeVar("T")

MALFORMED_IDS = [
    "",
    "resp_",
    "resp",
    "msg_abc123",
    "resp_abc-123",
    "resp_abc:index",
    "resp_abc\n",
    "resp_é1",
    "../resp_abc",
    "RESP_abc",
    "resp_" + "a" * 60,  # 65 characters
]


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None for the memory backend, else the URL of a redis-server this test owns."""
    if request.param == "memory":
        yield None
        return
    server = RedisServer().start()
    yield server.url
    server.stop()


def _config(redis_url: str | None, timeout_s: float = 0.5, **responses: Any) -> GatewayConfig:
    state: dict[str, Any] = {"backend": "memory"}
    if redis_url is not None:
        state = {"backend": "redis", "redis_url": redis_url, "timeout_s": timeout_s}
    return GatewayConfig.model_validate(
        {"upstreams": [{"name": "u", "base_url": "http://127.0.0.1:9/v1"}], "state": state, "responses": responses}
    )


def _run(config: GatewayConfig, scenario: Callable[[ResponseStore], Awaitable[T]]) -> T:
    """Run ``scenario`` against the configured store; a Redis client lives on one event loop, so it is made here."""

    async def main() -> T:
        client = redis_client(config.state) if config.state.backend == "redis" else None
        try:
            return await scenario(response_store(config, client))
        finally:
            if client is not None:
                await client.aclose()

    return asyncio.run(main())


def _response(text: str = "hello", response_id: str | None = None) -> StoredResponse:
    if response_id is None:
        response_id = f"resp_{secrets.token_hex(16)}"
    output = [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]
    response = {"id": response_id, "object": "response", "status": "completed", "output": output}
    user = {"type": "message", "role": "user", "content": "hi"}
    return StoredResponse(response, [user], [user, *output])


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_stored_response_round_trips_and_is_deleted(backend: str | None) -> None:
    stored = _response()
    before = {e: _sample("gateway_stored_responses_total", event=e) for e in ("stored", "deleted")}

    async def scenario(store: ResponseStore) -> list[Any]:
        rid = stored.response["id"]
        return [
            await store.put("alice", stored),
            await store.get("alice", rid),
            await store.delete("alice", rid),
            await store.get("alice", rid),
            await store.delete("alice", rid),
        ]

    put, found, deleted, after_delete, deleted_again = _run(_config(backend), scenario)
    assert put is True and found == stored
    assert deleted is True and after_delete is None and deleted_again is False
    assert _sample("gateway_stored_responses_total", event="stored") == before["stored"] + 1
    assert _sample("gateway_stored_responses_total", event="deleted") == before["deleted"] + 1


def test_another_key_can_neither_read_nor_delete_a_response(backend: str | None) -> None:
    stored = _response("alice's secret")
    rid = stored.response["id"]

    async def scenario(store: ResponseStore) -> list[Any]:
        await store.put("alice", stored)
        return [await store.get("bob", rid), await store.delete("bob", rid), await store.get("alice", rid)]

    bob_reads, bob_deletes, alice_reads = _run(_config(backend), scenario)
    assert bob_reads is None and bob_deletes is False and alice_reads == stored


def test_a_stored_response_is_gone_after_the_ttl(backend: str | None) -> None:
    async def scenario(store: ResponseStore) -> bool:
        stored = _response()
        assert await store.put("alice", stored)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if await store.get("alice", stored.response["id"]) is None:
                return True
            await asyncio.sleep(0.02)
        return False

    assert _run(_config(backend, store_ttl_s=0.05), scenario)


def test_memory_entries_live_exactly_the_ttl() -> None:
    now = [1000.0]
    store = ResponseStore(MemoryScopedStore(60, 10, 10**6, metrics.STORED_RESPONSES, clock=lambda: now[0]))
    stored = _response()
    rid = stored.response["id"]
    expired = _sample("gateway_stored_responses_total", event="expired")

    async def scenario() -> tuple[StoredResponse | None, StoredResponse | None]:
        await store.put("alice", stored)
        now[0] += 59
        alive = await store.get("alice", rid)
        now[0] += 2
        return alive, await store.get("alice", rid)

    alive, gone = asyncio.run(scenario())
    assert alive == stored and gone is None
    assert _sample("gateway_stored_responses_total", event="expired") == expired + 1


def test_redis_entries_carry_the_ttl_in_their_own_namespace() -> None:
    server = RedisServer().start()
    try:
        stored = _response()
        _run(_config(server.url, store_ttl_s=900), lambda store: store.put("alice", stored))
        key = f"gateway:resp:{{{b'alice'.hex()}}}:e:{stored.response['id']}"
        ttl = int(server.command("PTTL", key)[1:].strip())
        assert 890_000 < ttl <= 900_000
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("bound", "others", "kept"),
    [
        ({"max_stored_per_key": 3}, [_response(f"b{i}") for i in range(10)], [False] * 7 + [True] * 3),
        ({"max_stored_bytes_per_key": 4096}, [_response("x" * 700) for _ in range(5)], [False] * 3 + [True] * 2),
    ],
    ids=["entries", "bytes"],
)
def test_each_key_is_bounded_alone_oldest_first(
    backend: str | None, bound: dict[str, int], others: list[StoredResponse], kept: list[bool]
) -> None:
    alice = _response()

    async def scenario(store: ResponseStore) -> tuple[bool, list[bool]]:
        await store.put("alice", alice)
        for stored in others:
            await store.put("bob", stored)
        found = [await store.get("bob", s.response["id"]) is not None for s in others]
        return await store.get("alice", alice.response["id"]) is not None, found

    alice_kept, bob_kept = _run(_config(backend, **bound), scenario)
    assert alice_kept
    assert bob_kept == kept


def test_a_delete_gives_back_its_bytes(backend: str | None) -> None:
    first, second, third = (_response("x" * 700) for _ in range(3))

    async def scenario(store: ResponseStore) -> bool:
        await store.put("alice", first)
        await store.put("alice", second)
        assert await store.delete("alice", second.response["id"])
        await store.put("alice", third)  # fits only if the deleted entry's bytes were given back
        return await store.get("alice", first.response["id"]) is not None

    assert _run(_config(backend, max_stored_bytes_per_key=4096), scenario)


def test_a_response_larger_than_the_bound_is_not_stored(backend: str | None) -> None:
    small, huge = _response(), _response("x" * 5000)
    dropped = _sample("gateway_stored_responses_total", event="dropped")

    async def scenario(store: ResponseStore) -> list[Any]:
        await store.put("alice", small)
        return [
            await store.put("alice", huge),
            await store.get("alice", huge.response["id"]),
            await store.get("alice", small.response["id"]),
        ]

    stored, found, small_found = _run(_config(backend, max_stored_bytes_per_key=4096), scenario)
    assert stored is False and found is None and small_found == small
    assert _sample("gateway_stored_responses_total", event="dropped") == dropped + 1


class _Recording:
    """A memory store that notes every call: a refused id must never reach the backend."""

    def __init__(self) -> None:
        self.inner = MemoryScopedStore(60, 10, 10**6, metrics.STORED_RESPONSES)
        self.calls: list[tuple[str, str]] = []

    async def put(self, scope: str, key: str, value: bytes) -> bool:
        self.calls.append(("put", key))
        return await self.inner.put(scope, key, value)

    async def get(self, scope: str, key: str) -> bytes | None:
        self.calls.append(("get", key))
        return await self.inner.get(scope, key)

    async def delete(self, scope: str, key: str) -> bool:
        self.calls.append(("delete", key))
        return await self.inner.delete(scope, key)


def test_malformed_ids_are_refused_without_touching_the_backend() -> None:
    backend = _Recording()
    store = ResponseStore(backend)

    async def scenario() -> list[Any]:
        results: list[Any] = []
        for rid in MALFORMED_IDS:
            results += [
                await store.put("alice", _response(response_id=rid)),
                await store.get("alice", rid),
                await store.delete("alice", rid),
            ]
        return results

    assert asyncio.run(scenario()) == [False, None, False] * len(MALFORMED_IDS)
    assert backend.calls == []


def test_malformed_ids_cost_no_redis_round_trip() -> None:
    # Nothing listens on the port: any round trip would fail and be counted.
    config = _config(f"redis://127.0.0.1:{_free_port()}/0", timeout_s=0.3)
    before = sum(_sample("gateway_state_errors_total", operation=op) for op in ("get", "delete"))

    async def scenario(store: ResponseStore) -> list[Any]:
        return [r for rid in MALFORMED_IDS for r in (await store.get("a", rid), await store.delete("a", rid))]

    assert _run(config, scenario) == [None, False] * len(MALFORMED_IDS)
    assert sum(_sample("gateway_state_errors_total", operation=op) for op in ("get", "delete")) == before


def test_a_corrupt_value_reads_as_nothing(backend: str | None) -> None:
    rid = f"resp_{secrets.token_hex(16)}"
    values = [b"not json", b"[1, 2]", b'{"response": {}, "input_items": [], "conversation": "no"}']

    async def scenario(store: ResponseStore) -> list[StoredResponse | None]:
        found = []
        for value in values:
            assert await store.store.put("alice", rid, value)
            found.append(await store.get("alice", rid))
        return found

    assert _run(_config(backend), scenario) == [None] * len(values)


def test_redis_down_stores_and_finds_nothing_and_counts_it() -> None:
    config = _config(f"redis://127.0.0.1:{_free_port()}/0", timeout_s=0.3)
    operations = ("put", "get", "delete")
    before = {op: _sample("gateway_state_errors_total", operation=op) for op in operations}
    stored = _response()

    async def scenario(store: ResponseStore) -> list[Any]:
        rid = stored.response["id"]
        return [await store.put("alice", stored), await store.get("alice", rid), await store.delete("alice", rid)]

    assert _run(config, scenario) == [False, None, False]
    for op in operations:
        assert _sample("gateway_state_errors_total", operation=op) == before[op] + 1


def test_the_redis_backend_needs_the_client() -> None:
    with pytest.raises(ValueError, match="Redis client"):
        response_store(_config("redis://127.0.0.1:6379/0"), None)


def test_the_memory_backend_never_imports_redis() -> None:
    code = (
        "import sys\n"
        "from gateway.config import GatewayConfig\n"
        "from gateway.response_store import response_store\n"
        "config = GatewayConfig.model_validate({'upstreams': [{'name': 'u', 'base_url': 'http://h/v1'}]})\n"
        "response_store(config, None)\n"
        "assert 'redis' not in sys.modules, 'redis imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_responses_config_defaults_and_limits() -> None:
    config = ResponsesConfig()
    assert (config.store_ttl_s, config.max_stored_per_key, config.max_stored_bytes_per_key) == (
        3600.0,
        10_000,
        256 * 1024 * 1024,
    )
    for bad in ({"store_ttl_s": 0}, {"max_stored_per_key": 0}, {"max_stored_bytes_per_key": 1023}):
        with pytest.raises(ValidationError):
            ResponsesConfig.model_validate(bad)
