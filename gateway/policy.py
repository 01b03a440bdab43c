"""Per-key policy: which models and server tools a key may use, and the limits it runs under.

A model the key may not use is indistinguishable from one that does not exist
(404 ``model_not_found``); a tool it may not use is never offered and, if a model
calls it anyway, fails like an unknown tool. Limits answer 429 the way OpenAI
does, with ``Retry-After`` and the ``x-ratelimit-*`` headers, which also go on
every successful response of a limited key.

Requests and tokens per minute are counted by the ``limits`` library in the state
backend (memory, or Redis shared by every replica), in sliding windows; a
concurrency cap is kept per process. Counting never blocks traffic: a state
backend that fails or is slow (``state.timeout_s``) lets the request through, and
the failure is logged and counted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from gateway import metrics
from gateway.config import ApiKey, KeyLimits, StateConfig
from gateway.errors import GatewayError

log = logging.getLogger("gateway.policy")

ANONYMOUS = "anonymous"  # the metric label when auth is off
REFUSAL_REASONS = ("requests_per_minute", "tokens_per_minute", "concurrency")


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """What one caller may do."""

    name: str
    models: tuple[str, ...] = ("*",)
    tools: tuple[str, ...] = ("*",)
    limits: KeyLimits = field(default_factory=KeyLimits)

    @classmethod
    def from_config(cls, key: ApiKey) -> KeyPolicy:
        return cls(key.name, tuple(key.models), tuple(key.tools), key.limits)

    def allows_model(self, model: str) -> bool:
        return "*" in self.models or any(fnmatchcase(model, pattern) for pattern in self.models)

    def allows_tool(self, tool: str) -> bool:
        return "*" in self.tools or any(fnmatchcase(tool, pattern) for pattern in self.tools)

    def max_rounds(self, configured: int) -> int:
        own = self.limits.max_rounds
        return configured if own is None else min(configured, own)

    @property
    def limited(self) -> bool:
        limits = self.limits
        return bool(limits.requests_per_minute or limits.tokens_per_minute or limits.max_concurrent)


OPEN_POLICY = KeyPolicy(ANONYMOUS)


class RateLimited(GatewayError):
    """429 with OpenAI's body: ``type`` says which limit (requests or tokens), ``code`` is rate_limit_exceeded."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, kind: str, headers: dict[str, str], retry_after_s: float) -> None:
        super().__init__(message)
        self.type = kind
        self.headers = {**headers, "retry-after": str(max(1, math.ceil(retry_after_s)))}


