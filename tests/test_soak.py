"""A bounded soak: mixed traffic from a few concurrent clients against one gateway.

Plain and streamed answers, server tool rounds, clients that leave mid-stream and hostile
bodies run together for a few seconds. Afterwards no request has ended in a 5xx, nothing is
left in flight, and the process's resident memory (gateway, upstream and clients share it:
the servers run in threads) has not grown beyond a generous bound.
"""

from __future__ import annotations

import gc
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Gateway, GatewayFactory
from tests.fake_upstream import MODEL, Json, Recorded, Sse, call, chunk, completion
from tests.raw_http import AnsweringUpstream, openai_error

CHAT = "/v1/chat/completions"
STATUS = Path("/proc/self/status")
CLIENTS = 4
WARM_UP_S = 2.0
SOAK_S = 8.0
MAX_GROWTH = 32 * 1024 * 1024
ROLE = chunk({"role": "assistant", "content": ""})

pytestmark = pytest.mark.skipif(not STATUS.exists(), reason="reads the resident set size from /proc/self/status")


def rss() -> int:
    """Resident memory of this process, after a full collection, in bytes."""
    gc.collect()
    for line in STATUS.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def in_flight(gateway: Gateway) -> float:
    text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_requests_in_flight":
                return float(sample.value)
    raise AssertionError("gateway_requests_in_flight is missing from /metrics")


def respond(recorded: Recorded) -> Json | Sse:
    """The upstream's answer, chosen by what the request says (traffic is concurrent, so no script)."""
    body = recorded.body if isinstance(recorded.body, dict) else {}
    messages = body.get("messages") or [{}]
    stream = body.get("stream") is True
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    if last.get("role") == "tool":
        text = f"The sum is {last.get('content')}."
    elif last.get("content") == "add 2 and 3":
        if not stream:
            return completion(None, tool_calls=[call("add", {"a": 2, "b": 3}, "call_add")])
        part = {"index": 0, **call("add", {"a": 2, "b": 3}, "call_add")}
        return Sse([ROLE, chunk({"tool_calls": [part]}), chunk({}, "tool_calls")])
    elif last.get("content") == "stall":
        return Sse([ROLE, chunk({"content": "partial"})], done=False, hang_at_end=True)
    else:
        text = "Hello there, this is a plain answer."
    if not stream:
        return completion(text)
    words = text.split(" ")
    return Sse([ROLE, *(chunk({"content": w if i == 0 else f" {w}"}) for i, w in enumerate(words)), chunk({}, "stop")])


@pytest.fixture
def upstream() -> Iterator[AnsweringUpstream]:
    """Overrides conftest's scripted fake: this one answers every request by its content."""
    fake = AnsweringUpstream(respond, keep=16).start()
    yield fake
    fake.stop()


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


