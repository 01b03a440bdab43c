"""A Responses API request (``POST /v1/responses``) read into the chat-completions request the upstream gets.

Pure translation, no I/O. The client's body is validated field by field, the way
OpenAI does: an unknown top-level key is refused by name, and so is any feature
the gateway cannot honour (background runs, conversations, stored prompts, hosted
tools...) rather than being silently dropped. What is left becomes
``ResponsesRequest.chat_body``, to which the caller prepends the stored history of
``previous_response_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from gateway.errors import InvalidRequest
from gateway.json_fields import (
    Json,
    as_list,
    as_object,
    field_path,
    invalid_type,
    invalid_value,
    missing_parameter,
    optional_bool,
    optional_int,
    optional_number,
    optional_object,
    optional_str,
    required_str,
    shown,
    string_list,
    unsupported_value,
)
from gateway.protocol import ChatRequest, load_object
from gateway.responses_items import ToolResolver, items_to_messages, normalize_input
from gateway.responses_mcp import McpToolRequest, mcp_tool

__all__ = ["McpToolRequest", "ResponsesRequest", "ToolResolver", "items_to_messages", "parse_responses_request"]

# Every key the gateway reads or knowingly ignores; anything else is refused by name.
_ACCEPTED_KEYS = frozenset(
    {
        "model", "input", "instructions", "previous_response_id", "tools", "tool_choice",
        "parallel_tool_calls", "max_output_tokens", "max_tool_calls", "temperature", "top_p",
        "text", "reasoning", "store", "metadata", "user", "safety_identifier", "prompt_cache_key",
        "prompt_cache_retention", "service_tier", "stream", "stream_options", "include",
        "truncation", "top_logprobs", "background",
    }
)  # fmt: skip

# OpenAI features with no meaning for an upstream chat server: refused when set, not ignored,
# so a client never believes it got them.
_REFUSED_WHEN_SET = {
    "conversation": "conversations are not supported; use previous_response_id.",
    "prompt": "stored prompt templates are not supported; send instructions and input.",
    "context_management": "server-side context compaction is not supported.",
    "prompt_cache_options": "prompt cache options are not supported.",
    "background_options": "background runs are not supported.",
    "moderation": "moderation is not supported.",
    "access_programs": "access programs are not supported.",
    "image": "request-level image options are not supported.",
}

# Accepted; only the logprobs one changes what the upstream is asked for.
_INCLUDABLE = frozenset(
    {
        "message.output_text.logprobs", "reasoning.encrypted_content", "message.input_image.image_url",
        "computer_call_output.output.image_url", "file_search_call.results", "web_search_call.results",
        "web_search_call.action.sources", "code_interpreter_call.outputs",
    }
)  # fmt: skip

_TOOL_CHOICE_MODES = ("none", "auto", "required")
_REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
_VERBOSITIES = ("low", "medium", "high")
_METADATA_MAX_PAIRS, _METADATA_MAX_KEY, _METADATA_MAX_VALUE = 16, 64, 512


@dataclass(slots=True)
class ResponsesRequest:
    """A validated Responses request and the chat-completions body it becomes."""

    body: Json  # the client's own dict, echoed in the response object
    model: str
    stream: bool
    store: bool
    previous_response_id: str | None
    instructions: str | None
    metadata: dict[str, str] | None
    max_tool_calls: int | None
    input_items: list[Json]  # what ``GET /v1/responses/{id}/input_items`` lists
    chat_body: Json  # the upstream request, without the history of previous_response_id
    mcp_tools: list[McpToolRequest]
    approvals: dict[str, bool]  # approval_request_id → approved

    def chat_request(self) -> ChatRequest:
        """The validated chat view of ``chat_body``, with whatever messages it holds by now."""
        if not self.chat_body.get("messages"):
            # No instructions, no input, no earlier turn: nothing for the model to answer.
            raise InvalidRequest(
                "The request gives the model no input.", param="input", code="missing_required_parameter"
            )
        try:
            return ChatRequest.model_validate(self.chat_body)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"])[:200]
            raise InvalidRequest(f"Invalid value for '{param}': {first['msg'][:200]}", param=param) from exc


def parse_responses_request(raw: bytes, max_model_chars: int = 256, *, resolve_tool: ToolResolver) -> ResponsesRequest:
    """Parse and validate a Responses request body; raises InvalidRequest naming the offending field."""
    body = load_object(raw, max_model_chars)
    _refuse_unknown_and_unsupported(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_required_parameter")
    previous = optional_str(body, "previous_response_id", "")
    if previous == "":
        raise invalid_value("previous_response_id", "must not be empty.")
    instructions = optional_str(body, "instructions", "")
    input_items = _input_items(body, previous)
    client_tools, mcp_tools = _tools(body.get("tools"))
    messages = [{"role": "system", "content": instructions}] if instructions else []
    messages += items_to_messages(input_items, resolve_tool)
    chat_body: Json = {"model": model, "messages": messages}
    stream = bool(optional_bool(body, "stream", ""))
    if stream:
        chat_body["stream"] = True
    if client_tools:
        chat_body["tools"] = client_tools
    if body.get("tool_choice") is not None:
        chat_body["tool_choice"] = _chat_tool_choice(body["tool_choice"], mcp_tools, resolve_tool)
    chat_body.update(_generation_options(body))
    _check_ignored_fields(body)
    store = optional_bool(body, "store", "")
    return ResponsesRequest(
        body=body,
        model=model,
        stream=stream,
        store=True if store is None else store,
        previous_response_id=previous,
        instructions=instructions,
        metadata=_metadata(body.get("metadata")),
        max_tool_calls=_optional_int(body, "max_tool_calls", minimum=1),
        input_items=input_items,
        chat_body=chat_body,
        mcp_tools=mcp_tools,
        approvals=_approvals(input_items),
    )


def _refuse_unknown_and_unsupported(body: Json) -> None:
    for key in body:
        if key not in _ACCEPTED_KEYS and key not in _REFUSED_WHEN_SET:
            raise InvalidRequest(f"Unknown parameter: '{shown(key)}'.", param=key[:200], code="unknown_parameter")
    for key, why in _REFUSED_WHEN_SET.items():
        if body.get(key) is not None:
            raise _unsupported_parameter(key, why)
    if optional_bool(body, "background", ""):
        raise _unsupported_parameter("background", "background runs are not supported.")
    if body.get("truncation") not in (None, "disabled"):
        truncation = body["truncation"]
        if truncation == "auto":
            raise unsupported_value("truncation", "the gateway never truncates input; use 'disabled'.")
        if not isinstance(truncation, str):
            raise invalid_type("truncation", "a string", truncation)
        raise invalid_value("truncation", f"'{shown(truncation)}'. Supported values are: auto, disabled.")


def _unsupported_parameter(key: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"Unsupported parameter: '{key}': {why}", param=key, code="unsupported_parameter")


def _input_items(body: Json, previous_response_id: str | None) -> list[Json]:
    if body.get("input") is None:
        if previous_response_id is None:
            raise missing_parameter("input")
        return []
    return normalize_input(body["input"])


def _approvals(items: list[Json]) -> dict[str, bool]:
    approvals: dict[str, bool] = {}
    for i, item in enumerate(items):
        if item["type"] == "mcp_approval_response":
            where = f"input[{i}]"
            request_id = required_str(item, "approval_request_id", where)
            approve = optional_bool(item, "approve", where)
            if approve is None:
                raise missing_parameter(f"{where}.approve")
            approvals[request_id] = approve
    return approvals


# -- tools and tool_choice --------------------------------------------------------------------


def _tools(value: Any) -> tuple[list[Json], list[McpToolRequest]]:
    """The client's function tools in chat shape, and its MCP tools (never forwarded as such)."""
    if value is None:
        return [], []
    functions: list[Json] = []
    mcp_tools: list[McpToolRequest] = []
    for i, entry in enumerate(as_list(value, "tools")):
        where = f"tools[{i}]"
        tool = as_object(entry, where)
        kind = required_str(tool, "type", where)
        if kind == "function":
            functions.append(_function_tool(tool, where))
        elif kind == "mcp":
            mcp = mcp_tool(tool, where)
            if any(m.server_label == mcp.server_label for m in mcp_tools):
                raise invalid_value(f"{where}.server_label", f"'{shown(mcp.server_label)}' appears twice.")
            mcp_tools.append(mcp)
        else:
            raise unsupported_value(f"{where}.type", f"'{shown(kind)}' tools are not supported by this gateway.")
    return functions, mcp_tools


