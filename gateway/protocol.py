"""OpenAI chat-completions wire formats: the parts the gateway reads, nothing more.

The request is kept as the client's own dict so unknown fields (vLLM's
``chat_template_kwargs``, ``guided_json``...) travel upstream untouched; the
pydantic model only checks the fields the gateway relies on.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from gateway.errors import InvalidRequest
from gateway.jsoncodec import JsonDepthError, loads_exact

Json = dict[str, Any]


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str


class ToolDefinition(BaseModel):
    """A client tool; only function tools have a name the loop must respect."""

    model_config = ConfigDict(extra="allow")
    type: str = "function"
    function: FunctionDefinition | None = None


class ChatRequest(BaseModel):
    """Validates the fields the gateway reads; everything else is allowed and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[dict[str, Any]]
    stream: bool | None = False
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    stream_options: dict[str, Any] | None = None

    @field_validator("messages")
    @classmethod
    def _messages_have_roles(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not messages:
            raise ValueError("must contain at least one message")
        for i, message in enumerate(messages):
            if not isinstance(message.get("role"), str):
                raise ValueError(f"message {i} has no 'role'")
        return messages


def load_object(raw: bytes, max_model_chars: int) -> Json:
    """The body as a JSON object, exact to the last digit, its ``model`` (if a string) within the cap."""
    try:
        body = loads_exact(raw)
    except JsonDepthError as exc:
        raise InvalidRequest(f"Request body is not accepted: {exc}") from exc
    except ValueError as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    model = body.get("model")
    if isinstance(model, str) and len(model) > max_model_chars:
        # Model names key caches and logs: a long one is refused before it is kept anywhere.
        raise InvalidRequest(
            f"Invalid value for 'model': longer than {max_model_chars} characters.",
            param="model",
            code="invalid_value",
        )
    return body


def parse_model_request(raw: bytes, max_model_chars: int = 256) -> tuple[Json, str]:
    """Any JSON request routed by its ``model`` (embeddings, completions...): the dict and the model."""
    body = load_object(raw, max_model_chars)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_required_parameter")
    return body, model


def parse_chat_request(raw: bytes, max_model_chars: int = 256) -> tuple[Json, ChatRequest]:
    """Parse the body once; return the dict to forward and its validated view."""
    body = load_object(raw, max_model_chars)
    try:
        request = ChatRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"])[:200]
        raise InvalidRequest(f"Invalid value for '{param}': {first['msg'][:200]}", param=param) from exc
    return body, request


def forced_function(tool_choice: Any) -> str | None:
    """The function name a ``tool_choice`` forces, if it forces one."""
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str):
            return name
    return None


def add_usage(total: Json | None, usage: Any) -> Json | None:
    """Sum two OpenAI usage objects (nested ``*_details`` counters included)."""
    if not isinstance(usage, dict):
        return total
    if total is None:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in usage.items()}
    for key, value in usage.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            current = total.get(key)
            total[key] = (current if isinstance(current, int | float) else 0) + value
        elif isinstance(value, dict):
            nested = total.setdefault(key, {})
            if isinstance(nested, dict):
                for k, v in value.items():
                    if isinstance(v, int | float) and not isinstance(v, bool):
                        nested[k] = (nested.get(k) or 0) + v
    return total


def chunk_usage(chunk: Json) -> Any:
    """Usage wherever a server put it on a stream chunk (Groq nests it under ``x_groq``)."""
    usage = chunk.get("usage")
    if usage is None:
        extension = chunk.get("x_groq")
        if isinstance(extension, dict):
            usage = extension.get("usage")
    return usage


def first_choice(body: Json) -> Json | None:
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None


def reasoning_text(message: Json) -> str | None:
    """A message's or delta's reasoning text: vLLM, llama.cpp and DeepSeek name it ``reasoning_content``;
    OpenRouter and newer vLLM ``reasoning``."""
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    return reasoning if isinstance(reasoning, str) else None
