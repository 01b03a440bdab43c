"""What one benchmark run measured: plain records, filled in by the harness and read by the report."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.scenarios import Target


@dataclass(frozen=True, slots=True)
class Point:
    """One closed-loop load run: a scenario against one target at one concurrency.

    Percentiles cover the measured window; ``sent`` (HTTP requests), ``events``
    (server-sent events received) and ``proxy_cpu_s`` cover the whole run,
    warm-up included, so their ratios are the proxy's CPU per request or event.
    """

    scenario: str
    target: Target
    concurrency: int
    rps: float
    latency_ms: dict[str, float]
    ttfb_ms: dict[str, float]
    first_content_ms: dict[str, float]
    errors: int
    first_error: str | None
    load_cpu: float
    sent: int = 0
    events: int = 0
    proxy_cpu: float | None = None
    proxy_cpu_s: float | None = None

    @property
    def cpu_per_request_ms(self) -> float | None:
        return None if self.proxy_cpu_s is None or not self.sent else self.proxy_cpu_s / self.sent * 1000

    @property
    def cpu_per_event_us(self) -> float | None:
        return None if self.proxy_cpu_s is None or not self.events else self.proxy_cpu_s / self.events * 1e6


@dataclass(frozen=True, slots=True)
class OpenLoopPoint:
    """One open-loop run: requests at a constant rate, latency from each one's scheduled time."""

    target: Target
    rate: float
    achieved_rate: float
    requests: int
    sent: int
    errors: int
    first_error: str | None
    latency_ms: dict[str, float]
    lag_ms: dict[str, float]
    connections: int
    load_cpu: float
    unanswered: int = 0
    proxy_cpu_s: float | None = None

    @property
    def cpu_per_request_ms(self) -> float | None:
        return None if self.proxy_cpu_s is None or not self.sent else self.proxy_cpu_s / self.sent * 1000


@dataclass(frozen=True, slots=True)
class LongStreams:
    """Many concurrent streams of paced chunks through one gateway worker."""

    streams: int
    chunks: int
    interval_ms: float
    completed: int
    errors: int
    first_error: str | None
    open_peak: int
    gaps: int
    added_delay_ms: dict[str, float]
    first_content_ms: dict[str, float]
    duration_s: float
    load_cpu: float
    proxy_cpu_s: float | None
    rss_peak: int


@dataclass(slots=True)
class ProxyFacts:
    """Start-up and memory of a proxy under test, or why it was not measured."""

    name: str
    startup_s: float | None = None
    first_completion_s: float | None = None
    rss_idle: int | None = None
    rss_peak: int = 0
    skipped: str | None = None


@dataclass(slots=True)
class Workers:
    """The gateway with several workers, not pinned: throughput, metrics across workers, where they ran."""

    workers: int
    facts: ProxyFacts
    point: Point | None = None
    metrics_counted: float | None = None
    affinity: dict[int, frozenset[int]] = field(default_factory=dict)
    # The cores each worker (a process that did a tenth or more of the work) was seen on.
    ran_on: dict[int, set[int]] = field(default_factory=dict)
    leader: int = 0
    # CPU seconds the fake upstream, Redis and the load generator used during the load: on two cores shared with
    # them, the workers get what is left, which bounds the ratio to one worker (``ceiling``).
    others_cpu_s: float | None = None

    def ceiling(self, one_rps: float) -> float | None:
        """The most the ratio to one worker could be here: both cores busy at this run's CPU per request, all
        processes counted, over the one-worker throughput."""
        point = self.point
        if point is None or not point.sent or point.proxy_cpu_s is None or self.others_cpu_s is None or not one_rps:
            return None
        per_request_s = (point.proxy_cpu_s + self.others_cpu_s) / point.sent
        return 2 / per_request_s / one_rps if per_request_s > 0 else None


@dataclass(slots=True)
class Run:
    machine: list[tuple[str, str]]
    settings: list[tuple[str, str]]
    concurrencies: list[int]
    gateway: ProxyFacts
    litellm: ProxyFacts
    points: list[Point] = field(default_factory=list)
    open_loop: list[OpenLoopPoint] = field(default_factory=list)
    long_streams: LongStreams | None = None
    workers: Workers | None = None
    phase_seconds: list[tuple[str, float]] = field(default_factory=list)

    def point(self, scenario: str, target: Target, concurrency: int) -> Point | None:
        return next(
            (p for p in self.points if p.scenario == scenario and p.target == target and p.concurrency == concurrency),
            None,
        )

    def open_point(self, target: Target) -> OpenLoopPoint | None:
        return next((p for p in self.open_loop if p.target == target), None)

    def best_rps(self, scenario: str, target: Target) -> float | None:
        rates = [p.rps for p in self.points if p.scenario == scenario and p.target == target and p.rps > 0]
        return max(rates) if rates else None

    @property
    def errors(self) -> int:
        total = sum(p.errors for p in self.points) + sum(p.errors for p in self.open_loop)
        if self.long_streams is not None:
            total += self.long_streams.errors
        if self.workers is not None and self.workers.point is not None:
            total += self.workers.point.errors
        return total
