"""A benchmark run as Markdown: the budget, every measured point, the gateway's overhead."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench.scenarios import SCENARIOS, TARGETS, Target

MB = 1024 * 1024
REFERENCE_CONCURRENCY = 16


@dataclass(frozen=True, slots=True)
class Point:
    """One load run: a scenario against one target at one concurrency."""

    scenario: str
    target: Target
    concurrency: int
    rps: float
    latency_ms: dict[str, float]
    ttfb_ms: dict[str, float]
    errors: int
    first_error: str | None
    load_cpu: float
    proxy_cpu: float | None = None


@dataclass(slots=True)
class ProxyFacts:
    """Start-up and memory of a proxy under test, or why it was not measured."""

    name: str
    startup_s: float | None = None
    rss_idle: int | None = None
    rss_peak: int = 0
    skipped: str | None = None


@dataclass(slots=True)
class Run:
    machine: list[tuple[str, str]]
    settings: list[tuple[str, str]]
    concurrencies: list[int]
    gateway: ProxyFacts
    litellm: ProxyFacts
    points: list[Point] = field(default_factory=list)

    def point(self, scenario: str, target: Target, concurrency: int) -> Point | None:
        return next(
            (p for p in self.points if p.scenario == scenario and p.target == target and p.concurrency == concurrency),
            None,
        )

    def best_rps(self, scenario: str, target: Target) -> float | None:
        rates = [p.rps for p in self.points if p.scenario == scenario and p.target == target and p.rps > 0]
        return max(rates) if rates else None

    @property
    def errors(self) -> int:
        return sum(p.errors for p in self.points)


def _ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"


def _signed_ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:+.2f}"


def _mb(value: int | None) -> str:
    return "-" if not value else f"{value / MB:.1f} MB"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _delta(run: Run, scenario: str, concurrency: int, metric: str, key: str) -> float | None:
    direct = run.point(scenario, "direct", concurrency)
    gateway = run.point(scenario, "gateway", concurrency)
    if direct is None or gateway is None or not direct.rps or not gateway.rps:
        return None
    values: dict[str, dict[str, float]] = {"latency": gateway.latency_ms, "ttfb": gateway.ttfb_ms}
    base: dict[str, dict[str, float]] = {"latency": direct.latency_ms, "ttfb": direct.ttfb_ms}
    return values[metric][key] - base[metric][key]


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**not met**")


def budget_rows(run: Run) -> list[list[str]]:
    """Each budget line of issue #7 with its measured value and whether it is met."""
    c = REFERENCE_CONCURRENCY if REFERENCE_CONCURRENCY in run.concurrencies else max(run.concurrencies)
    rows: list[list[str]] = []

    def latency_line(label: str, limit: float, value: float | None, strict: bool = True) -> None:
        met = None if value is None else (value < limit if strict else value <= limit)
        bound = f"{'<' if strict else '≤'} {limit:g} ms"
        rows.append([label, bound, "-" if value is None else f"{value:+.2f} ms", _verdict(met)])

    latency_line(f"gateway overhead, non-streaming no tools, p50 @ c={c}", 1, _delta(run, "chat", c, "latency", "p50"))
    latency_line(f"gateway overhead, non-streaming no tools, p99 @ c={c}", 5, _delta(run, "chat", c, "latency", "p99"))

    gateway_rps, litellm_rps = run.best_rps("chat", "gateway"), run.best_rps("chat", "litellm")
    if run.litellm.skipped is not None or not gateway_rps or not litellm_rps:
        why = run.litellm.skipped or "no successful LiteLLM run"
        rows.append(["throughput vs LiteLLM, non-streaming no tools", "≥ 5x", f"not measured: {why}", "-"])
    else:
        ratio = gateway_rps / litellm_rps
        measured = f"{ratio:.1f}x ({gateway_rps:.0f} vs {litellm_rps:.0f} req/s, best of each)"
        rows.append(["throughput vs LiteLLM, non-streaming no tools", "≥ 5x", measured, _verdict(ratio >= 5)])

    latency_line(
        f"streaming TTFB vs direct, p50 @ c={c}", 1, _delta(run, "chat-stream", c, "ttfb", "p50"), strict=False
    )
    latency_line(
        f"one server-tool round over tool + upstream time, p50 @ c={c}",
        2,
        _delta(run, "tool-round", c, "latency", "p50"),
        strict=False,
    )
    peak = run.gateway.rss_peak
    rows.append(
        ["gateway RSS under load (peak)", "< 150 MB", _mb(peak), _verdict(None if not peak else peak < 150 * MB)]
    )
    return rows


