"""A client that goes away: the gateway stops the upstream's work and counts the request as 499."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from e2e.conftest import GatewayProcess, Upstream

# A long generation: the upstream would be busy for many seconds if nobody cancelled it.
LONG = {
    "messages": [{"role": "user", "content": "Count from 1 to 2000, one number per line."}],
    "max_tokens": 2000,
    "tool_choice": "none",
}


def _long_request(upstream: Upstream) -> dict[str, Any]:
    if upstream.llama_cpp_root is None:
        return dict(LONG)
    # llama.cpp stops at the end-of-sequence token otherwise, which a small model reaches early.
    return {**LONG, "extra_body": {"ignore_eos": True}}


def _eventually(check: Callable[[], bool], timeout_s: float = 10, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval_s)
    return check()


def _requests(gateway: GatewayProcess, stream: str, status: str) -> float:
    return sum(
        value
        for (name, labels), value in gateway.metrics().items()
        if name == "gateway_requests_total" and {("stream", stream), ("status", status)} <= labels
    )


def _in_flight(gateway: GatewayProcess) -> float:
    return gateway.metrics()[("gateway_requests_in_flight", frozenset())]


# llama.cpp checks whether a non-streamed request's client is still there only after a whole second in
# which no result of any task arrived (each result wakes every waiting request and restarts its wait), and
# every /slots call is such a task: polling /slots faster than that would itself keep the gone request alive.
SLOTS_POLL_INTERVAL_S = 1.5


def _assert_upstream_stops(upstream: Upstream) -> None:
    if upstream.busy_slots() is None:
        return
    assert _eventually(lambda: upstream.busy_slots() == 0, timeout_s=30, interval_s=SLOTS_POLL_INTERVAL_S), (
        f"llama.cpp is still generating for a gone client: {upstream.slots()}"
    )


@pytest.fixture(autouse=True)
def _idle_upstream(upstream: Upstream) -> None:
    """Start from an idle upstream, so that a busy slot afterwards is this test's request."""
    if upstream.busy_slots() is not None:
        assert _eventually(lambda: upstream.busy_slots() == 0, timeout_s=30, interval_s=SLOTS_POLL_INTERVAL_S), (
            f"busy before the test: {upstream.slots()}"
        )


def test_stream_disconnect_cancels_the_upstream(
    client: openai.OpenAI, model: str, gateway: GatewayProcess, upstream: Upstream
) -> None:
    abandoned_before = _requests(gateway, "true", "499")
    stream = client.chat.completions.create(model=model, stream=True, **_long_request(upstream))
    for received, _ in enumerate(stream):
        if received == 5:
            break
    if upstream.busy_slots() is not None:
        assert upstream.busy_slots() == 1, "the upstream should still be generating"
    stream.close()

    _assert_upstream_stops(upstream)
    assert _eventually(lambda: _in_flight(gateway) == 0)
    assert _eventually(lambda: _requests(gateway, "true", "499") == abandoned_before + 1), (
        "an abandoned stream is counted as 499"
    )


def test_non_streamed_disconnect_cancels_the_upstream(gateway: GatewayProcess, model: str, upstream: Upstream) -> None:
    if upstream.busy_slots() is None:
        pytest.skip("the upstream does not report its busy slots (llama.cpp's /slots)")
    abandoned_before = _requests(gateway, "false", "499")
    impatient = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="e2e", max_retries=0, timeout=2)
    with impatient, pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model=model, **_long_request(upstream))
    _assert_upstream_stops(upstream)
    assert _eventually(lambda: _in_flight(gateway) == 0)
    assert _eventually(lambda: _requests(gateway, "false", "499") == abandoned_before + 1)