def openai_duration(seconds: float) -> str:
    """A reset time as OpenAI writes it: ``20ms``, ``1s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    rest = round(rest, 3)
    return f"{int(minutes)}m{rest:g}s" if minutes else f"{rest:g}s"


class Admission:
    """One admitted request: its rate-limit headers, and its concurrency slot until released."""

    __slots__ = ("_limiter", "_released", "headers", "policy")

    def __init__(self, limiter: RateLimiter | None, policy: KeyPolicy, headers: dict[str, str]) -> None:
        self._limiter = limiter
        self.policy = policy
        self.headers = headers
        self._released = False

    def release(self) -> None:
        if not self._released and self._limiter is not None:
            self._released = True
            self._limiter.release(self.policy)

    async def spend_tokens(self, usage: dict[str, object] | None) -> None:
        if self._limiter is None or not usage:
            return
        tokens = usage.get("total_tokens")
        if not isinstance(tokens, int):
            # Some servers leave the total out: the parts add up to it.
            parts = (usage.get("prompt_tokens"), usage.get("completion_tokens"))
            tokens = sum(p for p in parts if isinstance(p, int))
        if tokens > 0:
            await self._limiter.spend_tokens(self.policy, tokens)


UNLIMITED = Admission(None, OPEN_POLICY, {})


class RateLimiter:
    """Requests and tokens per minute in the state backend; concurrency in this process."""

    def __init__(self, state: StateConfig) -> None:
        storage: Storage
        if state.backend == "redis":
            storage = RedisStorage(
                "async+" + state.redis_url,
                implementation="redispy",
                key_prefix=f"{state.key_prefix}limits",
                socket_timeout=state.timeout_s,
                socket_connect_timeout=state.timeout_s,
            )
        else:
            storage = MemoryStorage()
        self.storage = storage
        self.windows = SlidingWindowCounterRateLimiter(storage)
        self.timeout_s = state.timeout_s
        self._in_flight: dict[str, int] = {}

    async def admit(self, policy: KeyPolicy) -> Admission:
        """Count the request against its key; raise RateLimited when a limit is spent."""
        if not policy.limited:
            return UNLIMITED
        limits = policy.limits
        headers: dict[str, str] = {}
        if limits.max_concurrent is not None and self._in_flight.get(policy.name, 0) >= limits.max_concurrent:
            self._refused(policy, "concurrency")
            raise RateLimited(
                f"Too many concurrent requests for key '{policy.name}': limit {limits.max_concurrent}.",
                "requests",
                headers,
                1.0,
            )
        if limits.requests_per_minute is not None:
            item = RateLimitItemPerMinute(limits.requests_per_minute)
            allowed, remaining, reset = await self._hit(item, policy.name, 1)
            headers.update(_headers("requests", limits.requests_per_minute, remaining, reset))
            if not allowed:
                self._refused(policy, "requests_per_minute")
                raise RateLimited(
                    f"Rate limit reached for key '{policy.name}' on requests per min (RPM): "
                    f"Limit {limits.requests_per_minute}. Please try again in {openai_duration(reset)}.",
                    "requests",
                    headers,
                    reset,
                )
        if limits.tokens_per_minute is not None:
            item = RateLimitItemPerMinute(limits.tokens_per_minute)
            remaining, reset = await self._stats(item, policy.name)
            headers.update(_headers("tokens", limits.tokens_per_minute, remaining, reset))
            if remaining <= 0:
                self._refused(policy, "tokens_per_minute")
                raise RateLimited(
                    f"Rate limit reached for key '{policy.name}' on tokens per min (TPM): "
                    f"Limit {limits.tokens_per_minute}. Please try again in {openai_duration(reset)}.",
                    "tokens",
                    headers,
                    reset,
                )
        if limits.max_concurrent is not None:
            self._in_flight[policy.name] = self._in_flight.get(policy.name, 0) + 1
        return Admission(self, policy, headers)

    def release(self, policy: KeyPolicy) -> None:
        if policy.limits.max_concurrent is not None:
            self._in_flight[policy.name] = max(0, self._in_flight.get(policy.name, 0) - 1)

    async def spend_tokens(self, policy: KeyPolicy, tokens: int) -> None:
        """Count a finished request's tokens; what overflows the window fills it."""
        per_minute = policy.limits.tokens_per_minute
        if per_minute is None:
            return
        item = RateLimitItemPerMinute(per_minute)
        remaining, _ = await self._stats(item, policy.name)
        cost = min(tokens, remaining)
        if cost > 0:
            await self._hit(item, policy.name, cost)

    async def _hit(self, item: RateLimitItemPerMinute, name: str, cost: int) -> tuple[bool, int, float]:
        try:
            async with asyncio.timeout(self.timeout_s):
                allowed = await self.windows.hit(item, name, cost=cost)
                stats = await self.windows.get_window_stats(item, name)
        except Exception as exc:  # any backend failure: count nothing, refuse nothing
            self._failed(exc)
            return True, item.amount, 60.0
        return allowed, stats.remaining, max(0.0, stats.reset_time - time.time())

    async def _stats(self, item: RateLimitItemPerMinute, name: str) -> tuple[int, float]:
        try:
            async with asyncio.timeout(self.timeout_s):
                stats = await self.windows.get_window_stats(item, name)
        except Exception as exc:
            self._failed(exc)
            return item.amount, 60.0
        return stats.remaining, max(0.0, stats.reset_time - time.time())

    def _refused(self, policy: KeyPolicy, reason: str) -> None:
        metrics.POLICY_REFUSALS.labels(policy.name, reason).inc()

    def _failed(self, exc: BaseException) -> None:
        metrics.STATE_ERRORS.labels("rate_limit").inc()
        log.warning(
            "rate limit backend failed; request let through",
            extra={"event": "state_error", "operation": "rate_limit", "error": f"{type(exc).__name__}: {exc}"},
        )


def _headers(kind: str, limit: int, remaining: int, reset_s: float) -> dict[str, str]:
    return {
        f"x-ratelimit-limit-{kind}": str(limit),
        f"x-ratelimit-remaining-{kind}": str(max(0, remaining)),
        f"x-ratelimit-reset-{kind}": openai_duration(reset_s),
    }
