"""What each benchmark scenario sends, to whom, and what a correct answer contains.

The fake upstream and the load generator both read this module, so the prompt
that makes the upstream call the tool and the markers the client checks for
cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

Target = Literal["direct", "gateway", "litellm"]
TARGETS: tuple[Target, ...] = ("direct", "gateway", "litellm")

API_KEY = "sk-bench-key"
PLAIN_MODEL = "bench-plain"
TOOLS_MODEL = "bench-tools"
TOOL_NAME = "bench_echo"
TOOL_CALL_ID = "call_bench_1"
TOOL_ARGUMENTS = '{"text": "ping"}'
TOOL_RESULT = "ping"

# The upstream calls the tool only for this exact prompt, so offering tools alone
# (the ``tools-offered`` scenario) still gets a plain answer.
TOOL_PROMPT = "Call bench_echo with the text ping."
PLAIN_PROMPT = "Say hello."

# A user message of this form asks the fake upstream for a streamed answer of ``chunks``
# content events, ``interval_ms`` apart (0: all at once), instead of its usual short one.
STREAM_PROMPT_PREFIX = "bench-stream"


def stream_prompt(chunks: int, interval_ms: float = 0) -> str:
    return f"{STREAM_PROMPT_PREFIX} chunks={chunks} interval_ms={interval_ms:g}"


def parse_stream_prompt(text: object) -> tuple[int, float] | None:
    """``(chunks, interval_ms)`` from a :func:`stream_prompt`, or None for any other text."""
    if not isinstance(text, str) or not text.startswith(STREAM_PROMPT_PREFIX):
        return None
    try:
        fields = dict(part.split("=", 1) for part in text.split()[1:])
        chunks, interval_ms = int(fields["chunks"]), float(fields["interval_ms"])
    except (KeyError, ValueError):
        return None
    return (chunks, interval_ms) if 1 <= chunks <= 100_000 and 0 <= interval_ms <= 60_000 else None


# Distinct first tokens: a reply that carries one proves which branch answered.
ANSWER_MARKER = "Hello"
AFTER_TOOL_MARKER = "[after-tool]"
DONE = b"data: [DONE]\n\n"

TOOL_DEFINITION: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": "Echo the text back.",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    },
}


@dataclass(frozen=True, slots=True)
class Step:
    """One HTTP request of a scenario, and a byte string its response body must contain."""

    body: dict[str, Any]
    expect: bytes
    stream: bool

    def request(self, host: str, port: int, path: str = "/v1/chat/completions") -> bytes:
        """The full HTTP/1.1 request, built once so the load loop only writes bytes."""
        payload = orjson.dumps(self.body)
        head = (
            f"POST {path} HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\n"
            "Content-Type: application/json\r\n"
            f"Authorization: Bearer {API_KEY}\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        return head.encode() + payload


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    title: str
    stream: bool
    tool_round: bool
    offers_tools: bool
    litellm: bool
    # Content events in the answer; 0 for the upstream's usual short answer.
    chunks: int = 0
    # Run only at concurrency 1, as part of the sequential probe.
    probe_only: bool = False

    def steps(self, target: Target) -> list[Step]:
        """The requests one measured "request" makes against ``target``.

        Direct tool rounds are the client doing the gateway's job by hand: ask, run
        the (instant) tool, ask again; that is the "tool + upstream time" baseline.
        """
        model = TOOLS_MODEL if target == "gateway" and (self.tool_round or self.offers_tools) else PLAIN_MODEL
        prompt = TOOL_PROMPT if self.tool_round else stream_prompt(self.chunks) if self.chunks else PLAIN_PROMPT
        first: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
        final_marker = (AFTER_TOOL_MARKER if self.tool_round else ANSWER_MARKER).encode()
        if target != "direct" or not self.tool_round:
            return [Step(self._body(model, first, tools=False), final_marker, self.stream)]
        call = {"id": TOOL_CALL_ID, "type": "function", "function": {"name": TOOL_NAME, "arguments": TOOL_ARGUMENTS}}
        follow_up = [
            *first,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": TOOL_CALL_ID, "content": TOOL_RESULT},
        ]
        return [
            Step(self._body(model, first, tools=True), TOOL_CALL_ID.encode(), self.stream),
            Step(self._body(model, follow_up, tools=True), final_marker, self.stream),
        ]

    def _body(self, model: str, messages: list[dict[str, Any]], *, tools: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": 64}
        if tools:
            body["tools"] = [TOOL_DEFINITION]
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body


LONG_ANSWER_CHUNKS = 200

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("chat", "non-streaming, no tools", stream=False, tool_round=False, offers_tools=False, litellm=True),
    Scenario("chat-stream", "streaming, no tools", stream=True, tool_round=False, offers_tools=False, litellm=True),
    Scenario(
        "tool-round",
        "non-streaming, one server-tool round",
        stream=False,
        tool_round=True,
        offers_tools=True,
        litellm=False,
    ),
    Scenario(
        "tool-round-stream",
        "streaming, one server-tool round",
        stream=True,
        tool_round=True,
        offers_tools=True,
        litellm=False,
    ),
    Scenario(
        "tools-offered",
        "non-streaming, server tools offered, none called",
        stream=False,
        tool_round=False,
        offers_tools=True,
        litellm=False,
    ),
    Scenario(
        "tools-offered-stream",
        "streaming, server tools offered, none called",
        stream=True,
        tool_round=False,
        offers_tools=True,
        litellm=False,
        probe_only=True,
    ),
    Scenario(
        f"stream-{LONG_ANSWER_CHUNKS}",
        f"streaming, no tools, {LONG_ANSWER_CHUNKS} content chunks sent at once",
        stream=True,
        tool_round=False,
        offers_tools=False,
        litellm=False,
        chunks=LONG_ANSWER_CHUNKS,
        probe_only=True,
    ),
    Scenario(
        f"stream-{LONG_ANSWER_CHUNKS}-tools",
        f"streaming, server tools offered, none called, {LONG_ANSWER_CHUNKS} content chunks sent at once",
        stream=True,
        tool_round=False,
        offers_tools=True,
        litellm=False,
        chunks=LONG_ANSWER_CHUNKS,
        probe_only=True,
    ),
)


def paced_stream_step(chunks: int, interval_ms: float) -> Step:
    """One streamed request, no tools, for an answer of ``chunks`` content chunks ``interval_ms`` apart."""
    body = {
        "model": PLAIN_MODEL,
        "messages": [{"role": "user", "content": stream_prompt(chunks, interval_ms)}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return Step(body, ANSWER_MARKER.encode(), stream=True)


def scenario_named(name: str) -> Scenario:
    return next(s for s in SCENARIOS if s.name == name)
