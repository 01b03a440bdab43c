"""MCP server health: a lost server is seen promptly, its tools are withdrawn and offered again when it
is back, ``/readyz`` and ``gateway_mcp_server_up`` report it, and a stdio server's stderr is logged.

Real SDK servers: stdio children killed with a signal, HTTP servers stopped, or frozen with SIGSTOP so
they keep their sockets open and only a ping can tell.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.logs import JsonFormatter
from tests.conftest import Gateway, GatewayFactory
from tests.fake_upstream import MODEL, FakeUpstream, call, completion
from tests.test_mcp import (
    ROOT,
    USER,
    answer_round,
    converse,
    offered,
    stdio_config,
    tool_messages,
    tool_round,
    wait_for,
)


def server_env(call_log: Path, gate: Path | None = None, legacy: bool = False) -> dict[str, str]:
    env = {"MCP_TEST_CALL_LOG": str(call_log)}
    if gate is not None:
        env["MCP_TEST_GATE"] = str(gate)
    if legacy:
        env["MCP_TEST_LEGACY"] = "1"
    return env


def chat(gateway: Gateway) -> str:
    answer = gateway.client().chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
    return answer.choices[0].message.content or ""


def whoami(gateway: Gateway, upstream: FakeUpstream) -> int:
    """The stdio server's pid, through a real tool round."""
    upstream.enqueue(completion(None, [call("files__whoami", {}, "w1")]), completion("ok"))
    chat(gateway)
    return int(tool_messages(upstream.bodies[-1])[-1]["content"])


def mcp_servers(http: httpx.Client) -> dict[str, Any]:
    ready = http.get("/readyz")
    assert ready.status_code == 200, ready.text  # an MCP server never makes the gateway unready
    servers: dict[str, Any] = ready.json()["mcp_servers"]
    return servers


def server_up(http: httpx.Client, name: str) -> float:
    found = re.search(rf'^gateway_mcp_server_up{{server="{name}"}} (\S+)$', http.get("/metrics").text, re.M)
    assert found is not None
    return float(found.group(1))


@pytest.fixture
def call_log(tmp_path: Path) -> Path:
    return tmp_path / "calls.jsonl"


@pytest.fixture
def request_log(tmp_path: Path) -> Path:
    return tmp_path / "requests.log"


@pytest.fixture
def legacy() -> bool:
    """Whether the test server speaks only the handshake era (pre-2026); tests parametrize it."""
    return False


@pytest.mark.parametrize("legacy", [False, True], ids=["2026", "handshake-era"])
def test_killed_stdio_server_is_withdrawn_at_once_and_offered_again_when_back(
    upstream: FakeUpstream, make_gateway: GatewayFactory, call_log: Path, tmp_path: Path, legacy: bool
) -> None:
    gate = tmp_path / "gate"
    server = stdio_config(call_log, env=server_env(call_log, gate, legacy))
    gateway = make_gateway({"tools": {"mcp_servers": [server]}})
    pid = whoami(gateway, upstream)
    with gateway.http() as http:
        assert mcp_servers(http)["files"]["status"] == "ok"
        assert server_up(http, "files") == 1.0

        gate.touch()  # restarts are refused until the test opens the gate again
        os.kill(pid, signal.SIGKILL)
        # The gauge changes when the tools are withdrawn, and /metrics is not cached as /readyz is.
        wait_for(lambda: server_up(http, "files") == 0.0, "the loss to be seen", timeout_s=2)
        wait_for(lambda: mcp_servers(http)["files"]["status"] == "unavailable", "/readyz to show it", timeout_s=3)
        down = mcp_servers(http)["files"]
        assert down["tools"] == 0 and down["error"] == "the server process exited"

        # A model that remembers the tool calls it anyway: an error at once, and nothing of the server offered.
        upstream.enqueue(completion(None, [call("files__echo", {"text": "hi"}, "e1")]), completion("no files"))
        started = time.monotonic()
        assert chat(gateway) == "no files"
        assert time.monotonic() - started < 2
        assert not [n for n in offered(upstream, -2) if n.startswith("files__")]
        assert json.loads(tool_messages(upstream.bodies[-1])[-1]["content"])["type"] == "unknown_tool"

        gate.unlink()
        wait_for(lambda: mcp_servers(http)["files"]["status"] == "ok", "the server to be reconnected", timeout_s=20)
        assert server_up(http, "files") == 1.0
    assert whoami(gateway, upstream) != pid
    assert "files__echo" in offered(upstream, -2)


