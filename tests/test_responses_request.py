"""Reading a Responses request into the chat-completions request the upstream gets: a pure function, table-tested."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.responses.response_create_params import ResponseCreateParamsBase

from gateway.errors import InvalidRequest
from gateway.responses_request import (
    McpToolRequest,
    ResponsesRequest,
    items_to_messages,
    parse_responses_request,
)

MODEL = "test-model"
ID = re.compile(r"^(?P<prefix>[a-z]+)_[0-9a-f]{32}$")


def resolve(server_label: str, name: str) -> str | None:
    """The gateway's names for MCP tools: servers "docs" and "files" know every tool but "missing"."""
    if server_label in ("docs", "files") and name != "missing":
        return f"{server_label}__{name}"
    return None


def parse(**fields: Any) -> ResponsesRequest:
    body = {"model": MODEL, **fields}
    return parse_responses_request(json.dumps(body).encode(), resolve_tool=resolve)


def refusal(raw: bytes | dict[str, Any]) -> InvalidRequest:
    data = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    with pytest.raises(InvalidRequest) as caught:
        parse_responses_request(data, resolve_tool=resolve)
    return caught.value


def messages(*items: Any) -> list[dict[str, Any]]:
    return parse(input=list(items)).chat_body["messages"]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def call(call_id: str, name: str, arguments: str = "{}") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# -- input -----------------------------------------------------------------------------------


def test_string_input_becomes_one_user_message_item_and_one_chat_message() -> None:
    request = parse(input="hi")
    [item] = request.input_items
    assert ID.match(item.pop("id"))["prefix"] == "msg"  # type: ignore[index]
    assert item == {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
    assert request.chat_body == {"model": MODEL, "messages": [user("hi")]}


def test_defaults_of_a_minimal_request() -> None:
    request = parse(input="hi")
    assert (request.model, request.stream, request.store) == (MODEL, False, True)
    assert (request.previous_response_id, request.instructions, request.metadata) == (None, None, None)
    assert (request.max_tool_calls, request.mcp_tools, request.approvals) == (None, [], {})


def test_instructions_lead_as_a_system_message() -> None:
    request = parse(input="hi", instructions="Be brief.")
    assert request.instructions == "Be brief."
    assert request.chat_body["messages"] == [{"role": "system", "content": "Be brief."}, user("hi")]


@pytest.mark.parametrize(
    ("item", "stored_content", "message"),
    [
        ({"role": "user", "content": "a"}, [{"type": "input_text", "text": "a"}], user("a")),
        (
            {"role": "assistant", "content": "b"},
            [{"type": "output_text", "text": "b", "annotations": []}],
            {"role": "assistant", "content": "b"},
        ),
        ({"role": "system", "content": "c"}, [{"type": "input_text", "text": "c"}], {"role": "system", "content": "c"}),
        # vLLM and llama.cpp refuse "developer".
        (
            {"role": "developer", "content": "d"},
            [{"type": "input_text", "text": "d"}],
            {"role": "system", "content": "d"},
        ),
        (
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "e"}]},
            [{"type": "input_text", "text": "e"}],
            user("e"),
        ),
        (
            {"role": "user", "content": [{"type": "input_text", "text": "f"}, {"type": "input_text", "text": "g"}]},
            [{"type": "input_text", "text": "f"}, {"type": "input_text", "text": "g"}],
            {"role": "user", "content": [{"type": "text", "text": "f"}, {"type": "text", "text": "g"}]},
        ),
        (
            {
                "type": "message",
                "role": "assistant",
                "id": "msg_1",
                "status": "completed",
                "content": [
                    {"type": "output_text", "text": "h", "annotations": []},
                    {"type": "refusal", "refusal": "i"},
                ],
            },
            [{"type": "output_text", "text": "h", "annotations": []}, {"type": "refusal", "refusal": "i"}],
            {"role": "assistant", "content": "hi"},
        ),
    ],
)
def test_messages_are_normalised_and_converted(
    item: dict[str, Any], stored_content: list[dict[str, Any]], message: dict[str, Any]
) -> None:
    request = parse(input=[item])
    [stored] = request.input_items
    assert stored["type"] == "message"
    assert stored["content"] == stored_content
    assert request.chat_body["messages"] == [message]


