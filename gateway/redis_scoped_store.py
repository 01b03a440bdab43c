"""The scoped byte store in Redis, shared by every worker and replica.

The same rules as the memory store (see ``gateway.scoped_store``): entries expire
after the TTL, are scoped by the caller's key name, and each scope is bounded by
entry count and bytes, oldest evicted first, so one key can never push out
another's entries. One Lua script stores an entry and enforces the bounds
atomically, another deletes one and keeps the size accounting right. A scope's
keys share a hash tag, so the scripts also run on a cluster. Each user of the store
has its own namespace in the key (``cont``, ``resp``), so their entries and bounds
never mix.

Redis is outside the request's critical path: a failed or slow call (every call
has ``state.timeout_s``) is logged and counted, the store reports nothing stored,
found or deleted, and the client still gets its answer.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as redis
from prometheus_client import Counter
from redis.exceptions import RedisError

from gateway import metrics
from gateway.config import StateConfig

log = logging.getLogger("gateway.state")

# KEYS: entry, index (zset: entry key -> stored at, ms), sizes (hash: entry key -> bytes, plus __total).
# ARGV: value, ttl_ms, now_ms, max_entries, max_bytes. Returns how many live entries the bounds evicted.
_PUT = """
local ttl = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local total = tonumber(redis.call('HGET', KEYS[3], '__total') or '0')
local function drop(member)
  local size = tonumber(redis.call('HGET', KEYS[3], member) or '0')
  redis.call('HDEL', KEYS[3], member)
  redis.call('ZREM', KEYS[2], member)
  redis.call('DEL', member)
  return size
end
total = total - drop(KEYS[1])
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - ttl)) do
  total = total - drop(member)
end
local size = string.len(ARGV[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
-- Puts within one millisecond must still evict in the order they came: a score never repeats
-- (a whole millisecond later: Lua writes numbers with 14 digits, so a fraction would be lost).
local newest = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
local score = now
if #newest == 2 and tonumber(newest[2]) >= score then score = tonumber(newest[2]) + 1 end
redis.call('ZADD', KEYS[2], score, KEYS[1])
redis.call('HSET', KEYS[3], KEYS[1], size)
total = total + size
local evicted = 0
while redis.call('ZCARD', KEYS[2]) > tonumber(ARGV[4]) or total > tonumber(ARGV[5]) do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #oldest == 0 then break end
  total = total - drop(oldest[1])
  evicted = evicted + 1
end
if total < 0 then total = 0 end
redis.call('HSET', KEYS[3], '__total', total)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return evicted
"""

# KEYS: entry, index, sizes, as for _PUT. Returns 1 when a live entry was deleted, else 0.
# An entry that expired on its own still sits in the index and sizes: it leaves them here too.
_DELETE = """
local existed = redis.call('DEL', KEYS[1])
local size = redis.call('HGET', KEYS[3], KEYS[1])
if size then
  redis.call('HDEL', KEYS[3], KEYS[1])
  local total = tonumber(redis.call('HGET', KEYS[3], '__total') or '0') - tonumber(size)
  if total < 0 then total = 0 end
  redis.call('HSET', KEYS[3], '__total', total)
end
redis.call('ZREM', KEYS[2], KEYS[1])
return existed
"""

_FAILURES = (RedisError, OSError, TimeoutError)


class RedisScopedStore:
    """Bytes by (scope, key) in Redis under ``{key_prefix}{namespace}:``; bounded per scope; failures are soft."""

    def __init__(
        self,
        client: redis.Redis,
        config: StateConfig,
        namespace: str,
        ttl_s: float,
        max_entries: int,
        max_bytes: int,
        events: Counter,
    ) -> None:
        self.client = client
        self.prefix = f"{config.key_prefix}{namespace}:"
        self.timeout_s = config.timeout_s
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.events = events
        self._put = client.register_script(_PUT)
        self._delete = client.register_script(_DELETE)

    def _keys(self, scope: str, key: str) -> list[str]:
        # Hex keeps any key name out of the key syntax; the braces make a cluster hash tag.
        tag = f"{self.prefix}{{{scope.encode().hex()}}}"
        return [f"{tag}:e:{key}", f"{tag}:index", f"{tag}:sizes"]

    async def put(self, scope: str, key: str, value: bytes) -> bool:
        if len(value) > self.max_bytes:
            self.events.labels("dropped").inc()
            return False
        now_ms = int(time.time() * 1000)
        try:
            async with asyncio.timeout(self.timeout_s):
                evicted = await self._put(
                    keys=self._keys(scope, key), args=[value, self.ttl_ms, now_ms, self.max_entries, self.max_bytes]
                )
        except _FAILURES as exc:
            self._failed("put", exc)
            return False
        self.events.labels("stored").inc()
        if evicted:
            self.events.labels("expired").inc(int(evicted))
        return True

    async def get(self, scope: str, key: str) -> bytes | None:
        try:
            async with asyncio.timeout(self.timeout_s):
                raw = await self.client.get(self._keys(scope, key)[0])
        except _FAILURES as exc:
            self._failed("get", exc)
            return None
        return raw if isinstance(raw, bytes) else None

    async def delete(self, scope: str, key: str) -> bool:
        try:
            async with asyncio.timeout(self.timeout_s):
                existed = await self._delete(keys=self._keys(scope, key))
        except _FAILURES as exc:
            self._failed("delete", exc)
            return False
        if not existed:
            return False
        self.events.labels("deleted").inc()
        return True

    def _failed(self, operation: str, exc: BaseException) -> None:
        metrics.STATE_ERRORS.labels(operation).inc()
        log.warning(
            "state backend call failed",
            extra={"event": "state_error", "operation": operation, "error": f"{type(exc).__name__}: {exc}"},
        )


def redis_client(config: StateConfig) -> redis.Redis:
    """One pooled client per process; every socket operation bounded by ``timeout_s``."""
    return redis.Redis.from_url(
        config.redis_url,
        socket_timeout=config.timeout_s,
        socket_connect_timeout=config.timeout_s,
        health_check_interval=30,
    )


async def redis_reachable(client: redis.Redis, timeout_s: float) -> bool:
    try:
        async with asyncio.timeout(timeout_s):
            return bool(await client.ping())
    except _FAILURES:
        return False
