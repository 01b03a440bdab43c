"""Many long streams at once: N concurrent streamed answers, each of many chunks paced apart.

Run as ``python -m bench.longstreams --target KIND --port N --streams 500 --chunks 200 --interval-ms 50``.

The fake upstream writes each answer's content chunks ``interval_ms`` apart.
Streams start evenly spread over ``--ramp`` seconds (so their chunks do not all
fall due at the same instant), each on a connection of its own, and run to the
end. For every pair of consecutive content chunks of a stream the client
records the gap it saw minus the interval: the delay the path added. A stream
is correct when it carries all its chunks in order and ends with ``[DONE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from array import array
from dataclasses import dataclass, field
from typing import Any, cast

import httptools
import orjson
import uvloop

from bench.client import announce_start, cpu_seconds, percentiles_ms, raise_fd_limit
from bench.scenarios import TARGETS, paced_stream_step

GRACE_S = 30.0
DELAY_POINTS = (50, 90, 99, 99.9, 100)


@dataclass(slots=True)
class Tally:
    gaps: array[float] = field(default_factory=lambda: array("d"))
    first_contents: list[float] = field(default_factory=list)
    completed: int = 0
    errors: int = 0
    first_error: str | None = None
    open_now: int = 0
    open_peak: int = 0

    def error(self, message: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or message


class Stream(asyncio.Protocol):
    """One connection carrying one streamed answer, timed chunk by chunk as it arrives."""

    def __init__(self, interval_s: float, tally: Tally) -> None:
        self.interval = interval_s
        self.tally = tally
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.pending = bytearray()
        self.sent_at = 0.0
        self.last_content_at = 0.0
        self.contents = 0
        self.tokens_in_order = True
        self.saw_done = False
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError("the server closed the connection mid-stream"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self.done.done():
                self.done.set_exception(ValueError(f"unparsable response: {exc}"))

    def on_body(self, body: bytes) -> None:
        now = time.perf_counter()
        self.pending += body
        while (end := self.pending.find(b"\n\n")) >= 0:
            event = bytes(self.pending[:end])
            del self.pending[: end + 2]
            if event.startswith(b"data: "):
                self._event(event[6:], now)

    def _event(self, payload: bytes, now: float) -> None:
        if payload == b"[DONE]":
            self.saw_done = True
            return
        choices = orjson.loads(payload).get("choices") or []
        delta = (choices[0].get("delta") or {}) if choices else {}
        content = delta.get("content")
        if not content:
            return
        # Tokens are "Hello", " t1", " t2", ...: one out of place means a lost or reordered chunk.
        self.tokens_in_order = self.tokens_in_order and (content == f" t{self.contents}" or self.contents == 0)
        self.contents += 1
        if self.last_content_at:
            self.tally.gaps.append(now - self.last_content_at - self.interval)
        else:
            self.tally.first_contents.append(now - self.sent_at)
        self.last_content_at = now

    def on_message_complete(self) -> None:
        if not self.done.done():
            self.done.set_result(self.parser.get_status_code())


async def _one(host: str, port: int, request: bytes, chunks: int, interval_s: float, at: float, tally: Tally) -> None:
    await asyncio.sleep(max(0.0, at - time.perf_counter()))
    loop = asyncio.get_running_loop()
    try:
        transport, stream = await loop.create_connection(lambda: Stream(interval_s, tally), host, port)
    except OSError as exc:
        tally.error(f"connect: {exc}")
        return
    tally.open_now += 1
    tally.open_peak = max(tally.open_peak, tally.open_now)
    try:
        stream.sent_at = time.perf_counter()
        transport.write(request)
        status = await asyncio.wait_for(stream.done, chunks * interval_s + GRACE_S)
        if status != 200:
            raise ValueError(f"HTTP {status}")
        if stream.contents != chunks or not stream.tokens_in_order or not stream.saw_done:
            raise ValueError(
                f"{stream.contents} of {chunks} chunks, in order: {stream.tokens_in_order}, [DONE]: {stream.saw_done}"
            )
        tally.completed += 1
    except (ValueError, ConnectionError, TimeoutError) as exc:
        tally.error(f"{type(exc).__name__}: {exc}")
    finally:
        tally.open_now -= 1
        transport.close()


async def run(
    target: str, host: str, port: int, streams: int, chunks: int, interval_ms: float, ramp_s: float
) -> dict[str, Any]:
    request = paced_stream_step(chunks, interval_ms).request(host, port)
    tally = Tally()
    cpu_before = cpu_seconds()
    announce_start()
    start = time.perf_counter() + 0.01
    spacing = ramp_s / streams if streams else 0.0
    interval_s = interval_ms / 1000
    await asyncio.gather(
        *(_one(host, port, request, chunks, interval_s, start + i * spacing, tally) for i in range(streams))
    )
    elapsed = time.perf_counter() - start
    return {
        "streams": streams,
        "chunks": chunks,
        "interval_ms": interval_ms,
        "completed": tally.completed,
        "errors": tally.errors,
        "first_error": tally.first_error,
        "open_peak": tally.open_peak,
        "gaps": len(tally.gaps),
        "added_delay_ms": percentiles_ms(list(tally.gaps), DELAY_POINTS),
        "first_content_ms": percentiles_ms(tally.first_contents),
        "duration_s": elapsed,
        "load_cpu": (cpu_seconds() - cpu_before) / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.longstreams", description=__doc__)
    parser.add_argument("--target", required=True, choices=TARGETS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--interval-ms", type=float, default=50.0)
    parser.add_argument("--ramp", type=float, default=1.0, help="seconds over which the streams start")
    args = parser.parse_args(argv)
    raise_fd_limit(args.streams + 256)
    result = uvloop.run(run(args.target, args.host, args.port, args.streams, args.chunks, args.interval_ms, args.ramp))
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