@pytest.mark.parametrize(
    ("item", "prefix"),
    [
        ({"role": "user", "content": "x"}, "msg"),
        ({"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}, "fc"),
        ({"type": "function_call_output", "call_id": "c", "output": "1"}, "fco"),
        ({"type": "reasoning", "summary": []}, "rs"),
        ({"type": "mcp_approval_response", "approval_request_id": "r", "approve": True}, "mcpa"),
    ],
)
def test_items_without_an_id_get_one_minted(item: dict[str, Any], prefix: str) -> None:
    [stored] = parse(input=[item]).input_items
    assert ID.match(stored["id"])["prefix"] == prefix  # type: ignore[index]


def test_given_ids_are_kept_and_the_client_body_is_not_changed() -> None:
    items = [{"id": "msg_mine", "role": "user", "content": "x"}, {"role": "user", "content": "y"}]
    request = parse(input=items)
    assert request.input_items[0]["id"] == "msg_mine"
    assert request.body["input"] == items  # echoed as sent: no minted id, no type added
    assert request.input_items[0]["id"] != request.input_items[1]["id"]


def test_input_may_be_missing_only_with_previous_response_id() -> None:
    request = parse(previous_response_id="resp_1")
    assert (request.previous_response_id, request.input_items, request.chat_body["messages"]) == ("resp_1", [], [])
    error = refusal({"model": MODEL})
    assert (error.param, error.code) == ("input", "missing_required_parameter")


# -- items → chat messages ------------------------------------------------------------------


def test_function_call_and_its_output() -> None:
    assert messages(
        user("add"),
        {"type": "function_call", "call_id": "c1", "name": "add", "arguments": '{"a":1}'},
        {"type": "function_call_output", "call_id": "c1", "output": "2"},
    ) == [
        user("add"),
        {"role": "assistant", "content": None, "tool_calls": [call("c1", "add", '{"a":1}')]},
        {"role": "tool", "tool_call_id": "c1", "content": "2"},
    ]


def test_consecutive_calls_and_the_assistant_text_before_them_share_one_message() -> None:
    assert messages(
        {"role": "assistant", "content": "Let me look."},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
        {"type": "mcp_call", "id": "m", "server_label": "docs", "name": "search", "arguments": "{}", "output": "r"},
        {"type": "function_call", "call_id": "b", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "a", "output": "1"},
        {"type": "function_call_output", "call_id": "b", "output": [{"type": "input_text", "text": "2"}]},
    ) == [
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [call("a", "f"), call("m", "docs__search"), call("b", "g")],
        },
        {"role": "tool", "tool_call_id": "m", "content": "r"},
        {"role": "tool", "tool_call_id": "a", "content": "1"},
        {"role": "tool", "tool_call_id": "b", "content": "2"},
    ]


def test_an_output_between_calls_splits_them_into_two_turns() -> None:
    assert messages(
        {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "a", "output": "1"},
        {"type": "function_call", "call_id": "b", "name": "f", "arguments": "{}"},
    ) == [
        {"role": "assistant", "content": None, "tool_calls": [call("a", "f")]},
        {"role": "tool", "tool_call_id": "a", "content": "1"},
        {"role": "assistant", "content": None, "tool_calls": [call("b", "f")]},
    ]


@pytest.mark.parametrize(
    ("extra", "content"),
    [
        ({"output": "found"}, "found"),
        ({"output": None}, ""),
        ({"error": "boom"}, '{"error":"boom"}'),
        (
            {"output": "ignored", "error": {"type": "http_error", "code": 500, "message": "x"}},
            '{"error":{"type":"http_error","code":500,"message":"x"}}',
        ),
    ],
)
def test_mcp_call_is_a_call_and_its_result(extra: dict[str, Any], content: str) -> None:
    item = {"type": "mcp_call", "id": "mcp_1", "server_label": "docs", "name": "search", "arguments": "{}", **extra}
    assert messages(item) == [
        {"role": "assistant", "content": None, "tool_calls": [call("mcp_1", "docs__search")]},
        {"role": "tool", "tool_call_id": "mcp_1", "content": content},
    ]


def test_an_unresolvable_mcp_tool_keeps_its_own_name() -> None:
    item = {"type": "mcp_call", "id": "m", "server_label": "gone", "name": "search", "arguments": "{}", "output": "x"}
    assert messages(item)[0]["tool_calls"] == [call("m", "search")]


def test_approval_request_is_a_call_without_result_and_the_response_only_an_approval() -> None:
    request = parse(
        input=[
            user("go"),
            {"type": "mcp_approval_request", "id": "mcpr_1", "server_label": "docs", "name": "rm", "arguments": "{}"},
            {"type": "mcp_approval_response", "approval_request_id": "mcpr_1", "approve": True},
            {"type": "mcp_approval_response", "approval_request_id": "mcpr_2", "approve": False, "reason": "no"},
        ]
    )
    assert request.chat_body["messages"] == [
        user("go"),
        {"role": "assistant", "content": None, "tool_calls": [call("mcpr_1", "docs__rm")]},
    ]
    assert request.approvals == {"mcpr_1": True, "mcpr_2": False}


def test_a_stored_mcp_call_answers_the_approval_request_it_names() -> None:
    assert messages(
        {"type": "mcp_approval_request", "id": "mcpr_1", "server_label": "docs", "name": "rm", "arguments": "{}"},
        {"type": "mcp_approval_response", "approval_request_id": "mcpr_1", "approve": True},
        {
            "type": "mcp_call",
            "id": "mcp_9",
            "server_label": "docs",
            "name": "rm",
            "arguments": "{}",
            "approval_request_id": "mcpr_1",
            "output": "done",
        },
        {"role": "assistant", "content": "Removed."},
    ) == [
        {"role": "assistant", "content": None, "tool_calls": [call("mcpr_1", "docs__rm")]},
        {"role": "tool", "tool_call_id": "mcpr_1", "content": "done"},
        {"role": "assistant", "content": "Removed."},
    ]


def test_list_tools_and_reasoning_items_produce_no_message() -> None:
    assert messages(
        {"type": "mcp_list_tools", "id": "l", "server_label": "docs", "tools": []},
        {"type": "reasoning", "id": "r", "summary": [{"type": "summary_text", "text": "hmm"}]},
        user("hi"),
    ) == [user("hi")]


def test_items_to_messages_accepts_stored_output_items_and_names_its_list_in_errors() -> None:
    output = [
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "ok", "annotations": [], "logprobs": []}],
        },
    ]
    assert items_to_messages(output, resolve) == [{"role": "assistant", "content": "ok"}]
    with pytest.raises(InvalidRequest) as caught:
        items_to_messages([{"type": "web_search_call", "id": "ws"}], resolve, where="output")
    assert (caught.value.param, caught.value.code) == ("output[0].type", "unsupported_value")


