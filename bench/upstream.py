"""A fast fake OpenAI upstream: a raw asyncio protocol, httptools parsing, precomputed replies.

Run as ``python -m bench.upstream --port N``; it prints ``ready <port>`` once it listens.

It must cost far less per request than anything it is compared with, so every
reply is built once at import; a request costs one ``orjson.loads`` (to tell a
tool-calling turn from a plain one) and a few ``write`` calls. Streams are
written one event per write, as a real server flushes tokens, so a reader sees
separate chunks rather than one buffer.

A user message built by ``bench.scenarios.stream_prompt`` asks for a long
answer of N content chunks, written at once or paced ``interval_ms`` apart on
the event loop's clock (each chunk is due at start + k * interval, so the pace
does not drift), as a model generating tokens would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
from collections.abc import Callable
from typing import Any, cast

import httptools
import orjson
import uvloop

from bench.scenarios import (
    AFTER_TOOL_MARKER,
    ANSWER_MARKER,
    TOOL_ARGUMENTS,
    TOOL_CALL_ID,
    TOOL_NAME,
    TOOL_PROMPT,
    parse_stream_prompt,
)

CREATED = 1_700_000_000
USAGE = {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}
ANSWER_TOKENS = [ANSWER_MARKER, " from", " the", " bench", " upstream", ",", " hi", "!"]
AFTER_TOOL_TOKENS = [AFTER_TOOL_MARKER, " The", " tool", " said", " ping", "."]


def _json_response(payload: Any, status: str = "200 OK") -> bytes:
    body = orjson.dumps(payload)
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _completion(reply_id: str, model: str, message: dict[str, Any], finish_reason: str) -> bytes:
    return _json_response(
        {
            "id": reply_id,
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": USAGE,
        }
    )


def _chunk(reply_id: str, model: str, delta: dict[str, Any] | None, finish_reason: str | None = None) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    data: dict[str, Any] = {
        "id": reply_id,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": choices,
    }
    if delta is None:
        data["usage"] = USAGE
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _http_chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class Replies:
    """Every reply for one model name, as the bytes to write (stream events already chunk-framed)."""

    STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    STREAM_END = _http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"

    def __init__(self, model: str) -> None:
        # Each kind of turn has its own id, as real servers do; the gateway must
        # then rewrite the second round's chunks to keep one id per client stream.
        answer_id, tool_id, after_id = "chatcmpl-bench-answer", "chatcmpl-bench-tool", "chatcmpl-bench-after"
        self.model = model
        self._long: dict[int, list[bytes]] = {}
        call = {"id": TOOL_CALL_ID, "type": "function", "function": {"name": TOOL_NAME, "arguments": TOOL_ARGUMENTS}}
        self.answer = _completion(answer_id, model, {"role": "assistant", "content": "".join(ANSWER_TOKENS)}, "stop")
        self.after_tool = _completion(
            after_id, model, {"role": "assistant", "content": "".join(AFTER_TOOL_TOKENS)}, "stop"
        )
        self.tool_call = _completion(
            tool_id, model, {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"
        )
        self.answer_stream = self._text_stream(answer_id, model, ANSWER_TOKENS)
        self.after_tool_stream = self._text_stream(after_id, model, AFTER_TOOL_TOKENS)
        opening = {**call, "index": 0, "function": {"name": TOOL_NAME, "arguments": ""}}
        half = len(TOOL_ARGUMENTS) // 2
        tool_events = [
            _chunk(tool_id, model, {"role": "assistant", "content": None, "tool_calls": [opening]}),
            _chunk(tool_id, model, {"tool_calls": [{"index": 0, "function": {"arguments": TOOL_ARGUMENTS[:half]}}]}),
            _chunk(tool_id, model, {"tool_calls": [{"index": 0, "function": {"arguments": TOOL_ARGUMENTS[half:]}}]}),
            _chunk(tool_id, model, {}, "tool_calls"),
        ]
        self.tool_call_stream = [_http_chunk(event) for event in tool_events]
        self.usage_chunk = {
            "answer": _http_chunk(_chunk(answer_id, model, None)),
            "after": _http_chunk(_chunk(after_id, model, None)),
            "tool": _http_chunk(_chunk(tool_id, model, None)),
        }

    def long_stream(self, chunks: int) -> list[bytes]:
        """The answer as ``chunks`` content events (then finish, usage, [DONE]), built once per length."""
        events = self._long.get(chunks)
        if events is None:
            tokens = [ANSWER_MARKER] + [f" t{k}" for k in range(1, chunks)]
            events = self._text_stream("chatcmpl-bench-long", self.model, tokens)
            if len(self._long) < 16:
                self._long[chunks] = events
        return events

    @staticmethod
    def _text_stream(reply_id: str, model: str, tokens: list[str]) -> list[bytes]:
        events = [_chunk(reply_id, model, {"role": "assistant", "content": ""})]
        events += [_chunk(reply_id, model, {"content": token}) for token in tokens]
        events.append(_chunk(reply_id, model, {}, "stop"))
        return [_http_chunk(event) for event in events]


MODELS = _json_response({"object": "list", "data": [{"id": "bench-plain", "object": "model", "owned_by": "bench"}]})
NOT_FOUND = _json_response({"error": {"message": "not found", "type": "not_found"}}, "404 Not Found")
BAD_REQUEST = _json_response({"error": {"message": "bad request", "type": "invalid_request_error"}}, "400 Bad Request")


def _turn(body: dict[str, Any]) -> str:
    """Which reply a chat request gets: ``tool`` (call the tool), ``after`` (answer it) or ``answer``."""
    messages = body.get("messages") or []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    if last.get("role") == "tool":
        return "after"
    if last.get("role") == "user" and last.get("content") == TOOL_PROMPT:
        offered = body.get("tools") or []
        if any(isinstance(t, dict) and (t.get("function") or {}).get("name") == TOOL_NAME for t in offered):
            return "tool"
    return "answer"


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive connection; requests are answered in order as each completes."""

    replies: dict[str, Replies] = {}

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.pacing = False
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        path = self.url.split(b"?", 1)[0]
        self.keep_alive = self.parser.should_keep_alive()
        if path.endswith(b"/models"):
            self.transport.write(MODELS)
        elif path.endswith(b"/chat/completions"):
            self._chat()
        else:
            self.transport.write(NOT_FOUND)
        if not self.keep_alive and not self.pacing:
            self.transport.close()

    def _chat(self) -> None:
        assert self.transport is not None
        try:
            body = orjson.loads(b"".join(self.body))
        except orjson.JSONDecodeError:
            self.transport.write(BAD_REQUEST)
            return
        if not isinstance(body, dict):
            self.transport.write(BAD_REQUEST)
            return
        model = str(body.get("model") or "bench-plain")
        replies = self.replies.get(model)
        if replies is None:
            # Bounded: the benchmark only ever sends a handful of model names.
            replies = Replies(model) if len(self.replies) < 64 else Replies("bench-plain")
            self.replies[model] = replies
        turn = _turn(body)
        long = parse_stream_prompt(_last_user_text(body)) if turn == "answer" and body.get("stream") else None
        if long is not None:
            self._long_stream(replies, *long, usage=bool((body.get("stream_options") or {}).get("include_usage")))
            return
        if not body.get("stream"):
            whole = {"answer": replies.answer, "after": replies.after_tool, "tool": replies.tool_call}[turn]
            self.transport.write(whole)
            return
        events = {"answer": replies.answer_stream, "after": replies.after_tool_stream, "tool": replies.tool_call_stream}
        self.transport.write(Replies.STREAM_HEAD)
        for event in events[turn]:
            self.transport.write(event)
        if (body.get("stream_options") or {}).get("include_usage"):
            self.transport.write(replies.usage_chunk[turn])
        self.transport.write(Replies.STREAM_END)

    def _long_stream(self, replies: Replies, chunks: int, interval_ms: float, *, usage: bool) -> None:
        assert self.transport is not None
        events = replies.long_stream(chunks)
        # The role event leads; then the content events, then the finish event.
        role, content, finish = events[0], events[1:-1], events[-1]
        tail = [finish, replies.usage_chunk["answer"]] if usage else [finish]
        self.transport.write(Replies.STREAM_HEAD)
        self.transport.write(role)
        if interval_ms <= 0:
            for event in content:
                self.transport.write(event)
            self._finish(tail)
            return
        loop = asyncio.get_running_loop()
        self.pacing = True
        Pacer(loop, self.transport, content, tail, self._finish, interval_ms / 1000).step()

    def _finish(self, tail: list[bytes]) -> None:
        assert self.transport is not None
        for event in tail:
            self.transport.write(event)
        self.transport.write(Replies.STREAM_END)
        self.pacing = False
        if not self.keep_alive:
            self.transport.close()


class Pacer:
    """Writes one stream's content events on schedule, one timer at a time, then its tail."""

    __slots__ = ("events", "finish", "interval", "loop", "sent", "start", "tail", "transport")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.Transport,
        events: list[bytes],
        tail: list[bytes],
        finish: Callable[[list[bytes]], None],
        interval_s: float,
    ) -> None:
        self.loop, self.transport, self.events, self.tail = loop, transport, events, tail
        self.finish, self.interval = finish, interval_s
        self.start = loop.time()
        self.sent = 0

    def step(self) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(self.events[self.sent])
        self.sent += 1
        if self.sent == len(self.events):
            self.finish(self.tail)
            return
        self.loop.call_at(self.start + self.sent * self.interval, self.step)


def _last_user_text(body: dict[str, Any]) -> object:
    messages = body.get("messages") or []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    return last.get("content") if last.get("role") == "user" else None


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, host, port, backlog=1024, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    print(f"ready {bound}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
