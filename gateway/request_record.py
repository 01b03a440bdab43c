"""One request's record: its metrics and its log line, written exactly once however it ends."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from gateway import metrics
from gateway.logs import write_json_line
from gateway.loop_events import LoopStats
from gateway.policy import ANONYMOUS, UNLIMITED, Admission

if TYPE_CHECKING:
    from gateway.tracing import RequestTrace

log = logging.getLogger("gateway.request")


class RequestRecord:
    """Times one request and writes its metrics and log line exactly once."""

    def __init__(self, request_id: str, stream: bool) -> None:
        self.request_id = request_id
        self.stream = stream
        self.model = "unknown"
        self.key = ANONYMOUS
        self.admission: Admission = UNLIMITED
        self.started = time.perf_counter()
        self.closed = False
        # Set only when tracing is on: the request's span, ended with this record.
        self.trace: RequestTrace | None = None
        metrics.REQUESTS_IN_FLIGHT.inc()

    def settle(self) -> float | None:
        """Close the record and release what the request held: its duration, or None when closed already."""
        if self.closed:
            return None
        self.closed = True
        metrics.REQUESTS_IN_FLIGHT.dec()
        self.admission.release()
        return time.perf_counter() - self.started

    def count_tokens(self, model: str, usage: dict[str, Any]) -> None:
        for kind, key in (("input", "prompt_tokens"), ("output", "completion_tokens")):
            count = usage.get(key)
            if isinstance(count, int) and not isinstance(count, bool):
                metrics.child(metrics.TOKEN_USAGE, model, kind, self.key).observe(count)

    def close(self, status: int, stats: LoopStats | None, labels: metrics.Labels, error: str | None = None) -> None:
        """Record the request; only the first call counts (a stream may end on several paths)."""
        duration = self.settle()
        if duration is None:
            return
        model = labels.model(self.model)
        stream = "true" if self.stream else "false"
        metrics.child(metrics.REQUESTS, model, stream, str(status), self.key).inc()
        metrics.child(metrics.REQUEST_DURATION, model, stream).observe(duration)
        fields: dict[str, Any] = {
            "event": "request",
            "request_id": self.request_id,
            "key": self.key,
            "model": self.model,
            "stream": self.stream,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
        }
        if stats is not None:
            waited = stats.upstream_wait_s + stats.tool_wait_s
            metrics.child(metrics.OVERHEAD, stream).observe(max(0.0, duration - waited))
            metrics.TOOL_ROUNDS.observe(stats.rounds)
            usage = stats.usage or {}
            self.count_tokens(model, usage)
            fields.update(
                upstream=stats.upstream,
                rounds=stats.rounds,
                tools_called=stats.tools_called,
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
            )
        if error is not None:
            fields["error"] = error
        if self.trace is not None:
            fields["trace_id"] = self.trace.trace_id
            if stats is None:
                self.trace.end(status, self.model)
            else:
                self.trace.end(status, self.model, stats.usage, stats.rounds, stats.upstream)
        write_log(fields)


def write_log(fields: dict[str, Any]) -> None:
    """One request's log line."""
    if log.isEnabledFor(logging.INFO) and not write_json_line(log, "request", fields):
        # makeRecord + handle is what log.info does, less finding the caller's frame on every request.
        log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, "request", (), None, extra=fields))