# -- images -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("part", "chat_part"),
    [
        (
            {"type": "input_image", "image_url": "https://x/a.png"},
            {"type": "image_url", "image_url": {"url": "https://x/a.png"}},
        ),
        (
            {"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "low"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA", "detail": "low"}},
        ),
        (
            {"type": "input_image", "image_url": "u", "detail": "original", "file_id": None},
            {"type": "image_url", "image_url": {"url": "u", "detail": "high"}},
        ),
    ],
)
def test_input_images_become_image_url_parts(part: dict[str, Any], chat_part: dict[str, Any]) -> None:
    content = [{"type": "input_text", "text": "what is this?"}, part]
    assert messages({"role": "user", "content": content}) == [
        {"role": "user", "content": [{"type": "text", "text": "what is this?"}, chat_part]}
    ]


# -- fields → chat parameters ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "chat_fields"),
    [
        ({"stream": True}, {"stream": True}),
        ({"stream": False, "store": False, "background": False}, {}),
        ({"parallel_tool_calls": False}, {"parallel_tool_calls": False}),
        ({"max_output_tokens": 50}, {"max_tokens": 50}),
        ({"temperature": 0.2, "top_p": 1}, {"temperature": 0.2, "top_p": 1}),
        ({"temperature": None, "top_p": None, "max_output_tokens": None}, {}),
        ({"text": {"format": {"type": "text"}}}, {}),
        ({"text": {"format": {"type": "json_object"}}}, {"response_format": {"type": "json_object"}}),
        ({"text": {"verbosity": "low"}}, {"verbosity": "low"}),
        (
            {"reasoning": {"effort": "high", "summary": "auto", "generate_summary": "concise"}},
            {"reasoning_effort": "high"},
        ),
        ({"reasoning": {"summary": "auto"}}, {}),
        ({"user": "u1"}, {"user": "u1"}),
        ({"safety_identifier": "s1"}, {"user": "s1"}),
        ({"user": "u1", "safety_identifier": "s1"}, {"user": "u1"}),
        ({"top_logprobs": 3}, {"logprobs": True, "top_logprobs": 3}),
        ({"include": ["message.output_text.logprobs"]}, {"logprobs": True}),
        (
            {
                "include": [],
                "truncation": "disabled",
                "service_tier": "auto",
                "prompt_cache_key": "k",
                "prompt_cache_retention": "24h",
                "stream_options": {"include_obfuscation": False},
            },
            {},
        ),
        (
            {
                "include": [
                    "reasoning.encrypted_content",
                    "file_search_call.results",
                    "web_search_call.results",
                    "web_search_call.action.sources",
                    "message.input_image.image_url",
                    "computer_call_output.output.image_url",
                    "code_interpreter_call.outputs",
                ]
            },
            {},
        ),
        ({"tool_choice": "required"}, {"tool_choice": "required"}),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "name": "f",
                        "description": "d",
                        "parameters": {"type": "object"},
                        "strict": True,
                    }
                ]
            },
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "description": "d", "parameters": {"type": "object"}, "strict": True},
                    }
                ]
            },
        ),
        (
            {"tools": [{"type": "function", "name": "f", "parameters": None, "strict": None}]},
            {"tools": [{"type": "function", "function": {"name": "f"}}]},
        ),
    ],
)
def test_fields_map_to_chat_parameters(fields: dict[str, Any], chat_fields: dict[str, Any]) -> None:
    body = parse(input="hi", **fields).chat_body
    assert body == {"model": MODEL, "messages": [user("hi")], **chat_fields}


