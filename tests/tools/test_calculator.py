from __future__ import annotations

import math
from pathlib import Path

import pytest

from gateway.tools import InvalidArguments
from gateway.tools.registry import load_module_tools

TOOL_FILE = Path(__file__).resolve().parents[2] / "tools" / "calculator.py"
(TOOL,) = load_module_tools(TOOL_FILE)
calculate = TOOL.fn


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("7 % 4", 3),
        ("-(3 - 5)", 2),
        ("2 ** 10", 1024),
        ("2 ** -1", 0.5),
        ("1.5e3 + 1", 1501.0),
        ("0.1 + 0.2", 0.3),
    ],
)
def test_arithmetic(expression: str, expected: float) -> None:
    assert calculate(expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("sqrt(16)", 4.0),
        ("sin(pi / 2)", 1.0),
        ("cos(0)", 1.0),
        ("tan(0)", 0.0),
        ("degrees(atan(1))", 45.0),
        ("log(e)", 1.0),
        ("log(8, 2)", 3.0),
        ("log10(1000)", 3.0),
        ("exp(0)", 1.0),
        ("abs(-3)", 3),
        ("round(2.567, 2)", 2.57),
        ("round(2.5)", 2),
        ("min(3, 1, 2)", 1),
        ("max(3, 1, 2)", 3),
        ("floor(2.7)", 2),
        ("ceil(2.1)", 3),
    ],
)
def test_math_functions_and_constants(expression: str, expected: float) -> None:
    assert calculate(expression) == pytest.approx(expected)


def test_pi_is_given_to_fifteen_significant_digits() -> None:
    assert calculate("pi") == pytest.approx(math.pi, rel=1e-14)


def test_comparisons_answer_true_or_false() -> None:
    assert calculate("2 ** 10 > 1000") == "true"
    assert calculate("1 == 2") == "false"


def test_integers_beyond_64_bits_are_returned_as_exact_text() -> None:
    assert calculate("2 ** 100") == str(2**100)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1 +", "cannot parse"),
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("foo + 1", "unknown name 'foo'"),
        ("factorial(5)", "unknown function 'factorial'"),
        ("sqrt(-1)", "math domain error"),
        ("min()", "min expected at least 1 argument"),
        ("sqrt", "must be called"),
    ],
)
def test_errors_raise_value_error_with_a_readable_message(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        calculate(expression)


@pytest.mark.parametrize(
    "expression",
    ["9 ** 9 ** 9", "4000000 ** 4000000", "2 ** 4000000", "(2 ** 6000) * (2 ** 6000) * (2 ** 6000)", "10.0 ** 400"],
)
def test_huge_results_are_refused_before_they_are_computed(expression: str) -> None:
    with pytest.raises(ValueError, match="too large"):
        calculate(expression)


@pytest.mark.parametrize(
    "expression",
    [
        "(1).__class__",
        "pi.__class__.__subclasses__()",
        "sqrt.__self__",
        "(1).real",
        "(1).bit_length()",
        "__import__('os')",
        "'abc'.upper()",
        "'a' * 10",
        "[1, 2][0]",
        "f'{1}'",
        "1j",
        "lambda: 1",
        "(x := 1)",
    ],
)
def test_attributes_dunders_strings_and_other_python_are_not_available(expression: str) -> None:
    with pytest.raises(ValueError):
        calculate(expression)


@pytest.mark.parametrize("expression", ["x = 1", "1; 2", "import os"])
def test_statements_are_syntax_errors_not_warnings(expression: str) -> None:
    with pytest.raises(ValueError, match="cannot parse"):
        calculate(expression)


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(ValueError):
        calculate("-" * 499 + "1")


def test_expression_length_is_capped_by_the_schema() -> None:
    with pytest.raises(InvalidArguments, match="expression"):
        TOOL.validate({"expression": "1+" * 300 + "1"})
    assert TOOL.validate({"expression": "1+1"}) == {"expression": "1+1"}


def test_schema_offered_to_the_model() -> None:
    function = TOOL.definition()["function"]
    assert function["name"] == "calculate"
    assert function["description"].startswith("Evaluate an arithmetic expression")
    parameters = function["parameters"]
    assert parameters["required"] == ["expression"]
    assert parameters["properties"]["expression"]["type"] == "string"
    assert parameters["properties"]["expression"]["maxLength"] == 500
    assert "sqrt(2)" in parameters["properties"]["expression"]["description"]
