"""What every load generator shares: a keep-alive HTTP/1.1 client connection on httptools, checks, percentiles.

Requests are built once as bytes and responses parsed by httptools (llhttp, in
C), so a request costs the client a few microseconds: well under what the
servers it measures spend.
"""

from __future__ import annotations

import asyncio
import math
import resource
import socket
import sys
import time
from typing import cast

import httptools

from bench.scenarios import DONE, Step

PERCENTILES = (50, 90, 99)


class ResponseError(Exception):
    """A response that is not the scenario's correct answer."""


class Connection(asyncio.Protocol):
    """One keep-alive client connection with at most one request in flight.

    Besides the body it notes when the first body byte arrived and when the
    ``watch`` bytes (the answer's first content token) first appeared in it.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[int] | None = None
        self.body = bytearray()
        self.first_body_at = 0.0
        self.watch = b""
        self.watch_at = 0.0
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
            self.close()

    def on_body(self, body: bytes) -> None:
        now = time.perf_counter()
        if not self.first_body_at:
            self.first_body_at = now
        self.body += body
        if self.watch and not self.watch_at and self.watch in self.body[-(len(body) + len(self.watch)) :]:
            self.watch_at = now

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.parser.get_status_code())

    async def send(self, request: bytes, watch: bytes = b"") -> int:
        """Write one request; return the status once the whole response is in."""
        assert self.transport is not None
        self.body = bytearray()
        self.first_body_at = 0.0
        self.watch = watch
        self.watch_at = 0.0
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


async def connect(host: str, port: int) -> Connection:
    _, connection = await asyncio.get_running_loop().create_connection(Connection, host, port)
    return connection


def check(step: Step, status: int, body: bytearray) -> None:
    if status != 200:
        raise ResponseError(f"HTTP {status}: {bytes(body[:300])!r}")
    if step.expect not in body:
        raise ResponseError(f"response lacks {step.expect!r}: {bytes(body[:300])!r}")
    if step.stream and not body.endswith(DONE):
        raise ResponseError(f"stream does not end with [DONE]: {bytes(body[-300:])!r}")


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not values:
        return float("nan")
    rank = max(0, min(len(values) - 1, math.ceil(fraction * len(values)) - 1))
    return values[rank]


def percentiles_ms(values: list[float], points: tuple[float, ...] = PERCENTILES) -> dict[str, float]:
    """``{"p50": ..., ...}`` in milliseconds of values in seconds (sorted here)."""
    ordered = sorted(values)
    return {f"p{p:g}": percentile(ordered, p / 100) * 1000 for p in points}


def raise_fd_limit(wanted: int) -> None:
    """Lift the soft open-files limit towards ``wanted`` (within the hard limit) for many connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def announce_start() -> None:
    """Tell the harness the load starts now, so it times the proxy's CPU over the run alone."""
    sys.stdout.buffer.write(b"go\n")
    sys.stdout.flush()