def test_text_format_json_schema_keeps_the_given_keys() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    full = {"type": "json_schema", "name": "out", "schema": schema, "strict": True, "description": "d"}
    assert parse(input="hi", text={"format": full}).chat_body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": schema, "strict": True, "description": "d"},
    }
    bare = {"type": "json_schema", "name": "out", "schema": schema, "strict": None}
    assert parse(input="hi", text={"format": bare, "verbosity": None}).chat_body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": schema},
    }


def test_request_level_fields_are_kept() -> None:
    request = parse(
        input="hi", stream=True, store=False, previous_response_id="resp_1", metadata={"k": "v"}, max_tool_calls=3
    )
    assert (request.stream, request.store, request.previous_response_id) == (True, False, "resp_1")
    assert (request.metadata, request.max_tool_calls) == ({"k": "v"}, 3)


# -- tool_choice ------------------------------------------------------------------------------

DOCS = {"type": "mcp", "server_label": "docs", "server_url": "https://docs.example/mcp"}


@pytest.mark.parametrize(
    ("tools", "choice", "chat_choice"),
    [
        ([], "none", "none"),
        ([], "auto", "auto"),
        ([], {"type": "function", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
        (
            [DOCS],
            {"type": "mcp", "server_label": "docs", "name": "search"},
            {"type": "function", "function": {"name": "docs__search"}},
        ),
    ],
)
def test_tool_choice_shapes(tools: list[dict[str, Any]], choice: Any, chat_choice: Any) -> None:
    assert parse(input="hi", tools=tools, tool_choice=choice).chat_body["tool_choice"] == chat_choice


@pytest.mark.parametrize(
    ("tools", "choice", "param", "code"),
    [
        ([], "sometimes", "tool_choice", "invalid_value"),
        ([], 3, "tool_choice", "invalid_type"),
        ([], {"name": "f"}, "tool_choice.type", "missing_required_parameter"),
        ([], {"type": "function"}, "tool_choice.name", "missing_required_parameter"),
        ([], {"type": "allowed_tools", "mode": "auto", "tools": []}, "tool_choice.type", "unsupported_value"),
        ([], {"type": "web_search_preview"}, "tool_choice.type", "unsupported_value"),
        ([], {"type": "mcp", "server_label": "docs", "name": "search"}, "tool_choice.server_label", "invalid_value"),
        ([DOCS], {"type": "mcp", "server_label": "docs", "name": "missing"}, "tool_choice.name", "invalid_value"),
        ([DOCS], {"type": "mcp", "server_label": "docs"}, "tool_choice.name", "unsupported_value"),
        (
            [{**DOCS, "allowed_tools": ["read"]}],
            {"type": "mcp", "server_label": "docs", "name": "write"},
            "tool_choice.name",
            "invalid_value",
        ),
    ],
)
def test_tool_choices_the_gateway_cannot_honour(tools: list[Any], choice: Any, param: str, code: str) -> None:
    error = refusal({"model": MODEL, "input": "hi", "tools": tools, "tool_choice": choice})
    assert (error.param, error.code) == (param, code)


# -- MCP tools --------------------------------------------------------------------------------


def test_mcp_tools_are_collected_not_forwarded() -> None:
    tool = {
        **DOCS,
        "server_description": "docs",
        "headers": {"x-team": "a"},
        "authorization": "secret-token",
        "allowed_tools": ["search", "read"],
        "require_approval": "never",
    }
    request = parse(input="hi", tools=[tool, {"type": "mcp", "server_label": "files"}])
    assert "tools" not in request.chat_body
    docs, files = request.mcp_tools
    assert docs == McpToolRequest(
        server_label="docs",
        allowed_tools=("search", "read"),
        require_approval="never",
        server_url="https://docs.example/mcp",
        server_description="docs",
        headers={"x-team": "a"},
        authorization="secret-token",
    )
    assert "secret-token" not in repr(docs)
    assert docs.names_remote_server and not files.names_remote_server
    assert files == McpToolRequest(server_label="files")


@pytest.mark.parametrize(
    ("allowed_tools", "allowed"),
    [
        (None, ("a", "b")),
        (["a"], ("a",)),
        ([], ()),
        ({"tool_names": ["b"]}, ("b",)),
        ({"tool_names": ["b"], "read_only": False}, ("b",)),
        ({}, ("a", "b")),
    ],
)
def test_allowed_tools_forms(allowed_tools: Any, allowed: tuple[str, ...]) -> None:
    [mcp] = parse(input="hi", tools=[{**DOCS, "allowed_tools": allowed_tools}]).mcp_tools
    assert tuple(name for name in ("a", "b") if mcp.allows(name)) == allowed


@pytest.mark.parametrize(
    ("require_approval", "needing"),
    [
        (None, ("a", "b", "c")),
        ("always", ("a", "b", "c")),
        ("never", ()),
        ({"never": {"tool_names": ["a"]}}, ("b", "c")),
        ({"always": {"tool_names": ["a"]}, "never": {"tool_names": ["b", "c"]}}, ("a",)),
        ({"always": {"tool_names": ["a"]}}, ("a", "b", "c")),
    ],
)
def test_require_approval_forms(require_approval: Any, needing: tuple[str, ...]) -> None:
    tool = {"type": "mcp", "server_label": "docs", "require_approval": require_approval}
    [mcp] = parse(input="hi", tools=[tool]).mcp_tools
    assert tuple(name for name in ("a", "b", "c") if mcp.needs_approval(name)) == needing


# -- refusals ---------------------------------------------------------------------------------

ITEM = {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"seed": 1}, "seed", "unknown_parameter"),
        ({"stop": ["x"]}, "stop", "unknown_parameter"),
        ({"messages": []}, "messages", "unknown_parameter"),
        ({"background": True}, "background", "unsupported_parameter"),
        ({"conversation": "conv_1"}, "conversation", "unsupported_parameter"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt", "unsupported_parameter"),
        ({"context_management": [{"type": "compaction"}]}, "context_management", "unsupported_parameter"),
        ({"prompt_cache_options": {"ttl": "12h"}}, "prompt_cache_options", "unsupported_parameter"),
        ({"moderation": {"model": "omni-moderation-latest"}}, "moderation", "unsupported_parameter"),
        ({"truncation": "auto"}, "truncation", "unsupported_value"),
        ({"truncation": "sometimes"}, "truncation", "invalid_value"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", "unsupported_value"),
        (
            {"tools": [{"type": "function", "name": "f"}, {"type": "code_interpreter"}]},
            "tools[1].type",
            "unsupported_value",
        ),
        ({"tools": [{"type": "custom", "name": "c"}]}, "tools[0].type", "unsupported_value"),
        ({"tools": [{"type": "function"}]}, "tools[0].name", "missing_required_parameter"),
        ({"tools": [{"type": "function", "name": 3}]}, "tools[0].name", "invalid_type"),
        ({"tools": [{"type": "mcp"}]}, "tools[0].server_label", "missing_required_parameter"),
        ({"tools": [DOCS, DOCS]}, "tools[1].server_label", "invalid_value"),
        (
            {"tools": [{**DOCS, "allowed_tools": {"read_only": True}}]},
            "tools[0].allowed_tools.read_only",
            "unsupported_value",
        ),
        ({"tools": [{**DOCS, "allowed_tools": ["a", 1]}]}, "tools[0].allowed_tools[1]", "invalid_type"),
        ({"tools": [{**DOCS, "require_approval": "sometimes"}]}, "tools[0].require_approval", "invalid_value"),
        (
            {"tools": [{**DOCS, "require_approval": {"never": {"read_only": True}}}]},
            "tools[0].require_approval.never.read_only",
            "unsupported_value",
        ),
        ({"tools": [{**DOCS, "headers": {"a": 1}}]}, "tools[0].headers.a", "invalid_type"),
        ({"tools": {"type": "function"}}, "tools", "invalid_type"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", "unsupported_value"),
        ({"input": [{"id": "msg_1"}]}, "input[0].type", "unsupported_value"),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type", "unsupported_value"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
            "unsupported_value",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "input[0].content[0].type",
            "unsupported_value",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]},
            "input[0].content[0].file_id",
            "unsupported_value",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input[0].content[0].image_url",
            "missing_required_parameter",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u", "detail": "max"}]}]},
            "input[0].content[0].detail",
            "invalid_value",
        ),
        (
            {"input": [{"role": "system", "content": [{"type": "input_image", "image_url": "u"}]}]},
            "input[0].content[0].type",
            "unsupported_value",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            "input[0].content[0].text",
            "missing_required_parameter",
        ),
        ({"input": [{"role": "user", "content": [{"type": "video"}]}]}, "input[0].content[0].type", "invalid_value"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "invalid_value"),
        ({"input": [{"type": "message", "content": "x"}]}, "input[0].role", "missing_required_parameter"),
        ({"input": [{"role": "user"}]}, "input[0].content", "missing_required_parameter"),
        ({"input": [{"content": "x"}]}, "input[0].type", "missing_required_parameter"),
        ({"input": [{"role": "user", "content": "x", "id": 5}]}, "input[0].id", "invalid_type"),
        ({"input": [ITEM, {**ITEM, "arguments": {"a": 1}}]}, "input[1].arguments", "invalid_type"),
        (
            {"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            "input[0].call_id",
            "missing_required_parameter",
        ),
        (
            {"input": [{"type": "function_call_output", "output": "x"}]},
            "input[0].call_id",
            "missing_required_parameter",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": "c"}]},
            "input[0].output",
            "missing_required_parameter",
        ),
        (
            {
                "input": [
                    {
                        "type": "function_call_output",
                        "call_id": "c",
                        "output": [{"type": "input_image", "image_url": "u"}],
                    }
                ]
            },
            "input[0].output[0].type",
            "unsupported_value",
        ),
        (
            {"input": [{"type": "mcp_call", "server_label": "docs", "arguments": "{}"}]},
            "input[0].name",
            "missing_required_parameter",
        ),
        (
            {
                "input": [
                    {"type": "mcp_call", "server_label": "docs", "name": "n", "arguments": "{}", "output": {"a": 1}}
                ]
            },
            "input[0].output",
            "invalid_type",
        ),
        (
            {"input": [{"type": "mcp_approval_request", "id": "r", "name": "n", "arguments": "{}"}]},
            "input[0].server_label",
            "missing_required_parameter",
        ),
        (
            {"input": [{"type": "mcp_approval_response", "approval_request_id": "r"}]},
            "input[0].approve",
            "missing_required_parameter",
        ),
        (
            {"input": [{"type": "mcp_approval_response", "approve": True}]},
            "input[0].approval_request_id",
            "missing_required_parameter",
        ),
        (
            {"input": [{"type": "mcp_approval_response", "approval_request_id": "r", "approve": "yes"}]},
            "input[0].approve",
            "invalid_type",
        ),
    ],
)
def test_refusals_name_the_field(fields: dict[str, Any], param: str, code: str) -> None:
    error = refusal({"model": MODEL, "input": "hi", **fields})
    assert (error.status, error.param, error.code) == (400, param, code)


