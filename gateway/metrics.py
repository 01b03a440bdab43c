"""Prometheus series, named after the OpenTelemetry GenAI conventions where they define one.

Label values are bounded: models come from the config, tools from the registry;
anything else folds into ``other`` so a client cannot grow the series without end.
With several workers, prometheus-client's multiprocess mode is used (the CLI sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

OTHER = "other"

# Milliseconds to minutes: a cached answer, a tool call, a long generation.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
ROUND_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32)

REQUESTS = Counter(
    "gateway_requests",
    "Chat completion requests by client-facing model, stream mode, HTTP status and API key name.",
    ["gen_ai_request_model", "stream", "status", "key"],
)
REQUESTS_IN_FLIGHT = Gauge(
    "gateway_requests_in_flight",
    "Requests being served: chat completions and passthrough endpoints.",
    multiprocess_mode="livesum",
)
REQUEST_DURATION = Histogram(
    "gen_ai_server_request_duration_seconds",
    "Time to serve a chat completion request, all rounds included.",
    ["gen_ai_request_model", "stream"],
    buckets=LATENCY_BUCKETS,
)
OVERHEAD = Histogram(
    "gateway_overhead_seconds",
    "Wall time of a request minus time spent waiting on upstreams and tools: the gateway's own cost.",
    ["stream"],
    buckets=OVERHEAD_BUCKETS,
)
UPSTREAM_REQUESTS = Counter(
    "gateway_upstream_requests",
    "Calls to upstream servers by outcome (ok or the error's class).",
    ["upstream", "outcome"],
)
UPSTREAM_DURATION = Histogram(
    "gateway_upstream_request_duration_seconds",
    "Time of one upstream attempt: to its full body, or to a stream's response headers.",
    ["upstream"],
    buckets=LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "gen_ai_server_time_to_first_token_seconds",
    "Time from sending a streamed round upstream to its first chunk.",
    ["gen_ai_request_model"],
    buckets=LATENCY_BUCKETS,
)
TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage",
    "Tokens per request, summed over its rounds, by model, token type and API key name.",
    ["gen_ai_request_model", "gen_ai_token_type", "key"],
    buckets=TOKEN_BUCKETS,
)
TOOL_CALLS = Counter(
    "gateway_tool_calls", "Server-side tool calls by tool and outcome.", ["gen_ai_tool_name", "outcome"]
)
TOOL_DURATION = Histogram(
    "gen_ai_client_operation_duration_seconds",
    "Duration of GenAI operations; here, server-side tool runs.",
    ["gen_ai_operation_name", "gen_ai_tool_name"],
    buckets=LATENCY_BUCKETS,
)
TOOL_ROUNDS = Histogram("gateway_tool_rounds", "Server tool rounds run for one request.", buckets=ROUND_BUCKETS)
OFFERED_TOOLS = Histogram(
    "gateway_offered_tools",
    "Server tools offered to the model for one request (tools.selection).",
    buckets=(0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 64, 128, 256, 512, 1024),
)
CONTINUATIONS = Counter(
    "gateway_continuations",
    "Mixed-turn continuations by event (stored, resumed, expired, dropped for size).",
    ["event"],
)
STORED_RESPONSES = Counter(
    "gateway_stored_responses",
    "Stored Responses API responses by event (stored, expired, dropped for size, deleted).",
    ["event"],
)
CONNECTIONS_REFUSED = Counter(
    "gateway_connections_refused",
    "Client connections closed by the gateway's own guards, by reason.",
    ["reason"],
)
POLICY_REFUSALS = Counter(
    "gateway_policy_refusals",
    "Requests refused by a key's policy, by key name and reason.",
    ["key", "reason"],
)
STATE_ERRORS = Counter(
    "gateway_state_errors",
    "Failed calls to the shared state backend (Redis), by operation; the request went on without it.",
    ["operation"],
)
MCP_SERVER_UP = Gauge(
    "gateway_mcp_server_up",
    "1 while the MCP server is connected and its tools are offered, else 0. With several workers, the lowest.",
    ["server"],
    # Each worker holds its own connection: one worker without the server is an outage worth seeing.
    multiprocess_mode="livemin",
)
PASSTHROUGH_REQUESTS = Counter(
    "gateway_passthrough_requests",
    "Requests to passthrough endpoints (server.passthrough_paths) by path, model, stream mode, status and key name.",
    ["path", "gen_ai_request_model", "stream", "status", "key"],
)
PASSTHROUGH_DURATION = Histogram(
    "gateway_passthrough_request_duration_seconds",
    "Time to serve a passthrough request, to the end of its answer.",
    ["path", "gen_ai_request_model", "stream"],
    buckets=LATENCY_BUCKETS,
)

# Series with a fixed label set exist from the start, so rate() and dashboards see zeros, not gaps.
for _event in ("stored", "resumed", "expired", "dropped"):
    CONTINUATIONS.labels(_event)
for _event in ("stored", "expired", "dropped", "deleted"):
    STORED_RESPONSES.labels(_event)
for _reason in ("too_many_connections", "header_timeout", "body_timeout", "malformed"):
    CONNECTIONS_REFUSED.labels(_reason)
for _operation in ("put", "get", "delete", "rate_limit"):
    STATE_ERRORS.labels(_operation)


_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, remembered: prometheus-client validates and locks on every call.

    The cache stays bounded because every label value is (models and tools through
    ``Labels``, statuses, key names from the config).
    """
    key = (id(metric), values)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*values)
    return found


class Labels:
    """Folds label values outside the known set into ``other``."""

    MAX_DISCOVERED_MODELS = 256

    def __init__(self, models: Iterable[str], tools: Iterable[str]) -> None:
        # Patterns (``*``, ``claude-*``) are not models; the models they match are discovered.
        self.models = {m for m in models if not any(c in m for c in "*?[")}
        self.tools = set(tools)
        self._configured = len(self.models)

    def discover_models(self, names: Iterable[str]) -> None:
        """Admit models an upstream with patterns lists itself: bounded by that list, not by clients."""
        for name in names:
            if len(self.models) - self._configured >= self.MAX_DISCOVERED_MODELS:
                return
            self.models.add(name)

    def model(self, value: str) -> str:
        return value if value in self.models else OTHER

    def tool(self, value: str) -> str:
        return value if value in self.tools else OTHER


def render() -> tuple[bytes, str]:
    """The exposition text for ``/metrics``, merged across workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
