"""Scoped, bounded, TTL'd byte stores: what continuations and stored responses share.

A value is kept under a (scope, key) pair. The scope is the caller's key name (or ""
when auth is off), and every scope has its own bounds, entries and bytes, oldest
evicted first, so one key can neither read nor push out another key's entries. An
entry expires after the TTL whatever happens to its neighbours. A value larger than
a whole scope's byte bound is never stored: it could only evict everything else.

The store knows bytes, not what they mean: each user (de)serialises its own values
and validates its own keys, and passes the Counter its events (``stored``,
``dropped``, ``expired``, ``deleted``) are counted on. ``gateway.redis_scoped_store``
is the same store shared through Redis.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Counter


class ScopedStore(Protocol):
    """Bytes by (scope, key); in memory by default, shared (e.g. Redis) across replicas."""

    async def put(self, scope: str, key: str, value: bytes) -> bool:
        """Store ``value``, replacing any entry under ``key``; False when it was not stored."""
        ...

    async def get(self, scope: str, key: str) -> bytes | None:
        """The live value under ``key`` in this scope, else None."""
        ...

    async def delete(self, scope: str, key: str) -> bool:
        """Remove the entry; whether a live one existed in this scope."""
        ...


@dataclass(slots=True)
class _Entry:
    expires: float
    value: bytes


class _Scope:
    """One caller's entries, oldest first, with their total size."""

    __slots__ = ("bytes", "entries")

    def __init__(self) -> None:
        self.entries: OrderedDict[str, _Entry] = OrderedDict()
        self.bytes = 0

    def pop_oldest(self) -> None:
        _, entry = self.entries.popitem(last=False)
        self.bytes -= len(entry.value)

    def remove(self, key: str) -> _Entry | None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.bytes -= len(entry.value)
        return entry


class MemoryScopedStore:
    """The in-process store. Expired entries go when read, or when a put in their scope
    finds them at the old end; a scope's size is the sum of its values' lengths, as in Redis."""

    def __init__(
        self,
        ttl_s: float,
        max_entries: int,
        max_bytes: int,
        events: Counter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.events = events
        self.clock = clock
        # Scopes are key names from the config (or "" when auth is off): their number is bounded.
        self._scopes: dict[str, _Scope] = {}

    async def put(self, scope: str, key: str, value: bytes) -> bool:
        if len(value) > self.max_bytes:
            self.events.labels("dropped").inc()
            return False
        entries = self._scopes.setdefault(scope, _Scope())
        entries.remove(key)
        entries.entries[key] = _Entry(self.clock() + self.ttl_s, value)
        entries.bytes += len(value)
        self._evict(entries)
        self.events.labels("stored").inc()
        return True

    async def get(self, scope: str, key: str) -> bytes | None:
        entry = self._live(scope, key)
        return None if entry is None else entry.value

    async def delete(self, scope: str, key: str) -> bool:
        if self._live(scope, key) is None:
            return False
        self._scopes[scope].remove(key)
        self.events.labels("deleted").inc()
        return True

    def _live(self, scope: str, key: str) -> _Entry | None:
        """The entry if it has not expired; an expired one is removed and counted."""
        entries = self._scopes.get(scope)
        entry = entries.entries.get(key) if entries is not None else None
        if entries is None or entry is None:
            return None
        if entry.expires < self.clock():
            entries.remove(key)
            self.events.labels("expired").inc()
            return None
        return entry

    def _evict(self, entries: _Scope) -> None:
        now = self.clock()
        while entries.entries:
            oldest = next(iter(entries.entries.values()))
            if oldest.expires >= now and len(entries.entries) <= self.max_entries and entries.bytes <= self.max_bytes:
                break
            entries.pop_oldest()
            self.events.labels("expired").inc()
