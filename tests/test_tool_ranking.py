"""The tool ranker (gateway/tool_ranking.py): BM25 over the tools' names, descriptions and parameters, and the
query made from a conversation."""

from __future__ import annotations

import subprocess
import sys
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import tool_embedding
from gateway.tool_ranking import MAX_MESSAGES, ToolRanker, conversation_query

ROOT = Path(__file__).resolve().parent.parent


def tool(name: str, description: str = "", properties: dict[str, Any] | None = None) -> dict[str, Any]:
    parameters = {"type": "object", "properties": properties or {}}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


TOOLS = [
    tool("get_current_weather", "Current conditions for a location.", {"location": {"type": "string"}}),
    tool("send_email", "Send an email message to a recipient.", {"to": {"type": "string"}}),
    tool(
        "convert",
        "Convert an amount.",
        {"amount": {"type": "number", "description": "The sum of money, in the source currency."}},
    ),
    tool("searchFlights", "Find flights between two airports on a date."),
    tool("calendar.create_event", "Put an event in the user's calendar."),
    tool("get_current_time", "The current time in a timezone."),
    tool("list_cities", "Every city where the service operates."),
]


@pytest.fixture(scope="module")
def ranker() -> ToolRanker:
    return ToolRanker(TOOLS)


def names(ranked: list[tuple[str, float]]) -> list[str]:
    return [name for name, _ in ranked]


def test_the_tool_whose_description_matches_ranks_first(ranker: ToolRanker) -> None:
    ranked = ranker.rank("Please send an email to my landlord", 3)
    assert ranked[0][0] == "send_email"
    assert all(a[1] >= b[1] > 0 for a, b in pairwise(ranked))


def test_a_name_is_split_into_its_words(ranker: ToolRanker) -> None:
    assert names(ranker.rank("what's the weather like in Oslo?", 3))[0] == "get_current_weather"
    assert names(ranker.rank("search for flights", 3))[0] == "searchFlights"  # camelCase
    assert names(ranker.rank("add it to my calendar", 3))[0] == "calendar.create_event"  # dotted


def test_a_name_given_whole_outranks_tools_sharing_its_words(ranker: ToolRanker) -> None:
    # get_current_time shares "current" and "time" with the query too; only the whole name is unique.
    assert names(ranker.rank("call get_current_weather for the current time", 2))[0] == "get_current_weather"
    assert names(ranker.rank("run getCurrentTime", 1)) == ["get_current_time"]


def test_a_parameter_description_counts(ranker: ToolRanker) -> None:
    assert names(ranker.rank("which currency?", 3)) == ["convert"]


def test_nested_parameters_and_enums_count() -> None:
    nested = tool(
        "book",
        "Make a booking.",
        {
            "guest": {
                "type": "object",
                "properties": {"passport": {"type": "string", "description": "Travel document number."}},
            },
            "rooms": {"type": "array", "items": {"type": "string", "enum": ["suite", "penthouse"]}},
        },
    )
    ranker = ToolRanker([nested, *TOOLS])
    assert names(ranker.rank("my passport number", 1)) == ["book"]
    assert names(ranker.rank("a penthouse please", 1)) == ["book"]


def test_inflections_meet(ranker: ToolRanker) -> None:
    assert names(ranker.rank("which cities", 1)) == ["list_cities"]
    assert names(ranker.rank("a city", 1)) == ["list_cities"]
    assert names(ranker.rank("emails sent", 1)) == ["send_email"]


def test_k_bounds_the_answer(ranker: ToolRanker) -> None:
    query = "current weather time email flights calendar cities currency"
    assert len(ranker.rank(query, 3)) == 3
    assert len(ranker.rank(query, 100)) == len(TOOLS)
    assert ranker.rank(query, 0) == []
    assert ranker.rank(query, -1) == []
    # Only tools that share a word with the query, however large k is.
    assert names(ranker.rank("weather", 100)) == ["get_current_weather"]


