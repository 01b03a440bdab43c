"""Stored responses of the Responses API, for ``previous_response_id`` and ``GET /v1/responses/{id}``.

A response the client asked to store is kept with what continuing it needs: the
request's own input items and the whole conversation so far. Entries live in a
scoped store (``gateway.scoped_store``) under the caller's key name, so one key
can neither read, delete nor evict another key's responses, and expire after
``responses.store_ttl_s``.

The gateway mints every id (``resp_`` and 32 hex digits); an id of any other shape
was never stored, so it is refused before the backend sees it: a hostile id costs
no round trip and never reaches the key syntax.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

from gateway import jsoncodec, metrics
from gateway.config import GatewayConfig
from gateway.scoped_store import MemoryScopedStore, ScopedStore

if TYPE_CHECKING:
    import redis.asyncio as redis

_MAX_ID_CHARS = 64
_ID = re.compile(r"resp_[A-Za-z0-9]+")


def valid_response_id(response_id: str) -> bool:
    """Whether the id has the shape of one the gateway mints."""
    return len(response_id) <= _MAX_ID_CHARS and _ID.fullmatch(response_id) is not None


@dataclass(frozen=True, slots=True)
class StoredResponse:
    response: dict[str, Any]  # the response object exactly as returned to the client
    input_items: list[dict[str, Any]]  # this request's own input items (GET /v1/responses/{id}/input_items)
    conversation: list[dict[str, Any]]  # every item so far: earlier turns, this input, this output

    @property
    def response_id(self) -> str:
        response_id = self.response.get("id")
        return response_id if isinstance(response_id, str) else ""


def encode(stored: StoredResponse) -> bytes:
    """Raises JsonEncodeError. Exact for integers past 64 bits: a client's tool schema may hold one."""
    return jsoncodec.dumps(
        {"response": stored.response, "input_items": stored.input_items, "conversation": stored.conversation}
    )


def decode(raw: bytes) -> StoredResponse | None:
    """The stored response; None when the bytes are not one (corrupt, or another version's)."""
    try:
        data: Any = jsoncodec.loads_exact(raw)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    response, input_items, conversation = data.get("response"), data.get("input_items"), data.get("conversation")
    if not isinstance(response, dict) or not _items(input_items) or not _items(conversation):
        return None
    return StoredResponse(response, input_items, conversation)


def _items(value: Any) -> TypeGuard[list[dict[str, Any]]]:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


class ResponseStore:
    """Stored responses by id, per caller, over any scoped store."""

    def __init__(self, store: ScopedStore) -> None:
        self.store = store

    async def put(self, scope: str, stored: StoredResponse) -> bool:
        """Keep the response under its id; False when it was not stored (too large, backend down, bad id)."""
        if not valid_response_id(stored.response_id):
            return False
        try:
            value = encode(stored)
        except jsoncodec.JsonEncodeError:
            return False
        return await self.store.put(scope, stored.response_id, value)

    async def get(self, scope: str, response_id: str) -> StoredResponse | None:
        if not valid_response_id(response_id):
            return None
        raw = await self.store.get(scope, response_id)
        return None if raw is None else decode(raw)

    async def delete(self, scope: str, response_id: str) -> bool:
        """Remove this caller's response; whether it existed (another key's never does)."""
        if not valid_response_id(response_id):
            return False
        return await self.store.delete(scope, response_id)


def response_store(config: GatewayConfig, redis_client: redis.Redis | None) -> ResponseStore:
    """The store ``state.backend`` names; with Redis, on the process's one client (from ``build_state``)."""
    responses = config.responses
    bounds = (responses.store_ttl_s, responses.max_stored_per_key, responses.max_stored_bytes_per_key)
    store: ScopedStore
    if config.state.backend == "redis":
        if redis_client is None:
            raise ValueError("state.backend is redis: the response store needs the Redis client")
        # Imported only when used, as in build_state: the memory backend never loads redis.
        from gateway.redis_scoped_store import RedisScopedStore

        store = RedisScopedStore(redis_client, config.state, "resp", *bounds, metrics.STORED_RESPONSES)
    else:
        store = MemoryScopedStore(*bounds, metrics.STORED_RESPONSES)
    return ResponseStore(store)
