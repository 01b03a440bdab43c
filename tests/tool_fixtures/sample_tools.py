"""Tools the test suite offers through the gateway."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Annotated, Literal

from pydantic import Field

from gateway.tools import ToolContext, tool

# Tests observe these from the test thread.
CANCELLED = threading.Event()
STARTED = threading.Event()
RELEASE = threading.Event()
RUNS: list[str] = []
SYNC_STARTED = threading.Event()
SYNC_RELEASE = threading.Event()


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first addend.
        b: The second addend.
    """
    RUNS.append("add")
    return a + b


@tool
def get_weather(location: str, unit: Literal["celsius", "fahrenheit"] = "fahrenheit") -> dict[str, object]:
    """Get the current weather for a city.

    Args:
        location: City name, e.g. "San Francisco".
        unit: Temperature unit.
    """
    RUNS.append("get_weather")
    return {"location": location, "temperature": 21 if unit == "celsius" else 70, "unit": unit}


@tool
def fail(reason: str) -> str:
    """Always raises.

    Args:
        reason: What to complain about.
    """
    raise RuntimeError(f"tool exploded: {reason}")


@tool(timeout_s=0.2)
async def slow(seconds: Annotated[float, Field(ge=0)]) -> str:
    """Wait, then answer.

    Args:
        seconds: How long to wait.
    """
    await asyncio.sleep(seconds)
    return "done waiting"


@tool(timeout_s=30)
async def wait_for_release() -> str:
    """Block until the test releases it; records cancellation."""
    STARTED.set()
    try:
        # Released from the test thread: a threading.Event, polled.
        while not RELEASE.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    except asyncio.CancelledError:
        CANCELLED.set()
        raise
    return "released"


@tool(timeout_s=30)
def blocking_sleep(seconds: float) -> str:
    """A sync tool that blocks its thread.

    Args:
        seconds: How long to block.
    """
    time.sleep(seconds)
    return f"slept {seconds}"


@tool(timeout_s=30)
def blocking_wait() -> str:
    """A sync tool that blocks its thread until the test releases it."""
    SYNC_STARTED.set()
    SYNC_RELEASE.wait(20)
    return "released"


@tool
def whoami(context: ToolContext) -> dict[str, object]:
    """Report the request context the gateway injected."""
    return {"request_id": context.request_id, "key_name": context.key_name}


@tool
def big_output(size: int) -> str:
    """Produce a long output.

    Args:
        size: Characters to produce.
    """
    return "x" * size
