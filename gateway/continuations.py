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

A turn is kept as JSON in a scoped store (``gateway.scoped_store``), which holds the
bounds and the TTL; this module only knows what a turn is and where it is spliced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from gateway import metrics
from gateway.scoped_store import MemoryScopedStore, ScopedStore

ClientCall = tuple[str, str, str]  # (id, name, arguments) as the client received them

_MAX_CALL_ID_CHARS = 64


@dataclass(frozen=True, slots=True)
class Continuation:
    assistant_message: dict[str, Any]
    server_results: list[dict[str, Any]]
    client_calls: tuple[ClientCall, ...]

    @property
    def key(self) -> str:
        return self.client_calls[0][0]


class ContinuationStore(Protocol):
    """Where continuations live; in memory by default, shared (e.g. Redis) across replicas."""

    async def put(self, scope: str, continuation: Continuation) -> None: ...

    async def get(self, scope: str, call_id: str) -> Continuation | None: ...


def encode(continuation: Continuation) -> bytes:
    return orjson.dumps(
        {
            "assistant_message": continuation.assistant_message,
            "server_results": continuation.server_results,
            "client_calls": continuation.client_calls,
        }
    )


def decode(raw: bytes) -> Continuation | None:
    """The stored continuation; None when the bytes are not one (corrupt, or another version's)."""
    try:
        data: Any = orjson.loads(raw)
        calls = tuple((str(c[0]), str(c[1]), str(c[2])) for c in data["client_calls"])
        return Continuation(data["assistant_message"], data["server_results"], calls)
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
        return None


class ScopedContinuationStore:
    """Continuations as JSON over a scoped store; the backends differ only in the store they build."""

    def __init__(self, store: ScopedStore) -> None:
        self.store = store

    async def put(self, scope: str, continuation: Continuation) -> None:
        await self.store.put(scope, continuation.key, encode(continuation))

    async def get(self, scope: str, call_id: str) -> Continuation | None:
        if len(call_id) > _MAX_CALL_ID_CHARS or not call_id.isalnum():
            return None  # never an id the gateway minted: not worth a look-up (or a round trip)
        raw = await self.store.get(scope, call_id)
        return None if raw is None else decode(raw)


class MemoryContinuationStore(ScopedContinuationStore):
    """A TTL'd in-process store, bounded per scope by entries and bytes. Entries stay
    until they expire, because a conversation replays its history, the spliced turn
    included, on every later request."""

    def __init__(self, ttl_s: float, max_entries: int = 1000, max_bytes: int = 16 * 1024 * 1024) -> None:
        super().__init__(MemoryScopedStore(ttl_s, max_entries, max_bytes, metrics.CONTINUATIONS))


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
