"""What every server-side tool is, whatever its source (a Python function, an MCP server).

A tool validates untrusted arguments before anything runs and raises
``InvalidArguments`` with a message the model can act on.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


class InvalidArguments(Exception):
    """The model's arguments do not fit the tool's schema; the message says which field and why."""


class ToolFailed(Exception):
    """A tool ran and reported failure in a form meant for the model (e.g. an MCP ``is_error`` result)."""


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Facts about the request a tool runs for. Declare a parameter of this type to receive it."""

    request_id: str
    key_name: str | None
    deadline: float
    settings: dict[str, Any] = field(default_factory=dict)

    def remaining_s(self) -> float:
        """Seconds left before the request's deadline (``time.monotonic`` based)."""
        return max(0.0, self.deadline - time.monotonic())


class Tool(ABC):
    """A server-side tool as the loop sees it."""

    name: str
    description: str
    parameters: dict[str, Any]
    timeout_s: float | None
    source: str

    @property
    def available(self) -> bool:
        """Whether it can run now; an unavailable tool is not offered (an MCP server's, while it is down)."""
        return True

    def definition(self) -> dict[str, Any]:
        """The OpenAI ``tools[]`` entry offered to the model."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    @abstractmethod
    def validate(self, arguments: dict[str, Any]) -> Any:
        """Check the arguments; return what ``invoke`` takes, or raise InvalidArguments."""

    @abstractmethod
    async def invoke(self, validated: Any, context: ToolContext) -> Any:
        """Run the tool on validated arguments; any exception becomes an error for the model."""
