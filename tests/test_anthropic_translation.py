"""Chat completions ⇄ Anthropic Messages: the request one way, answers and streams the other; pure functions."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway import jsoncodec
from gateway.anthropic_answer import ChunkTranslator, chat_completion, chat_usage, is_overloaded_status
from gateway.anthropic_request import messages_request
from gateway.deltas import ToolCallAssembler
from gateway.errors import InvalidRequest, UpstreamUnavailable
from gateway.sse import SSEData, read_sse

MODEL = "claude-sonnet-4-5"
DEFAULT_MAX = 4096
FAILURE = '{"error":"Tool \'add\' timed out after 5s.","type":"timeout"}'  # the executor's failure content
NOT_QUITE = '{"error": "not found", "type": "unknown_tool", "detail": 1}'  # one key too many


def translate(messages: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [user("hi")] if messages is None else messages, **fields}
    return messages_request(body, default_max_tokens=DEFAULT_MAX)


def refusal(messages: list[dict[str, Any]] | None = None, **fields: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        translate(messages, **fields)
    return caught.value


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def call(call_id: str, name: str, arguments: str = "{}") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool(call_id: str, content: Any) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def function_tool(name: str, parameters: Any = None, **extra: Any) -> dict[str, Any]:
    function = {"name": name, "description": f"The {name} tool.", **extra}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


# -- the request: messages ----------------------------------------------------------------------


def test_minimal_request_gets_the_default_max_tokens_and_text_blocks() -> None:
    assert translate() == {
        "model": MODEL,
        "messages": [{"role": "user", "content": [text("hi")]}],
        "max_tokens": DEFAULT_MAX,
    }


def test_system_and_developer_messages_anywhere_become_one_system_string() -> None:
    request = translate(
        [
            {"role": "system", "content": "Be brief."},
            user("hi"),
            {"role": "developer", "content": [text("Answer in French."), text("Use metric units.")]},
            {"role": "system", "content": ""},
        ]
    )
    assert request["system"] == "Be brief.\n\nAnswer in French.\nUse metric units."
    assert request["messages"] == [{"role": "user", "content": [text("hi")]}]


def test_user_parts_become_text_and_image_blocks() -> None:
    content = [
        text("What is in these?"),
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        text(""),
    ]
    assert translate([user(content)])["messages"][0]["content"] == [
        text("What is in these?"),
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    "url",
    ["data:image/tiff;base64,AAAA", "data:image/png,rawbytes", "data:image/png;base64,", "ftp://example.com/a.png"],
)
def test_images_anthropic_cannot_take_are_refused_naming_the_url(url: str) -> None:
    error = refusal([user([text("look"), {"type": "image_url", "image_url": {"url": url}}])])
    assert (error.param, error.code) == ("messages[0].content[1].image_url.url", "invalid_value")


@pytest.mark.parametrize("kind", ["input_audio", "file", "video"])
def test_other_user_parts_are_refused(kind: str) -> None:
    error = refusal([user([text("listen"), {"type": kind, kind: {}}])])
    assert (error.param, error.code) == ("messages[0].content[1].type", "unsupported_parameter")


def test_assistant_tool_calls_become_tool_use_blocks_with_parsed_input() -> None:
    request = translate(
        [
            user("add and greet"),
            {
                "role": "assistant",
                "content": "Let me check.",
                "reasoning_content": "The user wants sums.",
                "tool_calls": [
                    call("call_1", "add", '{"a": 1, "b": 2}'),
                    call("call_2", "greet", '{"name": "Bo'),  # cut by a length limit
                    call("call_3", "noop", "[1, 2]"),  # valid JSON, not an object
                    call("call_4", "noop", ""),
                ],
            },
            tool("call_1", "3"),
            tool("call_2", "bad arguments"),
            tool("call_3", "ok"),
            tool("call_4", "ok"),
        ]
    )
    assistant = request["messages"][1]
    assert assistant == {
        "role": "assistant",
        "content": [
            text("Let me check."),
            {"type": "tool_use", "id": "call_1", "name": "add", "input": {"a": 1, "b": 2}},
            {"type": "tool_use", "id": "call_2", "name": "greet", "input": {}},
            {"type": "tool_use", "id": "call_3", "name": "noop", "input": {}},
            {"type": "tool_use", "id": "call_4", "name": "noop", "input": {}},
        ],
    }


def test_assistant_without_text_sends_only_its_tool_use() -> None:
    for content in (None, ""):
        request = translate([user("go"), {"role": "assistant", "content": content, "tool_calls": [call("c", "f")]}])
        assert request["messages"][1]["content"] == [{"type": "tool_use", "id": "c", "name": "f", "input": {}}]


def test_consecutive_tool_messages_are_one_user_turn_flagging_gateway_failures() -> None:
    request = translate(
        [
            user("go"),
            {"role": "assistant", "content": None, "tool_calls": [call("a", "f"), call("b", "f"), call("c", "f")]},
            tool("a", FAILURE),
            tool("b", NOT_QUITE),
            tool("c", [text("part one"), text("part two")]),
        ]
    )
    assert request["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "a", "content": FAILURE, "is_error": True},
            {"type": "tool_result", "tool_use_id": "b", "content": NOT_QUITE},
            {"type": "tool_result", "tool_use_id": "c", "content": "part one\npart two"},
        ],
    }  # fmt: skip


@pytest.mark.parametrize(
    "content",
    ['{"error": "x"}', '{"error": 1, "type": "t"}', '["error", "type"]', "error: boom", '{"error": "x", "type": "t"'],
)
def test_tool_results_that_are_not_the_failure_shape_are_not_errors(content: str) -> None:
    request = translate([user("go"), {"role": "assistant", "tool_calls": [call("a", "f")]}, tool("a", content)])
    assert "is_error" not in request["messages"][2]["content"][0]


def test_tool_results_then_user_text_merge_into_one_turn_results_first() -> None:
    request = translate(
        [
            user("go"),
            {"role": "assistant", "content": None, "tool_calls": [call("a", "f"), call("b", "f")]},
            tool("a", "1"),
            user("and hurry"),
            tool("b", "2"),
            user([text("please")]),
        ]
    )
    assert [m["role"] for m in request["messages"]] == ["user", "assistant", "user"]
    assert request["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "a", "content": "1"},
        {"type": "tool_result", "tool_use_id": "b", "content": "2"},
        text("and hurry"),
        text("please"),
    ]


def test_same_role_runs_merge_and_empty_messages_are_skipped() -> None:
    request = translate(
        [
            user("one"),
            user(""),
            user("two"),
            {"role": "assistant", "content": "a"},
            {"role": "assistant", "content": "b"},
        ]
    )
    assert request["messages"] == [
        {"role": "user", "content": [text("one"), text("two")]},
        {"role": "assistant", "content": [text("a"), text("b")]},
    ]


def test_empty_tool_result_omits_content() -> None:
    request = translate([user("go"), {"role": "assistant", "tool_calls": [call("a", "f")]}, tool("a", "")])
    assert request["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "a"}]


def test_call_ids_outside_anthropics_alphabet_are_mapped_alike_on_both_sides() -> None:
    request = translate(
        [
            user("go"),
            {"role": "assistant", "tool_calls": [call("functions.add:0", "add")]},
            tool("functions.add:0", "3"),
        ]
    )
    assert request["messages"][1]["content"][0]["id"] == "functions_add_0"
    assert request["messages"][2]["content"][0]["tool_use_id"] == "functions_add_0"


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "assistant", "content": "I start."}, user("hi")],
        [{"role": "system", "content": "Only a system prompt."}],
        [],
    ],
)
def test_conversations_anthropic_cannot_take_are_refused_at_messages(messages: list[dict[str, Any]]) -> None:
    error = refusal(messages)
    assert (error.param, error.code) == ("messages", "invalid_value")


@pytest.mark.parametrize(
    ("message", "param", "code"),
    [
        ({"role": "user", "content": "hi", "name": "alice"}, "messages[0].name", "unsupported_parameter"),
        ({"role": "function", "name": "f", "content": "1"}, "messages[0].role", "invalid_value"),
        ({"role": "user"}, "messages[0].content", "missing_required_parameter"),
        ({"role": "user", "content": 7}, "messages[0].content", "invalid_type"),
        ({"role": "user", "content": [text("a"), "b"]}, "messages[0].content[1]", "invalid_type"),
        ({"role": "user", "content": [{"type": "text", "text": 1}]}, "messages[0].content[0].text", "invalid_type"),
        (
            {"role": "system", "content": [{"type": "image_url"}]},
            "messages[0].content[0].type",
            "unsupported_parameter",
        ),
        ({"content": "hi"}, "messages[0].role", "missing_required_parameter"),
    ],
)
def test_malformed_messages_are_refused_by_path(message: dict[str, Any], param: str, code: str) -> None:
    error = refusal([message])
    assert (error.param, error.code) == (param, code)


def test_tool_message_name_is_redundant_and_ignored() -> None:
    messages = [user("go"), {"role": "assistant", "tool_calls": [call("a", "f")]}, {**tool("a", "1"), "name": "f"}]
    assert translate(messages)["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "a", "content": "1"}
    ]


@pytest.mark.parametrize(
    ("bad_call", "param"),
    [
        ({"type": "function", "function": {"name": "f", "arguments": "{}"}}, "messages[1].tool_calls[0].id"),
        ({"id": "c", "type": "custom", "custom": {}}, "messages[1].tool_calls[0].type"),
        ({"id": "c", "function": {"arguments": "{}"}}, "messages[1].tool_calls[0].function.name"),
        ({"id": "c", "function": {"name": "f", "arguments": 5}}, "messages[1].tool_calls[0].function.arguments"),
        ({"id": "", "function": {"name": "f"}}, "messages[1].tool_calls[0].id"),
    ],
)
def test_malformed_tool_calls_are_refused_by_path(bad_call: dict[str, Any], param: str) -> None:
    assert refusal([user("go"), {"role": "assistant", "tool_calls": [bad_call]}]).param == param


# -- the request: tools, tool_choice, options -----------------------------------------------------


def test_function_tools_become_anthropic_tools_without_strict() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "number"}}, "required": ["a"]}
    request = translate(tools=[function_tool("add", schema, strict=True), function_tool("now")])
    assert request["tools"] == [
        {"name": "add", "description": "The add tool.", "input_schema": schema},
        {"name": "now", "description": "The now tool.", "input_schema": {"type": "object", "properties": {}}},
    ]


@pytest.mark.parametrize(
    ("tools", "param", "code"),
    [
        ([function_tool("a"), {"type": "custom", "custom": {"name": "x"}}], "tools[1].type", "unsupported_parameter"),
        ([{"type": "function"}], "tools[0].function", "missing_required_parameter"),
        ([function_tool("a", parameters=[1])], "tools[0].function.parameters", "invalid_type"),
        ({"type": "function"}, "tools", "invalid_type"),
    ],
)
def test_tools_anthropic_cannot_take_are_refused(tools: Any, param: str, code: str) -> None:
    error = refusal(tools=tools)
    assert (error.param, error.code) == (param, code)


NAMED = {"type": "function", "function": {"name": "add"}}


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "expected"),
    [
        (None, None, None),
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        (NAMED, None, {"type": "tool", "name": "add"}),
        (None, True, None),
        ("required", True, {"type": "any"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (NAMED, False, {"type": "tool", "name": "add", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),  # no tool use at all: nothing to serialise
    ],
)
def test_tool_choice_and_parallel_tool_calls(tool_choice: Any, parallel: bool | None, expected: Any) -> None:
    fields = {k: v for k, v in {"tool_choice": tool_choice, "parallel_tool_calls": parallel}.items() if v is not None}
    assert translate(tools=[function_tool("add")], **fields).get("tool_choice") == expected


def test_without_tools_only_choices_that_need_no_tool_are_accepted_and_nothing_is_sent() -> None:
    for fields in ({"tool_choice": "auto"}, {"tool_choice": "none"}, {"parallel_tool_calls": False}, {"tools": []}):
        request = translate(**fields)
        assert "tool_choice" not in request and "tools" not in request
    for choice in ("required", NAMED):
        error = refusal(tool_choice=choice)
        assert (error.param, error.code) == ("tool_choice", "invalid_value")


@pytest.mark.parametrize(
    ("tool_choice", "param", "code"),
    [
        ("any", "tool_choice", "invalid_value"),
        ({"type": "allowed_tools", "allowed_tools": {}}, "tool_choice.type", "unsupported_parameter"),
        ({"type": "function"}, "tool_choice.function", "missing_required_parameter"),
        ({"type": "function", "function": {"name": 3}}, "tool_choice.function.name", "invalid_type"),
        (["auto"], "tool_choice", "invalid_type"),
    ],
)
def test_malformed_tool_choice_is_refused(tool_choice: Any, param: str, code: str) -> None:
    error = refusal(tools=[function_tool("add")], tool_choice=tool_choice)
    assert (error.param, error.code) == (param, code)


def test_max_tokens_from_either_field_the_newer_one_winning() -> None:
    assert translate(max_tokens=100)["max_tokens"] == 100
    assert translate(max_completion_tokens=200)["max_tokens"] == 200
    assert translate(max_tokens=100, max_completion_tokens=200)["max_tokens"] == 200
    assert translate(max_tokens=None)["max_tokens"] == DEFAULT_MAX


@pytest.mark.parametrize(("value", "code"), [(0, "invalid_value"), ("10", "invalid_type"), (True, "invalid_type")])
def test_bad_max_tokens_is_refused(value: Any, code: str) -> None:
    error = refusal(max_completion_tokens=value)
    assert (error.param, error.code) == ("max_completion_tokens", code)


def test_sampling_stop_user_and_stream_options_map_across() -> None:
    request = translate(
        temperature=0.2, top_p=1, stop="END", user="user-42", stream=True, stream_options={"include_usage": True}
    )
    assert {k: v for k, v in request.items() if k not in ("model", "messages", "max_tokens")} == {
        "temperature": 0.2,
        "top_p": 1,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
        "stream": True,
    }
    assert translate(stop=["a", "b"])["stop_sequences"] == ["a", "b"]
    assert translate(stream=False)["stream"] is False


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"temperature": 1.5}, "temperature", "invalid_value"),
        ({"temperature": -0.1}, "temperature", "invalid_value"),
        ({"temperature": "hot"}, "temperature", "invalid_type"),
        ({"top_p": 2}, "top_p", "invalid_value"),
        ({"stop": ["a", 1]}, "stop[1]", "invalid_type"),
        ({"stop": " "}, "stop", "invalid_value"),
        ({"user": 5}, "user", "invalid_type"),
        ({"stream": "yes"}, "stream", "invalid_type"),
        ({"stream_options": []}, "stream_options", "invalid_type"),
    ],
)
def test_out_of_range_options_are_refused(fields: dict[str, Any], param: str, code: str) -> None:
    error = refusal(**fields)
    assert (error.param, error.code) == (param, code)


def test_neutral_values_of_unmappable_options_are_accepted() -> None:
    request = translate(n=1, presence_penalty=0, frequency_penalty=0.0, logprobs=False)
    assert not {"n", "presence_penalty", "frequency_penalty", "logprobs"} & request.keys()


@pytest.mark.parametrize(
    ("field", "value"), [("n", 2), ("presence_penalty", 0.5), ("frequency_penalty", -1), ("logprobs", True)]
)
def test_other_values_of_unmappable_options_are_refused(field: str, value: Any) -> None:
    error = refusal(**{field: value})
    assert (error.param, error.code) == (field, "unsupported_parameter")


@pytest.mark.parametrize(
    "field",
    [
        "logit_bias", "top_logprobs", "seed", "response_format", "reasoning_effort", "audio", "modalities",
        "prediction", "service_tier", "store", "metadata", "web_search_options", "functions", "function_call",
        "verbosity", "chat_template_kwargs",
    ],
)  # fmt: skip
def test_fields_without_an_anthropic_equivalent_are_refused_by_name(field: str) -> None:
    error = refusal(**{field: {"any": "value"}})
    assert (error.param, error.code) == (field, "unsupported_parameter")
    assert error.message == f"'{field}' is not supported by this model's upstream (Anthropic Messages API)."


# -- hostile requests ---------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
MESSAGE_KEYS = st.sampled_from(["role", "content", "tool_calls", "tool_call_id", "name", "refusal", "function_call"])
ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"])
PART = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "refusal", "file"])},
    optional={"text": JSON, "image_url": JSON | st.fixed_dictionaries({"url": st.text(max_size=30)}), "refusal": JSON},
)
CALL = st.fixed_dictionaries(
    {},
    optional={
        "id": JSON | st.text(max_size=12),
        "type": st.sampled_from(["function", "custom"]) | JSON,
        "function": JSON | st.fixed_dictionaries({}, optional={"name": JSON, "arguments": JSON | st.text(max_size=20)}),
    },
)
MESSAGE = st.fixed_dictionaries(
    {"role": ROLES | JSON},
    optional={
        "content": JSON | st.lists(PART | JSON, max_size=3),
        "tool_calls": JSON | st.lists(CALL | JSON, max_size=3),
        "tool_call_id": JSON | st.text(max_size=6),
    },
)
BODY_KEYS = st.sampled_from(
    ["tools", "tool_choice", "parallel_tool_calls", "max_tokens", "max_completion_tokens", "temperature", "top_p",
     "stop", "user", "stream", "stream_options", "n", "presence_penalty", "logprobs", "seed"]
)  # fmt: skip


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None, database=None)
@given(
    messages=st.lists(MESSAGE | JSON, max_size=5) | JSON,
    fields=st.dictionaries(BODY_KEYS, JSON | st.lists(st.fixed_dictionaries({"type": JSON, "function": JSON}))),
    model=st.just(MODEL) | JSON,
)
def test_hostile_requests_raise_nothing_but_invalid_request(messages: Any, fields: Any, model: Any) -> None:
    try:
        request = messages_request({"model": model, "messages": messages, **fields}, default_max_tokens=DEFAULT_MAX)
    except InvalidRequest as exc:
        assert exc.param is None or len(exc.param) <= 200
        return
    assert_anthropic_shaped(request)


def assert_anthropic_shaped(request: dict[str, Any]) -> None:
    """What Anthropic asks of every request: alternating turns from the user's, results first, no empty text."""
    assert request["messages"][0]["role"] == "user"
    roles = [m["role"] for m in request["messages"]]
    assert all(a != b for a, b in itertools.pairwise(roles))
    for turn in request["messages"]:
        kinds = [block["type"] for block in turn["content"]]
        assert kinds and kinds == sorted(kinds, key=lambda kind: kind != "tool_result")
        assert all(block["text"] for block in turn["content"] if block["type"] == "text")
    jsoncodec.dumps(request)  # as the upstream client encodes it: integers past 64 bits included


