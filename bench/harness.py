"""``python -m bench``: start a fake upstream and the gateway (and LiteLLM if installed), load them, report.

Every scenario is measured against the fake upstream directly and through the
gateway in the same run, back to back, so the overhead is a difference of two
measurements taken seconds apart on the same machine. The phases, in order:
closed-loop points (concurrency 1 is the sequential probe), an open loop at a
constant arrival rate, many long paced streams, the gateway with two workers,
and LiteLLM, alone on the proxy core once the gateway has stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import cast

import yaml

from bench.configs import (
    BENCH_DIR,
    GATEWAY_SETTINGS,
    LITELLM_SETTINGS,
    find_litellm,
    gateway_config,
    litellm_config,
    litellm_env,
    litellm_version,
    machine,
    redis_command,
)
from bench.processes import Child, CpuLayout, free_port, wait_ready
from bench.results import LongStreams, OpenLoopPoint, Point, ProxyFacts, Run, Workers
from bench.runner import Sampled, requests_counted, run_load, wait_first_completion, wait_redis
from bench.scenarios import SCENARIOS, Scenario, Target

OUT_DIR = BENCH_DIR / "out"
READY_TIMEOUT_S = 60.0
LITELLM_READY_TIMEOUT_S = 180.0
SLACK_S = 60.0
PHASES = ("closed", "open", "long", "workers", "litellm")
MULTI_WORKERS = 2


def _nan(values: dict[str, float | None]) -> dict[str, float]:
    return {k: float("nan") if v is None else v for k, v in values.items()}


class Bench:
    """One run: the children it started, the points it measured."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.layout = CpuLayout.plan()
        self.children: list[Child] = []
        self.scenarios = [s for s in SCENARIOS if not args.scenarios or s.name in args.scenarios]
        self.upstream_port = 0
        self.upstream_child: Child | None = None
        a = args
        self.run = Run(
            machine=machine(),
            settings=[
                ("command", "python -m bench" + (" --smoke" if a.smoke else "")),
                ("CPU sharing", self.layout.describe()),
                (
                    "closed loop",
                    f"{a.warmup:g} s warm-up + {a.duration:g} s measured per point, keep-alive connections; "
                    "c=1 is the sequential probe (one connection, one request at a time)",
                ),
                (
                    "open loop",
                    f"{a.rate:g} req/s, {a.open_warmup:g} s warm-up + {a.open_duration:g} s measured, "
                    "up to 512 connections, latency from each request's scheduled send time",
                ),
                (
                    "long streams",
                    f"{a.long_streams} concurrent streams of {a.long_chunks} chunks {a.long_interval_ms:g} ms apart, "
                    f"started over {a.long_ramp:g} s, one gateway worker",
                ),
                ("load generators", "bench/load.py, openloop.py, longstreams.py: asyncio on uvloop, httptools parser"),
                ("gateway", GATEWAY_SETTINGS),
            ],
            concurrencies=args.concurrency,
            gateway=ProxyFacts("gateway, 1 worker"),
            litellm=ProxyFacts("LiteLLM proxy"),
        )

    def start(
        self, name: str, command: list[str], cores: frozenset[int] | None, env: dict[str, str] | None = None
    ) -> Child:
        child = Child(name, command, OUT_DIR / f"{name}.log", cores, env=env, cwd=BENCH_DIR.parent)
        self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        child.stop()
        self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()

    def start_gateway(self, workers: int, facts: ProxyFacts, redis_url: str = "") -> tuple[Child, int]:
        """The gateway with ``workers`` workers (pinned to the proxy core when one), timed to its first completion."""
        port = free_port()
        config_path = OUT_DIR / f"gateway-{workers}.yaml"
        config = gateway_config(port, self.upstream_port, workers, redis_url)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        log(f"gateway ({workers} worker{'s' if workers > 1 else ''}) on :{port}")
        command = [sys.executable, "-m", "gateway", "serve", f"--config={config_path}", "--host=127.0.0.1"]
        command += [f"--port={port}", f"--workers={workers}"]
        cores = self.layout.proxy if workers == 1 else None
        gateway = self.start(f"gateway-{workers}", command, cores)
        facts.startup_s, facts.first_completion_s = wait_first_completion(gateway, port, READY_TIMEOUT_S)
        log(f"  ready at {facts.startup_s:.2f} s, first completion at {facts.first_completion_s:.2f} s")
        facts.rss_idle = gateway.rss_bytes()
        return gateway, port

    def load(
        self, scenario: Scenario, target: Target, port: int, concurrency: int, proxy: Child | None
    ) -> tuple[Point, Sampled]:
        """One closed-loop point in its own process."""
        options = [
            f"--scenario={scenario.name}",
            f"--target={target}",
            f"--port={port}",
            f"--concurrency={concurrency}",
            f"--warmup={self.args.warmup}",
            f"--duration={self.args.duration}",
        ]
        log(f"  {scenario.name:<20} {target:<8} c={concurrency:<3}", end="")
        timeout = self.args.warmup + self.args.duration + SLACK_S
        sampled = run_load("bench.load", options, self.layout.load, proxy, timeout)
        result = sampled.result
        point = Point(
            scenario=scenario.name,
            target=target,
            concurrency=concurrency,
            rps=result["rps"],
            latency_ms=_nan(result["latency_ms"]),
            ttfb_ms=_nan(result["ttfb_ms"]),
            first_content_ms=_nan(result["first_content_ms"]),
            errors=result["errors"],
            first_error=result["first_error"],
            load_cpu=result["load_cpu"],
            sent=result["sent"],
            events=result["events"],
            proxy_cpu=None if sampled.proxy_cpu_s is None else sampled.proxy_cpu_s / sampled.elapsed_s,
            proxy_cpu_s=sampled.proxy_cpu_s,
        )
        cpu = point.cpu_per_request_ms
        log(
            f" {point.rps:>8.0f} req/s  p50 {point.latency_ms['p50']:7.2f} ms"
            + ("" if cpu is None else f"  CPU {cpu:.3f} ms/req")
            + f"  errors {point.errors}"
        )
        return point, sampled

    def closed_loop(self, gateway: Child, port: int) -> None:
        for scenario in self.scenarios:
            # A smoke run checks every mode works, so only the passthrough needs every concurrency.
            single = scenario.probe_only or (self.args.smoke and scenario.name != "chat")
            concurrencies = [1] if single else self.args.concurrency
            for concurrency in concurrencies:
                direct, _ = self.load(scenario, "direct", self.upstream_port, concurrency, None)
                through, sampled = self.load(scenario, "gateway", port, concurrency, gateway)
                self.run.points += [direct, through]
                self.run.gateway.rss_peak = max(self.run.gateway.rss_peak, sampled.rss_peak)

    def open_loop(self, gateway: Child, port: int) -> None:
        a = self.args
        for target, target_port, proxy in (("direct", self.upstream_port, None), ("gateway", port, gateway)):
            options = [
                "--scenario=chat",
                f"--target={target}",
                f"--port={target_port}",
                f"--rate={a.rate}",
                f"--warmup={a.open_warmup}",
                f"--duration={a.open_duration}",
            ]
            log(f"  open loop {target:<8} {a.rate:g} req/s", end="")
            sampled = run_load(
                "bench.openloop", options, self.layout.load, proxy, a.open_warmup + a.open_duration + SLACK_S
            )
            r = sampled.result
            point = OpenLoopPoint(
                target=cast(Target, target),
                rate=r["rate"],
                achieved_rate=r["achieved_rate"],
                requests=r["requests"],
                sent=r["sent"],
                errors=r["errors"],
                first_error=r["first_error"],
                latency_ms=_nan(r["latency_ms"]),
                lag_ms=_nan(r["lag_ms"]),
                connections=r["connections"],
                unanswered=r["unanswered"],
                load_cpu=r["load_cpu"],
                proxy_cpu_s=sampled.proxy_cpu_s,
            )
            self.run.open_loop.append(point)
            log(
                f"  p50 {point.latency_ms['p50']:6.2f} ms  p99 {point.latency_ms['p99']:7.2f} ms  errors {point.errors}"
            )

    def long_streams(self, gateway: Child, port: int) -> None:
        a = self.args
        options = [
            "--target=gateway",
            f"--port={port}",
            f"--streams={a.long_streams}",
            f"--chunks={a.long_chunks}",
            f"--interval-ms={a.long_interval_ms}",
            f"--ramp={a.long_ramp}",
        ]
        log(f"  long streams: {a.long_streams} x {a.long_chunks} chunks, {a.long_interval_ms:g} ms apart", end="")
        timeout = a.long_ramp + a.long_chunks * a.long_interval_ms / 1000 + SLACK_S
        sampled = run_load("bench.longstreams", options, self.layout.load, gateway, timeout)
        r = sampled.result
        self.run.long_streams = LongStreams(
            streams=r["streams"],
            chunks=r["chunks"],
            interval_ms=r["interval_ms"],
            completed=r["completed"],
            errors=r["errors"],
            first_error=r["first_error"],
            open_peak=r["open_peak"],
            gaps=r["gaps"],
            added_delay_ms=_nan(r["added_delay_ms"]),
            first_content_ms=_nan(r["first_content_ms"]),
            duration_s=r["duration_s"],
            load_cpu=r["load_cpu"],
            proxy_cpu_s=sampled.proxy_cpu_s,
            rss_peak=sampled.rss_peak,
        )
        delay = self.run.long_streams.added_delay_ms
        log(f"  added delay p99 {delay['p99']:.2f} ms  completed {r['completed']}  errors {r['errors']}")

    def several_workers(self) -> None:
        """Throughput with two unpinned workers, and whether /metrics still counts every request."""
        workers = Workers(MULTI_WORKERS, ProxyFacts(f"gateway, {MULTI_WORKERS} workers, not pinned"))
        self.run.workers = workers
        redis_port = free_port()
        (OUT_DIR / "redis").mkdir(exist_ok=True)
        command = redis_command(redis_port, OUT_DIR / "redis")
        if command is None:
            workers.facts.skipped = "redis-server is not installed (several workers share state through Redis)"
            return
        redis = self.start("redis", command, self.layout.upstream)
        wait_redis(redis, redis_port, READY_TIMEOUT_S)
        gateway, port = self.start_gateway(MULTI_WORKERS, workers.facts, f"redis://127.0.0.1:{redis_port}/0")
        workers.leader = gateway.pid
        before = requests_counted(port)
        chat = next(s for s in SCENARIOS if s.name == "chat")
        others_before = redis.cpu_seconds() + (self.upstream_child.cpu_seconds() if self.upstream_child else 0.0)
        workers.point, sampled = self.load(chat, "gateway", port, max(self.args.concurrency), gateway)
        others_after = redis.cpu_seconds() + (self.upstream_child.cpu_seconds() if self.upstream_child else 0.0)
        workers.others_cpu_s = others_after - others_before + workers.point.load_cpu * sampled.elapsed_s
        workers.metrics_counted = requests_counted(port) - before
        workers.affinity = gateway.affinity()
        # Only the processes that did the work: the workers, not the supervisor or spawn's resource tracker.
        workers.ran_on = {pid: cores for pid, cores in sampled.ran_on.items() if pid in sampled.busy()}
        workers.facts.rss_peak = sampled.rss_peak
        self.stop(gateway)
        self.stop(redis)

    def timed(self, title: str, step: Callable[[], None]) -> None:
        started = time.perf_counter()
        log(f"{title}:")
        step()
        self.run.phase_seconds.append((title, time.perf_counter() - started))

    def measure(self) -> Run:
        OUT_DIR.mkdir(exist_ok=True)
        phases = set(self.args.phases)
        self.upstream_port = free_port()
        log(f"fake upstream on :{self.upstream_port}")
        upstream = self.start(
            "upstream", [sys.executable, "-m", "bench.upstream", f"--port={self.upstream_port}"], self.layout.upstream
        )
        self.upstream_child = upstream
        wait_ready(upstream, self.upstream_port, "/v1/models", READY_TIMEOUT_S)

        gateway, port = self.start_gateway(1, self.run.gateway)
        steps = [
            ("closed", "closed loop", lambda: self.closed_loop(gateway, port)),
            ("open", "open loop", lambda: self.open_loop(gateway, port)),
            ("long", "long streams", lambda: self.long_streams(gateway, port)),
        ]
        for phase, title, step in steps:
            if phase in phases:
                self.timed(title, step)
        self.stop(gateway)
        if "workers" in phases:
            self.timed("two workers", self.several_workers)

        litellm_scenarios = [s for s in self.scenarios if s.litellm]
        executable = find_litellm(self.args.litellm if "litellm" in phases else "off")
        if executable is None:
            self.run.litellm.skipped = (
                "turned off"
                if self.args.litellm == "off" or "litellm" not in phases
                else "not installed (pip install -e '.[bench]')"
            )
        elif litellm_scenarios and "closed" in phases:
            self.timed("LiteLLM", lambda: self.measure_litellm(executable, litellm_scenarios))
        return self.run

    def measure_litellm(self, executable: str, scenarios: list[Scenario]) -> None:
        port = free_port()
        config_path = OUT_DIR / "litellm.yaml"
        config_path.write_text(yaml.safe_dump(litellm_config(self.upstream_port), sort_keys=False))
        self.run.settings.append(("LiteLLM", f"{litellm_version(executable)} proxy, {LITELLM_SETTINGS}"))
        log(f"LiteLLM proxy on :{port}")
        litellm = self.start(
            "litellm",
            [executable, f"--config={config_path}", "--host=127.0.0.1", f"--port={port}", "--num_workers=1"],
            self.layout.proxy,
            env=litellm_env(),
        )
        try:
            self.run.litellm.startup_s = wait_ready(litellm, port, "/health/liveliness", LITELLM_READY_TIMEOUT_S)
        except RuntimeError as exc:
            self.run.litellm.skipped = "failed to start (see bench/out/litellm.log)"
            log(str(exc))
            self.stop(litellm)
            return
        self.run.litellm.rss_idle = litellm.rss_bytes()
        for scenario in scenarios:
            for concurrency in self.args.concurrency:
                point, sampled = self.load(scenario, "litellm", port, concurrency, litellm)
                self.run.points.append(point)
                self.run.litellm.rss_peak = max(self.run.litellm.rss_peak, sampled.rss_peak)
        self.stop(litellm)


def log(message: str, end: str = "\n") -> None:
    print(message, end=end, file=sys.stderr, flush=True)
