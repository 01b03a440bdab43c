"""The ``calculate`` tool: arithmetic for the model, evaluated without ``eval``.

Expressions go through simpleeval with only numbers, operators and a fixed set of
math functions: no attributes, no subscripts, no strings. simpleeval's own limits
on ``**`` and shifts stay in force; integer results are additionally capped in
size, because the tool runs on a shared thread that a timeout cannot stop.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field
from simpleeval import (  # type: ignore[import-untyped]
    DEFAULT_OPERATORS,
    FeatureNotAvailable,
    FunctionNotDefined,
    InvalidExpression,
    NameNotDefined,
    NumberTooHigh,
    SimpleEval,
    safe_mult,
    safe_power,
)

from gateway.tools import tool

MAX_EXPRESSION_CHARS = 500
# Below the interpreter's 4300-digit limit on int -> str, so every result can be shown.
MAX_INT_BITS = 12_000
# Integers beyond 64 bits do not survive JSON encoders such as orjson; they are returned as text.
_JSON_INT_LIMIT = 2**63

_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "radians": math.radians,
    "degrees": math.degrees,
    "log": math.log,
    "log10": math.log10,
    "exp": math.exp,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "floor": math.floor,
    "ceil": math.ceil,
}
_NAMES: dict[str, Any] = {"pi": math.pi, "e": math.e}


def _bits(value: Any) -> int:
    return abs(value).bit_length() if isinstance(value, int) else 0


def _power(base: Any, exponent: Any) -> Any:
    # safe_power bounds the operands (4e6 each), not the result: 4000000 ** 4000000 passes it.
    if isinstance(exponent, int) and exponent > 0 and _bits(base) > 1 and exponent * _bits(base) > MAX_INT_BITS:
        raise NumberTooHigh(f"the power would have more than {MAX_INT_BITS} bits")
    return safe_power(base, exponent)


def _multiply(left: Any, right: Any) -> Any:
    if _bits(left) + _bits(right) > MAX_INT_BITS:
        raise NumberTooHigh(f"the product would have more than {MAX_INT_BITS} bits")
    return safe_mult(left, right)


class _Calculator(SimpleEval):  # type: ignore[misc]
    """simpleeval restricted to numbers: a calculator needs no attributes, indexing or strings."""

    def __init__(self) -> None:
        operators = {**DEFAULT_OPERATORS, ast.Pow: _power, ast.Mult: _multiply}
        super().__init__(operators=operators, functions=dict(_FUNCTIONS), names=dict(_NAMES))
        for node in (ast.Attribute, ast.Subscript, ast.Slice, ast.JoinedStr, ast.FormattedValue):
            self.nodes.pop(node, None)

    @staticmethod
    def _eval_constant(node: ast.Constant) -> Any:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FeatureNotAvailable(f"only numbers are allowed, not {value!r}")
        return value


def _explain(exc: BaseException) -> str:
    """A message the model can act on, without simpleeval's apologetic phrasing."""
    if isinstance(exc, NameNotDefined):
        return f"unknown name {exc.name!r}; known names are {', '.join(sorted(_NAMES))}"
    if isinstance(exc, FunctionNotDefined):
        return f"unknown function {exc.func_name!r}; available: {', '.join(sorted(_FUNCTIONS))}"
    if isinstance(exc, ZeroDivisionError):
        return "division by zero"
    if isinstance(exc, OverflowError | NumberTooHigh):
        return f"result too large ({exc})"
    if isinstance(exc, RecursionError):
        return "expression is nested too deeply"
    if isinstance(exc, FeatureNotAvailable):
        return str(exc).replace("Sorry, ", "")
    return str(exc)


def _as_result(value: Any) -> str | int | float:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return value if abs(value) < _JSON_INT_LIMIT else str(value)
    if isinstance(value, float):
        # 15 significant digits hide binary noise such as 0.1 + 0.2 = 0.30000000000000004.
        return float(f"{value:.15g}") if math.isfinite(value) else str(value)
    if callable(value):
        raise ValueError("a function must be called with arguments, e.g. sqrt(2)")
    return str(value)


@tool
def calculate(expression: Annotated[str, Field(min_length=1, max_length=MAX_EXPRESSION_CHARS)]) -> str | int | float:
    """Evaluate an arithmetic expression and return the exact numeric result.

    Use this instead of doing arithmetic in your head. Supports + - * / // % **,
    comparisons, parentheses, the constants pi and e, and the functions sqrt, sin,
    cos, tan, asin, acos, atan, radians, degrees, log, log10, exp, abs, round, min,
    max, floor and ceil. Angles are in radians.

    Args:
        expression: A single arithmetic expression in Python syntax, e.g. "sqrt(2) * (3 + 4) ** 2" or "log(8, 2)".
    """
    try:
        parsed = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"cannot parse {expression!r}: {exc.msg}") from exc
    try:
        value = _Calculator().eval(expression, previously_parsed=parsed.body)
    except (InvalidExpression, ArithmeticError, ValueError, TypeError, RecursionError) as exc:
        raise ValueError(f"cannot evaluate {expression!r}: {_explain(exc)}") from exc
    return _as_result(value)
