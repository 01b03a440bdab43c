"""Everything the app holds for its lifetime: upstream clients, tools, the chat service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.chat import ChatService
from gateway.config import GatewayConfig, is_pattern
from gateway.responses import ResponsesService
from gateway.tools.registry import ToolRegistry
from gateway.upstream import Upstream

if TYPE_CHECKING:
    import redis.asyncio as redis

    from gateway.tools.mcp import McpSources

log = logging.getLogger("gateway")

READINESS_CACHE_S = 1.0
# The ``*`` upstreams' own model lists name metric labels: fetched at start-up (waited for this
# long at most, so a slow upstream does not hold it up), then refreshed this often.
MODELS_STARTUP_WAIT_S = 2.0
MODELS_REFRESH_S = 60.0


@dataclass
class GatewayState:
    config: GatewayConfig
    upstreams: dict[str, Upstream]
    registry: ToolRegistry
    chat: ChatService
    responses: ResponsesService
    started_at: int = field(default_factory=lambda: int(time.time()))
    tool_sources: dict[str, str] = field(default_factory=dict)
    mcp: McpSources | None = None
    state_client: redis.Redis | None = None
    draining: bool = False
    _readiness: tuple[float, asyncio.Future[dict[str, Any]]] | None = None
    _models_watch: asyncio.Future[None] | None = None

    async def _state_reachable(self, client: redis.Redis) -> bool:
        from gateway.redis_continuations import redis_reachable  # loaded already: the client came from there

        return await redis_reachable(client, self.config.state.timeout_s)

    async def readiness(self) -> dict[str, Any]:
        """Every upstream probed and every tool source's state; probes are shared for a
        second, so a flood of ``/readyz`` calls never becomes a flood of upstream probes.
        A draining process is not ready, whatever its upstreams say."""
        if self.draining:
            return {"status": "draining", "checked_at": int(time.time())}
        now = time.monotonic()
        if self._readiness is not None and now - self._readiness[0] < READINESS_CACHE_S:
            return await self._readiness[1]
        probe = asyncio.ensure_future(self._probe())
        self._readiness = (now, probe)
        return await asyncio.shield(probe)

    async def _probe(self) -> dict[str, Any]:
        names = list(self.upstreams)
        reachable = await asyncio.gather(*(u.probe() for u in self.upstreams.values()))
        upstreams = {name: "ok" if ok else "unreachable" for name, ok in zip(names, reachable, strict=True)}
        sources = self.tool_source_status()
        # Ready while every client-facing model has a reachable target, its primary or a fallback.
        unserved = [m for m, targets in self.route_targets().items() if all(upstreams[t] != "ok" for t in targets)]
        # MCP servers never make the gateway unready; the detail and gateway_mcp_server_up show them. Readiness
        # decides whether a replica gets traffic: chat is served without a down server's tools (they are withdrawn),
        # and an HTTP MCP server is shared by every replica, so a 503 would take them all out at once, turning
        # a tool outage into a chat outage that moving traffic to another replica could not fix.
        ready = not unserved
        state = {"backend": self.config.state.backend, "status": "ok"}
        if self.state_client is not None and not await self._state_reachable(self.state_client):
            # Only mixed turns need it; every other request is served, so this degrades, it does not unready.
            state["status"] = "unreachable"
        return {
            "status": "ready" if ready else "not_ready",
            "upstreams": upstreams,
            "unserved_models": unserved,
            "tool_sources": sources,
            "mcp_servers": self.mcp.detail() if self.mcp is not None else {},
            "state": state,
            "checked_at": int(time.time()),
        }

    def route_targets(self) -> dict[str, tuple[str, ...]]:
        """Each configured client-facing model (``*``: any other name) and the upstreams that may serve it."""
        routes: dict[str, tuple[str, ...]] = {}
        for upstream in self.config.upstreams:
            for model in (*upstream.models, *upstream.model_map):
                serving = self.config.upstream_for(model)
                if serving is not None and model not in routes:
                    routes[model] = (serving.name, *(f.upstream for f in serving.fallbacks))
        return routes

    async def start_watching_models(self) -> None:
        """Admit the own models of upstreams with patterns (``*``, ``claude-*``) as metric labels now, waiting
        at most ``MODELS_STARTUP_WAIT_S``, then again every ``MODELS_REFRESH_S`` in the background."""
        if not any(u.patterns for u in self.config.upstreams):
            return
        first = asyncio.ensure_future(self.discover_models())
        await asyncio.wait((first,), timeout=MODELS_STARTUP_WAIT_S)
        self._models_watch = asyncio.ensure_future(self._watch_models(first))

    async def stop_watching_models(self) -> None:
        if self._models_watch is not None:
            self._models_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._models_watch

    async def _watch_models(self, first: asyncio.Future[None]) -> None:
        await first
        while True:
            await asyncio.sleep(MODELS_REFRESH_S)
            await self.discover_models()

    async def discover_models(self) -> None:
        """Admit the models each upstream with patterns lists, and its patterns match, as metric labels
        (bounded by ``Labels``)."""
        wildcard = [u for u in self.config.upstreams if u.patterns]
        try:
            listed = await asyncio.gather(*(self.upstreams[u.name].fetch_models() for u in wildcard))
        except Exception as exc:  # never let a refresh end the watch: labels fold into ``other`` meanwhile
            log.warning("listing upstream models failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            return
        for upstream, models in zip(wildcard, listed, strict=True):
            self.chat.services.labels.discover_models(m["id"] for m in models if upstream.serves(m["id"]))

    def tool_source_status(self) -> dict[str, str]:
        """Readiness of external tool sources (MCP servers), by name."""
        return dict(self.tool_sources)

    async def model_list(self) -> list[dict[str, Any]]:
        """Configured client-facing models, plus the models an upstream with patterns lists and they match."""
        seen: dict[str, dict[str, Any]] = {}
        for upstream in self.config.upstreams:
            for name in [*upstream.models, *upstream.model_map]:
                if not is_pattern(name) and name not in seen:
                    seen[name] = {"id": name, "object": "model", "created": self.started_at, "owned_by": upstream.name}
            if upstream.patterns:
                listed = [m for m in await self.upstreams[upstream.name].list_models() if upstream.serves(m["id"])]
                self.chat.services.labels.discover_models(m["id"] for m in listed)
                for model in listed:
                    if model["id"] not in seen:
                        seen[model["id"]] = {
                            "id": model["id"],
                            "object": "model",
                            "created": model.get("created")
                            if isinstance(model.get("created"), int)
                            else self.started_at,
                            "owned_by": model.get("owned_by") or upstream.name,
                        }
        return list(seen.values())