RICH = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": [text("Be brief.")]},
        user(
            [text("look"), {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO", "detail": "low"}}]
        ),
        {"role": "assistant", "content": [text("ok")], "tool_calls": [call("a", "f", '{"x": 1}'), call("b", "g")]},
        tool("a", FAILURE),
        tool("b", [text("2")]),
        user("thanks"),
    ],
    "tools": [function_tool("f", {"type": "object", "properties": {"x": {"type": "integer"}}}), function_tool("g")],
    "tool_choice": NAMED | {"function": {"name": "f"}},
    "parallel_tool_calls": False,
    "max_completion_tokens": 100,
    "temperature": 0.5,
    "stop": ["X"],
    "user": "u1",
    "stream": True,
    "stream_options": {"include_usage": True},
}


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    return [path] + [p for key, child in children for p in _paths(child, (*path, key))]


RICH_PATHS = _paths(RICH)[1:]


def _one_field_corrupted(data: st.DataObject, tree: Any, paths: list[Any]) -> Any:
    """A copy of ``tree`` with one field, drawn from ``paths``, removed or replaced by any JSON."""
    copy = json.loads(json.dumps(tree))
    *parent_path, key = data.draw(st.sampled_from(paths))
    parent = copy
    for step in parent_path:
        parent = parent[step]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[key]
    else:
        parent[key] = data.draw(JSON)
    return copy


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None, database=None)
@given(data=st.data())
def test_any_one_field_replaced_or_removed_is_refused_by_path_or_translated(data: st.DataObject) -> None:
    body = _one_field_corrupted(data, RICH, RICH_PATHS)
    try:
        request = messages_request(body, default_max_tokens=DEFAULT_MAX)
    except InvalidRequest as exc:
        assert exc.param
        return
    assert_anthropic_shaped(request)


