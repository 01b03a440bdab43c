"""The app's registry of server-side tools, loaded from the configured ``tools.paths``."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import ToolsConfig
from gateway.tools.base import Tool
from gateway.tools.function import FunctionTool, tool_of

log = logging.getLogger("gateway.tools")


class ToolLoadError(Exception):
    """A tool module cannot be loaded; the message names the file."""


@dataclass(frozen=True)
class SkippedTool:
    """A tool the registry does not offer, and why: ``serve`` logs these, ``gateway tools list`` prints them."""

    source: str
    """Where it came from: ``mcp:<server>``, or ``config`` for a name only the config mentions."""
    name: str
    reason: str


def _module_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.glob("*.py") if not p.name.startswith("_"))
    raise ToolLoadError(f"{path}: tool path does not exist")


def load_module_tools(file: Path) -> list[FunctionTool]:
    """Import one ``.py`` file and collect the functions marked with ``@tool``."""
    digest = hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:8]
    module_name = f"gateway_user_tools.{file.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise ToolLoadError(f"{file}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ToolLoadError(f"{file}: failed to load tool module: {type(exc).__name__}: {exc}") from exc
    found: list[FunctionTool] = []
    for value in vars(module).values():
        marked = tool_of(value)
        if marked is not None and getattr(value, "__module__", None) == module_name:
            found.append(marked)
    return found


class ToolRegistry:
    """Server-side tools by name, and the thread pool their sync functions run in."""

    def __init__(self, config: ToolsConfig, *, max_threads: int = 64) -> None:
        self.config = config
        self._tools: dict[str, Tool] = {}
        self._skipped: dict[str, list[SkippedTool]] = {}
        # Bumped whenever the set of tools changes: what is built over them (a ranking index) is rebuilt.
        self.version = 0
        self.thread_pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="gateway-tool")

    @classmethod
    def from_config(cls, config: ToolsConfig, *, base_dir: Path | None = None, max_threads: int = 64) -> ToolRegistry:
        registry = cls(config, max_threads=max_threads)
        for entry in config.paths:
            path = Path(entry)
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            for file in _module_files(path):
                registry.add(load_module_tools(file))
        for name in registry.unprovided_enabled():
            log.warning("tools.enabled names %r, which no Python tool provides (yet)", name)
        return registry

    def add(self, tools: Iterable[Tool]) -> None:
        for item in tools:
            existing = self._tools.get(item.name)
            if existing is not None and existing is not item:
                raise ToolLoadError(f"tool name {item.name!r} is defined twice ({existing.source}, {item.source})")
            if isinstance(item, FunctionTool):
                item.thread_pool = self.thread_pool
            self._tools[item.name] = item
        self.version += 1

    def remove(self, names: Iterable[str]) -> None:
        for name in names:
            self._tools.pop(name, None)
        self.version += 1

    def is_enabled(self, name: str) -> bool:
        return self.config.enabled is None or name in self.config.enabled

    def get(self, name: str) -> Tool | None:
        found = self._tools.get(name)
        return found if found is not None and self.is_enabled(name) else None

    def enabled(self) -> list[Tool]:
        return [t for name, t in self._tools.items() if self.is_enabled(name)]

    def names(self) -> list[str]:
        return list(self._tools)

    def available(self) -> list[Tool]:
        """Enabled tools that can run now: what requests are offered (an MCP server's only while it is up)."""
        return [t for t in self.enabled() if t.available]

    def definitions(self) -> list[dict[str, Any]]:
        return [t.definition() for t in self.available()]

    def unprovided_enabled(self) -> list[str]:
        """Names in ``tools.enabled`` that no loaded tool has."""
        return sorted(set(self.config.enabled or ()) - set(self._tools))

    def report_skipped(self, source: str, skipped: list[SkippedTool]) -> None:
        """Replace what ``source`` (one MCP server, say) last reported it could not offer."""
        self._skipped[source] = skipped

    def skipped(self) -> list[SkippedTool]:
        """Everything not offered: what sources reported, tools outside tools.enabled, names in it no tool has."""
        reported = [item for items in self._skipped.values() for item in items]
        disabled = [
            SkippedTool(t.source, name, "not in tools.enabled")
            for name, t in self._tools.items()
            if not self.is_enabled(name)
        ]
        unprovided = [
            SkippedTool("config", name, "named in tools.enabled, but no loaded tool has that name")
            for name in self.unprovided_enabled()
        ]
        return reported + disabled + unprovided

    def settings_for(self, name: str) -> dict[str, Any]:
        return self.config.settings.get(name, {})

    def close(self) -> None:
        self.thread_pool.shutdown(wait=False, cancel_futures=True)
