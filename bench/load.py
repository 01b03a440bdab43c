"""The closed-loop load generator: C keep-alive clients on uvloop, one JSON result on stdout.

Run as ``python -m bench.load --scenario NAME --target KIND --port N --concurrency C``.

Each of ``C`` keep-alive connections sends a request, waits for the whole
response, checks it, and sends the next. At ``C=1`` this is the sequential
probe: one connection, one request at a time, so a request's time is the
server's own time per request with no queueing in it.

Besides latency percentiles over the measured window it reports totals over
the whole run (warm-up included), which the harness divides the proxy's CPU
time by: HTTP requests sent, and server-sent events received.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import uvloop

from bench.client import (
    ResponseError,
    announce_start,
    check,
    connect,
    cpu_seconds,
    percentiles_ms,
    raise_fd_limit,
)
from bench.scenarios import TARGETS, Step, Target, scenario_named

GRACE_S = 10.0
EVENT = b"data: "


@dataclass(slots=True)
class Tally:
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    first_contents: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None
    sent: int = 0
    completed: int = 0
    events: int = 0

    def error(self, message: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = message


async def _client(
    host: str, port: int, requests: list[tuple[Step, bytes]], measure_from: float, end: float, tally: Tally
) -> None:
    connection = await connect(host, port)
    last = len(requests) - 1
    try:
        while True:
            started = time.perf_counter()
            if started >= end:
                return
            first_byte = first_content = 0.0
            try:
                if connection.closed:
                    connection = await connect(host, port)
                for index, (step, request) in enumerate(requests):
                    tally.sent += 1
                    watch = step.expect if step.stream and index == last else b""
                    status = await connection.send(request, watch)
                    check(step, status, connection.body)
                    if step.stream:
                        tally.events += connection.body.count(EVENT)
                    first_byte = first_byte or connection.first_body_at
                    first_content = connection.watch_at
            except (ResponseError, ConnectionError, OSError) as exc:
                tally.error(f"{type(exc).__name__}: {exc}")
                connection.close()
                await asyncio.sleep(0.01)
                continue
            tally.completed += 1
            if started >= measure_from:
                done = time.perf_counter()
                tally.latencies.append(done - started)
                tally.ttfbs.append(first_byte - started)
                if first_content:
                    tally.first_contents.append(first_content - started)
    finally:
        connection.close()


def summarize(tally: Tally, window_s: float, cpu_share: float) -> dict[str, Any]:
    return {
        "requests": len(tally.latencies),
        "errors": tally.errors,
        "first_error": tally.first_error,
        "rps": len(tally.latencies) / window_s if window_s > 0 else 0.0,
        "latency_ms": percentiles_ms(tally.latencies),
        "ttfb_ms": percentiles_ms(tally.ttfbs),
        "first_content_ms": percentiles_ms(tally.first_contents),
        "sent": tally.sent,
        "completed": tally.completed,
        "events": tally.events,
        "load_cpu": cpu_share,
    }


async def run(
    scenario: str, target: str, host: str, port: int, concurrency: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    steps = scenario_named(scenario).steps(cast(Target, target))
    requests = [(step, step.request(host, port)) for step in steps]
    tally = Tally()
    now = time.perf_counter()
    measure_from = now + warmup_s
    end = measure_from + duration_s
    cpu_before = cpu_seconds()
    announce_start()
    tasks = [asyncio.create_task(_client(host, port, requests, measure_from, end, tally)) for _ in range(concurrency)]
    done, pending = await asyncio.wait(tasks, timeout=warmup_s + duration_s + GRACE_S)
    for task in pending:
        task.cancel()
        tally.error("a request was still unanswered after the run plus its grace period")
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            tally.error(f"client failed: {task.exception()!r}")
    return summarize(tally, duration_s, (cpu_seconds() - cpu_before) / (time.perf_counter() - now))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--target", required=True, choices=TARGETS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds run but not measured")
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds")
    args = parser.parse_args(argv)
    raise_fd_limit(args.concurrency + 256)
    result = uvloop.run(
        run(args.scenario, args.target, args.host, args.port, args.concurrency, args.warmup, args.duration)
    )
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
