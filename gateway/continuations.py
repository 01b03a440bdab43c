"""Mixed turns: the hidden half of an assistant turn, kept until the client comes back.

When the model calls server and client tools in one turn, the client receives only
its own calls. The full assistant message and the server results are stored here,
keyed by the client call ids, and spliced back into the follow-up request so the
model sees one consistent history.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from gateway import metrics


@dataclass(frozen=True, slots=True)
class Continuation:
    assistant_message: dict[str, Any]
    server_results: list[dict[str, Any]]


class ContinuationStore(Protocol):
    """Where continuations live; in memory by default, shared (e.g. Redis) across replicas."""

    async def put(self, call_ids: list[str], continuation: Continuation) -> None: ...

    async def get(self, call_id: str) -> Continuation | None: ...


class MemoryContinuationStore:
    """A bounded, TTL'd in-process store. Entries stay until they expire, because a
    conversation replays its history, the spliced turn included, on every later request."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, Continuation]] = OrderedDict()

    async def put(self, call_ids: list[str], continuation: Continuation) -> None:
        expires = time.monotonic() + self.ttl_s
        for call_id in call_ids:
            self._entries[call_id] = (expires, continuation)
            self._entries.move_to_end(call_id)
        self._evict()
        metrics.CONTINUATIONS.labels("stored").inc()

    async def get(self, call_id: str) -> Continuation | None:
        entry = self._entries.get(call_id)
        if entry is None:
            return None
        expires, continuation = entry
        if expires < time.monotonic():
            del self._entries[call_id]
            metrics.CONTINUATIONS.labels("expired").inc()
            return None
        return continuation

    def _evict(self) -> None:
        now = time.monotonic()
        while self._entries:
            key, (expires, _) = next(iter(self._entries.items()))
            if expires >= now and len(self._entries) <= self.max_entries:
                break
            del self._entries[key]
            metrics.CONTINUATIONS.labels("expired").inc()


async def splice(messages: list[dict[str, Any]], store: ContinuationStore) -> list[dict[str, Any]] | None:
    """Restore the hidden half of stored mixed turns; None when nothing was spliced."""
    spliced: list[dict[str, Any]] | None = None
    for position, message in enumerate(messages):
        calls = message.get("tool_calls") if message.get("role") == "assistant" else None
        if not isinstance(calls, list) or not calls or not isinstance(calls[0], dict):
            if spliced is not None:
                spliced.append(message)
            continue
        call_id = calls[0].get("id")
        found = await store.get(call_id) if isinstance(call_id, str) else None
        if found is None:
            if spliced is not None:
                spliced.append(message)
            continue
        if spliced is None:
            spliced = list(messages[:position])
        spliced.append(found.assistant_message)
        spliced.extend(found.server_results)
        metrics.CONTINUATIONS.labels("resumed").inc()
    return spliced
