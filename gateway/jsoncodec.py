"""JSON in and out of the gateway: orjson on the hot path, exact answers at its edges.

orjson reads integers beyond 64 bits as floats and writes at most 254 levels of
nesting. A request must never be changed on its way upstream, so a body that may
hold such an integer is parsed by the standard library instead (exact ints), and
encoding falls back to it for whatever orjson refuses. Nesting deeper than
``MAX_DEPTH`` is refused up front: no real request needs it and it costs recursion.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

MAX_DEPTH = 128

# orjson keeps integers in [-2**63, 2**64 - 1] exact and rounds the rest to floats.
# Anything outside is written with 20 digits, or with 19 after a minus sign; a body
# holding such a run (in a string, say) merely takes the exact path.
_LONG_DIGITS = re.compile(rb"-[0-9]{19}|[0-9]{20}")


class JsonDepthError(ValueError):
    """The document nests deeper than ``MAX_DEPTH``."""


class JsonEncodeError(ValueError):
    """Neither encoder could write the value (nested beyond what either handles)."""


def loads_exact(raw: bytes) -> Any:
    """Parse client JSON without losing integer precision; raises ValueError on bad input.

    ``orjson.JSONDecodeError`` and ``json.JSONDecodeError`` are both ValueErrors,
    as is ``JsonDepthError``.
    """
    if _LONG_DIGITS.search(raw) is None:
        value = orjson.loads(raw)
    else:
        try:
            # Exact integers of any size; the same refusals as orjson for the rest.
            value = json.loads(raw, parse_float=_finite_float, parse_constant=_refuse_constant)
        except RecursionError as exc:
            raise JsonDepthError(f"JSON nests deeper than {MAX_DEPTH} levels.") from exc
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        check_depth(value, MAX_DEPTH)
    return value


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"number {text[:40]} is out of range")
    return number


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def check_depth(value: Any, limit: int) -> None:
    """Raise JsonDepthError when ``value`` nests more than ``limit`` containers deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            raise JsonDepthError(f"JSON nests deeper than {limit} levels.")
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def dumps(value: Any) -> bytes:
    """Encode compactly; exact for integers of any size. Raises JsonEncodeError."""
    try:
        return orjson.dumps(value)
    except TypeError:
        pass
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise JsonEncodeError(f"value cannot be encoded as JSON: {exc}") from exc
