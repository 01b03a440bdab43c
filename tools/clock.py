"""The ``current_time`` tool: the current date and time in an IANA time zone."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from gateway.tools import tool

# English names regardless of the process locale, which strftime("%A") would follow.
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _zone(name: str) -> ZoneInfo:
    key = name.strip()
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError):
        pass
    # Models often lowercase zone names ("europe/paris"); the zone database is case-sensitive.
    folded = {zone.casefold(): zone for zone in available_timezones()}
    if key.casefold() in folded:
        return ZoneInfo(folded[key.casefold()])
    raise ValueError(f"unknown time zone {name!r}; use an IANA name such as 'Europe/Paris' or 'UTC'")


def _offset(moment: dt.datetime) -> str:
    offset = moment.utcoffset() or dt.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


@tool
def current_time(timezone: str = "UTC") -> dict[str, str]:
    """Get the current date, time and weekday in a time zone.

    Args:
        timezone: IANA time zone name, e.g. "UTC", "Europe/Berlin", "America/New_York" or "Asia/Tokyo".
    """
    zone = _zone(timezone)
    now = dt.datetime.now(zone)
    return {
        "timezone": zone.key,
        "datetime": now.isoformat(timespec="seconds"),
        "date": now.date().isoformat(),
        "time": now.strftime("%H:%M:%S"),
        "weekday": _WEEKDAYS[now.weekday()],
        "utc_offset": _offset(now),
        "abbreviation": now.tzname() or "",
    }