def _function_tool(tool: Json, where: str) -> Json:
    function = {
        "name": required_str(tool, "name", where),
        **_given(
            description=optional_str(tool, "description", where),
            parameters=optional_object(tool, "parameters", where),
            strict=optional_bool(tool, "strict", where),
        ),
    }
    return {"type": "function", "function": function}


def _chat_tool_choice(value: Any, mcp_tools: list[McpToolRequest], resolve_tool: ToolResolver) -> str | Json:
    if isinstance(value, str):
        return str(_one_of(value, _TOOL_CHOICE_MODES, "tool_choice"))
    if not isinstance(value, dict):
        raise invalid_type("tool_choice", "a string or an object", value)
    kind = required_str(value, "type", "tool_choice")
    if kind == "function":
        return _forced(required_str(value, "name", "tool_choice"))
    if kind == "mcp":
        return _forced(_forced_mcp_function(value, mcp_tools, resolve_tool))
    raise unsupported_value("tool_choice.type", f"'{shown(kind)}' tool choices are not supported by this gateway.")


def _forced_mcp_function(choice: Json, mcp_tools: list[McpToolRequest], resolve_tool: ToolResolver) -> str:
    label = required_str(choice, "server_label", "tool_choice")
    name = optional_str(choice, "name", "tool_choice")
    if name is None:
        raise unsupported_value("tool_choice.name", "forcing any tool of an MCP server is not supported; name one.")
    server = next((m for m in mcp_tools if m.server_label == label), None)
    if server is None:
        raise invalid_value("tool_choice.server_label", f"no mcp tool in 'tools' has server_label '{shown(label)}'.")
    function = resolve_tool(label, name) if server.allows(name) else None
    if function is None:
        raise invalid_value("tool_choice.name", f"MCP server '{shown(label)}' offers no tool '{shown(name)}'.")
    return function


