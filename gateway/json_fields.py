"""Reading a client's JSON field by field: each surprise is a 400 naming the field, like ``input[3].content[0].text``.

Shared by the request parsers that take hostile JSON apart (the Responses API's,
the Anthropic upstream's translation): the same words, ``param`` and ``code`` for
the same mistake, wherever it is made.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequest

Json = dict[str, Any]


def field_path(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def shown(value: Any) -> str:
    """A client value quoted in an error message, cut short: clients send megabytes."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _cut(param: str) -> str:
    # Keys are client text too; a param is a label, not a copy of the request.
    return param[:200]


def invalid_type(param: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{_cut(param)}': expected {expected}, but got {_json_kind(value)} instead.",
        param=_cut(param),
        code="invalid_type",
    )


def missing_parameter(param: str) -> InvalidRequest:
    return InvalidRequest(
        f"Missing required parameter: '{_cut(param)}'.", param=_cut(param), code="missing_required_parameter"
    )


def invalid_value(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{_cut(param)}': {why}", param=_cut(param), code="invalid_value")


def unsupported_value(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"Unsupported value for '{_cut(param)}': {why}", param=_cut(param), code="unsupported_value")


def as_object(value: Any, param: str) -> Json:
    if not isinstance(value, dict):
        raise invalid_type(param, "an object", value)
    return value


def as_list(value: Any, param: str, expected: str = "an array") -> list[Any]:
    if not isinstance(value, list):
        raise invalid_type(param, expected, value)
    return value


def required_str(obj: Json, key: str, where: str) -> str:
    value = obj.get(key)
    if value is None:
        raise missing_parameter(field_path(where, key))
    if not isinstance(value, str):
        raise invalid_type(field_path(where, key), "a string", value)
    return value


def optional_str(obj: Json, key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise invalid_type(field_path(where, key), "a string", value)
    return value


def optional_bool(obj: Json, key: str, where: str) -> bool | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, bool):
        raise invalid_type(field_path(where, key), "a boolean", value)
    return value


def optional_object(obj: Json, key: str, where: str) -> Json | None:
    value = obj.get(key)
    return None if value is None else as_object(value, field_path(where, key))


def string_list(value: Any, param: str) -> tuple[str, ...]:
    names = as_list(value, param, "an array of strings")
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise invalid_type(f"{param}[{i}]", "a string", name)
    return tuple(names)


def required_object(obj: Json, key: str, where: str) -> Json:
    value = optional_object(obj, key, where)
    if value is None:
        raise missing_parameter(field_path(where, key))
    return value


def optional_int(obj: Json, key: str) -> int | None:
    """A top-level integer, or None; a boolean is not one."""
    value = obj.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise invalid_type(key, "an integer", value)
    return value


def optional_number(obj: Json, key: str) -> int | float | None:
    """A top-level number, or None; a boolean is not one."""
    value = obj.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise invalid_type(key, "a number", value)
    return value