def test_the_rich_request_translates_whole() -> None:
    request = translate(RICH["messages"], **{k: v for k, v in RICH.items() if k not in ("model", "messages")})
    assert_anthropic_shaped(request)
    assert request["tool_choice"] == {"type": "tool", "name": "f", "disable_parallel_tool_use": True}


# -- answers --------------------------------------------------------------------------------------------

MESSAGE_ANSWER = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": MODEL,
    "content": [
        {"type": "thinking", "thinking": "Weather needs a tool.", "signature": "EqQBCgIYAhIM"},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
        {"type": "text", "text": "Let me check "},
        {"type": "text", "text": "the weather."},
        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"location": "Paris", "days": 2}},
        {"type": "tool_use", "id": "toolu_01B", "name": "now", "input": {}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 10,
        "cache_creation_input_tokens": 20,
        "cache_read_input_tokens": 300,
        "output_tokens": 7,
    },
}


def test_a_message_with_text_tool_use_and_thinking_is_a_chat_completion() -> None:
    completion = chat_completion(MESSAGE_ANSWER)
    ChatCompletion.model_validate(completion)
    assert completion["id"] == "msg_01XFDUDYJgAACzvnptvVoYEL" and completion["object"] == "chat.completion"
    assert completion["model"] == MODEL and isinstance(completion["created"], int)
    assert completion["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Let me check the weather.",
                "tool_calls": [
                    {"id": "toolu_01A", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"location":"Paris","days":2}'}},
                    {"id": "toolu_01B", "type": "function", "function": {"name": "now", "arguments": "{}"}},
                ],
                "reasoning_content": "Weather needs a tool.",
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ]  # fmt: skip
    assert completion["usage"] == {
        "prompt_tokens": 330,
        "completion_tokens": 7,
        "total_tokens": 337,
        "prompt_tokens_details": {"cached_tokens": 300},
    }


