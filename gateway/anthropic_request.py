"""A chat-completions request body read into an Anthropic Messages request body.

Pure translation, no I/O: the loop keeps speaking chat completions and the Anthropic
upstream adapter calls ``messages_request`` on every round's body. The body is a
client's (or the loop's copy of it), so every field is checked and any surprise is
an ``InvalidRequest`` naming it (``messages[3].content[1]``), never another exception.
A field with no Anthropic equivalent is refused by name rather than dropped: a client
must never believe it got ``seed`` or ``response_format`` when it did not.

Anthropic's rules that shape the translation: system text is a top-level field, not
a message; roles strictly alternate and the first turn is the user's; tool results
are ``tool_result`` blocks in a user turn, placed before any other block of that turn.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from gateway.errors import InvalidRequest
from gateway.json_fields import (
    Json,
    as_list,
    as_object,
    invalid_type,
    invalid_value,
    missing_parameter,
    optional_bool,
    optional_int,
    optional_number,
    optional_object,
    optional_str,
    required_object,
    required_str,
    shown,
)
from gateway.jsoncodec import loads_exact

UPSTREAM = "Anthropic Messages API"

# The chat fields translated or knowingly ignored; any other key is refused by name.
_HANDLED_KEYS = frozenset(
    {
        "model", "messages", "tools", "tool_choice", "parallel_tool_calls", "max_tokens",
        "max_completion_tokens", "temperature", "top_p", "stop", "user", "stream", "stream_options",
        "n", "presence_penalty", "frequency_penalty", "logprobs",
    }
)  # fmt: skip

_ROLES = ("system", "developer", "user", "assistant", "tool")

# Anthropic accepts these image types only; anything else would fail upstream less clearly.
_IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")

# Anthropic's tool_use ids match [A-Za-z0-9_-]+; ids minted by other servers ("functions.f:0") may not.
_NOT_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")

_TOOL_CHOICE_MODES = {"auto": "auto", "none": "none", "required": "any"}


def unsupported(param: str, what: str = "") -> InvalidRequest:
    """The refusal for a feature the upstream cannot honour."""
    subject = what or f"'{shown(param)}'"
    message = f"{subject} is not supported by this model's upstream ({UPSTREAM})."
    return InvalidRequest(message, param=param[:200], code="unsupported_parameter")


def messages_request(body: dict[str, Any], *, default_max_tokens: int) -> dict[str, Any]:
    """The chat body (``model`` already the upstream's name) as a Messages request body."""
    for key in body:
        if key not in _HANDLED_KEYS:
            raise unsupported(key)
    model = required_str(body, "model", "")
    if not model:
        raise invalid_value("model", "must not be empty.")
    system, turns = _conversation(body.get("messages"))
    tools = _tools(body.get("tools"))
    user = optional_str(body, "user", "")
    options = {
        "system": system or None,
        "tools": tools or None,
        "tool_choice": _tool_choice(
            body.get("tool_choice"), bool(tools), optional_bool(body, "parallel_tool_calls", "")
        ),
        "metadata": None if user is None else {"user_id": user},
        "stream": optional_bool(body, "stream", ""),
        **_sampling(body),
    }
    # Usage always comes on an Anthropic stream: include_usage has nothing to ask for.
    optional_object(body, "stream_options", "")
    _check_neutral_values(body)
    request = {"model": model, "messages": turns, "max_tokens": _max_tokens(body, default_max_tokens)}
    return request | {key: value for key, value in options.items() if value is not None}


# -- messages ---------------------------------------------------------------------------------


def _conversation(value: Any) -> tuple[str, list[Json]]:
    """The top-level system text and the alternating user/assistant turns."""
    if value is None:
        raise missing_parameter("messages")
    system: list[str] = []
    turns: list[Json] = []
    for i, entry in enumerate(as_list(value, "messages")):
        where = f"messages[{i}]"
        message = as_object(entry, where)
        role = required_str(message, "role", where)
        if role not in _ROLES:
            raise invalid_value(f"{where}.role", f"'{shown(role)}'. Supported values are: {', '.join(_ROLES)}.")
        # A tool message's name repeats the called function's, which the tool_use id already links.
        if role != "tool" and message.get("name") not in (None, ""):
            raise unsupported(f"{where}.name", "A message 'name'")
        # Other extra keys (annotations, reasoning_content...) are response metadata clients echo back.
        for key in ("audio", "function_call"):
            if message.get(key) is not None:
                raise unsupported(f"{where}.{key}")
        if role in ("system", "developer"):
            text = _plain_text(message.get("content"), f"{where}.content")
            if text:
                system.append(text)
            continue
        if role == "assistant":
            turn_role, blocks = "assistant", _assistant_blocks(message, where)
        else:
            turn_role = "user"
            blocks = _user_blocks(message, where) if role == "user" else [_tool_result(message, where)]
        # Anthropic refuses empty text blocks and empty turns; an empty message says nothing.
        if not blocks:
            continue
        if turns and turns[-1]["role"] == turn_role:
            turns[-1]["content"].extend(blocks)  # roles must alternate: a same-role run is one turn
        else:
            turns.append({"role": turn_role, "content": blocks})
    if not turns:
        raise invalid_value("messages", "the conversation holds no user or assistant message with content.")
    if turns[0]["role"] != "user":
        raise invalid_value("messages", f"the {UPSTREAM} requires the conversation to start with a user message.")
    for turn in turns:
        if turn["role"] == "user":
            # Anthropic wants a user turn's tool_result blocks first; the sort is stable otherwise.
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    return "\n\n".join(system), turns


def _parts(content: Any, where: str) -> list[Json]:
    parts = as_list(content, where, "a string or an array of content parts")
    for j, part in enumerate(parts):
        required_str(as_object(part, f"{where}[{j}]"), "type", f"{where}[{j}]")
    return parts


def _plain_text(content: Any, where: str) -> str:
    """System, developer and tool content: a string, or text parts joined by newlines."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(_parts(content, where)):
        if part["type"] != "text":
            raise unsupported(f"{where}[{j}].type", f"A '{shown(part['type'])}' content part here")
        texts.append(required_str(part, "text", f"{where}[{j}]"))
    return "\n".join(texts)


def _user_blocks(message: Json, where: str) -> list[Json]:
    content = message.get("content")
    if content is None:
        raise missing_parameter(f"{where}.content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[Json] = []
    for j, part in enumerate(_parts(content, f"{where}.content")):
        at = f"{where}.content[{j}]"
        if part["type"] == "text":
            text = required_str(part, "text", at)
            if text:
                blocks.append({"type": "text", "text": text})
        elif part["type"] == "image_url":
            blocks.append(_image_block(part, at))
        else:
            raise unsupported(f"{at}.type", f"A '{shown(part['type'])}' content part")
    return blocks


def _image_block(part: Json, where: str) -> Json:
    image = required_object(part, "image_url", where)
    url = required_str(image, "url", f"{where}.image_url")
    # ``detail`` is a resolution hint with no Anthropic counterpart; the image itself is what counts.
    optional_str(image, "detail", f"{where}.image_url")
    param = f"{where}.image_url.url"
    if url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not comma or encoding != "base64" or not data:
            raise invalid_value(param, "a data URL must have the form data:<media type>;base64,<data>.")
        if media_type not in _IMAGE_MEDIA_TYPES:
            supported = ", ".join(_IMAGE_MEDIA_TYPES)
            raise invalid_value(param, f"image type '{shown(media_type)}'. Supported types are: {supported}.")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise invalid_value(param, "an image must be an http(s) URL or a base64 data URL.")


def _assistant_blocks(message: Json, where: str) -> list[Json]:
    content = message.get("content")
    texts: list[str] = []
    if isinstance(content, str):
        texts.append(content)
    elif content is not None:
        for j, part in enumerate(_parts(content, f"{where}.content")):
            kind = part["type"]
            if kind not in ("text", "refusal"):
                raise unsupported(f"{where}.content[{j}].type", f"A '{shown(kind)}' part in an assistant message")
            texts.append(required_str(part, kind, f"{where}.content[{j}]"))
    # A refusal the model gave instead of content was this turn's text.
    refusal = optional_str(message, "refusal", where)
    if refusal and not any(texts):
        texts.append(refusal)
    blocks = [{"type": "text", "text": text} for text in texts if text]
    calls = message.get("tool_calls")
    if calls is not None:
        blocks += [
            _tool_use(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(as_list(calls, f"{where}.tool_calls"))
        ]
    return blocks


def _tool_use(value: Any, where: str) -> Json:
    call = as_object(value, where)
    kind = optional_str(call, "type", where)
    if kind not in (None, "function"):
        raise unsupported(f"{where}.type", f"A '{shown(kind)}' tool call")
    function = required_object(call, "function", where)
    name = required_str(function, "name", f"{where}.function")
    arguments = function.get("arguments")
    if isinstance(arguments, dict):
        tool_input: Json = arguments
    elif arguments is None or isinstance(arguments, str):
        # Truncated or non-object arguments were an error the model already read in the
        # tool result; Anthropic takes only an object, so the call is replayed with none.
        tool_input = _json_object(arguments or "")
    else:
        raise invalid_type(f"{where}.function.arguments", "a string", arguments)
    return {"type": "tool_use", "id": _tool_id(call, "id", where), "name": name, "input": tool_input}


def _json_object(text: str) -> Json:
    try:
        value = loads_exact(text.encode())
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _tool_id(obj: Json, key: str, where: str) -> str:
    """The call id in the one alphabet Anthropic accepts, mapped alike on both sides of a call."""
    value = required_str(obj, key, where)
    if not value:
        raise invalid_value(f"{where}.{key}", "must not be empty.")
    return _NOT_ID_CHARS.sub("_", value)


def _tool_result(message: Json, where: str) -> Json:
    text = _plain_text(message.get("content"), f"{where}.content")
    block: Json = {"type": "tool_result", "tool_use_id": _tool_id(message, "tool_call_id", where)}
    if text:
        block["content"] = text
    if _is_tool_failure(text):
        block["is_error"] = True
    return block


def _is_tool_failure(text: str) -> bool:
    """Exactly the executor's failure content, ``{"error": str, "type": str}``: Anthropic has a flag for it."""
    if not text.startswith("{"):
        return False
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    shape = isinstance(value, dict) and value.keys() == {"error", "type"}
    return shape and all(isinstance(v, str) for v in value.values())


# -- tools ------------------------------------------------------------------------------------


def _tools(value: Any) -> list[Json]:
    tools = []
    for i, entry in enumerate(as_list(value, "tools") if value is not None else []):
        tool = as_object(entry, f"tools[{i}]")
        kind = optional_str(tool, "type", f"tools[{i}]")
        if kind not in (None, "function"):
            raise unsupported(f"tools[{i}].type", f"A '{shown(kind)}' tool")
        function = required_object(tool, "function", f"tools[{i}]")
        at = f"tools[{i}].function"
        # ``strict`` only narrows what the model may emit; the schema itself still travels.
        optional_bool(function, "strict", at)
        schema = optional_object(function, "parameters", at)
        converted = {"name": required_str(function, "name", at)}
        description = optional_str(function, "description", at)
        if description is not None:
            converted["description"] = description
        tools.append({**converted, "input_schema": schema or {"type": "object", "properties": {}}})
    return tools


def _tool_choice(value: Any, has_tools: bool, parallel: bool | None) -> Json | None:
    choice: Json | None = None
    if isinstance(value, str):
        if value not in _TOOL_CHOICE_MODES:
            raise invalid_value("tool_choice", f"'{shown(value)}'. Supported values are: auto, none, required.")
        choice = {"type": _TOOL_CHOICE_MODES[value]}
    elif value is not None:
        kind = required_str(as_object(value, "tool_choice"), "type", "tool_choice")
        if kind != "function":
            raise unsupported("tool_choice.type", f"A '{shown(kind)}' tool_choice")
        function = required_object(value, "function", "tool_choice")
        choice = {"type": "tool", "name": required_str(function, "name", "tool_choice.function")}
    if not has_tools:
        # Without tools, "auto" and "none" both mean plain text: nothing to send.
        if choice is None or choice["type"] in ("auto", "none"):
            return None
        raise invalid_value("tool_choice", "a tool_choice that requires a tool is only allowed with 'tools'.")
    if parallel is False and (choice is None or choice["type"] != "none"):
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    return choice


# -- generation options -----------------------------------------------------------------------


def _max_tokens(body: Json, default: int) -> int:
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = optional_int(body, key)
    if value is None:
        return default
    if value < 1:
        raise invalid_value(key, f"must be at least 1; got {shown(value)}.")
    return value


def _sampling(body: Json) -> Json:
    options: Json = {}
    for key in ("temperature", "top_p"):
        value = optional_number(body, key)
        # Anthropic's range for both is 0..1 (OpenAI's temperature goes to 2): refused, not clamped.
        if value is not None and not 0 <= value <= 1:
            raise invalid_value(key, f"the {UPSTREAM} accepts 0 to 1; got {shown(value)}.")
        if value is not None:
            options[key] = value
    stop = body.get("stop")
    if stop is not None:
        sequences = [stop] if isinstance(stop, str) else as_list(stop, "stop", "a string or an array of strings")
        for j, sequence in enumerate(sequences):
            at = "stop" if isinstance(stop, str) else f"stop[{j}]"
            if not isinstance(sequence, str):
                raise invalid_type(at, "a string", sequence)
            if not sequence.strip():
                raise invalid_value(at, f"the {UPSTREAM} refuses empty or whitespace-only stop sequences.")
        if sequences:
            options["stop_sequences"] = list(sequences)
    return options


def _check_neutral_values(body: Json) -> None:
    """Fields accepted only at the value that asks for nothing Anthropic lacks."""
    if optional_int(body, "n") not in (None, 1):
        raise unsupported("n", "More than one choice ('n' other than 1)")
    for key in ("presence_penalty", "frequency_penalty"):
        if optional_number(body, key) not in (None, 0):
            raise unsupported(key, f"A non-zero '{key}'")
    if optional_bool(body, "logprobs", ""):
        raise unsupported("logprobs", "'logprobs'")
