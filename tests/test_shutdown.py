"""SIGTERM on a real `gateway serve` process: streams in flight finish, new work is refused, the rest is cut."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import TOOL_FIXTURES
from tests.fake_upstream import MODEL, FakeUpstream, Sse, chunk
from tests.redis_server import _free_port
from tests.servers import serve_process

USER = [{"role": "user", "content": "tell me slowly"}]


def _serve(upstream: FakeUpstream, tmp_path: Path, grace_s: float) -> tuple[subprocess.Popen[bytes], str, int]:
    port = _free_port()
    config = {
        "server": {"host": "127.0.0.1", "port": port, "shutdown_grace_s": grace_s},
        "upstreams": [{"name": "fake", "base_url": upstream.base_url}],
        "tools": {"paths": [str(TOOL_FIXTURES)]},
    }
    process, url = serve_process(config, tmp_path / "gateway.yaml")
    return process, url, port


def _stream_under_way(url: str) -> tuple[threading.Thread, list[str]]:
    """A streamed request read in a thread; returns once its first content has arrived."""
    lines: list[str] = []
    first_content = threading.Event()
    reader = threading.Thread(target=_read_stream, args=(url, lines, first_content))
    reader.start()
    assert first_content.wait(10), "the stream did not start"
    return reader, lines


def _gated_stream() -> Sse:
    """Two words, then the upstream waits for the test's gate, then the rest of the answer."""
    items: list[Any] = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Once"})]
    items += [chunk({"content": " upon"}), chunk({"content": " a time."}), chunk({}, "stop")]
    return Sse(items, gate_after=2, gate_timeout_s=20)


def _read_stream(url: str, lines: list[str], first_content: threading.Event) -> None:
    body = {"model": MODEL, "messages": USER, "stream": True, "tool_choice": "none"}
    with (
        httpx.Client(base_url=url, timeout=30) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        for line in response.iter_lines():
            if line:
                lines.append(line)
            if "Once" in line:
                first_content.set()


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: g\r\n\r\n")
            return not sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return True


def test_sigterm_lets_a_stream_in_flight_finish_and_refuses_new_work(upstream: FakeUpstream, tmp_path: Path) -> None:
    process, url, port = _serve(upstream, tmp_path, grace_s=20)
    reply = _gated_stream()
    upstream.enqueue(reply)
    try:
        reader, lines = _stream_under_way(url)
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not _refused(port):
            assert time.monotonic() < deadline, "new connections were still served after SIGTERM"
            time.sleep(0.05)
        reply.gate.set()  # the upstream finishes its answer during the drain
        reader.join(20)
        # uvicorn re-raises the signal once it has shut down cleanly: killed by SIGTERM, not crashed.
        assert process.wait(20) in (0, -signal.SIGTERM)
    finally:
        reply.gate.set()
        if process.poll() is None:
            process.kill()
    text = "".join(line[6:] for line in lines if line.startswith("data: {"))
    assert "Once" in text and "a time." in text
    assert lines[-1] == "data: [DONE]"
    assert not any('"error"' in line for line in lines)


def test_a_stream_outliving_the_grace_is_ended_with_an_error_event(upstream: FakeUpstream, tmp_path: Path) -> None:
    process, url, _ = _serve(upstream, tmp_path, grace_s=0.5)
    reply = _gated_stream()
    upstream.enqueue(reply)
    try:
        reader, lines = _stream_under_way(url)
        process.send_signal(signal.SIGTERM)
        reader.join(20)
        assert not reader.is_alive(), "the stream was not ended"
        process.wait(20)
    finally:
        reply.gate.set()
        if process.poll() is None:
            process.kill()
    events = [line[6:] for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert '"code":"shutdown"' in events[-2].replace(" ", "")