def test_a_text_only_message_has_neither_tool_calls_nor_reasoning() -> None:
    answer = {**MESSAGE_ANSWER, "content": [{"type": "text", "text": "Hi."}], "stop_reason": "end_turn"}
    choice = chat_completion(answer)["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hi."}
    assert choice["finish_reason"] == "stop"
    assert chat_completion({**answer, "content": []})["choices"][0]["message"]["content"] is None


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"), ("stop_sequence", "stop"), ("pause_turn", "stop"), ("tool_use", "tool_calls"),
        ("max_tokens", "length"), ("model_context_window_exceeded", "length"), ("refusal", "content_filter"),
        (None, None), ("a_reason_from_the_future", "stop"),
    ],
)  # fmt: skip
def test_stop_reasons_map_to_finish_reasons(stop_reason: str | None, finish_reason: str | None) -> None:
    answer = {**MESSAGE_ANSWER, "stop_reason": stop_reason}
    assert chat_completion(answer)["choices"][0]["finish_reason"] == finish_reason
    translator = ChunkTranslator()
    translator.feed(message_start())
    (chunk,) = translator.feed({"type": "message_delta", "delta": {"stop_reason": stop_reason}, "usage": {}})
    assert chunk is not None and chunk.data["choices"][0]["finish_reason"] == finish_reason


