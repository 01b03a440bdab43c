"""What the tool loop tells its caller, in no client's wire format.

The loop yields these; each client protocol renders them (``gateway.chat_render``
for chat completions). A few events carry the upstream's own payload beside the
neutral fields (``AnswerDelta.upstream``, ``Completion.upstream_body``): opaque
to the loop, they let a renderer whose format is the upstream's relay it
unchanged, byte for byte, instead of rebuilding it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.deltas import ToolCall
    from gateway.sse import SSEData
    from gateway.tool_selection import Selection
    from gateway.tools.executor import ToolOutcome


@dataclass(slots=True)
class AnswerStarted:
    """A round's upstream began to stream: its response id, creation time and model, as it sent them."""

    response_id: Any
    created: Any
    model: Any


@dataclass(slots=True)
class AnswerDelta:
    """One streamed piece of the answer: answer text, reasoning text, or neither (a role, a finish).

    ``after_tool_call`` says tool calls had begun in this round when it arrived;
    ``upstream`` is the payload it came in, for renderers that relay it.
    """

    text: str | None
    reasoning: str | None
    after_tool_call: bool
    upstream: SSEData


@dataclass(slots=True)
class DeltaBatch:
    """Deltas from one read of the upstream stream: what arrived together goes out in one write."""

    deltas: list[AnswerDelta]


@dataclass(slots=True)
class ClientToolCallStarted:
    """A call to one of the client's own tools begins; ``index`` counts the answer's client calls."""

    index: int
    call_id: str
    name: str


@dataclass(slots=True)
class ClientToolCallArguments:
    """More of a client tool call's arguments (a JSON string, in pieces)."""

    index: int
    delta: str


@dataclass(slots=True)
class ClientToolCallDone:
    """A client tool call is whole."""

    index: int
    call: ToolCall


@dataclass(slots=True)
class ServerToolStarted:
    """The gateway starts one of its own tools."""

    call: ToolCall

    @property
    def call_id(self) -> str:
        return self.call.id

    @property
    def name(self) -> str:
        return self.call.name

    @property
    def arguments(self) -> str:
        return self.call.arguments


@dataclass(slots=True)
class ServerToolFinished:
    """One of the gateway's tools finished: its result (``outcome.content``) goes back to the model."""

    outcome: ToolOutcome

    @property
    def call_id(self) -> str:
        return self.outcome.call.id

    @property
    def name(self) -> str:
        return self.outcome.call.name

    @property
    def is_error(self) -> bool:
        return self.outcome.error is not None


@dataclass(slots=True)
class RoundFinished:
    """One upstream round answered: its finish reason, its usage, the model that answered.

    A round not streamed also states its answer text and reasoning text here (a streamed
    round sent them as ``AnswerDelta``s already).
    """

    finish_reason: str | None
    usage: Any
    model: Any
    text: str | None = None
    reasoning: str | None = None


@dataclass(slots=True)
class LoopStats:
    """What the loop did, for response headers, logs and metrics."""

    rounds: int = 0
    max_rounds_reached: bool = False
    usage: dict[str, Any] | None = None
    upstream: str | None = None
    upstream_wait_s: float = 0.0
    tool_wait_s: float = 0.0
    tools_called: list[str] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)
    offered: Selection | None = None  # which server tools were offered, and their scores (tools.selection)


@dataclass(slots=True)
class Completion:
    """The answer is complete.

    ``calls_withheld`` says the loop held back the upstream's tool calls and finish
    reason (it offered server tools): the renderer states ``client_calls`` and
    ``finish_reason`` itself. Otherwise both went to the client as the upstream
    sent them, and ``client_calls`` lists them only when the client protocol asked
    the loop to assemble them. ``upstream_body`` is the last round's answer as
    received, when not streamed. ``approvals``: server tool calls not run, waiting
    for the client to approve them.
    """

    finish_reason: str | None
    usage: dict[str, Any] | None
    stats: LoopStats
    client_calls: list[ToolCall]
    calls_withheld: bool
    upstream_body: dict[str, Any] | None = None
    approvals: list[ToolCall] = field(default_factory=list)


Event = (
    AnswerStarted
    | AnswerDelta
    | DeltaBatch
    | ClientToolCallStarted
    | ClientToolCallArguments
    | ClientToolCallDone
    | ServerToolStarted
    | ServerToolFinished
    | RoundFinished
    | Completion
)
