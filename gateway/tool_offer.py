"""Which of the gateway's tools one request is offered, and which of their calls wait for the client's approval.

Chat completions offers every tool the key may use. Other client protocols narrow
that per request (the Responses API's ``mcp`` tool entries with ``allowed_tools``)
and gate calls behind an approval (``require_approval``); they say so with
``LoopOptions``, so the loop stays one loop whatever protocol drives it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.deltas import ToolCall
from gateway.errors import InvalidRequest
from gateway.policy import KeyPolicy
from gateway.protocol import forced_function
from gateway.tools.registry import ToolRegistry

if TYPE_CHECKING:
    from gateway.tool_selection import Selection, ToolSelector


@dataclass(frozen=True, slots=True)
class LoopOptions:
    """What a client protocol asks of the loop beyond chat completions' defaults."""

    assemble_calls: bool = False
    """State the client's tool calls as events even when no server tools are offered
    (a protocol that renders calls as items of its own cannot relay the upstream's deltas)."""
    offers: Callable[[str], bool] | None = None
    """Narrows the server tools offered, by name, beyond what the key may use."""
    needs_approval: Callable[[str], bool] | None = None
    """A server tool whose calls stop the loop until the client approves them."""
    approved: tuple[ToolCall, ...] = ()
    """Server calls the client approved: run before the first upstream round, their results added to the history."""
    max_tool_calls: int | None = None
    """The client's own cap on server tool calls, below the gateway's."""


DEFAULT_OPTIONS = LoopOptions()


def offered_tools(
    registry: ToolRegistry,
    policy: KeyPolicy,
    options: LoopOptions,
    body: dict[str, Any],
    client_tools: set[str],
    selector: ToolSelector | None = None,
) -> tuple[dict[str, dict[str, Any]], Selection | None]:
    """The server tools' definitions by name, for one request, and how they were selected;
    raises InvalidRequest when they cannot be offered."""
    allowed = policy.allows_tool
    narrowed = options.offers
    offered = {
        d["function"]["name"]: d
        for d in registry.definitions()
        if allowed(d["function"]["name"]) and (narrowed is None or narrowed(d["function"]["name"]))
    }
    clash = sorted(client_tools & offered.keys())
    if clash:
        raise InvalidRequest(
            f"Client tool name(s) {', '.join(clash)} clash with the gateway's server tools; rename them.",
            param="tools",
            code="tool_name_conflict",
        )
    choices = body.get("n")
    if offered and isinstance(choices, int) and not isinstance(choices, bool) and choices > 1:
        # Each choice would need its own tool loop; merging them would run garbage.
        raise InvalidRequest(
            "'n' greater than 1 is not supported when the gateway's server tools are offered; "
            "send n=1, or tool_choice 'none' to go without server tools.",
            param="n",
            code="unsupported_value",
        )
    selection = None
    if selector is not None and offered:
        messages = body.get("messages")
        forced = forced_function(body.get("tool_choice"))
        selection = selector.select(offered, messages if isinstance(messages, list) else [], forced)
        if len(selection.names) < len(offered):
            offered = {name: offered[name] for name in selection.names}
    return offered, selection


def with_results_after_calls(messages: list[dict[str, Any]], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The history with each tool result placed after the assistant message holding its call (and the
    results already there): chat templates refuse a result that does not follow its call. A result
    whose call is not in the history goes at the end."""
    out = list(messages)
    for result in results:
        call_id = result.get("tool_call_id")
        position = len(out)
        for index in range(len(out) - 1, -1, -1):
            calls = out[index].get("tool_calls") if out[index].get("role") == "assistant" else None
            if isinstance(calls, list) and any(isinstance(c, dict) and c.get("id") == call_id for c in calls):
                position = index + 1
                while position < len(out) and out[position].get("role") == "tool":
                    position += 1
                break
        out.insert(position, result)
    return out
