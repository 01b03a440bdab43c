"""Serving the Responses API: ``POST /v1/responses`` over the same tool loop as chat completions.

The request becomes a chat-completions request (``gateway.responses_request``),
earlier turns come from the response store (``previous_response_id``), the loop
runs as for chat, and its events are rendered as a ``response`` object or its
event stream (``gateway.responses_render``). Stored responses are scoped by API
key: another key's id is answered 404, as an unknown one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.chat import (
    CLIENT_CLOSED,
    ChatService,
    admit,
    begin,
    caller_and_body,
    settle_failure,
    unless_client_leaves,
)
from gateway.deltas import ToolCall
from gateway.errors import GatewayError, InvalidRequest, json_response
from gateway.event_stream import EventStreamResponse
from gateway.loop import ToolLoop
from gateway.loop_events import Completion, Event, LoopStats
from gateway.policy import OPEN_POLICY, KeyPolicy
from gateway.request_record import RequestRecord
from gateway.response_store import ResponseStore, StoredResponse
from gateway.responses_items import new_item_id
from gateway.responses_render import ResponseRenderer
from gateway.responses_request import McpToolRequest, ResponsesRequest, items_to_messages, parse_responses_request
from gateway.tool_offer import LoopOptions
from gateway.tool_selection import TOOLS_HEADER, header_filter
from gateway.tools.executor import error_content
from gateway.tools.registry import ToolRegistry

RESPONSES_PATH = "/v1/responses"
PYTHON_TOOLS_LABEL = "gateway"
"""The ``server_label`` of the gateway's own Python tools in ``mcp_call`` items."""
DECLINED = error_content("The user declined to run this tool.", "declined")


@dataclass(frozen=True, slots=True)
class ResponsesService:
    chat: ChatService
    store: ResponseStore
    mcp_urls: dict[str, str | None]
    """Configured MCP servers by name, with their URL (None for a stdio server)."""

    @property
    def registry(self) -> ToolRegistry:
        return self.chat.services.registry

    def label(self, function_name: str) -> tuple[str, str]:
        """A server tool's (server_label, own name): its MCP server's, or the gateway's for a Python tool."""
        tool = self.registry.get(function_name)
        source = getattr(tool, "source", "")
        if source.startswith("mcp:"):
            return source[4:], str(getattr(tool, "remote_name", function_name))
        return PYTHON_TOOLS_LABEL, function_name

    def resolve(self, server_label: str, name: str) -> str | None:
        """The function name the model knows (server_label, name) by; None when no such tool is loaded."""
        if server_label == PYTHON_TOOLS_LABEL:
            return name if self.registry.get(name) is not None else None
        for tool in self.registry.enabled():
            if tool.source == f"mcp:{server_label}" and getattr(tool, "remote_name", None) == name:
                return tool.name
        return None


def _scope(policy: KeyPolicy) -> str:
    return "" if policy is OPEN_POLICY else policy.name


def _not_found(response_id: str, param: str | None = None) -> GatewayError:
    error = InvalidRequest(f"Response with id '{response_id}' not found.", param=param, code="not_found")
    error.status = 404
    return error


def _check_mcp_tools(service: ResponsesService, tools: list[McpToolRequest]) -> None:
    """Each ``mcp`` tool must name a configured server; a client never makes the gateway connect elsewhere."""
    for index, tool in enumerate(tools):
        if tool.server_label not in service.mcp_urls:
            raise InvalidRequest(
                f"No MCP server labelled '{tool.server_label}' is configured on this gateway.",
                param=f"tools[{index}].server_label",
                code="unknown_mcp_server",
            )
        if tool.names_remote_server and (
            tool.server_url is None or tool.server_url != service.mcp_urls[tool.server_label]
        ):
            raise InvalidRequest(
                "This gateway connects only to the MCP servers its operator configured: leave out "
                "server_url (and connector_id), or give the configured server's URL.",
                param=f"tools[{index}].server_url",
                code="unsupported_parameter",
            )


def _loop_options(
    service: ResponsesService,
    parsed: ResponsesRequest,
    approved: tuple[ToolCall, ...],
    narrowed: Callable[[str], bool] | None,
) -> LoopOptions:
    """The loop's options: calls as items, the request's MCP tools narrowing and gating theirs, ``x-gateway-tools``."""
    by_label = {tool.server_label: tool for tool in parsed.mcp_tools}

    def requested(function_name: str) -> tuple[McpToolRequest | None, str]:
        label, name = service.label(function_name)
        return by_label.get(label), name

    def offers(function_name: str) -> bool:
        tool, name = requested(function_name)
        return (tool is None or tool.allows(name)) and (narrowed is None or narrowed(function_name))

    def needs_approval(function_name: str) -> bool:
        tool, name = requested(function_name)
        return tool is not None and tool.needs_approval(name)

    return LoopOptions(
        assemble_calls=True,
        offers=offers if by_label or narrowed is not None else None,
        needs_approval=needs_approval if by_label else None,
        approved=approved,
        max_tool_calls=parsed.max_tool_calls,
    )