HOSTILE_BODIES = [
    b'{"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "x": '
    + b"[" * 2000
    + b"]" * 2000
    + b"}",
    b'{"model": "test-model", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    b'{"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "seed": 1180591620717411303424}',
    orjson.dumps({"model": "m" * 20_000, "messages": _user("hi")}),
    b'{"model": "test-model", "messages": [{"role": "us',
    b"\x00\x01garbage",
    b"",
    orjson.dumps({"model": MODEL, "messages": "hi", "tools": 3, "stream": "maybe"}),
]


class Traffic:
    """What every client did: statuses by kind, and anything that went wrong."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.failures: list[str] = []
        self.lock = threading.Lock()

    def record(self, kind: str, status: int, problem: str | None = None) -> None:
        with self.lock:
            self.statuses[(kind, status)] += 1
            if status >= 500 or problem:
                self.failures.append(f"{kind}: HTTP {status} {problem or ''}")

    def client(self, seed: int, stop: threading.Event) -> None:
        rng = random.Random(seed)
        sdk = self.gateway.client(timeout=20)
        actions: list[Callable[[openai.OpenAI, httpx.Client, random.Random], None]] = [
            self.plain,
            self.streamed,
            self.tool_round,
            self.streamed_tool_round,
            self.leave_mid_stream,
            self.hostile,
        ]
        with httpx.Client(base_url=self.gateway.url, timeout=20) as http:
            while not stop.is_set():
                action = rng.choice(actions)
                try:
                    action(sdk, http, rng)
                except openai.APIStatusError as exc:
                    self.record(action.__name__, exc.status_code, exc.message)
                except Exception as exc:
                    self.record(action.__name__, 0, repr(exc))

    def plain(self, sdk: openai.OpenAI, http: httpx.Client, rng: random.Random) -> None:
        answer = sdk.chat.completions.create(model=MODEL, messages=_user("hi"))
        ok = answer.choices[0].message.content == "Hello there, this is a plain answer."
        self.record("plain", 200, None if ok else f"wrong answer {answer}")

    def streamed(self, sdk: openai.OpenAI, http: httpx.Client, rng: random.Random) -> None:
        chunks = list(sdk.chat.completions.create(model=MODEL, messages=_user("hi"), stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.record("streamed", 200, None if text == "Hello there, this is a plain answer." else repr(text))

    def tool_round(self, sdk: openai.OpenAI, http: httpx.Client, rng: random.Random) -> None:
        answer = sdk.chat.completions.create(model=MODEL, messages=_user("add 2 and 3"))
        ok = answer.choices[0].message.content == "The sum is 5."
        self.record("tool_round", 200, None if ok else f"wrong answer {answer}")

    def streamed_tool_round(self, sdk: openai.OpenAI, http: httpx.Client, rng: random.Random) -> None:
        stream = sdk.chat.completions.create(model=MODEL, messages=_user("add 2 and 3"), stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        self.record("streamed_tool_round", 200, None if text == "The sum is 5." else repr(text))

    def leave_mid_stream(self, sdk: openai.OpenAI, http: httpx.Client, rng: random.Random) -> None:
        body = {"model": MODEL, "messages": _user(rng.choice(["stall", "hi", "add 2 and 3"])), "stream": True}
        with http.stream("POST", CHAT, json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    break
        self.record("leave_mid_stream", response.status_code)

    def hostile(self, sdk: openai.OpenAI, http: httpx.Client, rng: random.Random) -> None:
        headers = {"content-type": "application/json", "x-request-id": b"soak-\xe9\xff", "x-note": b"\xe0" * 200}
        response = http.post(CHAT, content=rng.choice(HOSTILE_BODIES), headers=headers)
        problem = None
        if response.status_code >= 400:
            try:
                openai_error(response.content)
            except AssertionError as exc:
                problem = str(exc)
        self.record("hostile", response.status_code, problem)

    def run(self, seconds: float, seed: int) -> None:
        stop = threading.Event()
        threads = [threading.Thread(target=self.client, args=(seed + i, stop)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join(30)
        assert not any(t.is_alive() for t in threads), "a client is stuck"


def _settled(gateway: Gateway, timeout_s: float = 5.0) -> float:
    """gateway_requests_in_flight, once it is 0 or ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    while (count := in_flight(gateway)) != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


def test_mixed_traffic_soak(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    traffic = Traffic(gateway)
    traffic.run(WARM_UP_S, seed=1)
    _settled(gateway)
    before = rss()
    traffic.run(SOAK_S, seed=100)
    remaining = _settled(gateway)
    after = rss()

    kinds = Counter(kind for kind, _ in traffic.statuses.elements())
    assert set(kinds) == {"plain", "streamed", "tool_round", "streamed_tool_round", "leave_mid_stream", "hostile"}
    assert not traffic.failures, traffic.failures[:20]
    assert remaining == 0, f"gateway_requests_in_flight is {remaining} after the soak"
    growth = after - before
    print(f"soak: {sum(kinds.values())} requests, RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MB", dict(kinds))
    assert growth < MAX_GROWTH, f"RSS grew by {growth / 2**20:.1f} MB over {sum(kinds.values())} requests"


def test_long_model_names_are_refused_and_not_kept(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()  # its upstream serves models: ["*"]
    size = 100_000

    def ask(http: httpx.Client, i: int) -> None:
        model = f"{i:06d}".ljust(size, "m")
        content = orjson.dumps({"model": model, "messages": _user("hi")})
        response = http.post(CHAT, content=content, headers={"content-type": "application/json"})
        assert response.status_code == 400, (response.status_code, response.content[:300])
        assert openai_error(response.content)["param"] == "model"
        assert len(response.content) < 4096, "the refusal echoes the whole model name"

    # A fresh connection per request: the loopback test servers' keep-alive turns are slow.
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=gateway.url, timeout=20, limits=limits) as http:
        for i in range(20):
            ask(http, i)
        before = rss()
        for i in range(20, 320):
            ask(http, i)
        after = rss()
    growth = after - before
    print(f"model names: RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MB")
    assert growth < 30 * 1024 * 1024, f"RSS grew by {growth / 2**20:.1f} MB over 300 refused model names"
