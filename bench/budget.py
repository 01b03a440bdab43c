"""The performance budget, line by line: the limit, the figure measured in this run, and the verdict.

Overheads are the gateway's figure minus the direct-to-upstream figure for the
same scenario in the same run (percentile minus percentile).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.results import Run
from bench.scenarios import LONG_ANSWER_CHUNKS

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Line:
    number: str
    label: str
    limit: str
    measured: str
    met: bool | None

    @property
    def verdict(self) -> str:
        return "-" if self.met is None else ("met" if self.met else "**not met**")


def _delta(gateway: float | None, direct: float | None) -> float | None:
    if gateway is None or direct is None or math.isnan(gateway) or math.isnan(direct):
        return None
    return gateway - direct


def _at_most(
    number: str, label: str, value: float | None, limit: float, unit: str, signed: bool = False, errors: int = 0
) -> Line:
    """A line met when ``value`` is at or under ``limit`` (and the run behind it had no errors)."""
    bound = f"≤ {limit:g} {unit}"
    if value is None or math.isnan(value):
        return Line(number, label, bound, "not measured", None)
    shown = f"{value:+.2f} {unit}" if signed else f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    if errors:
        shown += f" ({errors} failed or unanswered)"
    return Line(number, label, bound, shown, value <= limit and not errors)


def _first_content_delta(run: Run, scenario: str) -> tuple[float | None, int]:
    direct, gateway = run.point(scenario, "direct", 1), run.point(scenario, "gateway", 1)
    if direct is None or gateway is None:
        return None, 0
    return _delta(gateway.first_content_ms["p50"], direct.first_content_ms["p50"]), direct.errors + gateway.errors


def _passthrough(run: Run, high: int) -> list[Line]:
    one, many = run.point("chat", "gateway", 1), run.point("chat", "gateway", high)
    lines = [
        Line(
            "1",
            "passthrough throughput, non-streamed, c=1",
            "≥ 2000 req/s",
            "not measured" if one is None else f"{one.rps:.0f} req/s",
            None if one is None else one.rps >= 2000 and not one.errors,
        )
    ]
    if one is None or many is None or not one.rps:
        lines.append(Line("1", f"passthrough throughput, c={high} vs c=1", "≥ 90 %", "not measured", None))
    else:
        share = many.rps / one.rps
        measured = f"{share * 100:.0f} % ({many.rps:.0f} vs {one.rps:.0f} req/s)"
        lines.append(
            Line("1", f"passthrough throughput, c={high} vs c=1", "≥ 90 %", measured, share >= 0.9 and not many.errors)
        )
    points = [p for c in run.concurrencies if (p := run.point("chat", "gateway", c)) is not None]
    costs = [(p.concurrency, p.cpu_per_request_ms) for p in points]
    if not costs or any(cost is None for _, cost in costs):
        lines.append(Line("1", "gateway CPU per request, every concurrency", "≤ 0.5 ms", "not measured", None))
    else:
        worst = max(cost or 0.0 for _, cost in costs)
        measured = " / ".join(f"{cost:.3f}" for _, cost in costs) + " ms at c=" + "/".join(str(c) for c, _ in costs)
        lines.append(Line("1", "gateway CPU per request, every concurrency", "≤ 0.5 ms", measured, worst <= 0.5))
    return lines


def _open_loop(run: Run) -> list[Line]:
    direct, gateway = run.open_point("direct"), run.open_point("gateway")
    measured = gateway or direct
    rate = "the set rate" if measured is None else f"{measured.rate:g} req/s"
    errors = sum(p.errors + p.unanswered for p in (direct, gateway) if p is not None)
    lines = []
    for key, limit in (("p50", 0.5), ("p99", 3.0)):
        value = None if direct is None or gateway is None else _delta(gateway.latency_ms[key], direct.latency_ms[key])
        label = f"open-loop overhead {key} at {rate}"
        lines.append(_at_most("2", label, value, limit, "ms", signed=True, errors=errors))
    return lines


def _streaming(run: Run) -> list[Line]:
    lines = []
    for scenario, what in (("chat-stream", "no tools"), ("tools-offered-stream", "tools offered")):
        value, errors = _first_content_delta(run, scenario)
        label = f"first-content overhead p50, sequential, {what}"
        lines.append(_at_most("3", label, value, 0.5, "ms", signed=True, errors=errors))
    long = f"stream-{LONG_ANSWER_CHUNKS}"
    for scenario, what in ((long, "no tools"), (f"{long}-tools", "tools offered")):
        point = run.point(scenario, "gateway", 1)
        value = None if point is None else point.cpu_per_event_us
        errors = 0 if point is None else point.errors
        lines.append(_at_most("3", f"gateway CPU per forwarded chunk, {what}", value, 15, "µs", errors=errors))
    return lines


def _long_streams(run: Run) -> list[Line]:
    long = run.long_streams
    if long is None:
        return [Line("4", "long streams", "-", "not measured", None)]
    what = f"{long.streams} streams x {long.chunks} chunks {long.interval_ms:g} ms apart"
    failed = f"{long.errors} errors, {long.completed} of {long.streams} complete"
    return [
        Line("4", f"{what}: errors", "0", failed, long.errors == 0 and long.completed == long.streams),
        _at_most("4", "added inter-chunk delay p99", long.added_delay_ms["p99"], 10, "ms"),
        _at_most("4", "gateway RSS during the long streams (peak)", long.rss_peak / MIB, 250, "MiB"),
    ]


def _tool_round(run: Run) -> Line:
    direct, gateway = run.point("tool-round", "direct", 1), run.point("tool-round", "gateway", 1)
    value = None if direct is None or gateway is None else _delta(gateway.latency_ms["p50"], direct.latency_ms["p50"])
    errors = (direct.errors if direct else 0) + (gateway.errors if gateway else 0)
    return _at_most(
        "5", "one server-tool round beyond tool + upstream time, p50 @ c=1", value, 1, "ms", signed=True, errors=errors
    )


def _footprint(run: Run) -> list[Line]:
    facts = run.gateway
    idle = None if not facts.rss_idle else facts.rss_idle / MIB
    return [
        _at_most("6", "idle RSS, one worker", idle, 80, "MiB"),
        _at_most("6", "launch to first proxied completion", facts.first_completion_s, 1.0, "s"),
    ]


def _several_workers(run: Run, high: int) -> list[Line]:
    workers = run.workers
    label = f"{workers.workers if workers else 2} workers vs 1, throughput, non-streamed, c={high}"
    if workers is None or workers.point is None:
        why = "not measured" + (f": {workers.facts.skipped}" if workers and workers.facts.skipped else "")
        return [Line("7", label, "≥ 1.7x", why, None)]
    lines = []
    one = run.point("chat", "gateway", high)
    many = workers.point
    if one is None or not one.rps:
        lines.append(Line("7", label, "≥ 1.7x", "not measured (no one-worker point)", None))
    else:
        ratio = many.rps / one.rps
        measured = f"{ratio:.2f}x ({many.rps:.0f} vs {one.rps:.0f} req/s)"
        ceiling = workers.ceiling(one.rps)
        if ceiling is not None and workers.others_cpu_s is not None and many.cpu_per_request_ms is not None:
            others_ms = workers.others_cpu_s / many.sent * 1000
            measured += (
                f"; the ceiling on these two cores is {ceiling:.2f}x: per request {many.cpu_per_request_ms:.3f} ms "
                f"of CPU in the workers and {others_ms:.3f} ms in the fake upstream, Redis and the load generator"
            )
        lines.append(Line("7", label, "≥ 1.7x", measured, ratio >= 1.7 and not many.errors))
    counted = workers.metrics_counted
    measured = f"{counted:.0f} counted, {many.sent} sent" if counted is not None else "not measured"
    lines.append(
        Line("7", "gateway_requests_total across workers = requests sent", "equal", measured, counted == many.sent)
    )
    cores = sorted({core for allowed in workers.affinity.values() for core in allowed})
    narrowest = min((len(allowed) for allowed in workers.affinity.values()), default=0)
    seen = sorted({c for ran in workers.ran_on.values() for c in ran})
    measured = (
        f"{len(workers.affinity)} processes, narrowest affinity {narrowest} core(s) of "
        f"{','.join(map(str, cores))}; workers seen on core(s) {','.join(map(str, seen)) or '-'}"
    )
    label = f"gateway with {workers.workers} workers not pinned to one core"
    lines.append(Line("7", label, "≥ 2 cores", measured, narrowest >= 2))
    return lines


def budget(run: Run) -> list[Line]:
    """Every budget line, in order."""
    high = max(run.concurrencies)
    return [
        *_passthrough(run, high),
        *_open_loop(run),
        *_streaming(run),
        *_long_streams(run),
        _tool_round(run),
        *_footprint(run),
        *_several_workers(run, high),
    ]


def litellm_comparison(run: Run) -> str:
    """The gateway's best non-streamed throughput against LiteLLM's, when LiteLLM ran."""
    gateway_rps, litellm_rps = run.best_rps("chat", "gateway"), run.best_rps("chat", "litellm")
    if run.litellm.skipped is not None or not gateway_rps or not litellm_rps:
        return f"Against LiteLLM: not measured ({run.litellm.skipped or 'no successful LiteLLM run'})."
    return (
        f"Against LiteLLM: the gateway's throughput is {gateway_rps / litellm_rps:.1f}x LiteLLM's "
        f"({gateway_rps:.0f} vs {litellm_rps:.0f} req/s, non-streamed, best of each)."
    )