@pytest.mark.parametrize("query", ["", "   ", "zyxwvut qqqq", "the and of it", "12345 67", "\x00\ufffe"])
def test_a_query_without_known_words_ranks_nothing(ranker: ToolRanker, query: str) -> None:
    assert ranker.rank(query, 5) == []


def test_names_keep_the_given_order_and_malformed_entries_are_skipped() -> None:
    entries: list[Any] = [
        tool("b_tool", "second"),
        {"type": "function"},
        "not a tool",
        {"type": "function", "function": {"name": 7}},
        tool("a_tool", "first"),
        {"type": "function", "function": {"name": "bare"}},  # no description or parameters: still ranked by name
    ]
    ranker = ToolRanker(entries)
    assert ranker.names == ["b_tool", "a_tool", "bare"]
    assert names(ranker.rank("bare", 5)) == ["bare"]


def test_hostile_definitions_are_bounded_and_never_raise() -> None:
    deep: dict[str, Any] = {"type": "string", "description": "abyss"}
    for _ in range(200):
        deep = {"type": "object", "properties": {"inner": deep}}
    wide = {
        "anchor": {"type": "string", "description": "anchor"},
        **{f"p{i}": {"type": "string"} for i in range(10_000)},
        "needle": {"type": "string", "description": "needle"},
    }
    odd = {"type": "function", "function": {"name": "odd", "description": ["x"], "parameters": {"properties": [1]}}}
    ranker = ToolRanker([tool("deep", "deep schema", deep), tool("wide", "wide schema", wide), odd])
    assert ranker.rank("abyss", 3) == []  # below the depth bound
    assert names(ranker.rank("anchor", 3)) == ["wide"]
    assert ranker.rank("needle", 3) == []  # past the property bound
    assert names(ranker.rank("odd", 3)) == ["odd"]


def test_an_empty_tool_set_ranks_nothing() -> None:
    assert ToolRanker([]).rank("weather", 5) == []
    assert ToolRanker([tool("the", "")]).rank("the", 5) == []  # no word left to index


def test_the_query_puts_the_latest_user_message_first_and_twice_then_recent_context() -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": [{"type": "text", "text": "latest"}, {"type": "text", "text": "question"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
        {"role": "tool", "tool_call_id": "c1", "content": "tool output"},
        {"role": "assistant", "content": "working on it"},
    ]
    query = conversation_query(messages)
    assert query.split("\n") == [
        "latest",
        "question",
        "latest",
        "question",
        "working on it",
        "first answer",
        "first question",
    ]
    assert "helpful" not in query and "tool output" not in query


def test_the_query_is_bounded_by_max_chars() -> None:
    messages = [{"role": "user", "content": "older " * 100}, {"role": "user", "content": "newest " * 1000}]
    query = conversation_query(messages, max_chars=300)
    assert len(query) <= 300
    assert query.startswith("newest") and "older" not in query  # the latest fills its half, twice
    short = conversation_query([{"role": "user", "content": "old " * 100}, {"role": "user", "content": "new"}], 50)
    assert len(short) <= 50
    assert short.startswith("new\nnew\nold")
    assert conversation_query([{"role": "user", "content": "hi"}], max_chars=0) == ""


def test_the_query_without_a_user_message_is_the_assistant_text() -> None:
    assert conversation_query([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]) == "b\na"


@pytest.mark.parametrize(
    "messages",
    [
        None,
        "user: hi",
        42,
        {"role": "user", "content": "hi"},
        [None, 3, "x", ["nested", ["deeper"]]],
        [{"role": ["user"], "content": "x"}, {"role": "user", "content": {"text": "not a part list"}}],
        [{"role": "user", "content": [None, 5, {"type": "image_url"}, {"type": "text", "text": 9}, [["x"]]]}],
        [{"role": "user", "content": [{"type": "text", "text": "x" * 10_000_000}] * 100_000}],
        [{"role": "user", "content": "y" * 10_000_000}] * 100_000,
    ],
)
def test_hostile_conversations_never_raise(messages: Any) -> None:
    query = conversation_query(messages)
    assert isinstance(query, str) and len(query) <= 2000


