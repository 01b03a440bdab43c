"""Responses API input items: normalised for storage, turned into chat messages for the upstream.

A Responses conversation is a flat list of items (messages, function calls, their
outputs, MCP calls...); chat completions wants messages in which an assistant
message carries its tool calls and tool messages answer them. ``normalize_input``
gives every input item the shape OpenAI returns from ``GET .../input_items``;
``items_to_messages`` converts input items and stored output items alike.

Items come from clients: every field is checked, and any surprise (wrong type,
missing field, an item kind the gateway cannot forward) is an ``InvalidRequest``
naming the field, like ``input[3].content[0].text``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from gateway import jsoncodec
from gateway.json_fields import (
    Json,
    as_list,
    as_object,
    invalid_type,
    invalid_value,
    missing_parameter,
    optional_str,
    required_str,
    shown,
    unsupported_value,
)

ToolResolver = Callable[[str, str], str | None]
"""(MCP server_label, tool name) → the function name the model knows that tool by, or None."""

MESSAGE_ROLES = ("user", "system", "developer", "assistant")

# OpenAI's prefixes, so minted ids look like the ones clients already store.
_ID_PREFIXES = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "mcp_call": "mcp",
    "mcp_approval_request": "mcpr",
    "mcp_approval_response": "mcpa",
    "mcp_list_tools": "mcpl",
    "reasoning": "rs",
}

# Items that carry nothing the model reads: skipped on the way to chat messages.
# (``mcp_approval_response`` is read by the request parser into ``approvals``.)
_SILENT_ITEMS = frozenset({"reasoning", "mcp_list_tools", "mcp_approval_response"})

_TEXT_PARTS = frozenset({"input_text", "output_text"})
_IMAGE_DETAILS = frozenset({"auto", "low", "high", "original"})


def new_item_id(item_type: str) -> str:
    return f"{_ID_PREFIXES.get(item_type, 'item')}_{secrets.token_hex(16)}"


# -- normalising input ------------------------------------------------------------------------


def normalize_input(value: Any) -> list[Json]:
    """The ``input`` as items in OpenAI's stored shape: typed, with ids, message content as parts.

    The client's items are copied, never changed: the request body is echoed as sent.
    """
    if isinstance(value, str):
        return [_with_id({"type": "message", "role": "user", "content": [_text_part("user", value)]})]
    items = as_list(value, "input", "a string or an array of input items")
    return [_normalized_item(item, f"input[{i}]") for i, item in enumerate(items)]


def _normalized_item(value: Any, where: str) -> Json:
    item = dict(as_object(value, where))
    kind = item.get("type")
    if kind is None:
        if "role" in item:
            kind = "message"  # an EasyInputMessage: role and content, no type
        elif "id" in item:
            kind = "item_reference"  # OpenAI lets an item reference omit its type
        else:
            raise missing_parameter(f"{where}.type")
        item["type"] = kind
    elif not isinstance(kind, str):
        raise invalid_type(f"{where}.type", "a string", kind)
    if kind == "message":
        _normalize_message(item, where)
    if item.get("id") is not None and not isinstance(item["id"], str):
        raise invalid_type(f"{where}.id", "a string", item["id"])
    return _with_id(item)


def _normalize_message(item: Json, where: str) -> None:
    role = required_str(item, "role", where)
    if role not in MESSAGE_ROLES:
        raise invalid_value(f"{where}.role", f"'{shown(role)}'. Supported values are: {', '.join(MESSAGE_ROLES)}.")
    content = item.get("content")
    if isinstance(content, str):
        item["content"] = [_text_part(role, content)]
    elif content is None:
        raise missing_parameter(f"{where}.content")
    elif not isinstance(content, list):
        raise invalid_type(f"{where}.content", "a string or an array of content parts", content)


def _text_part(role: str, text: str) -> Json:
    if role == "assistant":
        return {"type": "output_text", "text": text, "annotations": []}
    return {"type": "input_text", "text": text}


def _with_id(item: Json) -> Json:
    """The item with ``id`` and ``type`` first, as OpenAI lists them, minting an id when absent."""
    item_id = item.get("id") or new_item_id(item["type"])
    return {"id": item_id, "type": item["type"], **{k: v for k, v in item.items() if k not in ("id", "type")}}


# -- items → chat messages -------------------------------------------------------------------


def items_to_messages(items: list[Json], resolve_tool: ToolResolver, *, where: str = "input") -> list[Json]:
    """Chat messages for normalised input items or stored output items, in order.

    Consecutive calls (``function_call``, ``mcp_call``, ``mcp_approval_request``) share one
    assistant message, joining an assistant text message right before them; the tool
    messages of ``mcp_call`` items (which carry their own output) follow that message.
    ``where`` names the list in error params.
    """
    builder = _MessageBuilder(resolve_tool)
    for i, item in enumerate(items):
        builder.add(as_object(item, f"{where}[{i}]"), f"{where}[{i}]")
    return builder.finish()


class _MessageBuilder:
    def __init__(self, resolve_tool: ToolResolver) -> None:
        self.resolve_tool = resolve_tool
        self.messages: list[Json] = []
        # The assistant message that calls now join, while a run of calls is open.
        self._calls_message: Json | None = None
        # Tool messages of the open run, placed after its assistant message when the run ends.
        self._results: list[Json] = []
        # Approval requests whose call has no result yet: a later ``mcp_call`` carrying that
        # ``approval_request_id`` is the result, not a second call.
        self._awaiting_approval: set[str] = set()

    def add(self, item: Json, where: str) -> None:
        kind = item.get("type")
        if kind is None and "role" in item:
            kind = "message"
        if kind == "message":
            self._message(item, where)
        elif kind == "function_call":
            self._function_call(item, where)
        elif kind == "function_call_output":
            self._emit(self._function_output(item, where))
        elif kind == "mcp_call":
            self._mcp_call(item, where)
        elif kind == "mcp_approval_request":
            self._approval_request(item, where)
        elif kind in _SILENT_ITEMS:
            pass  # produces no message, and leaves a run of calls open
        elif isinstance(kind, str):
            raise unsupported_value(f"{where}.type", f"'{shown(kind)}' items are not supported by this gateway.")
        elif kind is None:
            raise missing_parameter(f"{where}.type")
        else:
            raise invalid_type(f"{where}.type", "a string", kind)

    def finish(self) -> list[Json]:
        self._close_calls()
        return self.messages

    def _close_calls(self) -> None:
        self.messages.extend(self._results)
        self._results = []
        self._calls_message = None

    def _emit(self, message: Json) -> None:
        self._close_calls()
        self.messages.append(message)

    def _add_call(self, call_id: str, name: str, arguments: str) -> None:
        if self._calls_message is None:
            self._calls_message = {"role": "assistant", "content": None}
            self.messages.append(self._calls_message)
        call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        self._calls_message.setdefault("tool_calls", []).append(call)

    def _message(self, item: Json, where: str) -> None:
        role = required_str(item, "role", where)
        content = item.get("content")
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        else:
            parts = _chat_parts(as_list(content, f"{where}.content", "a string or an array of content parts"), where)
        if role == "user":
            self._emit({"role": "user", "content": _collapsed(parts)})
        elif role in ("system", "developer"):
            # vLLM and llama.cpp refuse the "developer" role; it means system to them.
            _require_text_only(parts, where, role)
            self._emit({"role": "system", "content": _collapsed(parts)})
        elif role == "assistant":
            _require_text_only(parts, where, role)
            message = {"role": "assistant", "content": "".join(p["text"] for p in parts)}
            self._emit(message)
            self._calls_message = message  # calls right after it are this turn's calls
        else:
            raise invalid_value(f"{where}.role", f"'{shown(role)}'. Supported values are: {', '.join(MESSAGE_ROLES)}.")

    def _function_call(self, item: Json, where: str) -> None:
        call_id = required_str(item, "call_id", where)
        name = required_str(item, "name", where)
        self._add_call(call_id, name, required_str(item, "arguments", where))

    def _function_output(self, item: Json, where: str) -> Json:
        call_id = required_str(item, "call_id", where)
        output = item.get("output")
        if output is None:
            raise missing_parameter(f"{where}.output")
        if not isinstance(output, str):
            parts = as_list(output, f"{where}.output", "a string or an array of content parts")
            output = "\n".join(_output_text(part, f"{where}.output[{j}]") for j, part in enumerate(parts))
        return {"role": "tool", "tool_call_id": call_id, "content": output}

    def _mcp_call(self, item: Json, where: str) -> None:
        item_id = required_str(item, "id", where)
        label = required_str(item, "server_label", where)
        name = required_str(item, "name", where)
        arguments = required_str(item, "arguments", where)
        answered = optional_str(item, "approval_request_id", where)
        output = optional_str(item, "output", where)
        error = item.get("error")
        content = (output or "") if error is None else _error_text(error)
        if answered is not None and answered in self._awaiting_approval:
            # The approved call ran: its result answers the approval request's call.
            self._awaiting_approval.discard(answered)
            self._results.append({"role": "tool", "tool_call_id": answered, "content": content})
            return
        self._add_call(item_id, self.resolve_tool(label, name) or name, arguments)
        self._results.append({"role": "tool", "tool_call_id": item_id, "content": content})

    def _approval_request(self, item: Json, where: str) -> None:
        item_id = required_str(item, "id", where)
        label = required_str(item, "server_label", where)
        name = required_str(item, "name", where)
        arguments = required_str(item, "arguments", where)
        # No tool message: the client's approval response leads to the result.
        self._add_call(item_id, self.resolve_tool(label, name) or name, arguments)
        self._awaiting_approval.add(item_id)


def _error_text(error: Any) -> str:
    """A failed call's tool message as the model read it when the call ran: the text of an MCP execution
    error (the gateway's failed ``mcp_call`` items wrap that message so), any other error as JSON."""
    if isinstance(error, dict) and error.get("type") == "mcp_tool_execution_error":
        blocks = error.get("content")
        if isinstance(blocks, list) and blocks and all(_is_text_block(b) for b in blocks):
            return "\n".join(b["text"] for b in blocks)
    return jsoncodec.dumps({"error": error}).decode()


def _is_text_block(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)


def _chat_parts(content: list[Any], where: str) -> list[Json]:
    return [
        _chat_part(as_object(part, f"{where}.content[{j}]"), f"{where}.content[{j}]") for j, part in enumerate(content)
    ]


def _chat_part(part: Json, where: str) -> Json:
    kind = required_str(part, "type", where)
    if kind in _TEXT_PARTS:
        return {"type": "text", "text": required_str(part, "text", where)}
    if kind == "refusal":
        return {"type": "text", "text": required_str(part, "refusal", where)}
    if kind == "input_image":
        return _image_part(part, where)
    if kind in ("input_file", "input_audio"):
        raise unsupported_value(f"{where}.type", f"'{kind}' content is not supported by this gateway.")
    raise invalid_value(f"{where}.type", f"'{shown(kind)}' is not a content part type.")


def _image_part(part: Json, where: str) -> Json:
    if part.get("file_id") is not None:
        raise unsupported_value(f"{where}.file_id", "images by file id are not supported; send an image_url.")
    image: Json = {"url": required_str(part, "image_url", where)}
    detail = optional_str(part, "detail", where)
    if detail is not None:
        if detail not in _IMAGE_DETAILS:
            raise invalid_value(
                f"{where}.detail", f"'{shown(detail)}'. Supported values are: auto, low, high, original."
            )
        # Chat completions has no "original"; "high" is its least downscaled detail.
        image["detail"] = "high" if detail == "original" else detail
    return {"type": "image_url", "image_url": image}


def _output_text(value: Any, where: str) -> str:
    part = as_object(value, where)
    kind = required_str(part, "type", where)
    if kind in _TEXT_PARTS:
        return required_str(part, "text", where)
    # A chat tool message holds text only.
    raise unsupported_value(f"{where}.type", f"'{shown(kind)}' in a function call output is not supported.")


def _require_text_only(parts: list[Json], where: str, role: str) -> None:
    for j, part in enumerate(parts):
        if part["type"] != "text":
            raise unsupported_value(f"{where}.content[{j}].type", f"images are not supported in {role} messages.")


def _collapsed(parts: list[Json]) -> str | list[Json]:
    """A lone text part as plain string content: every chat server reads that."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts
