"""Server-side tools: declare one with ``@tool`` on a typed function."""

from gateway.tools.base import InvalidArguments, Tool, ToolContext, ToolFailed
from gateway.tools.function import FunctionTool, tool

__all__ = ["FunctionTool", "InvalidArguments", "Tool", "ToolContext", "ToolFailed", "tool"]
