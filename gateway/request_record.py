"""One request's record: its metrics and its log line, written exactly once however it ends."""

from __future__ import annotations

import logging
import time
from typing import Any

from gateway import metrics
from gateway.loop import LoopStats
from gateway.policy import ANONYMOUS, UNLIMITED, Admission

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
        metrics.REQUESTS_IN_FLIGHT.inc()

    def close(self, status: int, stats: LoopStats | None, labels: metrics.Labels, error: str | None = None) -> None:
        """Record the request; only the first call counts (a stream may end on several paths)."""
        if self.closed:
            return
        self.closed = True
        duration = time.perf_counter() - self.started
        metrics.REQUESTS_IN_FLIGHT.dec()
        self.admission.release()
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
            for kind, key in (("input", "prompt_tokens"), ("output", "completion_tokens")):
                count = usage.get(key)
                if isinstance(count, int):
                    metrics.child(metrics.TOKEN_USAGE, model, kind, self.key).observe(count)
            fields.update(
                upstream=stats.upstream,
                rounds=stats.rounds,
                tools_called=stats.tools_called,
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
            )
        if error is not None:
            fields["error"] = error
        write_log(fields)


def write_log(fields: dict[str, Any]) -> None:
    """One request's log line."""
    if log.isEnabledFor(logging.INFO):
        # makeRecord + handle is what log.info does, less finding the caller's frame on every request.
        log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, "request", (), None, extra=fields))