def test_unknown_parameter_message_is_openais() -> None:
    error = refusal({"model": MODEL, "input": "hi", "foo": 1})
    assert error.body() == {
        "error": {
            "message": "Unknown parameter: 'foo'.",
            "type": "invalid_request_error",
            "param": "foo",
            "code": "unknown_parameter",
        }
    }


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"model": None}, "model", "missing_required_parameter"),
        ({"model": 5}, "model", "missing_required_parameter"),
        ({"model": "m" * 300}, "model", "invalid_value"),
        ({"input": 5}, "input", "invalid_type"),
        ({"input": {"role": "user", "content": "x"}}, "input", "invalid_type"),
        ({"input": ["hi"]}, "input[0]", "invalid_type"),
        ({"input": [{"role": "user", "content": 7}]}, "input[0].content", "invalid_type"),
        ({"input": [{"role": "user", "content": [7]}]}, "input[0].content[0]", "invalid_type"),
        ({"input": [{"type": 7}]}, "input[0].type", "invalid_type"),
        ({"instructions": ["x"]}, "instructions", "invalid_type"),
        ({"previous_response_id": 1}, "previous_response_id", "invalid_type"),
        ({"previous_response_id": ""}, "previous_response_id", "invalid_value"),
        ({"stream": "yes"}, "stream", "invalid_type"),
        ({"store": 1}, "store", "invalid_type"),
        ({"background": "no"}, "background", "invalid_type"),
        ({"parallel_tool_calls": 0}, "parallel_tool_calls", "invalid_type"),
        ({"max_output_tokens": 0}, "max_output_tokens", "invalid_value"),
        ({"max_output_tokens": 1.5}, "max_output_tokens", "invalid_type"),
        ({"max_output_tokens": True}, "max_output_tokens", "invalid_type"),
        ({"max_tool_calls": 0}, "max_tool_calls", "invalid_value"),
        ({"temperature": 2.5}, "temperature", "invalid_value"),
        ({"temperature": "hot"}, "temperature", "invalid_type"),
        ({"top_p": -0.1}, "top_p", "invalid_value"),
        ({"top_logprobs": 21}, "top_logprobs", "invalid_value"),
        ({"text": "json"}, "text", "invalid_type"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type", "invalid_value"),
        (
            {"text": {"format": {"type": "json_schema", "name": "o"}}},
            "text.format.schema",
            "missing_required_parameter",
        ),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name", "missing_required_parameter"),
        (
            {"text": {"format": {"type": "json_schema", "name": "o", "schema": []}}},
            "text.format.schema",
            "invalid_type",
        ),
        ({"text": {"verbosity": "loud"}}, "text.verbosity", "invalid_value"),
        ({"reasoning": {"effort": "extreme"}}, "reasoning.effort", "invalid_value"),
        ({"reasoning": {"summary": 1}}, "reasoning.summary", "invalid_type"),
        ({"metadata": {"k": 1}}, "metadata.k", "invalid_type"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "invalid_value"),
        ({"metadata": {"k" * 65: "v"}}, "metadata", "invalid_value"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k", "invalid_value"),
        ({"metadata": []}, "metadata", "invalid_type"),
        ({"user": 1}, "user", "invalid_type"),
        ({"safety_identifier": 1}, "safety_identifier", "invalid_type"),
        ({"prompt_cache_key": 1}, "prompt_cache_key", "invalid_type"),
        ({"service_tier": 1}, "service_tier", "invalid_type"),
        ({"stream_options": True}, "stream_options", "invalid_type"),
        ({"include": "message.output_text.logprobs"}, "include", "invalid_type"),
        ({"include": ["everything"]}, "include[0]", "invalid_value"),
        ({"include": [1]}, "include[0]", "invalid_type"),
    ],
)
def test_wrong_types_and_values_name_the_field(fields: dict[str, Any], param: str, code: str) -> None:
    error = refusal({"model": MODEL, "input": "hi", **fields})
    assert (error.param, error.code) == (param, code)


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'"input"', b"{" * 200 + b"}" * 200])
def test_bodies_that_are_not_json_objects(raw: bytes) -> None:
    assert refusal(raw).status == 400


