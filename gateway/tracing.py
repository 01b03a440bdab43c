"""OpenTelemetry traces, opt-in: a span per request, per upstream call and per tool call.

Imported only when ``tracing.enabled`` is set (see gateway/app.py), so a gateway without tracing never
loads the SDK. The OTLP exporter, service name, sampler, batching and propagators are configured by the
standard ``OTEL_*`` environment variables, which the SDK reads itself.

The rest of the gateway sees three neutral objects and never OpenTelemetry: a ``RequestTrace`` per
request (the server span, ended with the request's record), an ``UpstreamSpan`` per upstream call (a
client span, whose context goes upstream as ``traceparent``) and a ``ToolSpan`` per server tool call.
Attributes follow the GenAI semantic conventions. No message content, tool arguments or tool results
are ever put in a span.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from gateway.errors import UpstreamStatus

DEFAULT_SERVICE_NAME = "llm-tool-gateway"
CLIENT_CLOSED = 499

# The GenAI operation of each passthrough path the conventions name; any other path is named by itself.
_OPERATIONS = {"/v1/chat/completions": "chat", "/v1/completions": "text_completion", "/v1/embeddings": "embeddings"}


def error_type(exc: BaseException) -> str:
    """A low-cardinality ``error.type``: an upstream's HTTP status, else the exception's class name."""
    if isinstance(exc, UpstreamStatus):
        return str(exc.status)
    return type(exc).__name__


def _server(base_url: str) -> dict[str, Any]:
    parts = urlsplit(base_url)
    attributes: dict[str, Any] = {}
    if parts.hostname:
        attributes["server.address"] = parts.hostname
        try:
            port = parts.port
        except ValueError:
            port = None
        attributes["server.port"] = port or (443 if parts.scheme == "https" else 80)
    return attributes


class Tracing:
    """The app's tracer provider: spans batched to an OTLP/HTTP exporter configured by ``OTEL_*``."""

    def __init__(self, exporter: SpanExporter | None = None) -> None:
        resource = Resource.create()
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            # OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) wins; this only names an unnamed service.
            resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
        # The provider stays the app's own, not the global one: two apps in a process never share spans.
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(exporter or OTLPSpanExporter()))
        self.tracer = self.provider.get_tracer("gateway")

    def request(self, method: str, path: str, headers: Mapping[str, str]) -> RequestTrace:
        """Start a request's server span, continuing the client's ``traceparent`` when it sent one."""
        parent = propagate.extract(headers)
        span = self.tracer.start_span(
            f"{method} {path}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        )
        return RequestTrace(self, span, path, parent)

    def shutdown(self) -> None:
        """Export what is still batched, then stop (blocking: run it off the event loop)."""
        self.provider.shutdown()


class RequestTrace:
    """One request's server span and its children; ended once, by the request's record."""

    __slots__ = ("_open", "_tracing", "context", "path", "span", "trace_id")

    def __init__(self, tracing: Tracing, span: Span, path: str, parent: Context) -> None:
        self._tracing = tracing
        self.span = span
        self.path = path
        # The client's context (its baggage included) with this span in it: the parent of every child span.
        self.context = trace.set_span_in_context(span, parent)
        found = span.get_span_context()
        # None when the SDK records nothing (OTEL_SDK_DISABLED=true): there is no trace to point to.
        self.trace_id = format(found.trace_id, "032x") if found.is_valid else None
        self._open: list[UpstreamSpan] = []

    def upstream(self, model: str, upstream: str, base_url: str) -> UpstreamSpan:
        """Start a client span for one upstream call (retries and fallbacks included) on this request's path."""
        operation = _OPERATIONS.get(self.path, self.path)
        attributes = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": upstream,
            "gen_ai.system": upstream,
            "gen_ai.request.model": model,
            "gateway.upstream": upstream,
            **_server(base_url),
        }
        span = self._tracing.tracer.start_span(
            f"{operation} {model}", context=self.context, kind=SpanKind.CLIENT, attributes=attributes
        )
        opened = UpstreamSpan(span, self.context)
        # Passthrough streams end with their request: the request's end ends a span left open.
        self._open.append(opened)
        return opened

    def tool(self, call_id: str, name: str) -> ToolSpan:
        """Start an ``execute_tool`` span for one server tool call."""
        span = self._tracing.tracer.start_span(
            f"execute_tool {name}",
            context=self.context,
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": name,
                "gen_ai.tool.call.id": call_id,
                "gen_ai.tool.type": "function",
            },
        )
        return ToolSpan(span)

    def end(
        self,
        status: int,
        model: str,
        usage: Mapping[str, Any] | None = None,
        rounds: int | None = None,
        upstream: str | None = None,
    ) -> None:
        """End the request span (and any upstream span still open) with the request's outcome."""
        for opened in self._open:
            if status == CLIENT_CLOSED:
                opened.cancelled()
            elif status >= 400:
                opened.failed(str(status))
            else:
                opened.finish(usage=usage)
        span = self.span
        attributes: dict[str, Any] = {
            "http.response.status_code": status,
            "gen_ai.operation.name": _OPERATIONS.get(self.path, self.path),
            "gen_ai.request.model": model,
        }
        if usage:
            attributes.update(_usage(usage))
        if rounds is not None:
            attributes["gateway.tool_rounds"] = rounds
        if upstream is not None:
            attributes["gateway.upstream"] = upstream
        span.set_attributes(attributes)
        if status == CLIENT_CLOSED:
            # A client that leaves is not the server's failure (4xx on a server span is unset), but it is marked.
            span.set_attribute("gateway.client_disconnected", True)
            span.add_event("client disconnected")
        elif status >= 500:
            # The status only: an error's text may quote the upstream's answer, which may quote the request.
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
        span.end()