def test_usage_counts_cache_reads_and_writes_as_prompt_tokens() -> None:
    assert chat_usage({"input_tokens": 5, "output_tokens": 3}) == {
        "prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "prompt_tokens_details": {"cached_tokens": 0},
    }  # fmt: skip
    usage = {
        "input_tokens": 5,
        "cache_creation_input_tokens": None,
        "cache_read_input_tokens": 1000,
        "output_tokens": 1,
    }
    assert chat_usage(usage) == {
        "prompt_tokens": 1005, "completion_tokens": 1, "total_tokens": 1006,
        "prompt_tokens_details": {"cached_tokens": 1000},
    }  # fmt: skip


def test_an_error_body_becomes_an_error_payload_without_choices() -> None:
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}, "request_id": "req_1"}
    assert chat_completion(body) == {"error": {"type": "overloaded_error", "message": "Overloaded"}}


@pytest.mark.parametrize(
    "body",
    [
        {"id": "msg_1", "type": "message"},
        {"id": "msg_1", "content": "text"},
        {"content": []},
        {"id": "msg_1", "content": ["text"]},
        {"id": "msg_1", "content": [{"type": "text", "text": None}]},
        {"id": "msg_1", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "{}"}]},
        {"id": "msg_1", "content": [{"type": "tool_use", "id": "t", "input": {}}]},
        {"id": "msg_1", "content": [], "stop_reason": 3},
        {"choices": [{"message": {"content": "an OpenAI answer"}}]},
    ],
)
def test_bodies_that_are_not_messages_are_upstream_failures(body: dict[str, Any]) -> None:
    with pytest.raises(UpstreamUnavailable) as caught:
        chat_completion(body)
    assert caught.value.retryable is False


