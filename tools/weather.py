"""The ``get_weather`` tool: current conditions for a place, from Open-Meteo (no API key).

Two requests: the geocoding API turns the place name into coordinates, the
forecast API returns the current conditions there.

Settings (``tools.settings.get_weather``): ``geocoding_url`` (default
https://geocoding-api.open-meteo.com), ``forecast_url`` (default
https://api.open-meteo.com), ``timeout_s`` (per request, default 10).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from gateway.tools import ToolContext, tool

# WMO weather interpretation codes, as listed in the Open-Meteo forecast API documentation.
WMO_CODES: dict[int, str] = {
    0: "clear sky",
    1: "mainly clear",
    2: "partly cloudy",
    3: "overcast",
    45: "fog",
    48: "depositing rime fog",
    51: "light drizzle",
    53: "moderate drizzle",
    55: "dense drizzle",
    56: "light freezing drizzle",
    57: "dense freezing drizzle",
    61: "slight rain",
    63: "moderate rain",
    65: "heavy rain",
    66: "light freezing rain",
    67: "heavy freezing rain",
    71: "slight snowfall",
    73: "moderate snowfall",
    75: "heavy snowfall",
    77: "snow grains",
    80: "slight rain showers",
    81: "moderate rain showers",
    82: "violent rain showers",
    85: "slight snow showers",
    86: "heavy snow showers",
    95: "thunderstorm",
    96: "thunderstorm with slight hail",
    99: "thunderstorm with heavy hail",
}
_WIND_UNIT = {"celsius": "kmh", "fahrenheit": "mph"}


class WeatherError(Exception):
    """The weather service failed or answered something unusable."""


class WeatherSettings(BaseModel):
    """``tools.settings.get_weather``."""

    model_config = ConfigDict(extra="forbid")

    geocoding_url: str = "https://geocoding-api.open-meteo.com"
    forecast_url: str = "https://api.open-meteo.com"
    timeout_s: float = Field(10.0, gt=0)


async def _get_json(client: httpx.AsyncClient, url: str, params: dict[str, Any]) -> dict[str, Any]:
    try:
        response = await client.get(url, params=params)
    except httpx.HTTPError as exc:
        raise WeatherError(f"weather service unreachable: {type(exc).__name__}: {exc}") from exc
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_error or not isinstance(body, dict):
        # Open-Meteo explains a rejected request in {"error": true, "reason": "..."}.
        reason = body.get("reason") if isinstance(body, dict) else None
        raise WeatherError(f"weather service answered HTTP {response.status_code}: {reason or 'no usable JSON'}")
    return body


def _matches(place: dict[str, Any], qualifier: str) -> bool:
    fields = ("country", "country_code", "admin1", "admin2")
    return any(str(place.get(name, "")).casefold() == qualifier for name in fields)


async def _geocode(client: httpx.AsyncClient, base_url: str, location: str) -> dict[str, Any]:
    # The geocoding API matches place names only: "Paris, France" finds nothing, so the part
    # after the comma is used to choose among the candidates for "Paris" instead.
    name, _, qualifier = (part.strip() for part in location.partition(","))
    params = {"name": name, "count": 10 if qualifier else 1, "language": "en", "format": "json"}
    found = (await _get_json(client, f"{base_url.rstrip('/')}/v1/search", params)).get("results") or []
    places = [place for place in found if isinstance(place, dict)]
    if not places:
        raise ValueError(f"no place called {location!r} was found; try a city name such as 'Paris'")
    wanted = qualifier.casefold()
    return next((place for place in places if wanted and _matches(place, wanted)), places[0])


def _place_name(place: dict[str, Any]) -> str:
    parts = [place.get("name"), place.get("admin1")]
    unique = [part for i, part in enumerate(parts) if part and part not in parts[:i]]
    return ", ".join(str(part) for part in unique)


@tool
async def get_weather(
    location: Annotated[str, Field(min_length=2, max_length=200)],
    unit: Literal["celsius", "fahrenheit"] = "fahrenheit",
    *,
    context: ToolContext,
) -> dict[str, Any]:
    """Get the current weather (temperature, humidity, wind, conditions) for a place.

    Args:
        location: Place name, e.g. "Berlin"; to disambiguate, add the country or region after a comma,
            e.g. "Paris, France".
        unit: Temperature unit; wind speed is in km/h for celsius and mph for fahrenheit.
    """
    settings = WeatherSettings.model_validate(context.settings)
    async with httpx.AsyncClient(timeout=settings.timeout_s) as client:
        place = await _geocode(client, settings.geocoding_url, location)
        params = {
            "latitude": place["latitude"],
            "longitude": place["longitude"],
            "current": "temperature_2m,relative_humidity_2m,wind_speed_10m,weather_code",
            "temperature_unit": unit,
            "wind_speed_unit": _WIND_UNIT[unit],
        }
        forecast = await _get_json(client, f"{settings.forecast_url.rstrip('/')}/v1/forecast", params)
    current = forecast.get("current")
    if not isinstance(current, dict):
        raise WeatherError("weather service returned no current conditions")
    code = current.get("weather_code")
    return {
        "location": _place_name(place),
        "country": place.get("country"),
        "temperature": current.get("temperature_2m"),
        "unit": unit,
        "humidity_percent": current.get("relative_humidity_2m"),
        "wind_speed": current.get("wind_speed_10m"),
        "wind_speed_unit": "mph" if unit == "fahrenheit" else "km/h",
        "conditions": WMO_CODES.get(code, f"unknown (WMO code {code})") if isinstance(code, int) else None,
        "observed_at_utc": current.get("time"),
    }