def test_only_the_last_messages_are_read() -> None:
    messages = [{"role": "user", "content": "ancient"}] + [{"role": "tool", "content": "x"}] * MAX_MESSAGES
    assert conversation_query(messages) == ""


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)
messages_strategy = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", 3]), "content": json_values})
    | json_values,
    max_size=10,
)


@settings(max_examples=100, deadline=None)
@given(messages=messages_strategy, max_chars=st.integers(min_value=-5, max_value=300))
def test_any_conversation_gives_a_bounded_query(messages: Any, max_chars: int) -> None:
    query = conversation_query(messages, max_chars)
    assert isinstance(query, str) and len(query) <= max(max_chars, 0)


def test_importing_the_module_loads_neither_bm25s_nor_numpy() -> None:
    code = (
        "import sys, gateway.tool_ranking\n"
        "loaded = [m for m in ('bm25s', 'numpy') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "gateway.tool_ranking.ToolRanker([])\n"
        "assert 'bm25s' in sys.modules and 'numpy' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_huge_query_is_read_only_up_to_its_bound(ranker: ToolRanker) -> None:
    assert ranker.rank("weather " + "zzz " * 5_000_000 + "email", 5) == [
        ("get_current_weather", ranker.rank("weather", 1)[0][1])
    ]


@pytest.fixture(scope="module")
def hybrid() -> ToolRanker:
    return ToolRanker(TOOLS, tool_embedding.embedder())


def test_hybrid_finds_a_tool_described_in_other_words(ranker: ToolRanker, hybrid: ToolRanker) -> None:
    query = "Book me a plane ticket to Rome next Friday"
    assert ranker.rank(query, 3) == []  # not one word in common
    assert names(hybrid.rank(query, 3, query)) == ["searchFlights"]


def test_hybrid_offers_small_talk_nothing(hybrid: ToolRanker) -> None:
    for query in ("Say hello.", "Hi!", "Thanks, that's all."):
        assert hybrid.rank(query, 3, query) == []


def test_hybrid_keeps_the_tool_a_query_names_first(hybrid: ToolRanker) -> None:
    query = "Use send_email to tell Bob the flight is late"
    ranked = hybrid.rank(query, 3, query)
    assert names(ranked)[0] == "send_email"
    assert [score for _, score in ranked] == sorted((score for _, score in ranked), reverse=True)


def test_hybrid_without_a_meaning_ranks_by_words_alone(ranker: ToolRanker, hybrid: ToolRanker) -> None:
    query = "weather in Paris"
    assert names(hybrid.rank(query, 3)) == names(ranker.rank(query, 3))


def test_embeddings_are_unit_rows_and_bounded() -> None:
    embedder = tool_embedding.embedder()
    rows = embedder.embed(["flights to Rome", "", "x " * 100_000, "🙂"])
    assert rows.shape == (4, tool_embedding.DIMENSIONS)
    norms = [float(sum(v * v for v in row)) for row in rows.tolist()]
    assert norms[0] == pytest.approx(1.0, abs=1e-5) and norms[1] == 0.0
    assert norms[2] == pytest.approx(1.0, abs=1e-5)
    same = embedder.embed(["x " * (tool_embedding.MAX_TEXT_CHARS // 2)])[0]
    assert rows[2].tolist() == pytest.approx(same.tolist(), abs=1e-6)  # nothing past the bound is read


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(max_size=300), max_size=5))
def test_any_text_embeds_to_a_finite_row(texts: list[str]) -> None:
    rows = tool_embedding.embedder().embed(texts)
    assert rows.shape == (len(texts), tool_embedding.DIMENSIONS)
    assert all(-1.0001 <= value <= 1.0001 for row in rows.tolist() for value in row)
