"""The benchmark's server tool: instant, so a tool round measures the gateway, not the tool."""

from __future__ import annotations

from gateway.tools import tool


@tool
def bench_echo(text: str) -> str:
    """Echo the text back.

    Args:
        text: Any text.
    """
    return text
