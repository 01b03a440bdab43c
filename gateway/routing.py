"""From a client-facing model name to the upstream(s) that serve it, fallbacks included."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.config import GatewayConfig
from gateway.errors import ModelNotFound, UpstreamError
from gateway.sse import SSEBatch
from gateway.upstream import Upstream, UpstreamHeaders

T = TypeVar("T")


def _spent(exc: UpstreamError) -> UpstreamError:
    """An upstream whose retries are spent hands over to the next target; any other error is final."""
    if not exc.retryable:
        raise exc
    return exc


@dataclass(frozen=True, slots=True)
class Target:
    upstream: Upstream
    model: str


@dataclass(frozen=True, slots=True)
class Route:
    """The primary target, then each fallback, tried once retries on the previous are spent."""

    client_model: str
    targets: tuple[Target, ...]

    @property
    def primary(self) -> Upstream:
        return self.targets[0].upstream

    async def complete(self, body: dict[str, Any], headers: UpstreamHeaders) -> tuple[dict[str, Any], float]:
        """The upstream's answer, and the seconds spent waiting on upstreams for it."""
        started = time.perf_counter()

        async def send(target: Target) -> dict[str, Any]:
            body["model"] = target.model
            return await target.upstream.complete(body, headers)

        answer = await self.first_answer(send)
        return answer, time.perf_counter() - started

    @asynccontextmanager
    async def stream(
        self, body: dict[str, Any], headers: UpstreamHeaders
    ) -> AsyncIterator[tuple[Target, AsyncIterator[SSEBatch]]]:
        """Open a stream on the first target that answers; yield it with its payloads."""
        last: UpstreamError | None = None
        for target in self.targets:
            body["model"] = target.model
            stack = AsyncExitStack()
            try:
                payloads = await stack.enter_async_context(target.upstream.stream(body, headers))
            except UpstreamError as exc:
                last = _spent(exc)
                continue
            async with stack:
                yield target, payloads
            return
        assert last is not None
        raise last

    async def first_answer(self, send: Callable[[Target], Awaitable[T]]) -> T:
        """``send`` to each target in turn: the next only once the previous one's retries are spent."""
        last: UpstreamError | None = None
        for target in self.targets:
            try:
                return await send(target)
            except UpstreamError as exc:
                last = _spent(exc)
        assert last is not None
        raise last


def not_found_message(model: str) -> str:
    return f"The model '{model}' does not exist or you do not have access to it."


class Router:
    """Resolves models against the configured upstreams, first match wins."""

    def __init__(self, config: GatewayConfig, upstreams: dict[str, Upstream]) -> None:
        self.config = config
        self.upstreams = upstreams
        self._cache: dict[str, Route] = {}

    def route(self, model: str) -> Route:
        route = self._cache.get(model)
        if route is not None:
            return route
        upstream = self.config.upstream_for(model)
        if upstream is None:
            raise ModelNotFound(not_found_message(model), param="model")
        targets = [Target(self.upstreams[upstream.name], upstream.upstream_model(model))]
        for fallback in upstream.fallbacks:
            fallback_config = self.config.upstream_named(fallback.upstream)
            targets.append(
                Target(self.upstreams[fallback.upstream], fallback.model or fallback_config.upstream_model(model))
            )
        route = Route(model, tuple(targets))
        if len(self._cache) < 4096:
            self._cache[model] = route
        return route
