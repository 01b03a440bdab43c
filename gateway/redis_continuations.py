"""Mixed-turn continuations in Redis, shared by every worker and replica.

The rules are the memory store's (see ``gateway.continuations``); the bounded,
TTL'd, per-key storage is ``gateway.redis_scoped_store``, under the ``cont``
namespace. ``redis_client`` and ``redis_reachable`` are re-exported from there.
"""

from __future__ import annotations

import redis.asyncio as redis

from gateway import metrics
from gateway.config import StateConfig
from gateway.continuations import ScopedContinuationStore
from gateway.redis_scoped_store import RedisScopedStore, redis_client, redis_reachable

__all__ = ["RedisContinuationStore", "redis_client", "redis_reachable"]


class RedisContinuationStore(ScopedContinuationStore):
    """Continuations in Redis; bounded per scope; failures are soft."""

    def __init__(
        self, client: redis.Redis, config: StateConfig, ttl_s: float, max_entries: int, max_bytes: int
    ) -> None:
        super().__init__(RedisScopedStore(client, config, "cont", ttl_s, max_entries, max_bytes, metrics.CONTINUATIONS))
