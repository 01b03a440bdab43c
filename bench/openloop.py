"""The open-loop load generator: requests at a constant arrival rate, whatever the server's pace.

Run as ``python -m bench.openloop --scenario chat --target KIND --port N --rate 1000``.

Request ``i`` is due at ``start + i / rate`` and is sent then, whether or not
earlier ones have been answered: a slow server meets more requests, not fewer,
as it would in production. Each goes out on an idle keep-alive connection, or a
new one (up to ``--max-connections``; past that it waits for one to free up).
Latency counts from the request's *scheduled* time, so time spent waiting to be
sent, for a connection or in the server's queue, is part of it: the result is
free of coordinated omission.

The event loop's timers tick in milliseconds, so a request may leave up to
about a millisecond after its time; that lag is in every latency, reported on
its own, and the same for every target, so it cancels out of the overhead.

Requests still unanswered ``GRACE_S`` after the last was due are given up on
and counted apart; they enter the percentiles with the time they had waited
by then, a lower bound, so a server that falls behind the rate cannot look
fast by leaving its slowest requests out.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import uvloop

from bench.client import (
    Connection,
    ResponseError,
    announce_start,
    check,
    connect,
    cpu_seconds,
    percentiles_ms,
    raise_fd_limit,
)
from bench.scenarios import TARGETS, Step, Target, scenario_named

GRACE_S = 15.0
PREOPENED = 16
LATENCY_POINTS = (50, 90, 99, 99.9)


@dataclass(slots=True)
class OpenLoop:
    """The connection pool and the tally of one open-loop run."""

    host: str
    port: int
    step: Step
    request: bytes
    max_connections: int
    measure_from: float
    idle: list[Connection] = field(default_factory=list)
    waiting: deque[asyncio.Future[Connection | None]] = field(default_factory=deque)
    opened: int = 0
    peak_open: int = 0
    latencies: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    sent: int = 0
    completed: int = 0
    errors: int = 0
    first_error: str | None = None

    async def acquire(self) -> Connection:
        while True:
            while self.idle:
                connection = self.idle.pop()
                if not connection.closed:
                    return connection
                self.opened -= 1
            if self.opened < self.max_connections:
                self.opened += 1
                self.peak_open = max(self.peak_open, self.opened)
                try:
                    return await connect(self.host, self.port)
                except OSError:
                    self.opened -= 1
                    raise
            waiter: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
            self.waiting.append(waiter)
            handed = await waiter
            if handed is not None:
                return handed
            # None: a connection closed, so there is room to open another.

    def release(self, connection: Connection) -> None:
        """Hand a connection to the longest-waiting request, or back to the pool."""
        if connection.closed:
            self.opened -= 1
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(None if connection.closed else connection)
                return
        if not connection.closed:
            self.idle.append(connection)

    async def one(self, due: float) -> None:
        """Send one request due at ``due`` and time it from then."""
        connection: Connection | None = None
        try:
            connection = await self.acquire()
            self.sent += 1
            sent_at = time.perf_counter()
            status = await connection.send(self.request)
            check(self.step, status, connection.body)
        except (ResponseError, ConnectionError, OSError) as exc:
            self.errors += 1
            self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"
            if connection is not None:
                connection.close()
                self.release(connection)
            return
        done = time.perf_counter()
        self.completed += 1
        self.release(connection)
        if due >= self.measure_from:
            self.latencies.append(done - due)
            self.lags.append(sent_at - due)


async def run(
    scenario: str,
    target: str,
    host: str,
    port: int,
    rate: float,
    warmup_s: float,
    duration_s: float,
    max_connections: int,
) -> dict[str, Any]:
    steps = scenario_named(scenario).steps(cast(Target, target))
    if len(steps) != 1:
        raise SystemExit(f"the open loop sends one request per arrival; {scenario} takes {len(steps)}")
    step = steps[0]
    loop = OpenLoop(host, port, step, step.request(host, port), max_connections, measure_from=0.0)
    loop.idle = [await connect(host, port) for _ in range(min(PREOPENED, max_connections))]
    loop.opened = loop.peak_open = len(loop.idle)
    total = round(rate * (warmup_s + duration_s))
    cpu_before = cpu_seconds()
    announce_start()
    start = time.perf_counter() + 0.01
    loop.measure_from = start + warmup_s
    tasks: dict[asyncio.Task[None], float] = {}
    index = 0
    while index < total:
        now = time.perf_counter()
        # Everything already due goes out now; then sleep until the next is due.
        while index < total and start + index / rate <= now:
            due = start + index / rate
            task = asyncio.create_task(loop.one(due))
            tasks[task] = due
            task.add_done_callback(tasks.pop)
            index += 1
        if index < total:
            await asyncio.sleep(max(0.0, start + index / rate - time.perf_counter()))
    scheduled_s = time.perf_counter() - start
    unanswered = 0
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=GRACE_S)
        given_up = time.perf_counter()
        for task in pending:
            # Still unanswered (the server fell behind the rate): its latency is at least this long,
            # and leaving it out would hide exactly the slow requests.
            due = tasks[task]
            if due >= loop.measure_from:
                loop.latencies.append(given_up - due)
            unanswered += 1
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    elapsed = time.perf_counter() - start
    for connection in loop.idle:
        connection.close()
    return {
        "rate": rate,
        "achieved_rate": total / scheduled_s if scheduled_s > 0 else 0.0,
        "requests": len(loop.latencies),
        "sent": loop.sent,
        "completed": loop.completed,
        "errors": loop.errors,
        "first_error": loop.first_error,
        "unanswered": unanswered,
        "latency_ms": percentiles_ms(loop.latencies, LATENCY_POINTS),
        "lag_ms": percentiles_ms(loop.lags, LATENCY_POINTS),
        "connections": loop.peak_open,
        "load_cpu": (cpu_seconds() - cpu_before) / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.openloop", description=__doc__)
    parser.add_argument("--scenario", default="chat")
    parser.add_argument("--target", required=True, choices=TARGETS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds sent but not measured")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--max-connections", type=int, default=512)
    args = parser.parse_args(argv)
    raise_fd_limit(args.max_connections + 256)
    result = uvloop.run(
        run(
            args.scenario,
            args.target,
            args.host,
            args.port,
            args.rate,
            args.warmup,
            args.duration,
            args.max_connections,
        )
    )
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
