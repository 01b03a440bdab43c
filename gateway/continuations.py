"""Mixed turns: the hidden half of an assistant turn, kept until the client comes back.

When the model calls server and client tools in one turn, the client receives only
its own calls. The full assistant message and the server results are stored here
and spliced back into the follow-up request so the model sees one consistent history.

Isolation between callers rests on three rules:
- the client-visible ids of a stored turn's calls are minted by the gateway
  (unguessable), never the upstream's, which servers reuse (``call_0``);
- entries are scoped by the caller's key name, and each scope has its own bounds,
  so one key can neither read nor evict another key's turns;
- a stored turn is spliced only when the client's assistant message carries exactly
  the stored client calls: same ids, names and arguments, in order.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from gateway import metrics

ClientCall = tuple[str, str, str]  # (id, name, arguments) as the client received them


@dataclass(frozen=True, slots=True)
class Continuation:
    assistant_message: dict[str, Any]
    server_results: list[dict[str, Any]]
    client_calls: tuple[ClientCall, ...]

    @property
    def key(self) -> str:
        return self.client_calls[0][0]

    def size(self) -> int:
        return len(orjson.dumps([self.assistant_message, self.server_results])) + 64


class ContinuationStore(Protocol):
    """Where continuations live; in memory by default, shared (e.g. Redis) across replicas."""

    async def put(self, scope: str, continuation: Continuation) -> None: ...

    async def get(self, scope: str, call_id: str) -> Continuation | None: ...


@dataclass(slots=True)
class _Entry:
    expires: float
    size: int
    continuation: Continuation


class _Scope:
    """One caller's entries, oldest first, with their total size."""

    __slots__ = ("bytes", "entries")

    def __init__(self) -> None:
        self.entries: OrderedDict[str, _Entry] = OrderedDict()
        self.bytes = 0

    def pop_oldest(self) -> None:
        _, entry = self.entries.popitem(last=False)
        self.bytes -= entry.size

    def remove(self, key: str) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size


class MemoryContinuationStore:
    """A TTL'd in-process store, bounded per scope by entries and bytes. Entries stay
    until they expire, because a conversation replays its history, the spliced turn
    included, on every later request."""

    def __init__(self, ttl_s: float, max_entries: int = 1000, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        # Scopes are key names from the config (or "" when auth is off): their number is bounded.
        self._scopes: dict[str, _Scope] = {}

    async def put(self, scope: str, continuation: Continuation) -> None:
        size = continuation.size()
        if size > self.max_bytes:
            metrics.CONTINUATIONS.labels("dropped").inc()
            return
        entries = self._scopes.setdefault(scope, _Scope())
        entries.remove(continuation.key)
        entries.entries[continuation.key] = _Entry(time.monotonic() + self.ttl_s, size, continuation)
        entries.bytes += size
        self._evict(entries)
        metrics.CONTINUATIONS.labels("stored").inc()

    async def get(self, scope: str, call_id: str) -> Continuation | None:
        entries = self._scopes.get(scope)
        entry = entries.entries.get(call_id) if entries is not None else None
        if entries is None or entry is None:
            return None
        if entry.expires < time.monotonic():
            entries.remove(call_id)
            metrics.CONTINUATIONS.labels("expired").inc()
            return None
        return entry.continuation

    def _evict(self, entries: _Scope) -> None:
        now = time.monotonic()
        while entries.entries:
            oldest = next(iter(entries.entries.values()))
            if oldest.expires >= now and len(entries.entries) <= self.max_entries and entries.bytes <= self.max_bytes:
                break
            entries.pop_oldest()
            metrics.CONTINUATIONS.labels("expired").inc()


def _client_calls(raw: list[Any]) -> tuple[ClientCall, ...] | None:
    """The (id, name, arguments) of an assistant message's calls; None when malformed."""
    calls: list[ClientCall] = []
    for call in raw:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            return None
        parts = (call.get("id"), function.get("name"), function.get("arguments"))
        if not all(isinstance(p, str) for p in parts):
            return None
        calls.append(parts)  # type: ignore[arg-type]
    return tuple(calls)


async def splice(messages: list[dict[str, Any]], store: ContinuationStore, scope: str) -> list[dict[str, Any]] | None:
    """Restore the hidden half of this caller's stored mixed turns; None when nothing was spliced."""
    spliced: list[dict[str, Any]] | None = None
    for position, message in enumerate(messages):
        raw = message.get("tool_calls") if message.get("role") == "assistant" else None
        found: Continuation | None = None
        if isinstance(raw, list) and raw and isinstance(raw[0], dict) and isinstance(raw[0].get("id"), str):
            found = await store.get(scope, raw[0]["id"])
            if found is not None and _client_calls(raw) != found.client_calls:
                found = None  # same id, different calls: not the turn the gateway stored
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
