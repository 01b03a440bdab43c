"""Tenant isolation of mixed-turn continuations: two keys, one gateway, servers that reuse call ids."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.continuations import Continuation, MemoryContinuationStore, splice
from tests.conftest import Gateway, GatewayFactory
from tests.fake_upstream import MODEL, FakeUpstream, call, completion
from tests.test_loop import CLIENT_TOOL, USER

KEYS = {"auth": {"api_keys": [{"name": "alice", "key": "sk-alice-0001"}, {"name": "bob", "key": "sk-bob-00002"}]}}
SECRET_NOTE = "alice's visible note"
HIDDEN = "Oslo-vault-7"  # in the server call and its result: never shown to the client


@pytest.fixture
def shared(make_gateway: GatewayFactory) -> Gateway:
    return make_gateway(KEYS)


def _mixed_turn(upstream: FakeUpstream, gateway: Gateway, key: str, note: str) -> dict[str, Any]:
    """Run a mixed turn whose upstream ids are the reused ``call_0`` / ``call_1``; return the client's message."""
    upstream.enqueue(
        completion(
            note, [call("get_weather", {"location": HIDDEN}, "call_0"), call("open_door", {"door": "a"}, "call_1")]
        )
    )
    answer = gateway.client(api_key=key).chat.completions.create(
        model=MODEL,
        messages=USER,
        tools=[CLIENT_TOOL],  # type: ignore[list-item]
    )
    return answer.choices[0].message.model_dump(exclude_none=True)


def _follow_up(message: dict[str, Any], result: str = "opened") -> list[dict[str, Any]]:
    return [*USER, message, {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": result}]


def _send(upstream: FakeUpstream, gateway: Gateway, key: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    upstream.enqueue(completion("done"))
    gateway.client(api_key=key).chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        tools=[CLIENT_TOOL],  # type: ignore[list-item]
    )
    sent: list[dict[str, Any]] = upstream.bodies[-1]["messages"]
    return sent


def test_client_ids_of_a_stored_turn_are_minted_not_the_upstreams(upstream: FakeUpstream, shared: Gateway) -> None:
    first = _mixed_turn(upstream, shared, "sk-alice-0001", SECRET_NOTE)
    second = _mixed_turn(upstream, shared, "sk-alice-0001", SECRET_NOTE)
    ids = [first["tool_calls"][0]["id"], second["tool_calls"][0]["id"]]
    assert "call_1" not in ids and ids[0] != ids[1]
    assert all(i.isalnum() and len(i) == 9 for i in ids)


def test_owner_gets_its_turn_spliced_back(upstream: FakeUpstream, shared: Gateway) -> None:
    message = _mixed_turn(upstream, shared, "sk-alice-0001", SECRET_NOTE)
    sent = _send(upstream, shared, "sk-alice-0001", _follow_up(message))
    assert sent[1]["content"] == SECRET_NOTE
    assert [c["id"] for c in sent[1]["tool_calls"]] == ["call_0", message["tool_calls"][0]["id"]]
    assert sent[2]["tool_call_id"] == "call_0" and HIDDEN in sent[2]["content"]


def test_another_key_replaying_the_same_ids_gets_nothing_of_the_owners(upstream: FakeUpstream, shared: Gateway) -> None:
    message = _mixed_turn(upstream, shared, "sk-alice-0001", SECRET_NOTE)
    # Bob sends Alice's exact assistant message (ids leaked, say): it is not his turn.
    sent = _send(upstream, shared, "sk-bob-00002", _follow_up(message))
    assert HIDDEN not in str(sent)
    assert sent[1] == message
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]


def test_upstream_ids_never_select_a_stored_turn(upstream: FakeUpstream, shared: Gateway) -> None:
    _mixed_turn(upstream, shared, "sk-alice-0001", SECRET_NOTE)
    guessed = {"role": "assistant", "content": None, "tool_calls": [call("open_door", {"door": "a"}, "call_1")]}
    for key in ("sk-alice-0001", "sk-bob-00002"):
        sent = _send(upstream, shared, key, _follow_up(guessed))
        assert HIDDEN not in str(sent)


def test_a_turn_whose_calls_differ_from_the_stored_ones_is_not_spliced(upstream: FakeUpstream, shared: Gateway) -> None:
    message = _mixed_turn(upstream, shared, "sk-alice-0001", SECRET_NOTE)
    tampered = {**message, "tool_calls": [dict(message["tool_calls"][0])]}
    tampered["tool_calls"][0]["function"] = {"name": "open_door", "arguments": '{"door": "vault"}'}
    sent = _send(upstream, shared, "sk-alice-0001", _follow_up(tampered))
    assert HIDDEN not in str(sent)


def test_each_key_keeps_its_own_turn_when_upstream_ids_collide(upstream: FakeUpstream, shared: Gateway) -> None:
    alice = _mixed_turn(upstream, shared, "sk-alice-0001", SECRET_NOTE)
    bob = _mixed_turn(upstream, shared, "sk-bob-00002", "bob's note")
    assert _send(upstream, shared, "sk-bob-00002", _follow_up(bob))[1]["content"] == "bob's note"
    assert _send(upstream, shared, "sk-alice-0001", _follow_up(alice))[1]["content"] == SECRET_NOTE


def _turn(call_id: str, note: str = "x") -> Continuation:
    assistant = {"role": "assistant", "content": note, "tool_calls": []}
    return Continuation(assistant, [], ((call_id, "open_door", "{}"),))


def test_store_bounds_are_per_scope_so_one_key_cannot_evict_another() -> None:
    async def scenario() -> tuple[Continuation | None, Continuation | None, Continuation | None]:
        store = MemoryContinuationStore(ttl_s=60, max_entries=3)
        await store.put("alice", _turn("a0"))
        for i in range(50):
            await store.put("bob", _turn(f"b{i}"))
        return await store.get("alice", "a0"), await store.get("bob", "b0"), await store.get("bob", "b49")

    alice, bob_oldest, bob_newest = asyncio.run(scenario())
    assert alice is not None and bob_oldest is None and bob_newest is not None


def test_store_is_bounded_by_bytes_per_scope() -> None:
    async def scenario() -> list[bool]:
        store = MemoryContinuationStore(ttl_s=60, max_entries=1000, max_bytes=4096)
        for i in range(10):
            await store.put("alice", _turn(f"a{i}", "z" * 1500))
        return [await store.get("alice", f"a{i}") is not None for i in range(10)]

    kept = asyncio.run(scenario())
    assert kept[-2:] == [True, True] and sum(kept) <= 2


def test_expired_turns_are_not_spliced() -> None:
    async def scenario() -> Any:
        store = MemoryContinuationStore(ttl_s=0.0001)
        await store.put("", _turn("gone"))
        await asyncio.sleep(0.01)
        message = {"role": "assistant", "tool_calls": [call("open_door", "{}", "gone")]}
        return await splice([message], store, "")

    assert asyncio.run(scenario()) is None
