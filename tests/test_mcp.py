"""MCP servers as tool sources, end to end: real SDK servers over stdio and streamable HTTP,
the real gateway on loopback, the real openai client, streaming and not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from gateway.tools.mcp import function_name
from tests.conftest import Gateway, GatewayFactory
from tests.fake_upstream import MODEL, FakeUpstream, Sse, call, chunk, completion
from tests.mcp_servers.http_server import http_server
from tests.mcp_servers.tools import PNG_BYTES
from tests.servers import ServerThread

ROOT = Path(__file__).resolve().parent.parent
USER = [{"role": "user", "content": "Use the tools."}]


def stdio_config(call_log: Path, **extra: Any) -> dict[str, Any]:
    return {
        "name": "files",
        "command": sys.executable,
        "args": ["-m", "tests.mcp_servers.stdio_server"],
        "cwd": str(ROOT),
        "env": {"MCP_TEST_CALL_LOG": str(call_log)},
        "timeout_s": 10,
        **extra,
    }


def http_config(server: ServerThread, **extra: Any) -> dict[str, Any]:
    return {"name": "web", "url": f"{server.url}/mcp", "timeout_s": 5, **extra}


@pytest.fixture
def call_log(tmp_path: Path) -> Path:
    return tmp_path / "calls.jsonl"


@pytest.fixture
def legacy() -> bool:
    """Whether the HTTP test server speaks only the handshake era (pre-2026); tests parametrize it."""
    return False


@pytest.fixture
def web(call_log: Path, legacy: bool) -> Iterator[ServerThread]:
    server = http_server(call_log, legacy=legacy)
    yield server
    if server.thread.is_alive():
        server.stop()
    else:
        server.sock.close()


def calls_seen(call_log: Path) -> list[dict[str, Any]]:
    """Every tools/call the MCP server received, as the SDK read it off the wire."""
    if not call_log.exists():
        return []
    return [json.loads(line) for line in call_log.read_text().splitlines()]


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def offered(upstream: FakeUpstream, index: int = -1) -> list[str]:
    return [t["function"]["name"] for t in upstream.bodies[index].get("tools", [])]


def tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body["messages"] if m["role"] == "tool"]


def tool_round(calls: list[dict[str, Any]], stream: bool) -> Any:
    """An upstream reply asking for ``calls``, as JSON or as an SSE stream."""
    if not stream:
        return completion(None, calls)
    deltas = [{"index": i, **c} for i, c in enumerate(calls)]
    return Sse([chunk({"role": "assistant", "content": ""}), chunk({"tool_calls": deltas}), chunk({}, "tool_calls")])


def answer_round(text: str, stream: bool) -> Any:
    if not stream:
        return completion(text)
    return Sse([chunk({"role": "assistant", "content": text}), chunk({}, "stop")])


def converse(gateway: Gateway, stream: bool) -> str:
    client = gateway.client()
    if stream:
        chunks = list(client.chat.completions.create(model=MODEL, messages=USER, stream=True))  # type: ignore[arg-type]
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    answer = client.chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
    return answer.choices[0].message.content or ""


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_results_errors_and_invalid_arguments(
    web: ServerThread,
    upstream: FakeUpstream,
    make_gateway: GatewayFactory,
    call_log: Path,
    transport: str,
    stream: bool,
) -> None:
    if transport == "stdio":
        server, prefix = stdio_config(call_log), "files__"
    else:
        web.start()
        server, prefix = http_config(web), "web__"
    gateway = make_gateway({"tools": {"mcp_servers": [server]}})
    upstream.enqueue(
        tool_round(
            [
                call(f"{prefix}echo", {"text": "hi"}, "c_text"),
                call(f"{prefix}stats", {"numbers": [1, 2, 3]}, "c_structured"),
                call(f"{prefix}fail", {"reason": "no"}, "c_error"),
                call(f"{prefix}media", {}, "c_media"),
                call(f"{prefix}echo", {"text": 5}, "c_invalid"),
                call(f"{prefix}stats", {"numbers": [1, "two"]}, "c_invalid_nested"),
            ],
            stream,
        ),
        answer_round("done", stream),
    )
    assert converse(gateway, stream) == "done"
    text, structured, error, media, invalid, nested = (m["content"] for m in tool_messages(upstream.bodies[1]))
    assert text == "echo: hi"
    assert json.loads(structured) == {"count": 3, "total": 6.0, "mean": 2.0}
    assert json.loads(error) == {"error": "Error executing tool fail: refused: no", "type": "error"}
    assert media.splitlines() == [
        "here you go",
        f"[image: image/png, {len(PNG_BYTES)} bytes]",
        "[embedded resource: file:///notes.txt, text/plain, 300 characters]",
        "[resource link: file:///big.csv, big.csv, text/csv]",
    ]
    assert json.loads(invalid) == {
        "error": f"Invalid arguments for {prefix}echo: $.text: 5 is not of type 'string'",
        "type": "invalid_arguments",
    }
    assert (
        json.loads(nested)["error"]
        == f"Invalid arguments for {prefix}stats: $.numbers[1]: 'two' is not of type 'number'"
    )
    seen = calls_seen(call_log)
    assert sorted(c["name"] for c in seen) == ["echo", "fail", "media", "stats"]
    assert {"text": 5} not in [c["arguments"] for c in seen]


def test_tools_are_offered_with_prefix_schema_and_allowlist(
    web: ServerThread, upstream: FakeUpstream, make_gateway: GatewayFactory, call_log: Path
) -> None:
    web.start()
    gateway = make_gateway(
        {"tools": {"mcp_servers": [stdio_config(call_log), http_config(web, prefix="w_", allow=["echo", "nope"])]}}
    )
    upstream.enqueue(completion("hi"))
    gateway.client().chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
    names = offered(upstream)
    assert {"add", "files__echo", "files__stats", "files__grow", "w_echo"} <= set(names)
    assert [n for n in names if n.startswith("w_")] == ["w_echo"]
    echo = next(t["function"] for t in upstream.bodies[0]["tools"] if t["function"]["name"] == "files__echo")
    assert echo["description"] == "Repeat the text."
    assert echo["parameters"] == {
        "type": "object",
        "properties": {"text": {"title": "Text", "type": "string"}},
        "required": ["text"],
        "title": "echoArguments",
    }
    with gateway.http() as http:
        ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["tool_sources"] == {"files": "ok", "web": "ok"}


def test_hung_server_is_bounded_by_the_call_timeout(
    web: ServerThread, upstream: FakeUpstream, make_gateway: GatewayFactory
) -> None:
    web.start()
    gateway = make_gateway({"tools": {"mcp_servers": [http_config(web, timeout_s=0.5)]}})
    upstream.enqueue(
        completion(None, [call("web__hang", {"seconds": 30}, "h1")]),
        completion(None, [call("web__echo", {"text": "still here"}, "h2")]),
        completion("ok"),
    )
    started = time.monotonic()
    gateway.client().chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
    assert time.monotonic() - started < 10
    [hung] = tool_messages(upstream.bodies[1])
    assert json.loads(hung["content"]) == {"error": "Tool web__hang did not finish within 0.5 s.", "type": "timeout"}
    assert tool_messages(upstream.bodies[2])[-1]["content"] == "echo: still here"


@pytest.mark.parametrize("legacy", [False, True], ids=["2026", "handshake-era"])
def test_http_server_stopped_mid_call_is_reconnected_when_back(
    web: ServerThread, upstream: FakeUpstream, make_gateway: GatewayFactory, call_log: Path, legacy: bool
) -> None:
    web.start()
    gateway = make_gateway({"tools": {"mcp_servers": [http_config(web, ping_interval_s=0.5)]}})
    upstream.enqueue(completion(None, [call("web__hang", {"seconds": 30}, "s1")]), completion("sorry"))
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(converse, gateway, False)
        wait_for(lambda: [c["name"] for c in calls_seen(call_log)] == ["hang"], "the call to reach the server")
        web.stop()
        assert pending.result(timeout=30) == "sorry"
    [lost] = tool_messages(upstream.bodies[1])
    assert json.loads(lost["content"])["type"] == "error"
    with gateway.http() as http:
        wait_for(lambda: http.get("/readyz").json()["tool_sources"] == {"web": "unavailable"}, "the outage to show")
        back = http_server(call_log, port=web.port, legacy=legacy).start()
        try:
            wait_for(lambda: http.get("/readyz").json()["tool_sources"] == {"web": "ok"}, "the server to reconnect")
            upstream.enqueue(completion(None, [call("web__echo", {"text": "again"}, "s2")]), completion("ok"))
            assert converse(gateway, stream=False) == "ok"
            assert tool_messages(upstream.bodies[3])[0]["content"] == "echo: again"
        finally:
            gateway.stop()
            back.stop()


def test_servers_absent_at_start_up_are_reported_and_join_later(
    web: ServerThread, upstream: FakeUpstream, make_gateway: GatewayFactory
) -> None:
    # The web server's port is bound but not listening yet: connections are refused.
    ghost = {"name": "ghost", "command": str(ROOT / "no-such-mcp-server")}
    started = time.monotonic()
    gateway = make_gateway({"tools": {"mcp_servers": [http_config(web), ghost]}})
    assert time.monotonic() - started < 5
    with gateway.http() as http:
        ready = http.get("/readyz")
        # Chat is served without their tools, so the gateway is ready; the detail names them.
        assert ready.status_code == 200
        assert ready.json()["tool_sources"] == {"web": "unavailable", "ghost": "unavailable"}
        assert ready.json()["mcp_servers"]["ghost"]["error"].startswith("FileNotFoundError")
        upstream.enqueue(completion("no tools yet"))
        gateway.client().chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
        assert not [n for n in offered(upstream) if n.startswith(("web__", "ghost__"))]

        web.start()
        wait_for(lambda: http.get("/readyz").json()["tool_sources"]["web"] == "ok", "the web server to connect")
        assert http.get("/readyz").json()["tool_sources"]["ghost"] == "unavailable"
    upstream.enqueue(completion("now"))
    gateway.client().chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
    assert "web__echo" in offered(upstream)


def test_server_that_never_answers_does_not_hold_up_start_up(
    upstream: FakeUpstream, make_gateway: GatewayFactory
) -> None:
    mute = {"name": "mute", "command": sys.executable, "args": ["-c", "import sys; sys.stdin.read()"], "timeout_s": 0.5}
    started = time.monotonic()
    gateway = make_gateway({"tools": {"mcp_servers": [mute]}})
    assert time.monotonic() - started < 5
    with gateway.http() as http:
        assert http.get("/readyz").json()["tool_sources"] == {"mute": "unavailable"}
    upstream.enqueue(completion(None, [call("mute__anything", {}, "m1")]), completion("ok"))
    gateway.client().chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
    assert json.loads(tool_messages(upstream.bodies[1])[0]["content"])["type"] == "unknown_tool"


def test_tool_list_changes_update_the_offered_tools(
    upstream: FakeUpstream, make_gateway: GatewayFactory, call_log: Path
) -> None:
    gateway = make_gateway({"tools": {"mcp_servers": [stdio_config(call_log)]}})
    registry = gateway.app.state.gateway.registry
    upstream.enqueue(completion(None, [call("files__grow", {"tool_name": "greet"}, "g1")]), completion("grown"))
    gateway.client().chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
    assert "files__greet" not in offered(upstream, 0)
    wait_for(lambda: registry.get("files__greet") is not None, "the new tool to be listed")

    upstream.enqueue(
        completion(
            None, [call("files__greet", {"person": "Ada"}, "g2"), call("files__shrink", {"tool_name": "echo"}, "g3")]
        ),
        completion("greeted"),
    )
    gateway.client().chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
    assert "files__greet" in offered(upstream, 2)
    assert [m["content"] for m in tool_messages(upstream.bodies[3])] == ["hello Ada", "removed echo"]
    wait_for(lambda: registry.get("files__echo") is None, "the removed tool to go")

    upstream.enqueue(completion("after"))
    gateway.client().chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
    assert "files__echo" not in offered(upstream) and "files__greet" in offered(upstream)
    with gateway.http() as http:
        metrics = http.get("/metrics").text
    assert 'gateway_tool_calls_total{gen_ai_tool_name="files__greet",outcome="ok"}' in metrics


def test_shutdown_stops_the_stdio_server(upstream: FakeUpstream, make_gateway: GatewayFactory, call_log: Path) -> None:
    gateway = make_gateway({"tools": {"mcp_servers": [stdio_config(call_log)]}})
    upstream.enqueue(completion(None, [call("files__whoami", {}, "p1")]), completion("ok"))
    gateway.client().chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
    pid = int(tool_messages(upstream.bodies[1])[0]["content"])
    assert _alive(pid)
    gateway.stop()
    wait_for(lambda: not _alive(pid), "the stdio server to exit", timeout_s=10)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_cli_lists_mcp_tools_with_their_source(tmp_path: Path, call_log: Path) -> None:
    config = tmp_path / "g.yaml"
    config.write_text(
        json.dumps(
            {
                "upstreams": [{"name": "up", "base_url": "http://127.0.0.1:9/v1"}],
                "tools": {
                    "paths": [],
                    "mcp_servers": [
                        stdio_config(call_log, allow=["echo", "stats"]),
                        {"name": "gone", "url": "http://127.0.0.1:9/mcp"},
                    ],
                },
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "tools", "list", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert [(t["function"]["name"], t["x_source"]) for t in listing] == [
        ("files__echo", "mcp:files"),
        ("files__stats", "mcp:files"),
    ]
    assert "warning: MCP server 'gone' is unavailable: ConnectError" in result.stderr


def test_duplicate_server_names_are_a_config_error() -> None:
    text = (
        "upstreams: [{name: a, base_url: 'http://x'}]\n"
        "tools: {mcp_servers: [{name: s, url: 'http://a'}, {name: s, command: b}]}"
    )
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "inline.yaml", environ={})
    assert "duplicate MCP server names: s" in raised.value.problems[0]


def test_tool_names_are_made_valid_function_names() -> None:
    assert function_name("files__", "read_file") == "files__read_file"
    assert function_name("files__", "fs.read/v2") == "files__fs_read_v2"
    assert len(function_name("x__", "n" * 100)) == 64


def test_a_keys_tool_patterns_cover_mcp_tools(
    web: ServerThread, upstream: FakeUpstream, make_gateway: GatewayFactory, call_log: Path
) -> None:
    web.start()
    keys = [{"name": "echo-only", "key": "sk-echo-only-1", "tools": ["web__echo"]}]
    gateway = make_gateway({"tools": {"mcp_servers": [http_config(web)]}, "auth": {"api_keys": keys}})
    with gateway.http() as http:
        http.headers["authorization"] = "Bearer sk-echo-only-1"  # the detail is shown to a valid key only
        wait_for(lambda: http.get("/readyz").json()["tool_sources"] == {"web": "ok"}, "the MCP server to connect")
    upstream.enqueue(
        completion(None, [call("web__echo", {"text": "hi"}, "m1"), call("web__stats", {"numbers": [1]}, "m2")]),
        completion("done"),
    )
    client = gateway.client(api_key="sk-echo-only-1")
    assert client.chat.completions.create(model=MODEL, messages=USER).choices[0].message.content == "done"  # type: ignore[arg-type]
    assert offered(upstream, 0) == ["web__echo"]
    echo, stats = (m["content"] for m in tool_messages(upstream.bodies[1]))
    assert echo == "echo: hi" and json.loads(stats)["type"] == "unknown_tool"
    assert [c["name"] for c in calls_seen(call_log)] == ["echo"]
