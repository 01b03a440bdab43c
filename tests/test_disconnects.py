"""A client that leaves stops the work done for it, streamed or not, and is recorded as 499."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

from tests.conftest import Gateway, GatewayFactory
from tests.fake_upstream import MODEL, FakeUpstream, Hang, Sse, call, chunk, completion
from tests.test_observability import scrape, total

USER = [{"role": "user", "content": "do the slow thing"}]


def _send_and_leave(gateway: Gateway, body: dict[str, object], left: Callable[[], bool]) -> None:
    """POST ``body`` on a raw socket, wait until ``left()`` says the work is under way, then close."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", gateway.server.port), timeout=5)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    assert left(), "the work never started"
    sock.close()


def _wait_for_499(gateway: Gateway, before: float, stream: str) -> None:
    """The request is recorded when its cancellation has been handled: poll the counter, bounded."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if total(scrape(gateway.url), "gateway_requests_total", status="499", stream=stream) > before:
            return
        time.sleep(0.01)
    raise AssertionError("the abandoned request was not recorded as 499")


def _count_499(gateway: Gateway, stream: str) -> float:
    return total(scrape(gateway.url), "gateway_requests_total", status="499", stream=stream)


def test_leaving_a_non_streamed_request_cancels_its_tool_and_later_rounds(
    upstream: FakeUpstream, gateway: Gateway
) -> None:
    state = gateway.tool_state("wait_for_release")
    for event in ("RELEASE", "STARTED", "CANCELLED"):
        state[event].clear()
    before = _count_499(gateway, "false")
    upstream.enqueue(completion(None, [call("wait_for_release", {}, "w1")]), completion("round two"))
    _send_and_leave(gateway, {"model": MODEL, "messages": USER}, lambda: bool(state["STARTED"].wait(5)))
    assert state["CANCELLED"].wait(5), "the tool kept running after the client left"
    _wait_for_499(gateway, before, "false")
    assert len(upstream.bodies) == 1, "a later round was sent for a client that had left"


def test_a_sync_tool_finishing_after_the_client_left_sends_no_further_round(
    upstream: FakeUpstream, gateway: Gateway
) -> None:
    state = gateway.tool_state("blocking_wait")
    state["SYNC_RELEASE"].clear()
    state["SYNC_STARTED"].clear()
    before = _count_499(gateway, "false")
    upstream.enqueue(completion(None, [call("blocking_wait", {}, "s1")]))
    _send_and_leave(gateway, {"model": MODEL, "messages": USER}, lambda: bool(state["SYNC_STARTED"].wait(5)))
    _wait_for_499(gateway, before, "false")
    state["SYNC_RELEASE"].set()  # the thread returns; its result must be dropped
    upstream.enqueue(completion("next request"))
    answer = gateway.client().chat.completions.create(model=MODEL, messages=USER, tool_choice="none")
    assert answer.choices[0].message.content == "next request"
    assert len(upstream.bodies) == 2 and upstream.bodies[1]["messages"] == USER


def test_leaving_before_a_streams_first_byte_cancels_the_upstream_call(
    upstream: FakeUpstream, gateway: Gateway
) -> None:
    before = _count_499(gateway, "true")
    upstream.enqueue(Hang())
    _send_and_leave(
        gateway, {"model": MODEL, "messages": USER, "stream": True}, lambda: _until(lambda: bool(upstream.requests))
    )
    assert upstream.disconnected.wait(5), "the upstream request outlived the client"
    _wait_for_499(gateway, before, "true")


def test_an_abandoned_stream_is_recorded_as_499(upstream: FakeUpstream, gateway: Gateway) -> None:
    before = _count_499(gateway, "true")
    upstream.enqueue(Sse([chunk({"role": "assistant", "content": "Hi"})], done=False, hang_at_end=True))
    body = {"model": MODEL, "messages": USER, "stream": True}
    _send_and_leave(gateway, body, lambda: _until(lambda: bool(upstream.requests)))
    assert upstream.disconnected.wait(5)
    _wait_for_499(gateway, before, "true")
    assert total(scrape(gateway.url), "gateway_requests_in_flight") == 0


def test_a_finished_request_is_not_499(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    before = scrape(gateway.url)
    upstream.enqueue(completion("fine"))
    gateway.client().chat.completions.create(model=MODEL, messages=USER)
    after = scrape(gateway.url)
    for status, moved in (("200", 1), ("499", 0)):
        name = "gateway_requests_total"
        assert total(after, name, status=status) - total(before, name, status=status) == moved


def _until(condition: Callable[[], bool], timeout_s: float = 5) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True
