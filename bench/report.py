"""A benchmark run as Markdown: the budget, then every measurement behind it."""

from __future__ import annotations

import math

from bench.budget import MIB, budget, litellm_comparison
from bench.openloop import GRACE_S as OPEN_LOOP_GRACE_S
from bench.results import Point, ProxyFacts, Run
from bench.scenarios import SCENARIOS, TARGETS


def _ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"


def _signed_ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:+.2f}"


def _mib(value: int | None) -> str:
    return "-" if not value else f"{value / MIB:.1f} MiB"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _per_request(point: Point) -> str:
    cost = point.cpu_per_request_ms
    return "-" if cost is None else f"{cost:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _diff(run: Run, scenario: str, concurrency: int, metric: str, key: str) -> float | None:
    direct = run.point(scenario, "direct", concurrency)
    gateway = run.point(scenario, "gateway", concurrency)
    if direct is None or gateway is None or not direct.rps or not gateway.rps:
        return None
    field = {"latency": "latency_ms", "ttfb": "ttfb_ms", "content": "first_content_ms"}[metric]
    values: dict[str, float] = getattr(gateway, field)
    base: dict[str, float] = getattr(direct, field)
    return values[key] - base[key]


def _budget(run: Run) -> list[str]:
    rows = [[line.number, line.label, line.limit, line.measured, line.verdict] for line in budget(run)]
    lines = ["## Budget", ""]
    lines += _table(["#", "budget line", "limit", "measured", "verdict"], rows)
    return [
        *lines,
        "",
        "Every figure is from this run. Overhead = gateway minus direct to the fake upstream, same scenario, "
        "same run (percentile minus percentile). CPU per request or chunk = the gateway's CPU seconds over a "
        "load run (from /proc, warm-up included) divided by the requests sent or events received in it.",
        "",
        litellm_comparison(run),
    ]


def _probe(run: Run) -> list[str]:
    rows: list[list[str]] = []
    for scenario in SCENARIOS:
        for target in TARGETS:
            p = run.point(scenario.name, target, 1)
            if p is None:
                continue
            streamed = scenario.stream
            cost = p.cpu_per_event_us
            rows.append(
                [
                    scenario.name,
                    target,
                    f"{p.rps:.0f}",
                    _ms(p.latency_ms["p50"]),
                    _ms(p.latency_ms["p99"]),
                    _ms(p.first_content_ms["p50"]) if streamed else "-",
                    _ms(p.first_content_ms["p99"]) if streamed else "-",
                    _signed_ms(_diff(run, scenario.name, 1, "latency", "p50")) if target == "gateway" else "",
                    _signed_ms(_diff(run, scenario.name, 1, "content", "p50"))
                    if target == "gateway" and streamed
                    else "",
                    _per_request(p),
                    "-" if cost is None or not streamed else f"{cost:.1f}",
                    str(p.errors),
                ]
            )
    header = [
        "scenario",
        "target",
        "req/s",
        "p50 ms",
        "p99 ms",
        "content p50",
        "content p99",
        "Δp50 ms",
        "Δcontent p50",
        "CPU ms/req",
        "CPU µs/chunk",
        "errors",
    ]
    return [
        "## Sequential probe (c=1)",
        "",
        *_table(header, rows),
        "",
        "One keep-alive connection, one request at a time. content: time to the first content token of the "
        "answer (streamed only). Δ: gateway minus direct. CPU µs/chunk: the gateway's CPU over the run per "
        "server-sent event the client received.",
    ]


