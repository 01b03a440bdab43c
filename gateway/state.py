"""Everything the app holds for its lifetime: upstream clients, tools, the chat service."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis.asyncio as redis

from gateway.chat import ChatService
from gateway.config import GatewayConfig
from gateway.redis_continuations import redis_reachable
from gateway.tools.registry import ToolRegistry
from gateway.upstream import Upstream

if TYPE_CHECKING:
    from gateway.tools.mcp import McpSources

READINESS_CACHE_S = 1.0


@dataclass
class GatewayState:
    config: GatewayConfig
    upstreams: dict[str, Upstream]
    registry: ToolRegistry
    chat: ChatService
    started_at: int = field(default_factory=lambda: int(time.time()))
    tool_sources: dict[str, str] = field(default_factory=dict)
    mcp: McpSources | None = None
    state_client: redis.Redis | None = None
    draining: bool = False
    _readiness: tuple[float, asyncio.Future[dict[str, Any]]] | None = None

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
        ready = all(reachable) and all(s == "ok" for s in sources.values())
        state = {"backend": self.config.state.backend, "status": "ok"}
        if self.state_client is not None and not await redis_reachable(self.state_client, self.config.state.timeout_s):
            # Only mixed turns need it; every other request is served, so this degrades, it does not unready.
            state["status"] = "unreachable"
        return {
            "status": "ready" if ready else "not_ready",
            "upstreams": upstreams,
            "tool_sources": sources,
            "state": state,
            "checked_at": int(time.time()),
        }

    def tool_source_status(self) -> dict[str, str]:
        """Readiness of external tool sources (MCP servers), by name."""
        return dict(self.tool_sources)

    async def model_list(self) -> list[dict[str, Any]]:
        """Configured client-facing models, plus each ``*`` upstream's own list."""
        seen: dict[str, dict[str, Any]] = {}
        for upstream in self.config.upstreams:
            for name in [*upstream.models, *upstream.model_map]:
                if name != "*" and name not in seen:
                    seen[name] = {"id": name, "object": "model", "created": self.started_at, "owned_by": upstream.name}
            if "*" in upstream.models:
                listed = await self.upstreams[upstream.name].list_models()
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
