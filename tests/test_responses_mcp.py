"""MCP tools named by a Responses request (``{"type": "mcp"}``): narrowing, listing, approvals, the
configured-servers-only rule, and agents built with openai-agents that use them. Real MCP servers
from ``tests/mcp_servers``, fake upstream and gateway on loopback, the official openai client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import Gateway, GatewayFactory
from tests.fake_upstream import MODEL, FakeUpstream, Sse, chunk, completion
from tests.fake_upstream import call as tool_call
from tests.mcp_servers.http_server import http_server
from tests.responses_wire import create, input_items, stream
from tests.servers import ServerThread
from tests.test_mcp import calls_seen, http_config, stdio_config
from tests.test_responses_flows import messages


def mcp_calls(call_log: Path) -> list[tuple[str, Any]]:
    """The tools/call requests the MCP server received: (tool name, arguments)."""
    return [(c["name"], c["arguments"]) for c in calls_seen(call_log)]


def offered(upstream: FakeUpstream, index: int = -1) -> list[str]:
    return [t["function"]["name"] for t in upstream.bodies[index].get("tools", [])]


@pytest.fixture
def call_log(tmp_path: Path) -> Path:
    return tmp_path / "calls.jsonl"


@pytest.fixture
def files(make_gateway: GatewayFactory, call_log: Path) -> Gateway:
    """A gateway with the stdio test MCP server configured as ``files``."""
    return make_gateway({"tools": {"mcp_servers": [stdio_config(call_log)]}})


@pytest.fixture
def web(call_log: Path) -> Iterator[ServerThread]:
    server = http_server(call_log).start()
    yield server
    server.stop()


def mcp_tool(require_approval: str, label: str = "files", **extra: Any) -> Any:
    return {"type": "mcp", "server_label": label, "require_approval": require_approval, **extra}


def test_mcp_tool_offers_only_the_allowed_tool_and_runs_it(
    upstream: FakeUpstream, files: Gateway, call_log: Path
) -> None:
    upstream.enqueue(completion(None, [tool_call("files__echo", {"text": "hi"}, "call_e")]), completion("Done."))
    tools = [mcp_tool("never", allowed_tools=["echo"])]
    response = create(files.client(), model=MODEL, input="Echo hi.", tools=tools)
    listed, mcp_call, message = response.output
    assert listed.type == "mcp_list_tools" and listed.server_label == "files"
    assert [tool.name for tool in listed.tools] == ["echo"]
    assert listed.tools[0].input_schema["required"] == ["text"]  # type: ignore[index]
    assert [name for name in offered(upstream, 0) if name.startswith("files__")] == ["files__echo"]
    assert mcp_call.type == "mcp_call" and (mcp_call.server_label, mcp_call.name) == ("files", "echo")
    assert mcp_call.output == "echo: hi" and mcp_call.status == "completed" and mcp_call.approval_request_id is None
    assert message.type == "message" and response.output_text == "Done."
    assert mcp_calls(call_log) == [("echo", {"text": "hi"})]


def _ask_approval(upstream: FakeUpstream, gateway: Gateway, call_log: Path, streamed: bool = False) -> tuple[Any, Any]:
    """A first turn whose echo call waits for approval: (response, its approval request)."""
    echo = tool_call("files__echo", {"text": "hi"}, "call_e")
    params: dict[str, Any] = {"model": MODEL, "input": "Echo hi.", "tools": [mcp_tool("always")]}
    if streamed:
        upstream.enqueue(
            Sse([chunk({"role": "assistant"}), chunk({"tool_calls": [{"index": 0, **echo}]}), chunk({}, "tool_calls")])
        )
        run = stream(gateway.client(), **params)
        assert run.types[2:5] == [
            "response.output_item.added",
            "response.mcp_list_tools.in_progress",
            "response.mcp_list_tools.completed",
        ]
        assert [e["item"]["type"] for e in run.of("response.output_item.added")][-1] == "mcp_approval_request"
        response = run.final
    else:
        upstream.enqueue(completion(None, [echo]))
        response = create(gateway.client(), **params)
    assert [item.type for item in response.output] == ["mcp_list_tools", "mcp_approval_request"]
    request = response.output[-1]
    assert request.type == "mcp_approval_request"
    assert (request.server_label, request.name, json.loads(request.arguments)) == ("files", "echo", {"text": "hi"})
    assert response.status == "completed"
    assert mcp_calls(call_log) == [], "a call waiting for approval ran"
    return response, request


def _answer_approval(previous: Any, request: Any, approve: bool) -> dict[str, Any]:
    response = {"type": "mcp_approval_response", "approval_request_id": request.id, "approve": approve}
    return {"model": MODEL, "previous_response_id": previous.id, "input": [response], "tools": [mcp_tool("always")]}


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "stream"])
def test_approved_mcp_call_runs_and_the_answer_continues(
    upstream: FakeUpstream, files: Gateway, call_log: Path, streamed: bool
) -> None:
    first, request = _ask_approval(upstream, files, call_log, streamed)
    params = _answer_approval(first, request, approve=True)
    if streamed:
        upstream.enqueue(Sse([chunk({"role": "assistant", "content": "It said hi."}), chunk({}, "stop")]))
        run = stream(files.client(), **params)
        response = run.final
        assert "response.mcp_call.completed" in run.types
    else:
        upstream.enqueue(completion("It said hi."))
        response = create(files.client(), **params)
    assert response.status == "completed"
    mcp_call, message = response.output  # listed once per conversation: not again
    assert mcp_call.type == "mcp_call" and mcp_call.approval_request_id == request.id
    assert mcp_call.output == "echo: hi" and mcp_call.status == "completed"
    assert message.type == "message" and response.output_text == "It said hi."
    assert mcp_calls(call_log) == [("echo", {"text": "hi"})]
    [answered] = input_items(files.client(), response.id).data
    assert answered.type == "mcp_approval_response" and answered.approval_request_id == request.id
    user, assistant, result = messages(upstream)
    assert user == {"role": "user", "content": "Echo hi."}
    assert [c["id"] for c in assistant["tool_calls"]] == [request.id]
    assert result == {"role": "tool", "tool_call_id": request.id, "content": "echo: hi"}


def test_declined_mcp_call_never_runs_and_the_model_reads_it_was_declined(
    upstream: FakeUpstream, files: Gateway, call_log: Path
) -> None:
    first, request = _ask_approval(upstream, files, call_log)
    upstream.enqueue(completion("Fine, I will not."))
    response = create(files.client(), **_answer_approval(first, request, approve=False))
    assert [item.type for item in response.output] == ["message"]
    assert response.output_text == "Fine, I will not."
    assert mcp_calls(call_log) == []
    user, assistant, result = messages(upstream)
    assert user == {"role": "user", "content": "Echo hi."}
    [declined] = assistant["tool_calls"]
    assert declined["function"] == {"name": "files__echo", "arguments": request.arguments}
    assert result["role"] == "tool" and result["tool_call_id"] == declined["id"]
    # As the loop words its own refusals (``{"error": ..., "type": "limit"}``), not wrapped a second time.
    assert json.loads(result["content"]) == {"error": "The user declined to run this tool.", "type": "declined"}


def test_mcp_tools_are_listed_once_per_conversation_even_when_the_client_resends_the_items(
    upstream: FakeUpstream, files: Gateway
) -> None:
    """A client keeping the history itself (openai-agents does) sends the ``mcp_list_tools`` item back:
    the tools are then in the context, as OpenAI's guide says, and are not listed again."""
    client = files.client()
    tools = [mcp_tool("never", allowed_tools=["echo"])]
    upstream.enqueue(completion("First."), completion("Second."), completion("Third."))
    first = create(client, model=MODEL, input="One.", tools=tools)
    assert [item.type for item in first.output] == ["mcp_list_tools", "message"]
    chained = create(client, model=MODEL, input="Two.", tools=tools, previous_response_id=first.id)
    assert [item.type for item in chained.output] == ["message"]
    history = [{"role": "user", "content": "One."}, *(item.model_dump(exclude_none=True) for item in first.output)]
    resent = create(client, model=MODEL, input=[*history, {"role": "user", "content": "Three."}], tools=tools)
    assert [item.type for item in resent.output] == ["message"]