def render(run: Run) -> str:
    lines = ["# Gateway benchmark", ""]
    lines += _table(["", ""], [[k, v] for k, v in run.machine + run.settings])
    lines += ["", "## Budget", ""]
    lines += _table(["budget line", "limit", "measured", "verdict"], budget_rows(run))
    lines += [
        "",
        "Overhead = gateway minus direct, same scenario and concurrency, same run (percentile minus percentile).",
        "",
        "## Scenarios",
        "",
    ]
    lines += _table(["scenario", "what one request is"], [[s.name, s.title] for s in SCENARIOS])
    lines += ["", "## Results", ""]
    rows: list[list[str]] = []
    for scenario in SCENARIOS:
        for concurrency in run.concurrencies:
            for target in TARGETS:
                p = run.point(scenario.name, target, concurrency)
                if p is None:
                    continue
                streamed = scenario.stream
                rows.append(
                    [
                        scenario.name,
                        target,
                        str(concurrency),
                        f"{p.rps:.0f}",
                        _ms(p.latency_ms["p50"]),
                        _ms(p.latency_ms["p90"]),
                        _ms(p.latency_ms["p99"]),
                        _ms(p.ttfb_ms["p50"]) if streamed else "-",
                        _ms(p.ttfb_ms["p99"]) if streamed else "-",
                        "-" if p.proxy_cpu is None else f"{p.proxy_cpu * 100:.0f}%",
                        f"{p.load_cpu * 100:.0f}%",
                        str(p.errors),
                    ]
                )
    lines += _table(
        [
            "scenario",
            "target",
            "conc",
            "req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "TTFB p50",
            "TTFB p99",
            "proxy CPU",
            "load CPU",
            "errors",
        ],
        rows,
    )
    lines += [
        "",
        "TTFB: time to the first body byte of the client's response (streaming only). "
        "CPU: share of one core over the run.",
        "",
        "## Gateway overhead",
        "",
    ]
    overhead: list[list[str]] = []
    for scenario in SCENARIOS:
        for concurrency in run.concurrencies:
            direct = run.point(scenario.name, "direct", concurrency)
            gateway = run.point(scenario.name, "gateway", concurrency)
            if direct is None or gateway is None:
                continue
            ratio = f"{gateway.rps / direct.rps:.2f}" if direct.rps else "-"
            overhead.append(
                [
                    scenario.name,
                    str(concurrency),
                    _signed_ms(_delta(run, scenario.name, concurrency, "latency", "p50")),
                    _signed_ms(_delta(run, scenario.name, concurrency, "latency", "p90")),
                    _signed_ms(_delta(run, scenario.name, concurrency, "latency", "p99")),
                    _signed_ms(_delta(run, scenario.name, concurrency, "ttfb", "p50")) if scenario.stream else "-",
                    ratio,
                ]
            )
    lines += _table(["scenario", "conc", "Δp50 ms", "Δp90 ms", "Δp99 ms", "ΔTTFB p50 ms", "req/s vs direct"], overhead)
    lines += ["", "## Processes", ""]
    facts: list[list[str]] = []
    for proxy in (run.gateway, run.litellm):
        if proxy.skipped is not None:
            facts.append([proxy.name, f"not measured: {proxy.skipped}", "-", "-"])
            continue
        startup = "-" if proxy.startup_s is None else f"{proxy.startup_s:.2f} s"
        facts.append([proxy.name, startup, _mb(proxy.rss_idle), _mb(proxy.rss_peak)])
    lines += _table(["process", "start-up to ready", "RSS idle", "RSS peak under load"], facts)
    failed = [p for p in run.points if p.errors]
    if failed:
        lines += ["", "## Errors", ""]
        lines += [
            f"- {p.scenario} / {p.target} / c={p.concurrency}: {p.errors} error(s), first: `{p.first_error}`"
            for p in failed
        ]
    return "\n".join(lines) + "\n"
