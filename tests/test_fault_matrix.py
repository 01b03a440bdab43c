"""Upstream faults, each on {JSON, SSE} requests, {without tools, after one server tool round}.

Every combination ends, within small timeouts, in either a successful retry or an OpenAI-shaped
error with a sensible status. Streams that already sent bytes end in one error event, then
``[DONE]``. A server tool never runs twice in one request, and an error after a tool ran carries
``x-should-retry: false`` so SDKs do not repeat its side effects; an error before any tool ran
does not.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import GatewayFactory
from tests.fake_upstream import MODEL, FakeUpstream, Hang, Json, Recorded, Reply, Sse, call, chunk, completion
from tests.raw_http import openai_error

USER = [{"role": "user", "content": "What is 2 + 3?"}]
FAST = {
    "timeout_s": {"connect": 1, "read": 0.3},
    "retries": {"attempts": 3, "initial_wait_s": 0.01, "max_wait_s": 0.05, "max_total_s": 2},
}
UPSTREAM_ERROR = {"error": {"message": "upstream is unhappy", "type": "server_error", "param": None, "code": None}}
ROLE = chunk({"role": "assistant", "content": ""})
PARTIAL = chunk({"content": "Partial"})


def _answer(stream: bool) -> Reply:
    if stream:
        return Sse([ROLE, chunk({"content": "done"}), chunk({}, "stop")])
    return completion("done")


def _tool_round(stream: bool) -> Reply:
    arguments = {"a": 2, "b": 3}
    if not stream:
        return completion(None, tool_calls=[call("add", arguments, "call_add")])
    fragment = {"index": 0, **call("add", arguments, "call_add")}
    return Sse([ROLE, chunk({"tool_calls": [fragment]}), chunk({}, "tool_calls")])


@dataclass(frozen=True)
class Fault:
    name: str
    replies: Callable[[bool], list[Reply]]  # the faulty round's replies, by stream
    statuses: frozenset[int] = frozenset()  # the HTTP error it must end in; empty: the retry succeeds
    mid_stream: bool = False  # on a stream, the fault comes after the first bytes
    attempts: int | None = None  # upstream calls the faulty round must make
    refuse: bool = False  # the upstream stops accepting connections


def _status(status: int, body: Any = UPSTREAM_ERROR, headers: dict[str, str] | None = None) -> Json:
    return Json(body, status=status, headers=headers or {})


FAULTS = [
    Fault("refused", lambda s: [], frozenset({502}), refuse=True),
    Fault("http-500", lambda s: [_status(500)], frozenset({500}), attempts=1),
    Fault("http-502", lambda s: [_status(502)] * 3, frozenset({502}), attempts=3),
    Fault("http-503-then-ok", lambda s: [_status(503), _answer(s)], attempts=2),
    Fault(
        "http-429-retry-after-then-ok", lambda s: [_status(429, headers={"retry-after": "0"}), _answer(s)], attempts=2
    ),
    Fault(
        "http-429-long-retry-after-then-ok",
        lambda s: [_status(429, headers={"retry-after": "3600"}), _answer(s)],
        attempts=2,
    ),
    Fault("http-429-exhausted", lambda s: [_status(429)] * 3, frozenset({429}), attempts=3),
    Fault("http-400-not-openai", lambda s: [_status(400, {"detail": [{"msg": "bad temperature"}]})], frozenset({400})),
    Fault("not-json", lambda s: [Json(None, raw=b"<html>upstream proxy error</html>")], frozenset({502})),
    Fault(
        "cut",
        lambda s: [Sse([ROLE, PARTIAL], done=False) if s else Json(None, raw=b'{"id": "chatcmpl-up", "choices": [{')],
        frozenset({502}),
        mid_stream=True,
    ),
    Fault(
        "error-event",
        lambda s: [
            Sse([ROLE, PARTIAL, {"error": {"message": "CUDA out of memory", "code": 500}}])
            if s
            else Json({"error": {"message": "CUDA out of memory", "code": 500}})
        ],
        frozenset({502}),
        mid_stream=True,
    ),
    Fault("hang", lambda s: [Hang()], frozenset({504})),
    Fault(
        "stall",
        lambda s: [Sse([ROLE, PARTIAL] if s else [b'{"id": "chatcmpl-up", '], done=False, hang_at_end=True)],
        frozenset({504}),
        mid_stream=True,
    ),
    Fault("empty-200", lambda s: [Json(None, raw=b"")], frozenset({502})),
]


def _then_refuse(upstream: FakeUpstream, reply: Reply) -> Callable[[Recorded], Reply]:
    """Answer this request, then stop listening and close its connection once the answer is out."""

    def respond(recorded: Recorded) -> Reply:
        server = upstream.server.server  # runs on the upstream's own event loop
        for listener in server.servers:
            listener.close()
        for connection in list(server.server_state.connections):
            connection.shutdown()
        return reply

    return respond


def _events(content: bytes) -> list[bytes]:
    lines = content.replace(b"\r\n", b"\n").split(b"\n")
    return [line[5:].strip() for line in lines if line.startswith(b"data:")]


def _check_success(response: httpx.Response, stream: bool) -> None:
    assert response.status_code == 200, response.content[:500]
    if not stream:
        assert response.json()["choices"][0]["message"]["content"] == "done"
        return
    events = _events(response.content)
    assert events[-1] == b"[DONE]" and events.count(b"[DONE]") == 1, events
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert all("error" not in c for c in chunks), chunks
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert text == "done"


def _check_error_event(response: httpx.Response) -> None:
    assert response.status_code == 200, response.content[:500]
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response.content)
    assert events and events[-1] == b"[DONE]", f"stream did not end in [DONE]: {response.content[-500:]!r}"
    assert events.count(b"[DONE]") == 1, events
    errors = [e for e in events[:-1] if "error" in orjson.loads(e)]
    assert len(errors) == 1, f"expected one error event, got {events}"
    assert errors[0] == events[-2], "the error event must be the last event before [DONE]"
    openai_error(errors[0])


@pytest.mark.parametrize("tools", [False, True], ids=["no-tool", "after-tool"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_upstream_fault(
    upstream: FakeUpstream, make_gateway: GatewayFactory, fault: Fault, stream: bool, tools: bool
) -> None:
    gateway = make_gateway(upstream_overrides=FAST)
    runs = gateway.tool_state()["RUNS"]
    runs_before = len(runs)
    if tools:
        first = _tool_round(stream)
        upstream.enqueue(_then_refuse(upstream, first) if fault.refuse else first)
    elif fault.refuse:
        upstream.stop()
    upstream.enqueue(*fault.replies(stream))

    started = time.monotonic()
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "stream": stream})
    elapsed = time.monotonic() - started

    assert elapsed < 5, f"the request took {elapsed:.1f} s"
    assert len(runs) - runs_before == (1 if tools else 0), f"the server tool ran {len(runs) - runs_before} times"
    if fault.attempts is not None:
        assert len(upstream.bodies) - (1 if tools else 0) == fault.attempts, "upstream calls in the faulty round"
    if not fault.statuses:
        _check_success(response, stream)
    elif stream and (tools or fault.mid_stream):
        _check_error_event(response)
    else:
        assert response.status_code in fault.statuses, (response.status_code, response.content[:500])
        openai_error(response.content)
        should_retry = response.headers.get("x-should-retry")
        if tools:
            assert should_retry == "false", "an error after a server tool ran must stop client retries"
        else:
            assert should_retry != "false", "an error before any tool ran must leave client retries alone"
    if tools and len(upstream.bodies) > 1:
        tool_messages = [m for m in upstream.bodies[1]["messages"] if m.get("role") == "tool"]
        assert [m["content"] for m in tool_messages] == ["5"]


BOUNDED = {**FAST, "max_answer_bytes": 4096}
BIG_ANSWER = orjson.dumps(completion("x" * 100_000).body)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "reply",
    [
        Json(None, raw=BIG_ANSWER),  # declared by Content-Length
        Json(None, raw=gzip.compress(BIG_ANSWER), headers={"content-encoding": "gzip"}),  # 1 KB on the wire
        Sse([BIG_ANSWER[i : i + 1000] for i in range(0, len(BIG_ANSWER), 1000)], done=False),  # chunked, no length
    ],
    ids=["declared", "gzip-bomb", "chunked"],
)
def test_an_answer_over_max_answer_bytes_is_a_502_not_retried(
    upstream: FakeUpstream, make_gateway: GatewayFactory, reply: Reply
) -> None:
    gateway = make_gateway(upstream_overrides=BOUNDED)
    upstream.enqueue(reply)
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": USER})
    assert response.status_code == 502, response.content[:500]
    error = openai_error(response.content)
    assert "more than 4096 bytes" in error["message"] and error["code"] == "upstream_unavailable"
    assert len(upstream.bodies) == 1  # the same answer would come back: not retried
    fine = orjson.dumps(completion("fine").body)  # type: ignore[union-attr]
    upstream.enqueue(Json(None, raw=gzip.compress(fine), headers={"content-encoding": "gzip"}))
    with httpx.Client(base_url=gateway.url, timeout=10) as http:  # a compressed answer within bounds is read
        answer = http.post("/v1/chat/completions", json={"model": MODEL, "messages": USER}).json()
    assert answer["choices"][0]["message"]["content"] == "fine"


def test_passthrough_answers_and_error_bodies_are_bounded_too(
    upstream: FakeUpstream, make_gateway: GatewayFactory
) -> None:
    gateway = make_gateway(upstream_overrides=BOUNDED)
    huge_error = {"error": {"message": "x" * 3_000_000, "type": "server_error", "param": None, "code": None}}
    upstream.enqueue(Json({"data": [{"embedding": [0.5] * 10_000}]}), _status(500, huge_error))
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        embeddings = http.post("/v1/embeddings", json={"model": MODEL, "input": "hi"})
        failed = http.post("/v1/chat/completions", json={"model": MODEL, "messages": USER})
    assert embeddings.status_code == 502 and "more than 4096 bytes" in openai_error(embeddings.content)["message"]
    assert failed.status_code == 500
    openai_error(failed.content)
    assert len(failed.content) < 1_100_000  # the error's first MiB at most, not its 3 MB