def _usage(usage: Mapping[str, Any]) -> dict[str, int]:
    found: dict[str, int] = {}
    for attribute, key in (
        ("gen_ai.usage.input_tokens", "prompt_tokens"),
        ("gen_ai.usage.output_tokens", "completion_tokens"),
    ):
        count = usage.get(key)
        if isinstance(count, int) and not isinstance(count, bool):
            found[attribute] = count
    return found


class UpstreamSpan:
    """One upstream call's client span; its context travels upstream as ``traceparent``."""

    __slots__ = ("_ended", "context", "span")

    def __init__(self, span: Span, parent: Context) -> None:
        self.span = span
        self.context = trace.set_span_in_context(span, parent)
        self._ended = False

    def headers(self, headers: dict[str, str]) -> dict[str, str]:
        """A copy of ``headers`` carrying this span's ``traceparent`` (and ``tracestate``), replacing the client's."""
        carried = dict(headers)
        propagate.inject(carried, context=self.context)
        return carried

    def finish(
        self,
        response_model: str | None = None,
        usage: Mapping[str, Any] | None = None,
        finish_reason: str | None = None,
        response_id: str | None = None,
    ) -> None:
        if self._ended:
            return
        self._ended = True
        attributes: dict[str, Any] = {}
        if response_model:
            attributes["gen_ai.response.model"] = response_model
        if response_id:
            attributes["gen_ai.response.id"] = response_id
        if usage:
            attributes.update(_usage(usage))
        if finish_reason:
            attributes["gen_ai.response.finish_reasons"] = (finish_reason,)
        self.span.set_attributes(attributes)
        self.span.end()

    def fail(self, exc: BaseException) -> None:
        """End the span as failed; an exception that only means "stop" (the client left) is marked, not failed."""
        if self._ended:
            return
        if not isinstance(exc, Exception):
            self.cancelled()
            return
        self.failed(error_type(exc))

    def failed(self, kind: str) -> None:
        """End the span as failed with ``error.type`` ``kind``."""
        if self._ended:
            return
        self._ended = True
        self.span.set_attribute("error.type", kind)
        self.span.set_status(Status(StatusCode.ERROR, kind))
        self.span.end()

    def cancelled(self) -> None:
        if self._ended:
            return
        self._ended = True
        self.span.set_attribute("gateway.cancelled", True)
        self.span.end()


class ToolSpan:
    """One server tool call's span: its outcome, never its arguments or result."""

    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    def finish(self, outcome: str) -> None:
        self.span.set_attribute("gateway.tool.outcome", outcome)
        if outcome != "ok":
            # The outcome kind only: the error text may quote the model's arguments.
            self.span.set_attribute("error.type", outcome)
            self.span.set_status(Status(StatusCode.ERROR, outcome))
        self.span.end()

    def cancelled(self) -> None:
        self.span.set_attribute("gateway.cancelled", True)
        self.span.end()
