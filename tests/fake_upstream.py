"""A scripted OpenAI-compatible upstream on a real loopback port.

Tests queue replies (JSON bodies, SSE chunk lists with any quirk, hangs, errors);
each request to ``/v1/chat/completions`` (or a passthrough endpoint: embeddings,
completions, rerank, vLLM's root ``/tokenize``) takes the next one. Every request is
recorded so tests can assert on exactly what the gateway sent.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.servers import ServerThread

MODEL = "test-model"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    peer: str = ""
    raw: bytes = b""


@dataclass
class Json:
    body: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None


@dataclass
class Sse:
    """An SSE reply. Items: dict → ``data: <json>``; bytes → written as is; ``done`` appends [DONE].

    ``gate_after=n`` pauses after the n-th item until ``gate`` is set (or ``gate_timeout_s``
    passes, which is recorded in ``gate_timed_out``), so a test can prove what the client
    received while the upstream was still mid-stream.
    """

    items: list[Any]
    done: bool = True
    status: int = 200
    gate_after: int | None = None
    gate: threading.Event = field(default_factory=threading.Event)
    gate_timeout_s: float = 10.0
    gate_timed_out: bool = False
    hang_at_end: bool = False


@dataclass
class Hang:
    """Accept the request and never answer, until the client goes away or ``release`` is set."""

    release: threading.Event = field(default_factory=threading.Event)


Reply = Json | Sse | Hang | Callable[[Recorded], "Json | Sse | Hang"]


def chunk(
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    *,
    id: str = "chatcmpl-up",
    model: str = MODEL,
    usage: dict[str, Any] | None = None,
    choices: list[Any] | None = None,
    created: int = 1700000000,
) -> dict[str, Any]:
    """A chat.completion.chunk as OpenAI-compatible servers send it."""
    body: dict[str, Any] = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices
        if choices is not None
        else [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def completion(
    content: str | None = "",
    tool_calls: list[dict[str, Any]] | None = None,
    finish_reason: str | None = None,
    *,
    usage: dict[str, Any] | None = None,
    model: str = MODEL,
    id: str = "chatcmpl-up",
) -> Json:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return Json(
        {
            "id": id,
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason or ("tool_calls" if tool_calls else "stop"),
                }
            ],
            "usage": usage or {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
    )


def call(name: str, arguments: Any, id: str) -> dict[str, Any]:
    text = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
    return {"id": id, "type": "function", "function": {"name": name, "arguments": text}}


class FakeUpstream:
    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.requests: list[Recorded] = []
        self.disconnected = threading.Event()
        self.models: list[str] = [MODEL]
        # Set: ``/v1/models`` answers only once this is set (or after 10 s).
        self.models_gate: threading.Event | None = None
        self._lock = threading.Lock()
        passthrough = ("/v1/embeddings", "/v1/completions", "/v1/rerank", "/tokenize")
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                # Anthropic's Messages API: same script, replies written in its shapes by the test.
                Route("/v1/messages", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                *(Route(path, self._chat, methods=["POST"]) for path in passthrough),
            ]
        )
        self.server = ServerThread(app)

    @property
    def base_url(self) -> str:
        return f"{self.server.url}/v1"

    def start(self) -> FakeUpstream:
        self.server.start()
        return self

    def stop(self) -> None:
        for reply in self.replies:
            if isinstance(reply, Hang):
                reply.release.set()
        if self.models_gate is not None:
            self.models_gate.set()
        self.server.stop()

    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)

    @property
    def bodies(self) -> list[Any]:
        return [r.body for r in self.requests if r.path.endswith(("/chat/completions", "/messages"))]

    async def _models(self, request: Request) -> Response:
        if self.models_gate is not None:
            await asyncio.to_thread(self.models_gate.wait, 10)
        data = [{"id": m, "object": "model", "created": 1, "owned_by": "fake"} for m in self.models]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")

    async def _chat(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw
        peer = f"{request.client.host}:{request.client.port}" if request.client else ""
        recorded = Recorded(request.method, request.url.path, dict(request.headers), body, peer, raw)
        with self._lock:
            self.requests.append(recorded)
            reply = self.replies.pop(0) if self.replies else None
        if reply is None:
            return Response(b'{"error": {"message": "no scripted reply"}}', status_code=500)
        if callable(reply) and not isinstance(reply, Json | Sse | Hang):
            reply = reply(recorded)
        if isinstance(reply, Json):
            content = reply.raw if reply.raw is not None else orjson.dumps(reply.body)
            return Response(content, reply.status, reply.headers, media_type="application/json")
        if isinstance(reply, Hang):
            return StreamingResponse(self._hang(reply), media_type="text/event-stream")
        return StreamingResponse(self._sse(reply), status_code=reply.status, media_type="text/event-stream")

    async def _hang(self, reply: Hang) -> AsyncIterator[bytes]:
        try:
            # Set from the test thread, so a threading.Event polled here, not an asyncio.Event.
            while not reply.release.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.disconnected.set()
            raise
        yield b""

    async def _sse(self, reply: Sse) -> AsyncIterator[bytes]:
        try:
            for position, item in enumerate(reply.items, start=1):
                if isinstance(item, bytes):
                    yield item
                else:
                    yield b"data: " + orjson.dumps(item) + b"\n\n"
                if reply.gate_after == position:
                    opened = await asyncio.to_thread(reply.gate.wait, reply.gate_timeout_s)
                    reply.gate_timed_out = not opened
            if reply.done:
                yield b"data: [DONE]\n\n"
            while reply.hang_at_end:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.disconnected.set()
            raise