def test_call_to_a_server_lost_mid_request_fails_at_once(
    upstream: FakeUpstream, make_gateway: GatewayFactory, call_log: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gateway = make_gateway({"tools": {"mcp_servers": [stdio_config(call_log, env=server_env(call_log, gate))]}})
    gate.touch()
    upstream.enqueue(
        tool_round([call("files__whoami", {}, "k1")], stream=True),
        tool_round([call("files__die", {}, "k2")], stream=True),
        tool_round([call("files__echo", {"text": "hi"}, "k3")], stream=True),
        answer_round("carried on", stream=True),
    )
    started = time.monotonic()
    assert converse(gateway, stream=True) == "carried on"
    # Offered when the request began, gone by its third round: an error at once, not a wait for a reconnection.
    assert time.monotonic() - started < 3
    before, died, after = (m["content"] for m in tool_messages(upstream.bodies[3]))
    assert before.isdigit()
    assert "was lost during the call" in json.loads(died)["error"]
    assert json.loads(after) == {
        "error": "MCP server 'files' is unavailable (the server process exited); its tools are withdrawn until "
        "it reconnects.",
        "type": "error",
    }
    gate.unlink()
    with gateway.http() as http:
        wait_for(lambda: server_up(http, "files") == 1.0, "the server to be reconnected", timeout_s=20)
    assert whoami(gateway, upstream) != int(before)


@pytest.fixture
def frozen_server(call_log: Path, request_log: Path, legacy: bool) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """The HTTP test server as a process of its own, so SIGSTOP can freeze it with its sockets open."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.mcp_servers.http_server", *(["--legacy"] if legacy else [])],
        cwd=ROOT,
        env={**os.environ, "MCP_TEST_CALL_LOG": str(call_log), "MCP_TEST_REQUEST_LOG": str(request_log)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())  # printed once it accepts connections; EOF fails this
        yield process, port
    finally:
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.parametrize("legacy", [False, True], ids=["2026", "handshake-era"])
def test_http_server_that_stops_answering_is_caught_by_the_ping(
    upstream: FakeUpstream,
    make_gateway: GatewayFactory,
    frozen_server: tuple[subprocess.Popen[str], int],
    request_log: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.tools.mcp")
    process, port = frozen_server
    server = {"name": "web", "url": f"http://127.0.0.1:{port}/mcp", "timeout_s": 2, "ping_interval_s": 0.5}
    gateway = make_gateway({"tools": {"mcp_servers": [server]}})

    def probes() -> int:
        # MCP ping, or server/discover on a 2026-07-28 server (one of those is the connection's own).
        if not request_log.exists():
            return 0
        return sum(line in ("ping", "server/discover") for line in request_log.read_text().splitlines())

    with gateway.http() as http:
        assert mcp_servers(http)["web"]["status"] == "ok"
        wait_for(lambda: probes() >= 3, "pings to reach the server")
        assert server_up(http, "web") == 1.0  # answered pings keep it up

        # Frozen, it closes nothing: its sockets stay open and its change subscription stays up.
        process.send_signal(signal.SIGSTOP)
        # Within one interval plus one ping's time limit (1 s), with room for a busy machine.
        wait_for(lambda: server_up(http, "web") == 0.0, "the ping to fail", timeout_s=3)
        wait_for(lambda: mcp_servers(http)["web"]["status"] == "unavailable", "/readyz to show it", timeout_s=3)
        assert mcp_servers(http)["web"]["error"]  # the ping's, or a reconnection's since
        lost = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "mcp_disconnected"]
        assert lost[0] == "MCP server web disconnected: no answer to a ping within 0.5 s"
        upstream.enqueue(completion("no web"))
        assert chat(gateway) == "no web"
        assert not [n for n in offered(upstream) if n.startswith("web__")]

        process.send_signal(signal.SIGCONT)
        wait_for(lambda: mcp_servers(http)["web"]["status"] == "ok", "the server to be reconnected", timeout_s=20)
        assert server_up(http, "web") == 1.0
    upstream.enqueue(completion(None, [call("web__echo", {"text": "back"}, "b1")]), completion("ok"))
    assert chat(gateway) == "ok"
    assert tool_messages(upstream.bodies[-1])[-1]["content"] == "echo: back"


@pytest.mark.parametrize("legacy", [False], ids=["2026"])
def test_a_server_busy_with_a_long_call_is_not_dropped_by_the_ping(
    upstream: FakeUpstream, make_gateway: GatewayFactory, frozen_server: tuple[subprocess.Popen[str], int]
) -> None:
    _, port = frozen_server
    server = {"name": "web", "url": f"http://127.0.0.1:{port}/mcp", "timeout_s": 10, "ping_interval_s": 0.3}
    gateway = make_gateway({"tools": {"mcp_servers": [server]}})
    # The call holds the server's loop for several ping intervals: its pings go unanswered meanwhile.
    upstream.enqueue(completion(None, [call("web__block", {"seconds": 2}, "b1")]), completion("done"))
    assert chat(gateway) == "done"
    assert tool_messages(upstream.bodies[-1])[-1]["content"] == "unblocked"
    with gateway.http() as http:
        assert mcp_servers(http)["web"]["status"] == "ok"
        assert server_up(http, "web") == 1.0


def test_tools_that_need_mcp_tasks_are_not_offered(
    upstream: FakeUpstream, make_gateway: GatewayFactory, call_log: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.tools.mcp")
    legacy = stdio_config(call_log, env=server_env(call_log, legacy=True))
    gateway = make_gateway({"tools": {"mcp_servers": [legacy]}})
    upstream.enqueue(completion("hi"))
    chat(gateway)
    names = offered(upstream)
    # batch says taskSupport "required"; echo's "optional" means it also runs as a plain call.
    assert "files__echo" in names and "files__whoami" in names
    assert "files__batch" not in names
    skipped = [r.getMessage() for r in caplog.records if "'batch' skipped" in r.getMessage()]
    assert skipped == [
        "MCP server files: tool 'batch' skipped: it requires task-augmented execution (execution.taskSupport), "
        "which the gateway lacks"
    ]


def test_stdio_server_stderr_is_logged_with_its_own_field(
    make_gateway: GatewayFactory,
    call_log: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.tools.mcp")
    gate = tmp_path / "gate"
    gate.touch()
    files = stdio_config(call_log, env=server_env(call_log))
    gated = stdio_config(call_log, name="gated", env=server_env(call_log, gate))
    gateway = make_gateway({"tools": {"mcp_servers": [files, gated]}})

    def stderr_records() -> list[logging.LogRecord]:
        return [r for r in caplog.records if hasattr(r, "mcp_stderr")]

    wait_for(lambda: {r.mcp_server for r in stderr_records()} == {"files", "gated"}, "both servers' stderr lines")
    lines = {r.mcp_server: r.mcp_stderr for r in stderr_records()}
    assert re.fullmatch(r"stdio-test starting \(pid \d+\)", lines["files"])
    assert lines["gated"] == f"stdio-test refuses to start: {gate} exists"
    entry = json.loads(JsonFormatter().format(stderr_records()[0]))
    assert entry["event"] == "mcp_stderr" and entry["mcp_stderr"] and entry["mcp_server"] in {"files", "gated"}
    # Nothing of it reaches the gateway's own stderr as raw lines.
    assert "stdio-test" not in capfd.readouterr().err
    with gateway.http() as http:
        assert mcp_servers(http)["gated"]["status"] == "unavailable"
