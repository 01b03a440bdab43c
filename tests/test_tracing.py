"""OpenTelemetry traces: a real OTLP/HTTP collector on loopback, the gateway, a fake upstream, the real SDK."""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.conftest import Gateway, GatewayFactory
from tests.fake_upstream import MODEL, FakeUpstream, Json, Sse, call, chunk, completion

USER = [{"role": "user", "content": "secret question about 1234"}]
CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
SERVER, CLIENT, INTERNAL = 2, 3, 1  # the protobuf's SpanKind values
STATUS_ERROR = 2


@dataclass
class ExportedSpan:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status_code: int
    start_ns: int
    end_ns: int
    events: list[str]
    resource: dict[str, Any]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    return getattr(value, kind) if kind else None


class Collector:
    """An OTLP/HTTP trace receiver: ``POST /v1/traces`` with a protobuf ``ExportTraceServiceRequest``."""

    def __init__(self) -> None:
        self.spans: list[ExportedSpan] = []
        self.changed = threading.Condition()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    collector._add(ExportTraceServiceRequest.FromString(body))
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _add(self, request: ExportTraceServiceRequest) -> None:
        found = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        ExportedSpan(
                            span.name,
                            span.kind,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            {a.key: _value(a.value) for a in span.attributes},
                            span.status.code,
                            span.start_time_unix_nano,
                            span.end_time_unix_nano,
                            [e.name for e in span.events],
                            resource,
                        )
                    )
        with self.changed:
            self.spans.extend(found)
            self.changed.notify_all()

    def wait_for(self, done: Callable[[list[ExportedSpan]], bool], timeout_s: float = 10.0) -> list[ExportedSpan]:
        """The spans once ``done`` holds for them; fails when it does not within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while not done(self.spans):
                left = deadline - time.monotonic()
                assert left > 0, f"spans never arrived as expected; got {[s.name for s in self.spans]}"
                self.changed.wait(left)
            return list(self.spans)


@pytest.fixture
def collector() -> Iterator[Collector]:
    receiver = Collector()
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture
def traced(collector: Collector, make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch) -> GatewayFactory:
    """A gateway factory with tracing on, exporting to ``collector`` as the standard variables say."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-under-test")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "5")

    def factory(overrides: dict[str, Any] | None = None, upstream_overrides: dict[str, Any] | None = None) -> Gateway:
        return make_gateway({"tracing": {"enabled": True}, **(overrides or {})}, upstream_overrides)

    return factory


def _named(spans: list[ExportedSpan], name: str) -> list[ExportedSpan]:
    return [s for s in spans if s.name == name]


def _traceparent_parts(value: str) -> tuple[str, str]:
    version, trace_id, span_id, flags = value.split("-")
    assert version == "00" and int(flags, 16) & 1, value  # sampled
    return trace_id, span_id