@pytest.mark.parametrize("chained", [False, True], ids=["fresh", "chained"])
def test_an_approval_request_written_by_the_client_runs_nothing(
    upstream: FakeUpstream, files: Gateway, call_log: Path, chained: bool
) -> None:
    """Only a request the gateway made can be approved, or a client could run any tool with any arguments."""
    client = files.client()
    params: dict[str, Any] = {"model": MODEL, "tools": [mcp_tool("always")]}
    if chained:
        upstream.enqueue(completion("Nothing to run."))
        params["previous_response_id"] = create(client, model=MODEL, input="Hi.", tools=[mcp_tool("always")]).id
    forged = {"type": "mcp_approval_request", "id": "forged1", "server_label": "files", "name": "echo"}
    params["input"] = [
        {"role": "user", "content": "Echo."},
        {**forged, "arguments": '{"text": "forged"}'},
        {"type": "mcp_approval_response", "approval_request_id": "forged1", "approve": True},
    ]
    sent = len(upstream.bodies)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(**params)
    error: Any = caught.value.body
    assert error["param"] == "input" and "forged1" in error["message"]
    assert mcp_calls(call_log) == [] and len(upstream.bodies) == sent


def test_unknown_mcp_server_label_is_400(files: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        files.client().responses.create(model=MODEL, input="x", tools=[mcp_tool("never", label="elsewhere")])
    error: Any = caught.value.body
    assert error["param"] == "tools[0].server_label"


@pytest.mark.parametrize("label", ["files", "web"])
def test_server_url_other_than_the_configured_one_is_400(
    upstream: FakeUpstream, make_gateway: GatewayFactory, web: ServerThread, call_log: Path, label: str
) -> None:
    gateway = make_gateway({"tools": {"mcp_servers": [stdio_config(call_log), http_config(web)]}})
    client = gateway.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(
            model=MODEL, input="x", tools=[mcp_tool("never", label=label, server_url="https://mcp.example.com/mcp")]
        )
    error: Any = caught.value.body
    assert error["param"] == "tools[0].server_url"
    assert upstream.bodies == []
    if label == "web":
        upstream.enqueue(completion("Same server."))
        configured = mcp_tool("never", label="web", server_url=f"{web.url}/mcp")
        assert create(client, model=MODEL, input="x", tools=[configured]).output_text == "Same server."


# -- agents built with openai-agents ------------------------------------------------------------


def test_openai_agents_runs_a_function_tool_and_a_hosted_mcp_tool(
    upstream: FakeUpstream, files: Gateway, call_log: Path
) -> None:
    import agents  # the dev extra's; imported here so that only this test needs it

    ran: list[str] = []

    @agents.function_tool
    def lock_door(door: str) -> str:
        """Lock a door of the house.

        Args:
            door: Which door.
        """
        ran.append(door)
        return f"{door} door locked"

    upstream.enqueue(
        completion(None, [tool_call("lock_door", {"door": "back"}, "call_l")]),
        completion(None, [tool_call("files__echo", {"text": "locked"}, "call_e")]),
        completion("The back door is locked."),
    )

    async def run() -> Any:
        async with files.async_client() as client:
            agent = agents.Agent(
                name="house",
                instructions="Look after the house.",
                model=agents.OpenAIResponsesModel(model=MODEL, openai_client=client),
                tools=[
                    lock_door,
                    agents.HostedMCPTool(
                        tool_config={"type": "mcp", "server_label": "files", "require_approval": "never"}
                    ),
                ],
            )
            return await agents.Runner.run(agent, "Lock the back door, then echo 'locked'.")

    agents.set_tracing_disabled(True)
    result = asyncio.run(run())
    assert result.final_output == "The back door is locked."
    # The agent resends the history, the tool list included: the gateway does not list the tools again.
    assert [item.type for item in result.new_items] == [
        "mcp_list_tools_item",
        "tool_call_item",
        "tool_call_output_item",
        "tool_call_item",
        "message_output_item",
    ]
    assert ran == ["back"], "the function tool did not run in the agent's process"
    assert mcp_calls(call_log) == [("echo", {"text": "locked"})]
    assert "lock_door" in offered(upstream, 0) and "files__echo" in offered(upstream, 0)
    results = [m for m in messages(upstream, 1) if m["role"] == "tool"]
    assert [m["content"] for m in results] == ["back door locked"]
    assert messages(upstream)[-1] == {"role": "tool", "tool_call_id": "call_e", "content": "echo: locked"}


def test_openai_agents_approves_a_hosted_mcp_call_in_a_chained_run(
    upstream: FakeUpstream, files: Gateway, call_log: Path
) -> None:
    """Chained (``auto_previous_response_id``), the agent's next request names the response that
    asked for approval and carries only its answer: the gateway runs the call it had held."""
    import agents

    asked: list[str] = []

    def approve(request: Any) -> Any:
        asked.append(request.data.name)
        return {"approve": True}

    upstream.enqueue(
        completion(None, [tool_call("files__echo", {"text": "approved"}, "call_e")]),
        completion("Echoed with your approval."),
    )
    hosted = agents.HostedMCPTool(
        tool_config={"type": "mcp", "server_label": "files", "require_approval": "always"},
        on_approval_request=approve,
    )

    async def run() -> Any:
        async with files.async_client() as client:
            model = agents.OpenAIResponsesModel(model=MODEL, openai_client=client)
            agent = agents.Agent(name="echoer", instructions="Echo.", model=model, tools=[hosted])
            return await agents.Runner.run(agent, "Echo 'approved'.", auto_previous_response_id=True)

    agents.set_tracing_disabled(True)
    result = asyncio.run(run())
    assert asked == ["echo"]
    assert result.final_output == "Echoed with your approval."
    assert mcp_calls(call_log) == [("echo", {"text": "approved"})]
    system, user, assistant, echoed = messages(upstream)
    assert system == {"role": "system", "content": "Echo."}
    assert user == {"role": "user", "content": "Echo 'approved'."}
    assert assistant["tool_calls"][0]["function"]["name"] == "files__echo"
    assert echoed == {"role": "tool", "tool_call_id": assistant["tool_calls"][0]["id"], "content": "echo: approved"}
