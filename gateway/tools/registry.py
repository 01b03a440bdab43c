"""The app's registry of server-side tools, loaded from the configured ``tools.paths``."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gateway.config import ToolsConfig
from gateway.tools.base import Tool
from gateway.tools.function import FunctionTool, tool_of

log = logging.getLogger("gateway.tools")


class ToolLoadError(Exception):
    """A tool module cannot be loaded; the message names the file."""


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
        if config.enabled is not None:
            unknown = set(config.enabled) - set(registry._tools)
            for name in sorted(unknown):
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

    def remove(self, names: Iterable[str]) -> None:
        for name in names:
            self._tools.pop(name, None)

    def is_enabled(self, name: str) -> bool:
        return self.config.enabled is None or name in self.config.enabled

    def get(self, name: str) -> Tool | None:
        found = self._tools.get(name)
        return found if found is not None and self.is_enabled(name) else None

    def enabled(self) -> list[Tool]:
        return [t for name, t in self._tools.items() if self.is_enabled(name)]

    def names(self) -> list[str]:
        return list(self._tools)

    def definitions(self) -> list[dict[str, Any]]:
        return [t.definition() for t in self.enabled()]

    def settings_for(self, name: str) -> dict[str, Any]:
        return self.config.settings.get(name, {})

    def close(self) -> None:
        self.thread_pool.shutdown(wait=False, cancel_futures=True)