def test_overloaded_status_is_529_only() -> None:
    assert is_overloaded_status(529)
    assert not any(is_overloaded_status(s) for s in (200, 429, 500, 502, 503, 504))


# -- streams ---------------------------------------------------------------------------------------------


def message_start(**usage: int) -> dict[str, Any]:
    message = {
        "id": "msg_014p7gG3wDgGV9EUtLvnow3U", "type": "message", "role": "assistant", "model": MODEL,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 472, "output_tokens": 2, **usage},
    }  # fmt: skip
    return {"type": "message_start", "message": message}


def sse(*events: dict[str, Any]) -> bytes:
    """Events as Anthropic writes them: a named ``event:`` line, then ``data:``."""
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + json.dumps(e).encode() + b"\n\n" for e in events)


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def block_delta(index: int, **delta: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


def block_stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


WEATHER_INPUT = {"location": "San Francisco, CA", "unit": "fahrenheit", "note": "café ☕"}
TIME_INPUT = {"timezone": "America/Los_Angeles"}

RECORDED = sse(
    message_start(cache_read_input_tokens=128),
    block_start(0, {"type": "text", "text": ""}),
    {"type": "ping"},
    block_delta(0, type="text_delta", text="Okay, let me check"),
    block_delta(0, type="text_delta", text=" both."),
    block_stop(0),
    block_start(1, {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "input": {}}),
    block_delta(1, type="input_json_delta", partial_json=""),
    # Split mid-key, mid-value and inside a \u escape: fragments are text, not JSON.
    block_delta(1, type="input_json_delta", partial_json='{"locat'),
    block_delta(1, type="input_json_delta", partial_json='ion": "San Francisc'),
    block_delta(1, type="input_json_delta", partial_json='o, CA", "unit": "fahrenheit", "note": "caf\\u00'),
    block_delta(1, type="input_json_delta", partial_json='e9 \\u2615"}'),
    block_stop(1),
    block_start(2, {"type": "tool_use", "id": "toolu_01CjpCTeFXU2y7mxdw5EfqTF", "name": "get_time", "input": {}}),
    block_delta(2, type="input_json_delta", partial_json='{"timezone": "America/Los_Angeles"}'),
    block_stop(2),
    {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 89}},
    {"type": "message_stop"},
)  # fmt: skip


async def _events(raw: bytes) -> list[dict[str, Any]]:
    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), 97):  # network reads cut anywhere
            yield raw[start : start + 97]

    return [item.data async for batch in read_sse(pieces()) for item in batch if item is not None]


def translated(raw: bytes) -> list[SSEData | None]:
    translator = ChunkTranslator()
    return [chunk for event in asyncio.run(_events(raw)) for chunk in translator.feed(event)]


