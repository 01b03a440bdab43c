from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fake_remote import LoopbackServer, Received, Reply

from gateway.tools import ToolContext
from gateway.tools.registry import load_module_tools

TOOL_FILE = Path(__file__).resolve().parents[2] / "tools" / "weather.py"
(TOOL,) = load_module_tools(TOOL_FILE)
get_weather = TOOL.fn
WeatherError: type[Exception] = sys.modules[get_weather.__module__].WeatherError

BERLIN = {"name": "Berlin", "latitude": 52.52437, "longitude": 13.41053, "country": "Germany", "admin1": "Land Berlin"}
PARIS_TEXAS = {"name": "Paris", "latitude": 33.66, "longitude": -95.55, "country": "United States", "admin1": "Texas"}
PARIS = {"name": "Paris", "latitude": 48.85, "longitude": 2.35, "country": "France", "admin1": "Île-de-France"}


def as_json(body: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(body).encode(), {"Content-Type": "application/json; charset=utf-8"})


def geocoding(*places: dict[str, Any]) -> Any:
    def reply(request: Received) -> Reply:
        # Like Open-Meteo: no "results" key at all when nothing matches.
        found = [p for p in places if p["name"].casefold() == request.query["name"].casefold()]
        found = found[: int(request.query["count"])]
        return as_json({"results": found, "generationtime_ms": 0.5} if found else {"generationtime_ms": 0.5})

    return reply


def forecast(request: Received) -> Reply:
    fahrenheit = request.query["temperature_unit"] == "fahrenheit"
    return as_json(
        {
            "latitude": float(request.query["latitude"]),
            "longitude": float(request.query["longitude"]),
            "current_units": {"temperature_2m": "°F" if fahrenheit else "°C"},
            "current": {
                "time": "2025-03-01T12:00",
                "interval": 900,
                "temperature_2m": 41.2 if fahrenheit else 5.1,
                "relative_humidity_2m": 81,
                "wind_speed_10m": 7.6 if fahrenheit else 12.3,
                "weather_code": 3,
            },
        }
    )


@pytest.fixture
def open_meteo(remote: LoopbackServer) -> LoopbackServer:
    remote.routes["/v1/search"] = geocoding(BERLIN, PARIS_TEXAS, PARIS)
    remote.routes["/v1/forecast"] = forecast
    return remote


def weather(server: LoopbackServer, location: str, *unit: str) -> dict[str, Any]:
    settings = {"geocoding_url": server.url, "forecast_url": server.url + "/"}
    context = ToolContext(request_id="t", key_name=None, deadline=time.monotonic() + 30, settings=settings)
    result: dict[str, Any] = asyncio.run(get_weather(location, *unit, context=context))
    return result


def test_current_weather_in_celsius(open_meteo: LoopbackServer) -> None:
    result = weather(open_meteo, "Berlin", "celsius")
    assert result == {
        "location": "Berlin, Land Berlin",
        "country": "Germany",
        "temperature": 5.1,
        "unit": "celsius",
        "humidity_percent": 81,
        "wind_speed": 12.3,
        "wind_speed_unit": "km/h",
        "conditions": "overcast",
        "observed_at_utc": "2025-03-01T12:00",
    }
    search, current = open_meteo.received
    assert search.path == "/v1/search"
    assert search.query == {"name": "Berlin", "count": "1", "language": "en", "format": "json"}
    assert current.path == "/v1/forecast"
    assert current.query == {
        "latitude": "52.52437",
        "longitude": "13.41053",
        "current": "temperature_2m,relative_humidity_2m,wind_speed_10m,weather_code",
        "temperature_unit": "celsius",
        "wind_speed_unit": "kmh",
    }


def test_unit_defaults_to_fahrenheit_and_is_passed_through(open_meteo: LoopbackServer) -> None:
    result = weather(open_meteo, "Berlin")
    assert (result["unit"], result["temperature"]) == ("fahrenheit", 41.2)
    assert (result["wind_speed"], result["wind_speed_unit"]) == (7.6, "mph")
    assert open_meteo.received[-1].query["temperature_unit"] == "fahrenheit"
    assert open_meteo.received[-1].query["wind_speed_unit"] == "mph"


def test_country_after_a_comma_picks_among_candidates(open_meteo: LoopbackServer) -> None:
    result = weather(open_meteo, "Paris, France", "celsius")
    assert (result["location"], result["country"]) == ("Paris, Île-de-France", "France")
    assert open_meteo.received[0].query["name"] == "Paris"
    assert open_meteo.received[0].query["count"] == "10"
    assert open_meteo.received[1].query["latitude"] == "48.85"


def test_unknown_location_raises_value_error(open_meteo: LoopbackServer) -> None:
    with pytest.raises(ValueError, match="no place called 'Atlantis' was found"):
        weather(open_meteo, "Atlantis")
    assert [r.path for r in open_meteo.received] == ["/v1/search"]


def test_service_error_reason_is_reported(open_meteo: LoopbackServer) -> None:
    open_meteo.routes["/v1/forecast"] = lambda _: as_json({"error": True, "reason": "Latitude out of range"}, 400)
    with pytest.raises(WeatherError, match="HTTP 400: Latitude out of range"):
        weather(open_meteo, "Berlin")


def test_unknown_weather_code_is_named(open_meteo: LoopbackServer) -> None:
    def odd_code(request: Received) -> Reply:
        return as_json({"current": {"temperature_2m": 1.0, "weather_code": 42}})

    open_meteo.routes["/v1/forecast"] = odd_code
    assert weather(open_meteo, "Berlin")["conditions"] == "unknown (WMO code 42)"


def test_schema_offered_to_the_model() -> None:
    function = TOOL.definition()["function"]
    assert function["name"] == "get_weather"
    parameters = function["parameters"]
    assert parameters["required"] == ["location"]
    assert list(parameters["properties"]) == ["location", "unit"]
    assert parameters["properties"]["unit"]["enum"] == ["celsius", "fahrenheit"]
    assert parameters["properties"]["unit"]["default"] == "fahrenheit"
    assert "Paris, France" in parameters["properties"]["location"]["description"]
    assert "context" not in str(parameters)