def _closed_loop(run: Run) -> list[str]:
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
                        _per_request(p),
                        f"{p.load_cpu * 100:.0f}%",
                        str(p.errors),
                    ]
                )
    header = ["scenario", "target", "conc", "req/s", "p50 ms", "p90 ms", "p99 ms", "TTFB p50", "TTFB p99"]
    header += ["proxy CPU", "CPU ms/req", "load CPU", "errors"]
    lines = ["## Closed loop", "", *_table(header, rows), ""]
    lines.append(
        "TTFB: time to the first body byte of the client's response (streaming only). "
        "CPU: share of one core over the run."
    )
    overhead: list[list[str]] = []
    for scenario in SCENARIOS:
        for concurrency in run.concurrencies:
            direct = run.point(scenario.name, "direct", concurrency)
            gateway = run.point(scenario.name, "gateway", concurrency)
            if direct is None or gateway is None:
                continue
            overhead.append(
                [
                    scenario.name,
                    str(concurrency),
                    _signed_ms(_diff(run, scenario.name, concurrency, "latency", "p50")),
                    _signed_ms(_diff(run, scenario.name, concurrency, "latency", "p90")),
                    _signed_ms(_diff(run, scenario.name, concurrency, "latency", "p99")),
                    _signed_ms(_diff(run, scenario.name, concurrency, "ttfb", "p50")) if scenario.stream else "-",
                    f"{gateway.rps / direct.rps:.2f}" if direct.rps else "-",
                ]
            )
    lines += ["", "### Gateway overhead", ""]
    header = ["scenario", "conc", "Δp50 ms", "Δp90 ms", "Δp99 ms", "ΔTTFB p50 ms", "req/s vs direct"]
    return lines + _table(header, overhead)