def test_recorded_stream_assembles_into_the_tool_use_blocks() -> None:
    out = translated(RECORDED)
    assert out[-1] is None and None not in out[:-1]
    chunks = [item.data for item in out if item is not None]
    for item in out[:-1]:
        assert item is not None and orjson.loads(item.raw) == item.data
        ChatCompletionChunk.model_validate(item.data)
    assert {(c["id"], c["created"], c["model"]) for c in chunks} == {(chunks[0]["id"], chunks[0]["created"], MODEL)}
    assert chunks[0]["id"] == "msg_014p7gG3wDgGV9EUtLvnow3U"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}

    # What the loop does with them (gateway/loop.py _stream_round).
    assembler = ToolCallAssembler()
    content, finish_reasons, usage = [], [], None
    for chunk in chunks:
        usage = chunk.get("usage", usage)
        if not chunk["choices"]:
            continue
        delta = chunk["choices"][0]["delta"]
        assembler.feed(delta.get("tool_calls"))
        content.append(delta.get("content") or "")
        finish_reasons.append(chunk["choices"][0]["finish_reason"])
    calls = assembler.calls()
    assert [(c.id, c.name, json.loads(c.arguments)) for c in calls] == [
        ("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather", WEATHER_INPUT),
        ("toolu_01CjpCTeFXU2y7mxdw5EfqTF", "get_time", TIME_INPUT),
    ]
    assert "".join(content) == "Okay, let me check both."
    assert [r for r in finish_reasons if r is not None] == ["tool_calls"]
    assert chunks[-1]["choices"] == [] and usage == {
        "prompt_tokens": 600, "completion_tokens": 89, "total_tokens": 689,
        "prompt_tokens_details": {"cached_tokens": 128},
    }  # fmt: skip


def test_tool_use_blocks_are_indexed_from_zero_whatever_their_block_index() -> None:
    tool_chunks = [
        item.data["choices"][0]["delta"]["tool_calls"][0]
        for item in translated(RECORDED)
        if item is not None and item.data["choices"] and "tool_calls" in item.data["choices"][0]["delta"]
    ]
    assert tool_chunks[0] == {
        "index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }  # fmt: skip
    assert {c["index"] for c in tool_chunks[:6]} == {0} and {c["index"] for c in tool_chunks[6:]} == {1}


def test_a_tool_without_parameters_streams_empty_object_arguments() -> None:
    translator = ChunkTranslator()
    events = [
        message_start(),
        block_start(0, {"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}}),
        block_delta(0, type="input_json_delta", partial_json=""),
        block_stop(0),
    ]
    assembler = ToolCallAssembler()
    for event in events:
        for item in translator.feed(event):
            assert item is not None
            assembler.feed(item.data["choices"][0]["delta"].get("tool_calls"))
    assert [(c.id, c.name, c.arguments) for c in assembler.calls()] == [("toolu_1", "now", "{}")]


def test_thinking_streams_as_reasoning_content_and_signatures_vanish() -> None:
    out = translated(
        sse(
            message_start(),
            block_start(0, {"type": "thinking", "thinking": ""}),
            block_delta(0, type="thinking_delta", thinking="Let me add: "),
            block_delta(0, type="thinking_delta", thinking="2 + 2 = 4."),
            block_delta(0, type="signature_delta", signature="EqQBCgIYAhIM"),
            block_stop(0),
            block_start(1, {"type": "text", "text": ""}),
            block_delta(1, type="text_delta", text="4"),
            block_delta(1, type="citations_delta", citation={"type": "char_location", "cited_text": "x"}),
            block_stop(1),
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 30}},
            {"type": "message_stop"},
        )
    )
    deltas = [item.data["choices"][0]["delta"] for item in out if item is not None and item.data["choices"]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"reasoning_content": "Let me add: "},
        {"reasoning_content": "2 + 2 = 4."},
        {"content": "4"},
        {},
    ]


def test_message_delta_counts_replace_earlier_ones() -> None:
    translator = ChunkTranslator()
    translator.feed(message_start(cache_creation_input_tokens=50))
    delta = {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}}
    (finish,) = translator.feed(
        {**delta, "usage": {"output_tokens": 12, "input_tokens": 500, "cache_read_input_tokens": None}}
    )
    usage_chunk, done = translator.feed({"type": "message_stop"})
    assert finish is not None and finish.data["choices"][0] == {
        "index": 0, "delta": {}, "logprobs": None, "finish_reason": "length",
    }  # fmt: skip
    assert done is None and usage_chunk is not None
    assert usage_chunk.data["usage"]["prompt_tokens"] == 550 and usage_chunk.data["usage"]["completion_tokens"] == 12


def test_an_error_event_becomes_an_error_payload_the_loop_reports() -> None:
    translator = ChunkTranslator()
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    (before_start,) = translator.feed(error)  # errors may come first
    translator.feed(message_start())
    (midway,) = translator.feed(error)
    for item in (before_start, midway):
        assert item is not None and item.data == {"error": {"type": "overloaded_error", "message": "Overloaded"}}
        assert orjson.loads(item.raw) == item.data


