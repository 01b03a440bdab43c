from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from gateway.tools.registry import load_module_tools

TOOL_FILE = Path(__file__).resolve().parents[2] / "tools" / "clock.py"
(TOOL,) = load_module_tools(TOOL_FILE)
current_time = TOOL.fn


def test_reports_the_current_moment_in_a_real_zone() -> None:
    # Asia/Kolkata has had no daylight saving since 1945, so its offset is fixed.
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    result = current_time("Asia/Kolkata")
    after = dt.datetime.now(dt.UTC)

    assert result["timezone"] == "Asia/Kolkata"
    assert result["utc_offset"] == "+05:30"
    assert result["abbreviation"] == "IST"
    moment = dt.datetime.fromisoformat(result["datetime"])
    assert moment.utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert before <= moment <= after
    assert result["date"] == moment.date().isoformat()
    assert result["time"] == moment.strftime("%H:%M:%S")
    assert (
        result["weekday"]
        == ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")[moment.weekday()]
    )


def test_defaults_to_utc() -> None:
    result = current_time()
    assert result["timezone"] == "UTC"
    assert result["utc_offset"] == "+00:00"


def test_negative_offsets_are_signed() -> None:
    # America/Caracas has been UTC-4 all year since 2016.
    assert current_time("America/Caracas")["utc_offset"] == "-04:00"


def test_zone_names_are_matched_case_insensitively() -> None:
    assert current_time("europe/berlin")["timezone"] == "Europe/Berlin"


@pytest.mark.parametrize("name", ["Mars/Olympus_Mons", "../../etc/passwd", ""])
def test_unknown_zone_raises_value_error_naming_it(name: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"unknown time zone {name!r}")):
        current_time(name)


def test_schema_offered_to_the_model() -> None:
    function = TOOL.definition()["function"]
    assert function["name"] == "current_time"
    parameters = function["parameters"]
    assert parameters.get("required", []) == []
    assert parameters["properties"]["timezone"]["type"] == "string"
    assert parameters["properties"]["timezone"]["default"] == "UTC"
    assert "IANA" in parameters["properties"]["timezone"]["description"]