def _resolve_approvals(
    service: ResponsesService, stored: list[dict[str, Any]], items: list[dict[str, Any]], approvals: dict[str, bool]
) -> tuple[list[dict[str, Any]], tuple[ToolCall, ...]]:
    """The conversation's items with each answered approval applied, and the approved calls to run.

    A request answered in an earlier turn is dropped: the ``mcp_call`` item naming it
    holds the call and its result. A declined one becomes a failed ``mcp_call``, so the
    model reads that it was declined; an approved one stays as the call the loop runs.
    Only a request the gateway made can be approved: one in the stored conversation
    (``previous_response_id``), never one the client wrote into its input, which would
    let a client run a server tool with arguments of its own choosing.
    """
    answered = {i.get("approval_request_id") for i in items if i.get("type") == "mcp_call"}
    pending = {i["id"] for i in stored if i.get("type") == "mcp_approval_request" and i["id"] not in answered}
    unknown = sorted(set(approvals) - pending)
    if unknown:
        raise InvalidRequest(
            f"No pending approval request with id '{unknown[0]}' in the conversation of previous_response_id.",
            param="input",
            code="invalid_value",
        )
    out: list[dict[str, Any]] = []
    approved: list[ToolCall] = []
    handled: set[str] = set()
    for item in items:
        kind = item.get("type")
        if kind == "mcp_approval_request" and item["id"] in answered:
            continue
        if kind == "mcp_approval_request" and item["id"] in approvals:
            if item["id"] in handled:
                continue  # repeated in the client's input: the stored request, which comes first, counts
            handled.add(item["id"])
            function = service.resolve(item["server_label"], item["name"]) or item["name"]
            if approvals[item["id"]]:
                approved.append(ToolCall(item["id"], function, item["arguments"]))
            else:
                item = {
                    "id": new_item_id("mcp_call"),
                    "type": "mcp_call",
                    "server_label": item["server_label"],
                    "name": item["name"],
                    "arguments": item["arguments"],
                    "output": None,
                    # An MCP execution error, as a failed call's item states it: the model reads DECLINED.
                    "error": {"type": "mcp_tool_execution_error", "content": [{"type": "text", "text": DECLINED}]},
                    "status": "failed",
                    "approval_request_id": item["id"],
                }
        out.append(item)
    return out, tuple(approved)