# -- hostile input ----------------------------------------------------------------------------


def test_ten_thousand_items_are_read() -> None:
    items = [{"role": "user", "content": str(i)} for i in range(5_000)]
    items += [{"type": "function_call", "call_id": f"c{i}", "name": "f", "arguments": "{}"} for i in range(5_000)]
    request = parse(input=items)
    assert len(request.input_items) == 10_000
    assert len(request.chat_body["messages"]) == 5_001
    assert len(request.chat_body["messages"][-1]["tool_calls"]) == 5_000


def test_a_huge_unknown_key_is_not_copied_into_the_error() -> None:
    error = refusal({"model": MODEL, "input": "hi", "k" * 100_000: 1})
    assert error.param is not None and len(error.param) <= 200
    assert len(error.message) < 300


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
KEYS = st.sampled_from(
    [
        "type",
        "role",
        "content",
        "text",
        "id",
        "call_id",
        "name",
        "arguments",
        "output",
        "server_label",
        "image_url",
        "file_id",
        "detail",
        "error",
        "approval_request_id",
        "approve",
        "tool_names",
        "format",
    ]
)
TYPES = st.sampled_from(
    [
        "message",
        "function_call",
        "function_call_output",
        "mcp_call",
        "mcp_approval_request",
        "mcp_approval_response",
        "mcp_list_tools",
        "reasoning",
        "input_text",
        "output_text",
        "input_image",
        "refusal",
        "function",
        "mcp",
        "json_schema",
        "user",
        "assistant",
        "system",
        "developer",
    ]
)
SHAPED = st.recursive(
    JSON | TYPES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner | TYPES, max_size=6),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    field=st.sampled_from(
        ["input", "tools", "tool_choice", "text", "reasoning", "metadata", "include", "instructions"]
    ),
    value=SHAPED,
)
def test_any_value_of_any_field_is_parsed_or_refused_as_invalid_request(field: str, value: Any) -> None:
    raw = json.dumps({"model": MODEL, "input": "hi", field: value}).encode()
    try:
        request = parse_responses_request(raw, resolve_tool=resolve)
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.param
    else:
        assert request.chat_body["model"] == MODEL


