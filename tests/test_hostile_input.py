"""Hostile input: fuzzed bodies, headers and raw bytes never make the gateway fail.

Whatever a client sends, the gateway answers below 500 (its upstream here is healthy), and
every 4xx body is an OpenAI error object with all four keys. Servers are module-scoped so
hypothesis can send hundreds of requests to one running gateway.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, Phase, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from gateway.config import GatewayConfig
from tests.conftest import TOOL_FIXTURES, Gateway
from tests.fake_upstream import MODEL
from tests.raw_http import AnsweringUpstream, openai_error, raw_exchange

KEYS = ("sk-alpha", "sk-beta")
AUTH = {"authorization": f"Bearer {KEYS[0]}", "content-type": "application/json"}
USER = [{"role": "user", "content": "hi"}]
VALID = {"model": MODEL, "messages": USER}
CHAT = "/v1/chat/completions"


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow],
    )


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[AnsweringUpstream, Gateway]]:
    upstream = AnsweringUpstream().start()
    config = GatewayConfig.model_validate(
        {
            "upstreams": [
                {
                    "name": "fake",
                    "base_url": upstream.base_url,
                    "api_key": "upstream-secret",
                    "models": ["*"],
                    "timeout_s": {"connect": 2, "read": 10},
                    "retries": {"attempts": 2, "initial_wait_s": 0.01, "max_wait_s": 0.02},
                }
            ],
            "auth": {"api_keys": [KEYS[0], {"name": "team-b", "key": KEYS[1]}]},
            "tools": {"paths": [str(TOOL_FIXTURES)]},
            "loop": {"default_timeout_s": 5},
        }
    )
    gateway = Gateway(config)
    gateway.server.start()
    yield upstream, gateway
    gateway.stop()
    upstream.stop()


@pytest.fixture(scope="module")
def http(stack: tuple[AnsweringUpstream, Gateway]) -> Iterator[httpx.Client]:
    # No keep-alive: each example gets its own connection, so one that the server closed
    # after an earlier example cannot fail the next one.
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=stack[1].url, timeout=20, limits=limits) as client:
        yield client


def _data_events(content: bytes) -> list[bytes]:
    lines = content.replace(b"\r\n", b"\n").split(b"\n")
    return [line[5:].strip() for line in lines if line.startswith(b"data:")]


def check(response: httpx.Response) -> None:
    """Never a 5xx; a 4xx is an OpenAI error; a 200 is a whole completion or a clean stream."""
    status = response.status_code
    assert status < 500, f"gateway answered {status}: {response.content[:300]!r}"
    if status >= 400:
        openai_error(response.content)
        return
    assert status == 200, f"unexpected status {status}"
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        events = _data_events(response.content)
        assert events and events[-1] == b"[DONE]", f"stream did not end in [DONE]: {response.content[-300:]!r}"
        for event in events[:-1]:
            assert "error" not in orjson.loads(event), f"error event from a healthy upstream: {event[:300]!r}"
    else:
        assert response.json()["choices"], response.content[:300]


def post(http: httpx.Client, content: bytes, headers: dict[str, Any] | None = None) -> httpx.Response:
    try:
        response = http.post(CHAT, content=content, headers=headers if headers is not None else AUTH)
    except httpx.TransportError as exc:
        raise AssertionError(f"the gateway dropped the connection: {exc!r} for {content[:200]!r}") from exc
    check(response)
    if currently_in_test_context():
        event(f"HTTP {response.status_code}")  # shown by --hypothesis-show-statistics
    return response


# --- strategies -------------------------------------------------------------------------------

BIG_INTS = st.integers(min_value=2**63 - 2, max_value=2**200) | st.integers(min_value=-(2**200), max_value=-(2**63))
STRINGS = (
    st.text(max_size=30)
    | st.sampled_from(["", "\x00", "\x1b[31m", "\u2028", "é", "\U0001f600", "\ufeff", "a\rb\nc"])
    | st.integers(1000, 12_000).map(lambda n: "m" * n)
)
SCALARS = st.none() | st.booleans() | st.integers() | BIG_INTS | st.floats() | STRINGS
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
CALLS = st.fixed_dictionaries(
    {"id": STRINGS | JSON_VALUES, "type": st.just("function")},
    optional={"function": JSON_VALUES | st.fixed_dictionaries({"name": STRINGS, "arguments": STRINGS | JSON_VALUES})},
)
MESSAGES = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "tool", "system", "developer"]) | JSON_VALUES},
    optional={
        "content": STRINGS | JSON_VALUES,
        "tool_calls": st.lists(CALLS, max_size=3) | JSON_VALUES,
        "tool_call_id": STRINGS | JSON_VALUES,
        "name": JSON_VALUES,
    },
)
TOOLS = st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "web_search"]) | JSON_VALUES},
    optional={
        "function": JSON_VALUES
        | st.fixed_dictionaries(
            {"name": st.sampled_from(["add", "open_door", ""]) | STRINGS}, optional={"parameters": JSON_VALUES}
        )
    },
)
FIELDS = {
    "model": STRINGS | JSON_VALUES,
    "messages": st.lists(MESSAGES, max_size=4) | JSON_VALUES,
    "stream": st.sampled_from([True, False, "true", 1, 0, None]) | JSON_VALUES,
    "tools": st.lists(TOOLS, max_size=3) | JSON_VALUES,
    "tool_choice": st.sampled_from(["none", "auto", "required", {"type": "function", "function": {"name": "add"}}])
    | JSON_VALUES,
    "n": st.integers(-5, 5) | BIG_INTS | JSON_VALUES,
    "stream_options": st.fixed_dictionaries({"include_usage": JSON_VALUES}) | JSON_VALUES,
}
NEAR_VALID = st.builds(
    lambda changed, extra, dropped: {k: v for k, v in {**VALID, **extra, **changed}.items() if k not in dropped},
    st.fixed_dictionaries({}, optional=FIELDS),
    st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=2),
    st.sets(st.sampled_from(["model", "messages"]), max_size=1),
)
VALID_BYTES = orjson.dumps({**VALID, "messages": [{"role": "user", "content": "PLACEHOLDER"}]})
INVALID_UTF8 = st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\x80"])


def _nested(depth: int, opener: bytes) -> bytes:
    """A valid chat body with an extra field nested ``depth`` containers deep."""
    inner = b"[" * depth + b"1" + b"]" * depth if opener == b"[" else b'{"a":' * depth + b"1" + b"}" * depth
    return VALID_BYTES[:-1] + b',"metadata":' + inner + b"}"


RAW_BODIES = st.one_of(
    st.builds(lambda n: VALID_BYTES[:n], st.integers(0, len(VALID_BYTES) - 1)),
    st.builds(lambda bad: VALID_BYTES.replace(b"PLACEHOLDER", b"x" + bad + b"y"), INVALID_UTF8),
    st.builds(lambda n: VALID_BYTES[:-1] + b',"seed":' + str(n).encode() + b"}", BIG_INTS),
    st.sampled_from([b"", b" ", b"\xef\xbb\xbf{}", b"null", b"\x00", b'"\\ud800"', b"1e999", b"[]" * 3, b"{" * 5000]),
    st.sampled_from([b'"\\ud800"', b'"\\udfff\\ud800"', b'"\\u0000"', b"1e400", b"-0", b"NaN", b"Infinity"]).map(
        lambda v: VALID_BYTES.replace(b'"PLACEHOLDER"', v)
    ),
    st.binary(max_size=200),
)

# RFC 9110 field values: visible ASCII and obs-text (0x80-0xFF), with inner spaces and tabs.
VCHAR = sorted(set(range(0x21, 0x7F)) | set(range(0x80, 0x100)))
CONTROL = [*range(0x01, 0x09), *range(0x0E, 0x20), 0x7F]  # invalid in a field value; a 400 may refuse them
HEADER_VALUES = st.one_of(
    st.lists(st.sampled_from(VCHAR), min_size=1, max_size=40).map(bytes),
    st.tuples(*[st.lists(st.sampled_from(VCHAR), min_size=1, max_size=8)] * 2).map(
        lambda parts: bytes(parts[0]) + b" \t " + bytes(parts[1])
    ),
    st.integers(500, 3000).map(lambda n: b"\xe9" * n),
)
CONTROL_VALUES = st.tuples(HEADER_VALUES, st.sampled_from(CONTROL)).map(lambda v: v[0][:1] + bytes([v[1]]) + v[0])
HEADER_NAMES = st.sampled_from(
    [b"x-request-id", b"x-gateway-trace", b"user-agent", b"openai-organization", b"x-stainless-lang", b"referer"]
) | st.from_regex(rb"\Ax-fz-[a-z0-9-]{1,16}\Z")


# --- property tests ---------------------------------------------------------------------------


@fuzz(50)
@given(value=JSON_VALUES, ascii_only=st.booleans())
def test_arbitrary_json_values(http: httpx.Client, value: Any, ascii_only: bool) -> None:
    post(http, json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))


@fuzz(120)
@given(body=NEAR_VALID, ascii_only=st.booleans(), key=st.sampled_from(KEYS))
def test_near_valid_chat_bodies(http: httpx.Client, body: dict[str, Any], ascii_only: bool, key: str) -> None:
    content = json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    post(http, content, {**AUTH, "authorization": f"Bearer {key}"})


@fuzz(80)
@given(content=RAW_BODIES)
def test_raw_hostile_bodies(http: httpx.Client, content: bytes) -> None:
    post(http, content)


@fuzz(40)
@given(depth=st.integers(1, 1100), opener=st.sampled_from([b"[", b"{"]))
def test_deep_nesting(http: httpx.Client, depth: int, opener: bytes) -> None:
    response = post(http, _nested(depth, opener))
    if depth >= 300:
        assert response.status_code == 400, f"{depth} levels deep: {response.status_code}"


@fuzz(60)
@given(
    headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=4),
    control=st.none() | st.none() | st.tuples(HEADER_NAMES, CONTROL_VALUES),
    auth=st.sampled_from([f"Bearer {k}".encode() for k in KEYS])
    | st.sampled_from([f"Bearer {k}".encode() for k in KEYS])
    | st.sampled_from([b"", b"Bearer", b"Bearer \xe9\xff", b"Basic Zm9v", b"bearer sk-alpha!"])
    | st.lists(st.sampled_from(VCHAR), min_size=1, max_size=30).map(bytes),
    stream=st.booleans(),
)
def test_arbitrary_header_values(
    http: httpx.Client, headers: dict[bytes, bytes], control: tuple[bytes, bytes] | None, auth: bytes, stream: bool
) -> None:
    sent: dict[Any, Any] = {**headers, b"content-type": b"application/json"}
    if control is not None:
        sent[control[0]] = control[1]
    if auth:
        sent[b"authorization"] = auth
    response = post(http, orjson.dumps({**VALID, "stream": stream}), sent)
    expected = 200 if auth in (f"Bearer {k}".encode() for k in KEYS) else 401
    allowed = {expected} if control is None else {expected, 400}
    assert response.status_code in allowed, response.content[:300]


REQUEST_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-alpha\r\n"
CHUNKED_HEAD = REQUEST_HEAD + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
RAW_REQUESTS = st.one_of(
    st.binary(min_size=1, max_size=80).map(lambda b: b + b" /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n\r\n"),
    st.binary(min_size=1, max_size=80).map(lambda b: b"POST " + b + b" HTTP/1.1\r\nHost: gw\r\n\r\n"),
    st.binary(min_size=1, max_size=80).map(lambda b: REQUEST_HEAD + b.replace(b"\r\n\r\n", b"") + b"\r\n\r\n"),
    st.sampled_from([b"zz\r\n", b"ffffffffffffffffffffff\r\n", b"5\r\nab\r\n0\r\n\r\n", b"-1\r\n", b"3\r\nabcXY"]).map(
        lambda chunked: CHUNKED_HEAD + chunked
    ),
    st.sampled_from(
        [
            b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            b"Content-Length: 2\r\nContent-Length: 9\r\n\r\n{}",
            b"Content-Length: -1\r\n\r\n",
            b"Content-Length: abc\r\n\r\n",
            b"Transfer-Encoding: gzip\r\n\r\n{}",
            b"X: a\r\n folded\r\n\r\n",
            b"Bad Header\r\n\r\n",
            b": empty-name\r\n\r\n",
        ]
    ).map(lambda tail: REQUEST_HEAD + tail),
    st.binary(max_size=300),
)


@fuzz(60)
@given(data=RAW_REQUESTS)
def test_raw_socket_garbage(stack: tuple[AnsweringUpstream, Gateway], data: bytes) -> None:
    response = raw_exchange(stack[1].server.port, data)
    if response is None:
        return  # closing a connection that never carried a request is fine
    assert response.status < 500, f"{response.status} for {data[:200]!r}: {response.body[:300]!r}"
    if response.status >= 400:
        openai_error(response.body)


# --- examples ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"NOT AN HTTP REQUEST\r\n\r\n", id="request-line"),
        pytest.param(REQUEST_HEAD + b"Bad Header\r\n\r\n", id="header-syntax"),
        pytest.param(CHUNKED_HEAD + b"zz\r\n{}\r\n0\r\n\r\n", id="chunked"),
        pytest.param(REQUEST_HEAD + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n", id="header-too-large"),
    ],
)
def test_server_level_400s_are_openai_json(stack: tuple[AnsweringUpstream, Gateway], data: bytes) -> None:
    response = raw_exchange(stack[1].server.port, data)
    assert response is not None, "the server closed without answering"
    assert 400 <= response.status < 500, response.status
    assert (response.header(b"content-type") or b"").startswith(b"application/json")
    openai_error(response.body)


@pytest.mark.parametrize("opener", [b"[", b"{"])
def test_nesting_300_deep_is_400(http: httpx.Client, opener: bytes) -> None:
    response = post(http, _nested(300, opener))
    assert response.status_code == 400


def _integer_round_trip(stack: tuple[AnsweringUpstream, Gateway], http: httpx.Client, number: int) -> None:
    """A body integer reaches the upstream digit for digit, or the request is refused with 400."""
    upstream = stack[0]
    upstream.raw_bodies.clear()
    response = post(http, VALID_BYTES[:-1] + b',"seed":' + str(number).encode() + b"}")
    if response.status_code == 400:
        return
    assert response.status_code == 200
    sent = upstream.raw_bodies[-1].replace(b'"seed": ', b'"seed":')
    assert b'"seed":' + str(number).encode() + b"}" in sent or b'"seed":' + str(number).encode() + b"," in sent, (
        f"{number} did not reach the upstream exactly: {sent[:500]!r}"
    )


@pytest.mark.parametrize("number", [2**70, -(2**70)])
def test_huge_integer_is_never_turned_into_a_float(
    stack: tuple[AnsweringUpstream, Gateway], http: httpx.Client, number: int
) -> None:
    _integer_round_trip(stack, http, number)


@fuzz(30)
@given(number=BIG_INTS | st.integers())
def test_any_integer_is_kept_exact(stack: tuple[AnsweringUpstream, Gateway], http: httpx.Client, number: int) -> None:
    _integer_round_trip(stack, http, number)


def test_model_name_of_10000_chars_is_400(http: httpx.Client) -> None:
    response = post(http, orjson.dumps({**VALID, "model": "m" * 10_000}))
    assert response.status_code == 400
    assert openai_error(response.content)["param"] == "model"


@pytest.mark.parametrize("stream", [False, True])
def test_non_ascii_header_values_are_accepted(http: httpx.Client, stream: bool) -> None:
    headers = {**AUTH, "x-request-id": b"r\xe9q-\xff-1", "x-client-note": b"caf\xe9 cr\xe8me"}
    response = post(http, orjson.dumps({**VALID, "stream": stream}), headers)
    assert response.status_code == 200, response.content[:300]
