"""Which of the offered server tools reach the model: all, or those relevant to the conversation.

Every tool's schema costs prompt tokens on every round, and models choose worse among
many tools. With ``tools.selection.mode: relevant`` each request gets the tools its
conversation ranks highest (``gateway.tool_ranking``, BM25 over names, descriptions
and parameters, plus static word embeddings with ``ranker: hybrid``), up to
``max_tools``, plus the ones it must keep: ``always``, the tool ``tool_choice``
forces, tools called earlier in the conversation, and the tools of an intent group
whose keywords the latest user message has. A client narrows further with
``x-gateway-tools``, within what its key allows.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from gateway import metrics, tool_embedding
from gateway.config import ToolSelectionConfig
from gateway.errors import InvalidRequest
from gateway.tool_ranking import ToolRanker, conversation_query, latest_user_text
from gateway.tools.registry import ToolRegistry

log = logging.getLogger("gateway.tools.selection")

TOOLS_HEADER = "x-gateway-tools"
_MAX_HEADER_PATTERNS = 64
_MAX_PATTERN_CHARS = 128
# The latest user message's first characters say what it asks for; embedding more costs more and says little more.
MAX_MEANING_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Selection:
    """The tools one request is offered, by name, with their ranking scores (absent or None: not ranked)."""

    names: list[str]
    scores: dict[str, float | None]

    def trace(self) -> list[dict[str, Any]]:
        return [{"name": name, "score": self.scores.get(name)} for name in self.names]


def header_filter(value: str | None) -> Callable[[str], bool] | None:
    """``x-gateway-tools: a, billing__*``: only these tools (names or globs); None when the header is absent."""
    if value is None:
        return None
    patterns = [p.strip() for p in value.split(",") if p.strip()]
    if len(patterns) > _MAX_HEADER_PATTERNS or any(len(p) > _MAX_PATTERN_CHARS for p in patterns):
        raise InvalidRequest(
            f"{TOOLS_HEADER} takes at most {_MAX_HEADER_PATTERNS} names or patterns of "
            f"{_MAX_PATTERN_CHARS} characters each.",
            param=TOOLS_HEADER,
            code="invalid_value",
        )
    return lambda name: any(fnmatchcase(name, pattern) for pattern in patterns)


def _called_earlier(messages: list[Any]) -> set[str]:
    """Tools the conversation already called: dropping one would leave the model its own calls unexplained."""
    called: set[str] = set()
    for message in messages:
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            name = function.get("name") if isinstance(function, dict) else None
            if isinstance(name, str):
                called.add(name)
    return called


class ToolSelector:
    """Per request, the offered tools that go to the model; the ranking index is built once per tool set."""

    def __init__(self, config: ToolSelectionConfig, registry: ToolRegistry) -> None:
        self.config = config
        self.registry = registry
        self._ranker: tuple[int, ToolRanker] | None = None
        # The tool-set version whose index a thread is building, and that build.
        self._rebuild: tuple[int, asyncio.Future[ToolRanker]] | None = None
        self._groups = [
            (re.compile(r"\b(?:" + "|".join(re.escape(k.lower()) for k in group.keywords) + r")\b"), group.tools)
            for group in config.groups.values()
        ]

    @property
    def ranks(self) -> bool:
        return self.config.mode == "relevant"

    def _build(self, definitions: list[dict[str, Any]]) -> ToolRanker:
        embedder = tool_embedding.embedder() if self.config.ranker == "hybrid" else None
        return ToolRanker(definitions, embedder)

    def _definitions(self) -> list[dict[str, Any]]:
        # Over every enabled tool, available or not: a server coming back does not need a rebuild.
        return [tool.definition() for tool in self.registry.enabled()]

    async def warm(self) -> None:
        """Build the index before the first request, off the event loop (0.2-0.5 s for a thousand tools)."""
        if self.ranks:
            version = self.registry.version
            ranker = await asyncio.to_thread(self._build, self._definitions())
            self._ranker = (version, ranker)

    def _ranker_now(self) -> ToolRanker:
        """The index of the current tool set. When the tools changed (an MCP server came, went or changed its
        list), the index is rebuilt in a thread while requests go on ranking with the one before: a build takes
        long enough to stall every request on the loop, and an outdated index is only filtered (tools no longer
        offered are skipped; new ones are ranked once the build is done)."""
        version = self.registry.version
        current = self._ranker
        if current is None:  # not warmed (an app without its lifespan): build it here, once
            self._ranker = current = (version, self._build(self._definitions()))
        elif current[0] != version and (self._rebuild is None or self._rebuild[0] != version):
            future = asyncio.get_running_loop().run_in_executor(None, self._build, self._definitions())
            future.add_done_callback(functools.partial(self._built, version))
            self._rebuild = (version, future)
        return current[1]

    async def rebuilt(self) -> None:
        """Until the rebuild in progress, if any, is done (its outcome is handled by ``_built``)."""
        if self._rebuild is not None:
            await asyncio.wait([self._rebuild[1]])

    def _built(self, version: int, future: asyncio.Future[ToolRanker]) -> None:
        if future.cancelled():
            return
        if (error := future.exception()) is not None:
            log.error("rebuilding the tool index failed", exc_info=error)
            if self._rebuild is not None and self._rebuild[0] == version:
                self._rebuild = None  # the next request tries again
            return
        if self._ranker is None or self._ranker[0] < version:
            self._ranker = (version, future.result())

    def select(self, offered: dict[str, dict[str, Any]], messages: list[Any], forced: str | None) -> Selection:
        """The names to offer, in the registry's order (a stable prefix for upstream prompt caches)."""
        if not self.ranks or len(offered) <= self.config.max_tools:
            selection = Selection(list(offered), {})  # none ranked: every score None
        else:
            selection = self._relevant(offered, messages, forced)
        metrics.OFFERED_TOOLS.observe(len(selection.names))
        return selection

    def _relevant(self, offered: dict[str, dict[str, Any]], messages: list[Any], forced: str | None) -> Selection:
        config = self.config
        kept: dict[str, float | None] = {}
        pinned = _called_earlier(messages)
        if forced is not None:
            pinned.add(forced)
        for name in offered:
            if name in pinned or any(fnmatchcase(name, pattern) for pattern in config.always):
                kept[name] = None
        chosen: dict[str, float | None] = {}
        said = latest_user_text(messages)
        latest = said.lower()
        for keywords, patterns in self._groups:
            if latest and keywords.search(latest):
                for name in offered:
                    if name not in kept and any(fnmatchcase(name, p) for p in patterns):
                        chosen[name] = None
        room = config.max_tools - len(chosen)
        if room > 0:
            ranker = self._ranker_now()
            # The index covers every enabled tool: ask for enough to fill the room with offered ones.
            unoffered = max(0, len(ranker) - len(offered))
            meaning = said[:MAX_MEANING_CHARS] if ranker.hybrid else ""
            ranked = ranker.rank(conversation_query(messages), room + len(kept) + unoffered, meaning)
            for name, score in ranked:
                if room <= 0:
                    break
                if name in offered and name not in kept and name not in chosen:
                    chosen[name] = score
                    room -= 1
        scores = {**kept, **dict(list(chosen.items())[: config.max_tools])}
        selection = Selection([name for name in offered if name in scores], scores)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("tools offered", extra={"event": "tools_offered", "offered": selection.trace()})
        return selection