def _open_loop(run: Run) -> list[str]:
    rows = []
    for p in run.open_loop:
        cost = p.cpu_per_request_ms
        rows.append(
            [
                p.target,
                f"{p.rate:g}",
                f"{p.achieved_rate:.0f}",
                str(p.requests),
                *(_ms(p.latency_ms[k]) for k in ("p50", "p90", "p99", "p99.9")),
                _ms(p.lag_ms["p50"]),
                _ms(p.lag_ms["p99"]),
                str(p.connections),
                "-" if cost is None else f"{cost:.3f}",
                str(p.errors),
                str(p.unanswered),
            ]
        )
    direct, gateway = run.open_point("direct"), run.open_point("gateway")
    if direct is not None and gateway is not None:
        deltas = [_signed_ms(gateway.latency_ms[k] - direct.latency_ms[k]) for k in ("p50", "p90", "p99", "p99.9")]
        rows.append(["overhead", "", "", "", *deltas, "", "", "", "", "", ""])
    header = ["target", "rate", "arrivals/s", "measured", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms"]
    header += ["send lag p50", "send lag p99", "connections", "CPU ms/req", "errors", "unanswered"]
    return [
        "## Open loop",
        "",
        *_table(header, rows),
        "",
        "Requests leave on a fixed schedule whatever the server's pace; latency counts from each request's "
        "scheduled time, so queueing is in it (no coordinated omission). arrivals/s: the schedule as kept. "
        "Send lag: how late each request left, from the generator's millisecond timers (alike for both targets) "
        "and, when every connection was busy, the wait for a free one. Unanswered: given up "
        f"on {OPEN_LOOP_GRACE_S:g} s after the last request was due; they count in the percentiles with the "
        "time waited until then.",
    ]


def _long_streams(run: Run) -> list[str]:
    long = run.long_streams
    if long is None:
        return []
    delay = long.added_delay_ms
    rows = [
        ["streams (completed / started)", f"{long.completed} / {long.streams}, {long.open_peak} open at the peak"],
        ["chunks per stream, interval", f"{long.chunks}, {long.interval_ms:g} ms"],
        ["inter-chunk gaps measured", str(long.gaps)],
        [
            "added delay p50 / p90 / p99 / p99.9 / max",
            " / ".join(_ms(delay[k]) for k in ("p50", "p90", "p99", "p99.9", "p100")) + " ms",
        ],
        ["first content p50 / p99", f"{_ms(long.first_content_ms['p50'])} / {_ms(long.first_content_ms['p99'])} ms"],
        ["gateway RSS peak", _mib(long.rss_peak)],
        ["gateway CPU", "-" if long.proxy_cpu_s is None else f"{long.proxy_cpu_s / long.duration_s * 100:.0f}%"],
        ["load generator CPU", f"{long.load_cpu * 100:.0f}%"],
        ["duration", f"{long.duration_s:.1f} s"],
        ["errors", str(long.errors)],
    ]
    return [
        "## Long streams",
        "",
        *_table(["", ""], rows),
        "",
        "Added delay: each gap the client saw between consecutive content chunks of a stream, minus the interval "
        "the fake upstream paces them at.",
    ]


def _workers(run: Run) -> list[str]:
    workers = run.workers
    if workers is None or workers.point is None:
        return []
    p = workers.point
    one = run.point("chat", "gateway", p.concurrency)
    affinity = "; ".join(
        f"{pid}{' (supervisor)' if pid == workers.leader else ''}: {','.join(map(str, sorted(cores)))}"
        for pid, cores in sorted(workers.affinity.items())
    )
    ran_on = "; ".join(f"{pid}: {','.join(map(str, sorted(cores)))}" for pid, cores in sorted(workers.ran_on.items()))
    rows = [
        [
            "throughput, chat, c=" + str(p.concurrency),
            f"{p.rps:.0f} req/s (one worker: {one.rps:.0f})" if one else f"{p.rps:.0f} req/s",
        ],
        ["p50 / p99", f"{_ms(p.latency_ms['p50'])} / {_ms(p.latency_ms['p99'])} ms"],
        ["CPU per request (all workers)", f"{_per_request(p)} ms"],
        [
            "gateway_requests_total delta / requests sent",
            f"{workers.metrics_counted:.0f} / {p.sent}" if workers.metrics_counted is not None else "-",
        ],
        ["allowed cores per process", affinity or "-"],
        ["cores the busy processes (workers) ran on, sampled", ran_on or "-"],
        ["errors", str(p.errors)],
    ]
    return ["## Two workers", "", *_table(["", ""], rows)]


def _processes(run: Run) -> list[str]:
    proxies: list[ProxyFacts] = [run.gateway]
    if run.workers is not None:
        proxies.append(run.workers.facts)
    proxies.append(run.litellm)
    facts: list[list[str]] = []
    for proxy in proxies:
        if proxy.skipped is not None:
            facts.append([proxy.name, f"not measured: {proxy.skipped}", "-", "-", "-"])
            continue
        first = _seconds(proxy.first_completion_s)
        facts.append([proxy.name, _seconds(proxy.startup_s), first, _mib(proxy.rss_idle), _mib(proxy.rss_peak)])
    header = ["process", "start to ready", "start to first completion", "RSS idle", "RSS peak under load"]
    return [
        "## Processes",
        "",
        *_table(header, facts),
        "",
        "RSS peak under load: during the closed-loop points (the long streams have their own line above).",
    ]


def _errors(run: Run) -> list[str]:
    failed = [
        f"- {p.scenario} / {p.target} / c={p.concurrency}: {p.errors} error(s), first: `{p.first_error}`"
        for p in run.points
        if p.errors
    ]
    failed += [
        f"- open loop / {p.target}: {p.errors} error(s), first: `{p.first_error}`" for p in run.open_loop if p.errors
    ]
    failed += [
        f"- open loop / {p.target}: {p.unanswered} request(s) unanswered when the run gave up on them"
        for p in run.open_loop
        if p.unanswered
    ]
    if run.long_streams is not None and run.long_streams.errors:
        failed.append(f"- long streams: {run.long_streams.errors} error(s), first: `{run.long_streams.first_error}`")
    if run.workers is not None and run.workers.point is not None and run.workers.point.errors:
        p = run.workers.point
        failed.append(f"- two workers / c={p.concurrency}: {p.errors} error(s), first: `{p.first_error}`")
    return ["## Errors", "", *failed] if failed else []


def render(run: Run) -> str:
    lines = ["# Gateway benchmark", ""]
    lines += _table(["", ""], [[k, v] for k, v in run.machine + run.settings])
    sections = [
        _budget(run),
        ["## Scenarios", "", *_table(["scenario", "what one request is"], [[s.name, s.title] for s in SCENARIOS])],
        _probe(run),
        _closed_loop(run),
        _open_loop(run),
        _long_streams(run),
        _workers(run),
        _processes(run),
        _errors(run),
    ]
    for section in sections:
        if section:
            lines += ["", *section]
    return "\n".join(lines) + "\n"