def _forced(name: str) -> Json:
    return {"type": "function", "function": {"name": name}}


# -- generation options -----------------------------------------------------------------------


def _generation_options(body: Json) -> Json:
    """The chat parameters that Responses fields map to, only those the client gave."""
    user = optional_str(body, "user", "")
    options = _given(
        parallel_tool_calls=optional_bool(body, "parallel_tool_calls", ""),
        max_tokens=_optional_int(body, "max_output_tokens", minimum=1),
        temperature=_optional_number(body, "temperature", 2),
        top_p=_optional_number(body, "top_p", 1),
        reasoning_effort=_reasoning_effort(optional_object(body, "reasoning", "")),
        user=user if user is not None else optional_str(body, "safety_identifier", ""),
    )
    text = optional_object(body, "text", "")
    if text is not None:
        options.update(
            _given(
                response_format=_response_format(optional_object(text, "format", "text")),
                verbosity=_one_of(optional_str(text, "verbosity", "text"), _VERBOSITIES, "text.verbosity"),
            )
        )
    options.update(_logprob_options(body))
    return options


def _given(**values: Any) -> Json:
    """The values that are set: absent Responses fields stay absent in the chat body."""
    return {key: value for key, value in values.items() if value is not None}


def _one_of(value: str | None, allowed: tuple[str, ...], param: str) -> str | None:
    if value is not None and value not in allowed:
        raise invalid_value(param, f"'{shown(value)}'. Supported values are: {', '.join(allowed)}.")
    return value


def _response_format(text_format: Json | None) -> Json | None:
    if text_format is None:
        return None
    kind = required_str(text_format, "type", "text.format")
    if kind == "text":
        return None  # the default: asking for it explicitly changes nothing
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise invalid_value(
            "text.format.type", f"'{shown(kind)}'. Supported values are: text, json_object, json_schema."
        )
    if text_format.get("schema") is None:
        raise missing_parameter("text.format.schema")
    schema = {
        "name": required_str(text_format, "name", "text.format"),
        "schema": as_object(text_format["schema"], "text.format.schema"),
        **_given(
            strict=optional_bool(text_format, "strict", "text.format"),
            description=optional_str(text_format, "description", "text.format"),
        ),
    }
    return {"type": "json_schema", "json_schema": schema}


def _reasoning_effort(reasoning: Json | None) -> str | None:
    if reasoning is None:
        return None
    # Summaries are accepted and ignored: chat servers return reasoning text or nothing.
    for key in ("summary", "generate_summary", "context", "mode"):
        optional_str(reasoning, key, "reasoning")
    return _one_of(optional_str(reasoning, "effort", "reasoning"), _REASONING_EFFORTS, "reasoning.effort")


def _logprob_options(body: Json) -> Json:
    top_logprobs = _optional_int(body, "top_logprobs", minimum=0, maximum=20)
    includes = _includes(body.get("include"))
    options: Json = {}
    if top_logprobs is not None or "message.output_text.logprobs" in includes:
        options["logprobs"] = True
    if top_logprobs is not None:
        options["top_logprobs"] = top_logprobs
    return options


def _includes(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    includes = string_list(value, "include")
    for i, name in enumerate(includes):
        if name not in _INCLUDABLE:
            raise invalid_value(f"include[{i}]", f"'{shown(name)}' is not an includable field.")
    return includes


def _check_ignored_fields(body: Json) -> None:
    """Fields accepted without effect still must have their documented types."""
    for key in ("prompt_cache_key", "prompt_cache_retention", "service_tier"):
        optional_str(body, key, "")
    optional_object(body, "stream_options", "")


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    metadata = as_object(value, "metadata")
    if len(metadata) > _METADATA_MAX_PAIRS:
        raise invalid_value("metadata", f"at most {_METADATA_MAX_PAIRS} key-value pairs are allowed.")
    for key, item in metadata.items():
        if len(key) > _METADATA_MAX_KEY:
            raise invalid_value("metadata", f"keys are at most {_METADATA_MAX_KEY} characters.")
        if not isinstance(item, str):
            raise invalid_type(field_path("metadata", key), "a string", item)
        if len(item) > _METADATA_MAX_VALUE:
            raise invalid_value(field_path("metadata", key), f"values are at most {_METADATA_MAX_VALUE} characters.")
    return dict(metadata)


def _optional_int(body: Json, key: str, *, minimum: int, maximum: int | None = None) -> int | None:
    value = optional_int(body, key)
    if value is None:
        return None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise invalid_value(key, f"must be {bound}; got {shown(value)}.")
    return value


def _optional_number(body: Json, key: str, maximum: int) -> int | float | None:
    value = optional_number(body, key)
    if value is None:
        return None
    if not 0 <= value <= maximum:
        raise invalid_value(key, f"must be between 0 and {maximum}; got {shown(value)}.")
    return value
