"""Mixed-turn continuations in Redis, shared by every worker and replica.

The same rules as the memory store (see ``gateway.continuations``): entries expire
after the TTL, are scoped by the caller's key name, and each scope is bounded by
entry count and bytes, oldest evicted first, so one key can never push out
another's turns. One Lua script stores an entry and enforces the bounds
atomically. A scope's keys share a hash tag, so the script also runs on a cluster.

Redis is outside the request's critical path: a failed or slow call (every call
has ``state.timeout_s``) is logged and counted, the store reports nothing stored
or nothing found, and the client still gets its answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
import redis.asyncio as redis
from redis.exceptions import RedisError

from gateway import metrics
from gateway.config import StateConfig
from gateway.continuations import Continuation

log = logging.getLogger("gateway.state")

# KEYS: entry, index (zset: entry key -> stored at, ms), sizes (hash: entry key -> bytes, plus __total).
# ARGV: value, ttl_ms, now_ms, max_entries, max_bytes.
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
redis.call('ZADD', KEYS[2], now, KEYS[1])
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

_MAX_CALL_ID_CHARS = 64


def _decode(raw: bytes) -> Continuation | None:
    try:
        data: Any = orjson.loads(raw)
        calls = tuple((str(c[0]), str(c[1]), str(c[2])) for c in data["client_calls"])
        return Continuation(data["assistant_message"], data["server_results"], calls)
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
        return None


class RedisContinuationStore:
    """Continuations in Redis; bounded per scope; failures are soft."""

    def __init__(
        self, client: redis.Redis, config: StateConfig, ttl_s: float, max_entries: int, max_bytes: int
    ) -> None:
        self.client = client
        self.prefix = config.key_prefix
        self.timeout_s = config.timeout_s
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._put = client.register_script(_PUT)

    def _keys(self, scope: str, call_id: str) -> tuple[str, str, str]:
        # Hex keeps any key name out of the key syntax; the braces make a cluster hash tag.
        tag = f"{self.prefix}cont:{{{scope.encode().hex()}}}"
        return f"{tag}:e:{call_id}", f"{tag}:index", f"{tag}:sizes"

    async def put(self, scope: str, continuation: Continuation) -> None:
        value = orjson.dumps(
            {
                "assistant_message": continuation.assistant_message,
                "server_results": continuation.server_results,
                "client_calls": continuation.client_calls,
            }
        )
        if len(value) > self.max_bytes:
            metrics.CONTINUATIONS.labels("dropped").inc()
            return
        keys = self._keys(scope, continuation.key)
        now_ms = int(time.time() * 1000)
        try:
            async with asyncio.timeout(self.timeout_s):
                evicted = await self._put(
                    keys=list(keys), args=[value, self.ttl_ms, now_ms, self.max_entries, self.max_bytes]
                )
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("put", exc)
            return
        metrics.CONTINUATIONS.labels("stored").inc()
        if evicted:
            metrics.CONTINUATIONS.labels("expired").inc(int(evicted))

    async def get(self, scope: str, call_id: str) -> Continuation | None:
        if len(call_id) > _MAX_CALL_ID_CHARS or not call_id.isalnum():
            return None  # never an id the gateway minted: no round trip for it
        key = self._keys(scope, call_id)[0]
        try:
            async with asyncio.timeout(self.timeout_s):
                raw = await self.client.get(key)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("get", exc)
            return None
        return _decode(raw) if isinstance(raw, bytes) else None

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
    except (RedisError, OSError, TimeoutError):
        return False
