"""Server-Sent Events on the wire: reading an upstream's stream, writing the client's.

Reading keeps each ``data:`` payload's raw bytes beside its parsed form so a
chunk that needs no change can be relayed without re-serialization.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import UpstreamUnavailable

MAX_LINE_BYTES = 8 * 1024 * 1024
DONE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class SSEData:
    """One upstream ``data:`` payload: the JSON object and its bytes as received."""

    data: dict[str, Any]
    raw: bytes
    is_error_line: bool = False


SSEBatch = list["SSEData | None"]


async def read_sse(chunks: AsyncIterator[bytes]) -> AsyncIterator[SSEBatch]:
    """Yield the JSON payloads of an SSE byte stream, one list per network read; ``None`` stands for ``[DONE]``.

    Batches let everything that arrived together be handled and written on together:
    one pass through the loop and one write to the client, not one per event.
    Comment lines (``:`` keep-alives, llama.cpp sends them) and ``event:``/``id:``
    fields are skipped. Older llama.cpp wrote errors on a non-standard ``error:``
    line that ordinary SSE parsers drop; it is surfaced like an error payload.
    """
    buffer = b""
    async for piece in chunks:
        buffer = buffer + piece if buffer else piece
        batch: SSEBatch = []
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            item = _parse_line(line)
            if item is not _SKIP:
                batch.append(item)  # type: ignore[arg-type]
        buffer = buffer[start:]
        if batch:
            yield batch
        if len(buffer) > MAX_LINE_BYTES:
            raise UpstreamUnavailable("upstream sent an SSE line over the size limit", retryable=False)
    if buffer.strip():
        item = _parse_line(buffer.rstrip(b"\r"))
        if item is not _SKIP:
            yield [item]  # type: ignore[list-item]


_SKIP = object()


def _parse_line(line: bytes) -> SSEData | object | None:
    if line.startswith(b"data:"):
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return None
        is_error_line = False
    elif line.startswith(b"error:"):
        payload = line[6:].strip()
        is_error_line = True
    else:
        return _SKIP
    if not payload:
        return _SKIP
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise UpstreamUnavailable(f"upstream sent a stream event that is not JSON: {exc}", retryable=False) from exc
    if not isinstance(data, dict):
        raise UpstreamUnavailable("upstream sent a stream event that is not a JSON object", retryable=False)
    if is_error_line and "error" not in data:
        data = {"error": data}
    return SSEData(data, payload, is_error_line)


def encode_data(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def encode_raw(raw: bytes) -> bytes:
    return b"data: " + raw + b"\n\n"


def encode_comment(kind: str, payload: Any) -> bytes:
    """Progress as an SSE comment line: every SSE parser skips comments, so OpenAI SDKs
    (which turn any named ``event:`` into a chunk) see an unchanged stream."""
    return b": " + kind.encode() + b" " + orjson.dumps(payload) + b"\n\n"
