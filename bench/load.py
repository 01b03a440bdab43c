"""The load generator: closed-loop HTTP/1.1 clients on uvloop, one JSON result on stdout.

Run as ``python -m bench.load --scenario NAME --target KIND --port N --concurrency C``.

Each of ``C`` keep-alive connections sends a request, waits for the whole
response, checks it, and sends the next. Requests are built once as bytes and
responses parsed by httptools (llhttp, in C), so a request costs the client a
few microseconds: well under what the servers it measures spend.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import resource
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast

import httptools
import orjson
import uvloop

from bench.scenarios import DONE, TARGETS, Step, Target, scenario_named

GRACE_S = 10.0


class ResponseError(Exception):
    """A response that is not the scenario's correct answer."""


class Connection(asyncio.Protocol):
    """One keep-alive client connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[int] | None = None
        self.body = bytearray()
        self.first_body_at = 0.0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(ResponseError(f"unparsable response: {exc}"))
            assert self.transport is not None
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        if not self.first_body_at:
            self.first_body_at = time.perf_counter()
        self.body += body

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.parser.get_status_code())

    async def send(self, request: bytes) -> int:
        """Write one request; return the status once the whole response is in."""
        assert self.transport is not None
        self.body = bytearray()
        self.first_body_at = 0.0
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


@dataclass(slots=True)
class Tally:
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None

    def error(self, message: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = message


def _check(step: Step, status: int, body: bytearray) -> None:
    if status != 200:
        raise ResponseError(f"HTTP {status}: {bytes(body[:300])!r}")
    if step.expect not in body:
        raise ResponseError(f"response lacks {step.expect!r}: {bytes(body[:300])!r}")
    if step.stream and not body.endswith(DONE):
        raise ResponseError(f"stream does not end with [DONE]: {bytes(body[-300:])!r}")


async def _connect(host: str, port: int) -> Connection:
    _, connection = await asyncio.get_running_loop().create_connection(Connection, host, port)
    return connection


async def _client(
    host: str, port: int, requests: list[tuple[Step, bytes]], measure_from: float, end: float, tally: Tally
) -> None:
    connection = await _connect(host, port)
    try:
        while True:
            started = time.perf_counter()
            if started >= end:
                return
            first_byte = 0.0
            try:
                if connection.closed:
                    connection = await _connect(host, port)
                for step, request in requests:
                    status = await connection.send(request)
                    _check(step, status, connection.body)
                    first_byte = first_byte or connection.first_body_at
            except (ResponseError, ConnectionError, OSError) as exc:
                tally.error(f"{type(exc).__name__}: {exc}")
                if connection.transport is not None:
                    connection.transport.close()
                connection.closed = True
                await asyncio.sleep(0.01)
                continue
            if started >= measure_from:
                done = time.perf_counter()
                tally.latencies.append(done - started)
                tally.ttfbs.append(first_byte - started)
    finally:
        if connection.transport is not None:
            connection.transport.close()


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not values:
        return float("nan")
    rank = max(0, min(len(values) - 1, math.ceil(fraction * len(values)) - 1))
    return values[rank]


def summarize(tally: Tally, window_s: float, cpu_share: float) -> dict[str, Any]:
    latencies = sorted(tally.latencies)
    ttfbs = sorted(tally.ttfbs)
    return {
        "requests": len(latencies),
        "errors": tally.errors,
        "first_error": tally.first_error,
        "rps": len(latencies) / window_s if window_s > 0 else 0.0,
        "latency_ms": {f"p{p}": percentile(latencies, p / 100) * 1000 for p in (50, 90, 99)},
        "ttfb_ms": {f"p{p}": percentile(ttfbs, p / 100) * 1000 for p in (50, 90, 99)},
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
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    # Tells the harness the load starts now, so it can time the proxy's CPU over the run alone.
    sys.stdout.buffer.write(b"go\n")
    sys.stdout.flush()
    tasks = [asyncio.create_task(_client(host, port, requests, measure_from, end, tally)) for _ in range(concurrency)]
    done, pending = await asyncio.wait(tasks, timeout=warmup_s + duration_s + GRACE_S)
    for task in pending:
        task.cancel()
        tally.error("a request was still unanswered after the run plus its grace period")
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            tally.error(f"client failed: {task.exception()!r}")
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    return summarize(tally, duration_s, cpu_s / (time.perf_counter() - now))


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
    result = uvloop.run(
        run(args.scenario, args.target, args.host, args.port, args.concurrency, args.warmup, args.duration)
    )
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
