"""Helpers for the hostile-input, fault and soak tests.

- ``raw_exchange`` sends bytes no HTTP client library would send and parses what comes back.
- ``AnsweringUpstream`` answers every request (a scripted reply first, else its ``responder``),
  keeps each raw request body and bounds what it records, for traffic no script can order.
- ``openai_error`` checks the one error shape every 4xx/5xx body must have.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tests.fake_upstream import FakeUpstream, Json, Recorded, Sse, chunk, completion


@dataclass
class RawResponse:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def _dechunk(data: bytes) -> bytes | None:
    """The payload of a complete chunked body; None while it is incomplete."""
    out = b""
    while True:
        line_end = data.find(b"\r\n")
        if line_end < 0:
            return None
        size = int(data[:line_end].split(b";")[0], 16)
        if size == 0:
            return out
        start = line_end + 2
        if len(data) < start + size + 2:
            return None
        out += data[start : start + size]
        data = data[start + size + 2 :]


def parse_response(data: bytes, closed: bool) -> RawResponse | None:
    """The first HTTP/1.1 response in ``data``; None while more bytes are needed."""
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    lines = data[:head_end].split(b"\r\n")
    _, status, *reason = lines[0].split(b" ", 2)
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(b":") for line in lines[1:])]
    response = RawResponse(int(status), reason[0] if reason else b"", headers)
    rest = data[head_end + 4 :]
    length = response.header(b"content-length")
    if length is not None:
        if len(rest) < int(length):
            return None
        response.body = rest[: int(length)]
    elif (response.header(b"transfer-encoding") or b"").lower() == b"chunked":
        body = _dechunk(rest)
        if body is None:
            return None
        response.body = body
    elif not closed:
        return None
    else:
        response.body = rest
    return response


def raw_exchange(port: int, data: bytes, timeout_s: float = 3.0, half_close: bool = True) -> RawResponse | None:
    """Send ``data`` on a fresh connection; the server's first response, or None if it closed without one.

    With ``half_close`` the write side is shut after sending, so a server waiting for more
    of an incomplete request sees end-of-input instead of waiting for its own timeout.
    """
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (ConnectionResetError, BrokenPipeError):
            pass  # the server answered and closed before reading everything: read its answer
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                piece = sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                piece = b""
            except TimeoutError as exc:
                raise AssertionError(f"no answer within {timeout_s} s to {data[:200]!r}") from exc
            if piece:
                received += piece
                parsed = parse_response(received, closed=False)
                if parsed is not None:
                    return parsed
                continue
            return parse_response(received, closed=True) if received else None
    raise AssertionError(f"no complete answer within {timeout_s} s to {data[:200]!r}; got {received[:300]!r}")


def openai_error(body: bytes) -> dict[str, Any]:
    """The ``error`` object of an OpenAI-shaped error body; fails the test otherwise."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise AssertionError(f"error body is not JSON: {body[:300]!r}") from exc
    assert isinstance(parsed, dict) and isinstance(parsed.get("error"), dict), f"not an OpenAI error: {body[:300]!r}"
    error = parsed["error"]
    assert {"message", "type", "param", "code"} <= set(error), f"error lacks keys: {error}"
    assert isinstance(error["message"], str) and error["message"], f"error message missing: {error}"
    assert isinstance(error["type"], str) and error["type"], f"error type missing: {error}"
    return error


def plain_answer(recorded: Recorded, text: str = "ok") -> Json | Sse:
    """A plain final answer, streamed when the gateway asked for a stream."""
    body = recorded.body
    if isinstance(body, dict) and body.get("stream") is True:
        return Sse([chunk({"role": "assistant", "content": ""}), chunk({"content": text}), chunk({}, "stop")])
    return completion(text)


class _AlwaysAnswer(list[Any]):
    """The fake's reply queue that never runs dry: when empty, ``pop`` hands out the responder."""

    def __init__(self, responder: Callable[[Recorded], Any]) -> None:
        super().__init__()
        self.responder = responder

    def __bool__(self) -> bool:
        return True

    def pop(self, index: Any = -1) -> Any:
        return super().pop(index) if len(self) else self.responder


class AnsweringUpstream(FakeUpstream):
    """A fake upstream that answers every request and keeps its last raw request bodies."""

    def __init__(self, responder: Callable[[Recorded], Any] = plain_answer, keep: int = 64) -> None:
        super().__init__()
        self.replies = _AlwaysAnswer(responder)
        self.requests = deque(maxlen=keep)  # type: ignore[assignment]
        self.raw_bodies: deque[bytes] = deque(maxlen=keep)

    async def _chat(self, request: Request) -> Response:
        self.raw_bodies.append(await request.body())  # Starlette caches it for the parent's read
        return await super()._chat(request)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