def test_a_tool_round_is_one_trace_of_request_upstream_and_tool_spans(
    upstream: FakeUpstream, traced: GatewayFactory, collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.request")
    gateway = traced()
    upstream.enqueue(
        completion(
            None,
            [call("add", {"a": 1, "b": 2}, "c1"), call("add", {"a": "not-a-number", "b": 1}, "c2")],
            usage={"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
            model="served-model-v1",
        ),
        completion("the answer", usage={"prompt_tokens": 150, "completion_tokens": 7, "total_tokens": 157}),
    )
    answer = gateway.client().chat.completions.create(
        model=MODEL, messages=USER, extra_headers={"traceparent": CLIENT_TRACEPARENT, "tracestate": "vendor=abc"}
    )
    assert answer.choices[0].message.content == "the answer"

    spans = collector.wait_for(lambda s: len(s) >= 5)
    assert {s.trace_id for s in spans} == {CLIENT_TRACE_ID}
    (request,) = [s for s in spans if s.kind == SERVER]
    assert request.name == "POST /v1/chat/completions"
    assert request.parent_span_id == CLIENT_SPAN_ID
    assert request.resource["service.name"] == "gateway-under-test"
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["gen_ai.request.model"] == MODEL
    assert request.attributes["gen_ai.usage.input_tokens"] == 250
    assert request.attributes["gen_ai.usage.output_tokens"] == 27
    assert request.status_code != STATUS_ERROR

    rounds = sorted(_named(spans, f"chat {MODEL}"), key=lambda s: s.start_ns)
    assert len(rounds) == 2
    assert all(s.kind == CLIENT and s.parent_span_id == request.span_id for s in rounds)
    first, second = (r.attributes for r in rounds)
    host, port = upstream.server.url.removeprefix("http://").split(":")
    assert first["gen_ai.operation.name"] == "chat"
    assert first["gen_ai.provider.name"] == "fake"
    assert first["gen_ai.request.model"] == MODEL
    assert first["gen_ai.response.model"] == "served-model-v1"
    assert (first["gen_ai.usage.input_tokens"], first["gen_ai.usage.output_tokens"]) == (100, 20)
    assert first["gen_ai.response.finish_reasons"] == ("tool_calls",)
    assert (first["server.address"], first["server.port"]) == (host, int(port))
    assert (second["gen_ai.usage.input_tokens"], second["gen_ai.response.finish_reasons"]) == (150, ("stop",))

    tools = {s.attributes["gen_ai.tool.call.id"]: s for s in _named(spans, "execute_tool add")}
    assert set(tools) == {"c1", "c2"}
    assert all(s.parent_span_id == request.span_id and s.kind == INTERNAL for s in tools.values())
    assert tools["c1"].attributes["gen_ai.operation.name"] == "execute_tool"
    assert tools["c1"].attributes["gen_ai.tool.name"] == "add"
    assert tools["c1"].status_code != STATUS_ERROR
    assert tools["c2"].status_code == STATUS_ERROR
    assert tools["c2"].attributes["error.type"] == "invalid_arguments"
    # The tool ran between the two rounds.
    assert rounds[0].end_ns <= tools["c1"].start_ns and tools["c1"].end_ns <= rounds[1].start_ns

    # No content: neither the conversation nor the model's arguments are in any span.
    values = repr([s.attributes for s in spans])
    assert "secret question" not in values and "not-a-number" not in values and "the answer" not in values

    # Each upstream request carries the trace on, parented by its own round's span.
    sent = [r.headers for r in upstream.requests]
    assert [_traceparent_parts(h["traceparent"]) for h in sent] == [(CLIENT_TRACE_ID, r.span_id) for r in rounds]
    assert all(h["tracestate"] == "vendor=abc" for h in sent)

    (line,) = [r for r in caplog.records if getattr(r, "event", None) == "request"]
    assert line.trace_id == CLIENT_TRACE_ID  # type: ignore[attr-defined]


def test_without_a_client_traceparent_the_gateway_starts_the_trace(
    upstream: FakeUpstream, traced: GatewayFactory, collector: Collector
) -> None:
    gateway = traced()
    upstream.enqueue(completion("hi"))
    raw = gateway.client().chat.completions.with_raw_response.create(model=MODEL, messages=USER)
    assert raw.parse().choices[0].message.content == "hi"
    spans = collector.wait_for(lambda s: len(s) >= 2)
    (request,) = [s for s in spans if s.kind == SERVER]
    assert request.parent_span_id == ""
    (round_span,) = _named(spans, f"chat {MODEL}")
    assert _traceparent_parts(upstream.requests[0].headers["traceparent"]) == (request.trace_id, round_span.span_id)


def test_a_streamed_request_span_ends_when_the_stream_ends(
    upstream: FakeUpstream, traced: GatewayFactory, collector: Collector
) -> None:
    gateway = traced()
    reply = Sse(
        [
            chunk({"role": "assistant", "content": "Hel"}, model="streamed-model"),
            chunk({"content": "lo"}),
            chunk({}, "stop"),
            chunk(choices=[], usage={"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}),
        ],
        gate_after=1,
    )
    upstream.enqueue(reply)
    stream = gateway.client().chat.completions.create(model=MODEL, messages=USER, stream=True)
    first = next(stream)
    assert first.choices[0].delta.content == "Hel"
    released_ns = time.time_ns()
    reply.gate.set()
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "lo"

    spans = collector.wait_for(lambda s: any(x.kind == SERVER for x in s) and len(s) >= 2)
    (request,) = [s for s in spans if s.kind == SERVER]
    # Still open after the first byte: it ended only once the upstream was let go on and the stream was done.
    assert request.end_ns > released_ns
    (round_span,) = _named(spans, f"chat {MODEL}")
    assert round_span.end_ns > released_ns
    assert round_span.attributes["gen_ai.response.model"] == "streamed-model"
    assert round_span.attributes["gen_ai.usage.input_tokens"] == 9
    assert round_span.attributes["gen_ai.response.finish_reasons"] == ("stop",)


def test_a_client_leaving_mid_stream_is_marked_on_the_request_span(
    upstream: FakeUpstream, traced: GatewayFactory, collector: Collector
) -> None:
    gateway = traced()
    reply = Sse([chunk({"role": "assistant", "content": "Hel"})], gate_after=1)
    upstream.enqueue(reply)
    stream = gateway.client().chat.completions.create(model=MODEL, messages=USER, stream=True)
    assert next(stream).choices[0].delta.content == "Hel"
    stream.close()

    spans = collector.wait_for(lambda s: any(x.kind == SERVER for x in s))
    reply.gate.set()
    (request,) = [s for s in spans if s.kind == SERVER]
    assert request.attributes["http.response.status_code"] == 499
    assert request.attributes["gateway.client_disconnected"] is True
    assert "client disconnected" in request.events
    spans = collector.wait_for(lambda s: bool(_named(s, f"chat {MODEL}")))
    (round_span,) = _named(spans, f"chat {MODEL}")
    assert round_span.attributes["gateway.cancelled"] is True


def test_a_failing_upstream_marks_its_span_and_the_request_span_with_the_error(
    upstream: FakeUpstream, traced: GatewayFactory, collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.request")
    gateway = traced(upstream_overrides={"retries": {"attempts": 1}})
    upstream.enqueue(Json({"error": {"message": "model crashed", "type": "server_error"}}, status=500))
    with pytest.raises(openai.InternalServerError):
        gateway.client().chat.completions.create(model=MODEL, messages=USER)

    spans = collector.wait_for(lambda s: len(s) >= 2)
    (request,) = [s for s in spans if s.kind == SERVER]
    (round_span,) = _named(spans, f"chat {MODEL}")
    assert round_span.status_code == STATUS_ERROR
    assert round_span.attributes["error.type"] == "500"
    assert request.status_code == STATUS_ERROR
    assert request.attributes["error.type"] == "500"
    (line,) = [r for r in caplog.records if getattr(r, "event", None) == "request"]
    assert line.trace_id == request.trace_id  # type: ignore[attr-defined]


def test_an_unreachable_upstream_is_an_error_span_named_by_its_failure(
    upstream: FakeUpstream, traced: GatewayFactory, collector: Collector
) -> None:
    # A closed port: connection refused, every time.
    gateway = traced(upstream_overrides={"base_url": "http://127.0.0.1:9/v1", "retries": {"attempts": 1}})
    with pytest.raises(openai.APIStatusError) as failure:
        gateway.client().chat.completions.create(model=MODEL, messages=USER)
    assert failure.value.status_code == 502
    spans = collector.wait_for(lambda s: len(s) >= 2)
    (round_span,) = _named(spans, f"chat {MODEL}")
    assert round_span.status_code == STATUS_ERROR
    assert round_span.attributes["error.type"] == "UpstreamUnavailable"
    assert round_span.attributes["server.port"] == 9


def test_a_passthrough_request_gets_a_request_span_and_an_upstream_span(
    upstream: FakeUpstream, traced: GatewayFactory, collector: Collector
) -> None:
    gateway = traced()
    upstream.enqueue(
        Json(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 1.0]}],
                "model": "embed-small",
                "usage": {"prompt_tokens": 3, "total_tokens": 3},
            }
        )
    )
    answer = gateway.client().embeddings.create(
        model="embed-small", input="hello", encoding_format="float", extra_headers={"traceparent": CLIENT_TRACEPARENT}
    )
    assert answer.data[0].embedding == [0.5, 1.0]

    spans = collector.wait_for(lambda s: len(s) >= 2)
    (request,) = [s for s in spans if s.kind == SERVER]
    (forwarded,) = [s for s in spans if s.kind == CLIENT]
    assert request.name == "POST /v1/embeddings"
    assert (request.trace_id, request.parent_span_id) == (CLIENT_TRACE_ID, CLIENT_SPAN_ID)
    assert forwarded.name == "embeddings embed-small"
    assert forwarded.parent_span_id == request.span_id
    assert forwarded.attributes["gen_ai.operation.name"] == "embeddings"
    assert forwarded.attributes["gen_ai.usage.input_tokens"] == 3
    assert _traceparent_parts(upstream.requests[0].headers["traceparent"]) == (CLIENT_TRACE_ID, forwarded.span_id)


def test_with_tracing_off_no_traceparent_goes_upstream_and_no_trace_id_is_logged(
    upstream: FakeUpstream, gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.request")
    upstream.enqueue(completion("hi"))
    gateway.client().chat.completions.create(model=MODEL, messages=USER)
    assert "traceparent" not in upstream.requests[0].headers
    assert gateway.app.chat.tracing is None
    (line,) = [r for r in caplog.records if getattr(r, "event", None) == "request"]
    assert not hasattr(line, "trace_id")


_LOADED = """
import json, sys
from gateway.app import create_app
from gateway.config import GatewayConfig
config = {"upstreams": [{"name": "u", "base_url": "http://127.0.0.1:9/v1"}], "tracing": {"enabled": %s}}
create_app(GatewayConfig.model_validate(config))
# Libraries may bring the OpenTelemetry API (redis the metrics SDK) themselves; tracing's part is its own.
ours = ("gateway.tracing", "opentelemetry.sdk.trace", "opentelemetry.exporter")
print(json.dumps(sorted(m for m in sys.modules if m.startswith(ours))))
"""


@pytest.mark.parametrize(("enabled", "loaded"), [(False, False), (True, True)])
def test_the_tracing_sdk_is_loaded_only_when_tracing_is_on(enabled: bool, loaded: bool) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", _LOADED % enabled], capture_output=True, text=True, timeout=60, env=env, check=True
    )
    modules = json.loads(result.stdout)
    assert ("gateway.tracing" in modules) is loaded
    assert any(m.startswith("opentelemetry.sdk.trace") for m in modules) is loaded
    assert any(m.startswith("opentelemetry.exporter") for m in modules) is loaded