def test_pings_stops_and_unknown_events_become_nothing() -> None:
    translator = ChunkTranslator()
    translator.feed(message_start())
    translator.feed(block_start(0, {"type": "text", "text": ""}))
    for event in ({"type": "ping"}, block_stop(0), {"type": "a_future_event", "data": 1}):
        assert translator.feed(event) == []


@pytest.mark.parametrize(
    "event",
    [
        {"no": "type"},
        {"type": "message_start"},
        {"type": "message_start", "message": {"id": 1, "model": MODEL}},
        block_delta(0, type="text_delta", text="before message_start"),
        {"type": "message_stop"},
    ],
)
def test_malformed_first_events_are_upstream_failures(event: dict[str, Any]) -> None:
    with pytest.raises(UpstreamUnavailable, match="malformed stream event") as caught:
        ChunkTranslator().feed(event)
    assert caught.value.retryable is False


@pytest.mark.parametrize(
    "event",
    [
        {"type": "content_block_start", "content_block": {"type": "text"}},
        {"type": "content_block_start", "index": True, "content_block": {"type": "text"}},
        block_start(1, {"type": "tool_use", "name": "f", "input": {}}),
        block_start(1, {"type": "tool_use", "id": "t", "name": "f", "input": "{}"}),
        block_start(1, {"type": "text", "text": ["x"]}),
        {"type": "content_block_delta", "index": 0},
        block_delta(0, type="text_delta"),
        block_delta(0, type="text_delta", text=7),
        block_delta(0, type="input_json_delta", partial_json="{}"),  # block 0 is text, not a tool
        block_delta(0, type="thinking_delta", thinking=None),
        block_delta(0, text="no type"),
        {"type": "content_block_stop", "index": "0"},
        {"type": "message_delta", "usage": {"output_tokens": 1}},
        {"type": "message_delta", "delta": {"stop_reason": ["end_turn"]}},
        {"type": "message_delta", "delta": {}, "usage": 5},
    ],
)
def test_malformed_events_are_upstream_failures(event: dict[str, Any]) -> None:
    translator = ChunkTranslator()
    translator.feed(message_start())
    translator.feed(block_start(0, {"type": "text", "text": ""}))
    with pytest.raises(UpstreamUnavailable, match="malformed stream event"):
        translator.feed(event)


EVENT = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
             "message_stop", "error", "ping"]
        ) | JSON,
    },
    optional={
        "index": st.integers(0, 3) | JSON,
        "message": st.fixed_dictionaries({"id": st.text(max_size=4) | JSON, "model": st.just(MODEL) | JSON}) | JSON,
        "content_block": st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "tool_use", "thinking"]) | JSON},
            optional={"id": JSON, "name": JSON, "input": JSON, "text": JSON, "thinking": JSON},
        ) | JSON,
        "delta": st.fixed_dictionaries(
            {"type": st.sampled_from(["text_delta", "input_json_delta", "thinking_delta", "signature_delta"]) | JSON},
            optional={"text": JSON, "partial_json": JSON, "thinking": JSON, "stop_reason": JSON},
        ) | JSON,
        "usage": st.dictionaries(st.sampled_from(["input_tokens", "output_tokens"]), JSON) | JSON,
        "error": JSON,
    },
)  # fmt: skip


def _feed_checking_bytes(events: list[dict[str, Any]]) -> None:
    """Feed a stream's events through a translator; every chunk's bytes must say what its data says."""
    translator = ChunkTranslator()
    for event in events:
        for item in translator.feed(event):
            if item is not None:
                assert orjson.loads(item.raw) == item.data


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None, database=None)
@given(events=st.lists(EVENT, max_size=12))
def test_hostile_streams_raise_nothing_but_upstream_unavailable(events: list[dict[str, Any]]) -> None:
    with contextlib.suppress(UpstreamUnavailable):
        _feed_checking_bytes(events)


@settings(max_examples=200, deadline=None, database=None)
@given(body=st.dictionaries(st.sampled_from(["id", "type", "content", "model", "usage", "stop_reason"]), JSON))
def test_hostile_answers_raise_nothing_but_upstream_unavailable(body: dict[str, Any]) -> None:
    try:
        completion = chat_completion(body)
    except UpstreamUnavailable:
        return
    orjson.dumps(completion)


RECORDED_EVENTS = asyncio.run(_events(RECORDED))
EVENT_PATHS = [path for path in _paths(RECORDED_EVENTS) if len(path) >= 2]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None, database=None)
@given(data=st.data())
def test_any_one_field_of_a_recorded_stream_corrupted_is_an_upstream_failure_or_translated(data: st.DataObject) -> None:
    events = _one_field_corrupted(data, RECORDED_EVENTS, EVENT_PATHS)
    try:
        _feed_checking_bytes(events)
    except UpstreamUnavailable as exc:
        assert exc.retryable is False
