"""The streaming response under the ASGI callables a server gives it: pings, disconnects, stalled readers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from gateway.event_stream import PING, EventStreamResponse


class Client:
    """The ASGI side of one connection: what the response sent, and when the client leaves."""

    def __init__(self, *, gone: bool = False, stalls: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.gone = asyncio.Event()
        if gone:
            self.gone.set()
        self.stalls = stalls
        self.pings = 0
        self.pinged_twice = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if self.stalls and message.get("body"):
            await asyncio.Event().wait()  # a client that stopped reading: the write never drains
        self.sent.append(message)
        if message.get("body") == PING:
            self.pings += 1
            if self.pings >= 2:
                self.pinged_twice.set()

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent)


def _response(body: AsyncIterator[bytes], closed: list[str], **options: Any) -> EventStreamResponse:
    async def on_close() -> None:
        closed.append("closed")

    return EventStreamResponse(body, {"x-request-id": "r1"}, on_close=on_close, **options)


def test_a_client_gone_before_the_first_chunk_still_closes_the_request() -> None:
    started: list[bool] = []
    closed: list[str] = []

    async def body() -> AsyncIterator[bytes]:
        started.append(True)
        yield b"data: {}\n\n"

    async def scenario() -> None:
        client = Client(gone=True)
        await _response(body(), closed, ping_interval_s=10)({"type": "http"}, client.receive, client.send)

    asyncio.run(scenario())
    assert closed == ["closed"]


def test_pings_fill_the_silence_while_nothing_else_is_sent() -> None:
    closed: list[str] = []

    async def scenario() -> bytes:
        client = Client()
        release = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield b"data: 1\n\n"
            await release.wait()
            yield b"data: 2\n\n"

        response = _response(body(), closed, ping_interval_s=0.02)
        task = asyncio.ensure_future(response({"type": "http"}, client.receive, client.send))
        await asyncio.wait_for(client.pinged_twice.wait(), timeout=5)
        release.set()
        await task
        return client.body()

    sent = asyncio.run(scenario())
    assert sent.startswith(b"data: 1\n\n") and sent.endswith(b"data: 2\n\n")
    assert sent.count(PING) >= 2 and closed == ["closed"]


def test_a_client_that_stops_reading_is_cut_off_at_the_send_deadline() -> None:
    closed: list[str] = []
    cancelled: list[bool] = []

    async def body() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"data: {}\n\n"
        except BaseException:
            cancelled.append(True)
            raise

    async def scenario() -> None:
        client = Client(stalls=True)
        response = _response(body(), closed, ping_interval_s=0.02, send_timeout_s=0.05)
        await asyncio.wait_for(response({"type": "http"}, client.receive, client.send), timeout=5)

    asyncio.run(scenario())
    assert closed == ["closed"] and cancelled == [True]
