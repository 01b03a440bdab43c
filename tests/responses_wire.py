"""The Responses API as the wire carries it, checked against the official SDK's own pydantic types.

``strict_response`` and ``strict_event`` validate raw JSON (never the SDK's lenient ``construct``)
in pydantic's strict mode, and refuse fields the SDK does not declare, so a misnamed field fails
as surely as a missing one. ``create`` and ``stream`` drive the gateway with the official client
and hand back the validated objects; ``stream`` also checks the event stream's frame: sequence
numbers, output indexes, item ids, and that each item's deltas add up to the item it ends with.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import openai
import orjson
import pydantic
from openai.types.responses import Response, ResponseItemList, ResponseStreamEvent


def _event_classes() -> dict[str, type[pydantic.BaseModel]]:
    """Each streamed event's SDK class by its ``type``: the union's own members, so errors name one class."""
    (union,) = typing.get_args(ResponseStreamEvent)[:1]
    classes = {}
    for member in typing.get_args(union):
        (kind,) = typing.get_args(member.model_fields["type"].annotation)
        classes[kind] = member
    return classes


_EVENTS = _event_classes()

# Fields OpenAI's own response objects carry that the SDK's models do not declare.
_UNDECLARED_BUT_OPENAI = frozenset({"store"})
TERMINAL = ("response.completed", "response.incomplete", "response.failed")


def _undeclared(value: Any, path: str) -> list[str]:
    if isinstance(value, pydantic.BaseModel):
        found = [f"{path}.{key}" for key in value.__pydantic_extra__ or {} if key not in _UNDECLARED_BUT_OPENAI]
        for name in type(value).model_fields:
            found += _undeclared(getattr(value, name), f"{path}.{name}")
        return found
    if isinstance(value, list | tuple):
        return [p for i, item in enumerate(value) for p in _undeclared(item, f"{path}[{i}]")]
    return []


def strict_response(body: Any) -> Response:
    """A response object as the SDK's ``Response`` type, validated strictly."""
    response = Response.model_validate(body, strict=True)
    undeclared = _undeclared(response, "response")
    assert not undeclared, f"fields the SDK does not know: {undeclared}"
    return response


def strict_event(event: Any) -> ResponseStreamEvent:
    """One streamed event as the SDK's ``ResponseStreamEvent`` union, validated strictly."""
    assert event.get("type") in _EVENTS, f"not an event type of the SDK: {event.get('type')!r}"
    parsed: ResponseStreamEvent = _EVENTS[event["type"]].model_validate(event, strict=True)  # type: ignore[assignment]
    undeclared = _undeclared(parsed, event.get("type", "event"))
    assert not undeclared, f"fields the SDK does not know: {undeclared}"
    return parsed


def create(client: openai.OpenAI, **params: Any) -> Response:
    """``client.responses.create`` (not streamed); the raw JSON validated strictly."""
    raw = client.responses.with_raw_response.create(**params)
    response = strict_response(raw.http_response.json())
    assert raw.parse().id == response.id
    return response


def input_items(client: openai.OpenAI, response_id: str, **params: Any) -> ResponseItemList:
    """``client.responses.input_items.list``; the raw page validated strictly."""
    raw = client.responses.input_items.with_raw_response.list(response_id, **params)
    page = ResponseItemList.model_validate(raw.http_response.json(), strict=True)
    undeclared = _undeclared(page, "list")
    assert not undeclared, f"fields the SDK does not know: {undeclared}"
    return page


def sse_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON of each SSE event, checking that its ``event:`` name is its ``type``."""
    name: str | None = None
    data: list[str] = []
    for line in lines:
        if line.startswith(":"):
            continue
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line.strip() and data:
            event = orjson.loads("\n".join(data))
            assert name == event["type"], f"event name {name!r} for an event of type {event['type']!r}"
            yield event
            name, data = None, []
    assert not data, "the stream ended inside an event"


@dataclass
class Streamed:
    events: list[dict[str, Any]]  # as received
    parsed: list[ResponseStreamEvent]

    @property
    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    @property
    def final(self) -> Response:
        """The response of the terminal event."""
        return strict_response(self.events[-1]["response"])

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def deltas(self, kind: str = "response.output_text.delta") -> list[str]:
        return [e["delta"] for e in self.of(kind)]


def stream(client: openai.OpenAI, on_event: Callable[[dict[str, Any]], None] | None = None, **params: Any) -> Streamed:
    """Stream a response with the official client, reading its raw events as they arrive.

    Each event is validated strictly and handed to ``on_event`` as soon as it is read;
    the whole stream's frame is checked at its end."""
    events: list[dict[str, Any]] = []
    parsed: list[ResponseStreamEvent] = []
    with client.responses.with_streaming_response.create(stream=True, **params) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        for event in sse_events(raw.iter_lines()):
            parsed.append(strict_event(event))
            events.append(event)
            if on_event is not None:
                on_event(event)
    check_frame(events)
    return Streamed(events, parsed)


def check_frame(events: list[dict[str, Any]]) -> None:
    """What every Responses event stream must satisfy, whatever it says."""
    types = [e["type"] for e in events]
    assert [e["sequence_number"] for e in events] == list(range(len(events))), "sequence numbers"
    assert types[:2] == ["response.created", "response.in_progress"], types[:2]
    assert types[-1] in TERMINAL and sum(t in TERMINAL for t in types) == 1, types
    ids: list[str] = []  # item id by output index, in order of response.output_item.added
    done: dict[int, dict[str, Any]] = {}
    texts: dict[tuple[int, int, str], list[str]] = {}  # (output index, content index, kind) → deltas
    for event in events[2:]:
        kind = event["type"]
        if "response" in event:
            assert event["response"]["id"] == events[0]["response"]["id"]
        if kind == "response.output_item.added":
            assert event["output_index"] == len(ids), f"item added at {event['output_index']}, expected {len(ids)}"
            assert event["item"]["id"] not in ids
            ids.append(event["item"]["id"])
            continue
        if "output_index" not in event:
            continue
        index = event["output_index"]
        assert index < len(ids), f"{kind} for output index {index} before it was added"
        assert index not in done, f"{kind} for output index {index} after its item was done"
        if "item_id" in event:
            assert event["item_id"] == ids[index], f"{kind}: item_id does not match output index {index}"
        if kind == "response.output_item.done":
            assert event["item"]["id"] == ids[index]
            done[index] = event["item"]
        elif kind.endswith(".delta") and isinstance(event.get("delta"), str):
            texts.setdefault((index, event.get("content_index", 0), kind[: -len(".delta")]), []).append(event["delta"])
        elif kind.endswith(".done"):
            whole = event.get("text", event.get("arguments"))
            sent = "".join(texts.pop((index, event.get("content_index", 0), kind[: -len(".done")]), []))
            if isinstance(whole, str):
                assert whole == sent, f"{kind}: {whole!r} is not the sum of its deltas {sent!r}"
    assert not texts, f"deltas never closed by a .done event: {sorted(texts)}"
    final = events[-1]["response"]
    assert [item["id"] for item in final["output"]] == ids, "the final output is not the items added"
    assert sorted(done) == list(range(len(ids))), "an item was added and never done"
    assert [done[i] for i in range(len(ids))] == final["output"], "the final output is not the items done"