# -- the SDK's own parameters ---------------------------------------------------------------

# Plausible values for the basic flows; other keys get an object, which is either accepted or refused by name.
SDK_EXAMPLES: dict[str, Any] = {
    "model": MODEL,
    "input": "hi",
    "instructions": "Be brief.",
    "include": ["message.output_text.logprobs"],
    "background": False,
    "conversation": "conv_1",
    "max_output_tokens": 10,
    "max_tool_calls": 2,
    "metadata": {"k": "v"},
    "parallel_tool_calls": True,
    "previous_response_id": "resp_1",
    "prompt_cache_key": "k",
    "prompt_cache_retention": "24h",
    "safety_identifier": "s",
    "service_tier": "auto",
    "store": False,
    "stream": True,
    "temperature": 1,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": False}],
    "top_logprobs": 2,
    "top_p": 0.5,
    "truncation": "disabled",
    "user": "u",
}


@pytest.mark.parametrize("key", sorted({*ResponseCreateParamsBase.__annotations__, "stream"}))
def test_every_sdk_parameter_is_accepted_or_refused_by_name(key: str) -> None:
    body = {"model": MODEL, "input": "hi", key: SDK_EXAMPLES.get(key, {"type": "compaction", "id": "x"})}
    try:
        parse_responses_request(json.dumps(body).encode(), resolve_tool=resolve)
    except InvalidRequest as exc:
        assert exc.code != "unknown_parameter"
        assert exc.param is not None and exc.param.split(".")[0].split("[")[0] == key


def test_every_sdk_parameter_may_be_null() -> None:
    nulls = {key: None for key in ResponseCreateParamsBase.__annotations__ if key not in ("model", "input")}
    request = parse(input="hi", **nulls)
    assert request.chat_body == {"model": MODEL, "messages": [user("hi")]}


# -- the chat view ----------------------------------------------------------------------------


def test_chat_request_validates_whatever_messages_the_caller_put_in() -> None:
    request = parse(previous_response_id="resp_1", stream=True, tools=[{"type": "function", "name": "f"}])
    request.chat_body["messages"] = [user("earlier"), {"role": "assistant", "content": "ok"}]
    chat = request.chat_request()
    assert (chat.model, chat.stream, len(chat.messages)) == (MODEL, True, 2)
    assert chat.tools is not None and chat.tools[0].function is not None and chat.tools[0].function.name == "f"


def test_chat_request_without_any_message_is_a_missing_input() -> None:
    request = parse(previous_response_id="resp_1")
    with pytest.raises(InvalidRequest) as caught:
        request.chat_request()
    assert (caught.value.param, caught.value.code) == ("input", "missing_required_parameter")
