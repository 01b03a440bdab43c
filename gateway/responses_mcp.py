"""The ``{"type": "mcp"}`` tools of a Responses request: which configured server, which of its tools,
which of their calls need the client's approval."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.json_fields import (
    Json,
    as_object,
    invalid_type,
    invalid_value,
    optional_bool,
    optional_object,
    optional_str,
    required_str,
    shown,
    string_list,
    unsupported_value,
)


@dataclass(frozen=True, slots=True)
class McpToolRequest:
    """One ``{"type": "mcp"}`` tool of the request: which server, which of its tools, which need approval.

    A tool named neither in ``approval_always`` nor ``approval_never`` follows ``require_approval``
    (OpenAI's default is "always").
    """

    server_label: str
    allowed_tools: tuple[str, ...] | None = None
    require_approval: Literal["always", "never"] = "always"
    approval_always: frozenset[str] = frozenset()
    approval_never: frozenset[str] = frozenset()
    # A remote server the client names itself; the caller decides whether that is allowed.
    server_url: str | None = None
    connector_id: str | None = None
    tunnel_id: str | None = None
    server_description: str | None = None
    # Credentials stay out of logs; a dict is no part of the hash.
    headers: dict[str, str] | None = field(default=None, repr=False, hash=False)
    authorization: str | None = field(default=None, repr=False)

    @property
    def names_remote_server(self) -> bool:
        return self.server_url is not None or self.connector_id is not None or self.tunnel_id is not None

    def allows(self, name: str) -> bool:
        return self.allowed_tools is None or name in self.allowed_tools

    def needs_approval(self, name: str) -> bool:
        if name in self.approval_always:
            return True
        if name in self.approval_never:
            return False
        return self.require_approval == "always"


def mcp_tool(tool: Json, where: str) -> McpToolRequest:
    """One ``{\"type\": \"mcp\"}`` entry of a request's ``tools``, validated field by field."""
    policy, always, never = _approval_policy(tool.get("require_approval"), f"{where}.require_approval")
    headers = optional_object(tool, "headers", where)
    if headers is not None:
        for name, value in headers.items():
            if not isinstance(value, str):
                raise invalid_type(f"{where}.headers.{name}", "a string", value)
    return McpToolRequest(
        server_label=required_str(tool, "server_label", where),
        allowed_tools=_allowed_tools(tool.get("allowed_tools"), f"{where}.allowed_tools"),
        require_approval=policy,
        approval_always=always,
        approval_never=never,
        server_url=optional_str(tool, "server_url", where),
        connector_id=optional_str(tool, "connector_id", where),
        tunnel_id=optional_str(tool, "tunnel_id", where),
        server_description=optional_str(tool, "server_description", where),
        headers=headers,
        authorization=optional_str(tool, "authorization", where),
    )


def _allowed_tools(value: Any, param: str) -> tuple[str, ...] | None:
    """None (every tool), or the names: given as a list or as ``{"tool_names": [...]}``."""
    if value is None or isinstance(value, list):
        return None if value is None else string_list(value, param)
    tool_filter = as_object(value, param)
    _refuse_read_only(tool_filter, param)
    names = tool_filter.get("tool_names")
    return None if names is None else string_list(names, f"{param}.tool_names")


def _approval_policy(value: Any, param: str) -> tuple[Literal["always", "never"], frozenset[str], frozenset[str]]:
    """``require_approval`` as (policy for unnamed tools, names always approved, names never approved)."""
    if value is None or value == "always":
        return "always", frozenset(), frozenset()
    if value == "never":
        return "never", frozenset(), frozenset()
    if isinstance(value, str):
        raise invalid_value(param, f"'{shown(value)}'. Supported values are: always, never, or a filter object.")
    filters = as_object(value, param)
    named: list[frozenset[str]] = []
    for key in ("always", "never"):
        tool_filter = optional_object(filters, key, param)
        names: tuple[str, ...] = ()
        if tool_filter is not None:
            _refuse_read_only(tool_filter, f"{param}.{key}")
            if tool_filter.get("tool_names") is not None:
                names = string_list(tool_filter["tool_names"], f"{param}.{key}.tool_names")
        named.append(frozenset(names))
    return "always", named[0], named[1]


def _refuse_read_only(tool_filter: Json, param: str) -> None:
    # The gateway does not read MCP tool annotations, so it cannot tell a read-only tool.
    if optional_bool(tool_filter, "read_only", param):
        raise unsupported_value(f"{param}.read_only", "filtering by read-only tools is not supported; name the tools.")