def _listed_tools(
    service: ResponsesService, parsed: ResponsesRequest, conversation: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """``mcp_list_tools`` for each requested MCP server not listed in the conversation so far."""
    seen = {i.get("server_label") for i in conversation if i.get("type") == "mcp_list_tools"}
    listed = []
    for request in parsed.mcp_tools:
        if request.server_label in seen:
            continue
        tools = [
            {
                "name": getattr(tool, "remote_name", tool.name),
                "description": tool.description,
                "input_schema": tool.parameters,
                "annotations": None,
            }
            for tool in service.registry.available()
            if tool.source == f"mcp:{request.server_label}" and request.allows(getattr(tool, "remote_name", tool.name))
        ]
        listed.append({"type": "mcp_list_tools", "server_label": request.server_label, "tools": tools, "error": None})
    return listed


def _skeleton(parsed: ResponsesRequest) -> dict[str, Any]:
    """The response object before any output: the request's parameters echoed, as OpenAI does."""
    body = parsed.body
    return {
        "id": f"resp_{new_item_id('response').partition('_')[2]}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": parsed.instructions,
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": parsed.max_tool_calls,
        "model": parsed.model,
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": parsed.previous_response_id,
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "store": parsed.store,
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": None,
        "user": body.get("user"),
        "metadata": parsed.metadata or {},
    }


async def serve_responses(service: ResponsesService, request: Request) -> Response | EventStreamResponse:
    chat = service.chat
    request_id, record = begin(chat, request)
    labels = chat.services.labels
    stats: LoopStats | None = None
    try:
        policy, raw = await caller_and_body(chat, request, record)
        parsed = parse_responses_request(raw, chat.max_model_chars, resolve_tool=service.resolve)
        record.model = parsed.model
        record.stream = parsed.stream
        _check_mcp_tools(service, parsed.mcp_tools)
        scope = _scope(policy)
        earlier: list[dict[str, Any]] = []
        if parsed.previous_response_id is not None:
            previous = await service.store.get(scope, parsed.previous_response_id)
            if previous is None:
                raise _not_found(parsed.previous_response_id, "previous_response_id")
            earlier = previous.conversation
        conversation, approved = _resolve_approvals(service, earlier, [*earlier, *parsed.input_items], parsed.approvals)
        # The whole conversation, earlier turns first, after this request's own instructions (never an earlier one's).
        lead = [{"role": "system", "content": parsed.instructions}] if parsed.instructions else []
        parsed.chat_body["messages"] = [*lead, *items_to_messages(conversation, service.resolve)]
        route, context, headers = await admit(chat, request, record, policy, parsed.model, request_id)
        options = _loop_options(service, parsed, approved, header_filter(request.headers.get(TOOLS_HEADER)))
        loop = ToolLoop(
            chat.services,
            route,
            parsed.chat_body,
            parsed.chat_request(),
            context,
            headers,
            policy,
            record.trace,
            options,
        )
        stats = loop.stats
        renderer = ResponseRenderer(
            _skeleton(parsed), service.label, stream=parsed.stream, approved=frozenset(c.id for c in approved)
        )
        # A list the client sends back in its input (it keeps the history itself) counts as listed too.
        started = renderer.start(_listed_tools(service, parsed, conversation))
        events = loop.run()
        end = _End(service, scope, parsed, conversation, renderer, events, record, stats, labels)
        if not parsed.stream:
            await unless_client_leaves(request, _complete(events, renderer))
            await end.finish(200)
            return json_response(renderer.response, 200, {"x-request-id": request_id, **record.admission.headers})
        # Render up to the first event before answering: an upstream that fails before its
        # first byte is then an ordinary HTTP error, not a failed response inside a 200 stream.
        first = await unless_client_leaves(request, _first(events, renderer))
    except BaseException as exc:
        return settle_failure(record, stats, labels, exc)
    return EventStreamResponse(
        _sse([started or b"", *first], events, renderer, end),
        headers={"x-request-id": request_id, **record.admission.headers},
        ping_interval_s=chat.keepalive_interval_s,
        on_close=end,
    )


@dataclass(slots=True)
class _End:
    """Ends a request once, however it ends: its loop closed, its response stored, its record written."""

    service: ResponsesService
    scope: str
    parsed: ResponsesRequest
    conversation: list[dict[str, Any]]
    renderer: ResponseRenderer
    events: AsyncIterator[Event]
    record: RequestRecord
    stats: LoopStats
    labels: Any

    async def finish(self, status: int, error: str | None = None) -> None:
        if self.record.closed:
            return
        response = self.renderer.response
        # A failed stream is stored too, as OpenAI does: its client saw the id in response.created.
        if self.parsed.store and response["status"] in ("completed", "incomplete", "failed"):
            stored = StoredResponse(response, self.parsed.input_items, [*self.conversation, *response["output"]])
            await self.service.store.put(self.scope, stored)
        self.record.close(status, self.stats, self.labels, error)
        await self.record.admission.spend_tokens(self.stats.usage)

    async def __call__(self) -> None:
        await self.events.aclose()  # type: ignore[attr-defined]
        await self.finish(CLIENT_CLOSED, "client disconnected")


async def _complete(events: AsyncIterator[Event], renderer: ResponseRenderer) -> None:
    async for event in events:
        if type(event) is Completion:
            renderer.finish(event)
        else:
            renderer.render(event)


async def _first(events: AsyncIterator[Event], renderer: ResponseRenderer) -> list[bytes]:
    """Render events until there is something to write; their bytes, to be written first."""
    async for event in events:
        written = renderer.finish(event) if isinstance(event, Completion) else renderer.render(event)
        if written is not None:
            return [written]
    return []


async def _sse(
    first: list[bytes], events: AsyncIterator[Event], renderer: ResponseRenderer, end: _End
) -> AsyncIterator[bytes]:
    status, error = 200, None
    try:
        for piece in first:
            if piece:
                yield piece
        async for event in events:
            written = renderer.finish(event) if isinstance(event, Completion) else renderer.render(event)
            if written is not None:
                yield written
    except GatewayError as exc:
        error = exc.message
        failed = renderer.fail(exc)
        if failed is not None:
            yield failed
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        failed = renderer.fail(None)
        if failed is not None:
            yield failed
    except BaseException:
        status, error = CLIENT_CLOSED, "client disconnected"
        raise
    finally:
        await end.finish(status, error)


def _stored_or_404(stored: StoredResponse | None, response_id: str) -> StoredResponse:
    if stored is None:
        raise _not_found(response_id)
    return stored


async def retrieve_response(service: ResponsesService, request: Request, response_id: str) -> Response:
    policy = service.chat.authenticator.caller(request.headers)
    stored = _stored_or_404(await service.store.get(_scope(policy), response_id), response_id)
    return json_response(stored.response)


async def delete_response(service: ResponsesService, request: Request, response_id: str) -> Response:
    policy = service.chat.authenticator.caller(request.headers)
    if not await service.store.delete(_scope(policy), response_id):
        raise _not_found(response_id)
    return json_response({"id": response_id, "object": "response.deleted", "deleted": True})


async def list_input_items(service: ResponsesService, request: Request, response_id: str) -> Response:
    """A stored response's input items, as a list page (``order`` and ``limit`` honoured; one page holds them all
    up to ``limit``, and ``after`` continues from an item id)."""
    policy = service.chat.authenticator.caller(request.headers)
    stored = _stored_or_404(await service.store.get(_scope(policy), response_id), response_id)
    query = request.query_params
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("Invalid value for 'order': expected 'asc' or 'desc'.", param="order")
    limit_text = query.get("limit", "20")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
        raise InvalidRequest("Invalid value for 'limit': expected an integer from 1 to 100.", param="limit")
    items = list(stored.input_items if order == "asc" else reversed(stored.input_items))
    after = query.get("after")
    if after is not None:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[: int(limit_text)]
    return json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0].get("id") if page else None,
            "last_id": page[-1].get("id") if page else None,
            "has_more": len(items) > len(page),
        }
    )
