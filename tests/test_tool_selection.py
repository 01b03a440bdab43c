"""tools.selection through the gateway: which server tools each request offers the upstream, and why."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.config import ToolsConfig, ToolSelectionConfig
from gateway.tool_selection import ToolSelector
from gateway.tools import tool
from gateway.tools.function import tool_of
from gateway.tools.registry import ToolRegistry
from tests.conftest import TOOL_FIXTURES, Gateway, GatewayFactory
from tests.fake_upstream import MODEL, FakeUpstream, Sse, call, chunk, completion
from tests.test_cli import gateway_cli
from tests.test_observability import scrape, total

ROOT = Path(__file__).resolve().parent.parent
WEATHER_QUESTION = [{"role": "user", "content": "What's the current weather in Paris?"}]


def _offered(body: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in body.get("tools") or []]


@pytest.fixture
def relevant(make_gateway: GatewayFactory) -> Gateway:
    return make_gateway({"tools": {"selection": {"mode": "relevant", "max_tools": 2, "always": ["whoami"]}}})


def test_all_is_the_default_and_offers_every_tool(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion("Sunny."))
    gateway.client().chat.completions.create(model=MODEL, messages=WEATHER_QUESTION)  # type: ignore[arg-type]
    assert {"add", "get_weather", "fail", "slow", "whoami", "big_output"} <= set(_offered(upstream.bodies[0]))


def test_relevant_offers_the_top_ranked_plus_always(upstream: FakeUpstream, relevant: Gateway) -> None:
    before = total(scrape(relevant.url), "gateway_offered_tools_count")
    upstream.enqueue(completion("Sunny."))
    raw = relevant.client().chat.completions.create(
        model=MODEL,
        messages=WEATHER_QUESTION,  # type: ignore[arg-type]
        extra_headers={"x-gateway-trace": "1"},
    )
    offered = _offered(upstream.bodies[0])
    assert "get_weather" in offered and "whoami" in offered
    assert len(offered) <= 3
    trace = (raw.model_extra or {})["x_gateway"]["offered_tools"]
    assert {entry["name"] for entry in trace} == set(offered)
    scores = {entry["name"]: entry["score"] for entry in trace}
    assert scores["whoami"] is None and isinstance(scores["get_weather"], float)
    assert total(scrape(relevant.url), "gateway_offered_tools_count") == before + 1


def test_a_forced_tool_and_tools_called_earlier_are_never_dropped(upstream: FakeUpstream, relevant: Gateway) -> None:
    upstream.enqueue(completion(None, [call("add", {"a": 1, "b": 2}, "c1")]), completion("3"))
    relevant.client().chat.completions.create(
        model=MODEL,
        messages=WEATHER_QUESTION,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "add"}},
    )
    assert "add" in _offered(upstream.bodies[0])
    earlier: Any = [
        {"role": "user", "content": "Add 1 and 2."},
        {"role": "assistant", "content": None, "tool_calls": [call("big_output", {"size": 1}, "c0")]},
        {"role": "tool", "tool_call_id": "c0", "content": "x"},
        *WEATHER_QUESTION,
    ]
    upstream.enqueue(completion("Sunny."))
    relevant.client().chat.completions.create(model=MODEL, messages=earlier)
    assert "big_output" in _offered(upstream.bodies[-1])


def test_an_intent_group_comes_first(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    groups = {"failures": {"keywords": ["broken", "outage"], "tools": ["fail"]}}
    gateway = make_gateway({"tools": {"selection": {"mode": "relevant", "max_tools": 1, "groups": groups}}})
    upstream.enqueue(completion("Noted."))
    gateway.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Is the weather service broken?"}],
    )
    assert _offered(upstream.bodies[0]) == ["fail"]


def test_the_header_narrows_within_what_the_key_allows(upstream: FakeUpstream, make_gateway: GatewayFactory) -> None:
    keys = {"auth": {"api_keys": [{"name": "a", "key": "sk-a-000001", "tools": ["add", "get_*"]}]}}
    gateway = make_gateway(keys)
    client = gateway.client("sk-a-000001")
    upstream.enqueue(completion("ok"))
    client.chat.completions.create(
        model=MODEL,
        messages=WEATHER_QUESTION,  # type: ignore[arg-type]
        extra_headers={"x-gateway-tools": "get_weather, fail, slo*"},
    )
    assert _offered(upstream.bodies[0]) == ["get_weather"]
    upstream.enqueue(Sse([chunk({"role": "assistant", "content": "ok"}), chunk({}, "stop")]))
    list(
        client.chat.completions.create(
            model=MODEL,
            messages=WEATHER_QUESTION,  # type: ignore[arg-type]
            stream=True,
            extra_headers={"x-gateway-tools": "add"},
        )
    )
    assert _offered(upstream.bodies[1]) == ["add"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=WEATHER_QUESTION,  # type: ignore[arg-type]
            extra_headers={"x-gateway-tools": ",".join(f"t{i}" for i in range(65))},
        )
    assert (caught.value.body or {})["param"] == "x-gateway-tools"  # type: ignore[index]


def test_the_responses_api_takes_the_header_too(upstream: FakeUpstream, gateway: Gateway) -> None:
    upstream.enqueue(completion("ok"))
    gateway.client().responses.create(model=MODEL, input="Weather?", extra_headers={"x-gateway-tools": "get_weather"})
    assert _offered(upstream.bodies[0]) == ["get_weather"]


def test_the_hybrid_ranker_offers_the_relevant_tool_and_nothing_for_small_talk(
    upstream: FakeUpstream, make_gateway: GatewayFactory
) -> None:
    gateway = make_gateway({"tools": {"selection": {"mode": "relevant", "max_tools": 1, "ranker": "hybrid"}}})
    upstream.enqueue(completion("Sunny."), completion("Hello!"))
    raw = gateway.client().chat.completions.create(
        model=MODEL,
        messages=WEATHER_QUESTION,  # type: ignore[arg-type]
        extra_headers={"x-gateway-trace": "1"},
    )
    assert _offered(upstream.bodies[0]) == ["get_weather"]
    (entry,) = (raw.model_extra or {})["x_gateway"]["offered_tools"]
    assert entry["name"] == "get_weather" and entry["score"] > 1.0  # the best BM25 scales to 1, the cosine adds
    gateway.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}])
    assert _offered(upstream.bodies[1]) == []


def test_the_hybrid_ranker_without_its_package_is_refused_at_load(tmp_path: Path) -> None:
    config = tmp_path / "g.yaml"
    config.write_text(
        "upstreams: [{name: up, base_url: 'http://127.0.0.1:9/v1'}]\n"
        "tools: {selection: {mode: relevant, ranker: hybrid}}\n"
    )
    # A None entry in sys.modules is how Python marks a module as absent: find_spec then finds nothing.
    code = "import sys; sys.modules['wordllama'] = None; from gateway.cli import main; sys.exit(main())"
    done = subprocess.run(
        [sys.executable, "-c", code, "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 1
    assert "tools.selection" in done.stderr and "llm-tool-gateway[semantic]" in done.stderr, done.stderr
    accepted = gateway_cli("check-config", "--config", str(config))
    assert accepted.returncode == 0, accepted.stderr


def test_a_changed_tool_set_is_reindexed_off_the_loop_while_the_old_index_serves() -> None:
    @tool
    def translate_text(text: str, language: str) -> str:
        """Translate a text into another language.

        Args:
            text: What to translate.
            language: The language to translate into.
        """
        return text

    new_tool = tool_of(translate_text)
    assert new_tool is not None
    registry = ToolRegistry.from_config(ToolsConfig(paths=[str(TOOL_FIXTURES)]))
    selector = ToolSelector(ToolSelectionConfig(mode="relevant", max_tools=1), registry)
    question: list[Any] = [{"role": "user", "content": "Please translate this text into French."}]

    async def scenario() -> tuple[list[str], list[str]]:
        await selector.warm()
        registry.add([new_tool])  # as an MCP server announcing a new tool would
        offered = {t.name: t.definition() for t in registry.enabled()}
        during = selector.select(offered, question, None).names  # answered at once, from the index before
        await selector.rebuilt()
        return during, selector.select(offered, question, None).names

    during, after = asyncio.run(scenario())
    assert "translate_text" not in during
    assert after == ["translate_text"]
    registry.close()
