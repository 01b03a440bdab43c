"""Everything the app holds for its lifetime: upstream clients, tools, the chat service."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gateway.chat import ChatService
from gateway.config import GatewayConfig
from gateway.tools.mcp import McpSources
from gateway.tools.registry import ToolRegistry
from gateway.upstream import Upstream


@dataclass
class GatewayState:
    config: GatewayConfig
    upstreams: dict[str, Upstream]
    registry: ToolRegistry
    chat: ChatService
    started_at: int = field(default_factory=lambda: int(time.time()))
    tool_sources: dict[str, str] = field(default_factory=dict)
    mcp: McpSources | None = None

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
