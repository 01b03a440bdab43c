"""Assembling streamed tool-call deltas, one test per server quirk in UPSTREAMS.md."""

from __future__ import annotations

from gateway.deltas import ToolCall, ToolCallAssembler, calls_from_message


def _assemble(*deltas: list[dict[str, object]]) -> list[ToolCall]:
    assembler = ToolCallAssembler()
    for batch in deltas:
        assembler.feed(batch)
    return assembler.calls()


def test_openai_shape_first_fragment_then_arguments() -> None:
    calls = _assemble(
        [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "add", "arguments": ""}}],
        [{"index": 0, "function": {"arguments": '{"a": '}}],
        [{"index": 0, "function": {"arguments": "1}"}}],
    )
    assert calls == [ToolCall("call_a", "add", '{"a": 1}')]


def test_vllm_first_fragment_without_arguments_key() -> None:
    calls = _assemble(
        [{"index": 0, "id": "chatcmpl-tool-1", "type": "function", "function": {"name": "add"}}],
        [{"index": 0, "function": {"arguments": "{}"}}],
    )
    assert calls == [ToolCall("chatcmpl-tool-1", "add", "{}")]


def test_parallel_calls_by_index() -> None:
    calls = _assemble(
        [{"index": 0, "id": "a", "function": {"name": "f", "arguments": ""}}],
        [{"index": 1, "id": "b", "function": {"name": "g", "arguments": ""}}],
        [{"index": 0, "function": {"arguments": "{}"}}],
        [{"index": 1, "function": {"arguments": '{"x":1}'}}],
    )
    assert calls == [ToolCall("a", "f", "{}"), ToolCall("b", "g", '{"x":1}')]


def test_old_ollama_parallel_calls_all_at_index_zero() -> None:
    calls = _assemble(
        [{"index": 0, "id": "one", "function": {"name": "f", "arguments": '{"n": 1}'}}],
        [{"index": 0, "id": "two", "function": {"name": "f", "arguments": '{"n": 2}'}}],
    )
    assert calls == [ToolCall("one", "f", '{"n": 1}'), ToolCall("two", "f", '{"n": 2}')]


def test_missing_index_matches_by_id_else_starts_new_call() -> None:
    calls = _assemble(
        [{"id": "g1", "function": {"name": "f", "arguments": '{"a":'}}],
        [{"id": "g1", "function": {"arguments": "1}"}}],
        [{"id": "g2", "function": {"name": "h", "arguments": "{}"}}],
        [{"function": {"name": "k", "arguments": "{}"}}],
    )
    assert [(c.name, c.arguments) for c in calls] == [("f", '{"a":1}'), ("h", "{}"), ("k", "{}")]
    assert calls[0].id == "g1" and calls[1].id == "g2"
    assert calls[2].id.isalnum() and len(calls[2].id) == 9


def test_sglang_null_id_and_name_on_continuations() -> None:
    calls = _assemble(
        [{"index": 0, "id": "s1", "type": "function", "function": {"name": "f", "arguments": ""}}],
        [{"index": 0, "id": None, "type": "function", "function": {"name": None, "arguments": '{"q": "x"}'}}],
    )
    assert calls == [ToolCall("s1", "f", '{"q": "x"}')]


def test_mistral_relay_string_null_id_and_empty_name() -> None:
    calls = _assemble(
        [{"index": 0, "id": "abcDEF123", "function": {"name": "f", "arguments": '{"a"'}}],
        [{"index": 0, "id": "null", "function": {"name": "", "arguments": ": 2}"}}],
    )
    assert calls == [ToolCall("abcDEF123", "f", '{"a": 2}')]


def test_together_repeats_the_same_id_on_every_fragment() -> None:
    calls = _assemble(
        [{"index": 0, "id": "t1", "function": {"name": "f", "arguments": '{"a"'}}],
        [{"index": 0, "id": "t1", "function": {"arguments": ": 3}"}}],
    )
    assert calls == [ToolCall("t1", "f", '{"a": 3}')]


def test_llama_cpp_longer_name_replaces_never_appends() -> None:
    calls = _assemble(
        [{"index": 0, "id": "l1", "function": {"name": "get_", "arguments": ""}}],
        [{"index": 0, "function": {"name": "get_weather", "arguments": '{"location": "Oslo"}'}}],
    )
    assert calls == [ToolCall("l1", "get_weather", '{"location": "Oslo"}')]


def test_whole_call_in_one_chunk() -> None:
    calls = _assemble([{"index": 0, "id": "w", "function": {"name": "f", "arguments": '{"a": 1}'}}])
    assert calls == [ToolCall("w", "f", '{"a": 1}')]


def test_arguments_sent_as_object_are_serialised() -> None:
    calls = _assemble([{"index": 0, "id": "o", "function": {"name": "f", "arguments": {"a": 1}}}])
    assert calls == [ToolCall("o", "f", '{"a":1}')]


def test_garbage_deltas_are_ignored() -> None:
    assembler = ToolCallAssembler()
    assembler.feed("not a list")
    assembler.feed([None, 3, {"index": True}])
    assert assembler.calls() == []


def test_non_streamed_message_calls_with_duplicate_ids_stay_apart() -> None:
    message = {
        "tool_calls": [
            {"id": "dup", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "dup", "type": "function", "function": {"name": "g", "arguments": "{}"}},
            {"type": "function", "function": {"name": "h", "arguments": "{}"}},
        ]
    }
    calls = calls_from_message(message)
    assert [c.name for c in calls] == ["f", "g", "h"]
    assert calls[2].id and calls[2].id != "dup"


def test_fragments_with_neither_index_nor_id_continue_the_open_call() -> None:
    calls = _assemble(
        [{"index": 0, "id": "c1", "function": {"name": "add", "arguments": ""}}],
        [{"function": {"arguments": '{"a": 1, '}}],
        [{"function": {"arguments": '"b": 2}'}}],
    )
    assert calls == [ToolCall("c1", "add", '{"a": 1, "b": 2}')]


def test_unindexed_calls_without_ids_are_told_apart_by_a_new_name() -> None:
    calls = _assemble(
        [{"function": {"name": "add", "arguments": '{"a": 1}'}}],
        [{"function": {"name": "add", "arguments": '{"a": 2}'}}],
    )
    assert [(c.name, c.arguments) for c in calls] == [("add", '{"a": 1}'), ("add", '{"a": 2}')]


def test_history_part_never_carries_arguments_that_are_not_json() -> None:
    cut = ToolCall("c1", "calculate", '{"expression":')
    assert cut.as_history_part()["function"]["arguments"] == "{}"
    assert ToolCall("c2", "now", "").as_history_part()["function"]["arguments"] == "{}"
    whole = ToolCall("c3", "add", '{"a": 1}')
    assert whole.as_history_part() == whole.as_message_part()
