"""Tool selection on the Berkeley Function Calling Leaderboard: does ranking the tools offer the one the model needs?

Every function of BFCL's ``multiple`` and ``live_multiple`` sets goes into one pool (one registry, as a
gateway with many MCP servers would have); for each question the pool is ranked against the question
with ``gateway.tool_ranking`` and the question counts as found at k when every function of its ground
truth is among the top k. Prompt tokens of the offered schemas are ``len(json.dumps(entry)) / 4``
(tiktoken is not a dependency). The data is the ``bfcl-eval`` wheel from PyPI, fetched once into
``${GATEWAY_CACHE_DIR:-~/.cache/llm-tool-gateway}/bfcl/`` with ``pip download`` (never installed).

    python -m bench.tool_selection [--ranker hybrid|lexical] [--output FILE] [--misses N] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import tool_embedding
from gateway.tool_embedding import StaticEmbedder
from gateway.tool_ranking import ToolRanker, conversation_query, latest_user_text
from gateway.tool_selection import MAX_MEANING_CHARS

BFCL_VERSION = "2026.3.23"
SETS = ("BFCL_v4_live_multiple", "BFCL_v4_multiple")
KS = (3, 5, 8)
COST_TOOLS = 1000
LONG_CONTEXT = 30
GOAL_RECALL, GOAL_CUT, GOAL_RANK_US = 0.95, 0.90, 1000.0
SAMPLE = Path(__file__).with_name("tool_selection_sample.json")
# Gorilla's schema types, as JSON Schema names them.
TYPES = {"dict": "object", "float": "number", "tuple": "array", "list": "array", "int": "integer", "bool": "boolean"}


@dataclass(frozen=True)
class Question:
    """One BFCL question: its turns as chat messages, and the functions its ground truth calls."""

    set_name: str
    id: str
    messages: list[dict[str, Any]]
    expected: frozenset[str]


def cache_dir() -> Path:
    configured = os.environ.get("GATEWAY_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "llm-tool-gateway"


def fetch_wheel() -> Path:
    """The bfcl-eval wheel, downloaded once (its dependencies are not: only its data is read)."""
    target = cache_dir() / "bfcl"
    wheel = target / f"bfcl_eval-{BFCL_VERSION}-py3-none-any.whl"
    if not wheel.exists():
        target.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", f"bfcl-eval=={BFCL_VERSION}"]
        subprocess.run([*command, "-d", str(target)], check=True)
    return wheel


def _schema(node: Any) -> Any:
    """A Gorilla parameter schema as JSON Schema ('dict' -> 'object', 'float' -> 'number', ...)."""
    if isinstance(node, dict):
        out = {key: _schema(value) for key, value in node.items()}
        if isinstance(node.get("type"), str):
            out["type"] = TYPES.get(node["type"], node["type"])
        return out
    if isinstance(node, list):
        return [_schema(item) for item in node]
    return node


def tool_entry(function: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI tool entry for one BFCL function."""
    return {
        "type": "function",
        "function": {
            "name": function["name"],
            "description": function.get("description", ""),
            "parameters": _schema(function.get("parameters", {"type": "object", "properties": {}})),
        },
    }


def load(sets: dict[str, tuple[list[str], list[str]]]) -> tuple[list[dict[str, Any]], list[Question]]:
    """The pooled tool entries (deduplicated by name, the first kept) and the questions, from JSON Lines."""
    pool: dict[str, dict[str, Any]] = {}
    questions = []
    for set_name, (question_lines, answer_lines) in sets.items():
        answers = {a["id"]: a for a in map(json.loads, filter(str.strip, answer_lines))}
        for line in filter(str.strip, question_lines):
            item = json.loads(line)
            for function in item["function"]:
                pool.setdefault(function["name"], tool_entry(function))
            messages = [message for turn in item["question"] for message in turn]
            expected = frozenset(name for call in answers[item["id"]]["ground_truth"] for name in call)
            questions.append(Question(set_name.removeprefix("BFCL_v4_"), item["id"], messages, expected))
    return list(pool.values()), questions


def bfcl_sets(wheel: Path) -> dict[str, tuple[list[str], list[str]]]:
    with zipfile.ZipFile(wheel) as archive:

        def lines(path: str) -> list[str]:
            return archive.read(path).decode().splitlines()

        return {
            name: (lines(f"bfcl_eval/data/{name}.json"), lines(f"bfcl_eval/data/possible_answer/{name}.json"))
            for name in SETS
        }


def sample_sets() -> dict[str, tuple[list[str], list[str]]]:
    data = json.loads(SAMPLE.read_text())
    return {
        name: ([json.dumps(q) for q in part["questions"]], [json.dumps(a) for a in part["answers"]])
        for name, part in data.items()
    }


def tokens(entry: dict[str, Any]) -> float:
    return len(json.dumps(entry)) / 4


def padded(pool: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    """Exactly ``size`` tools: the pool cut, or padded with its own functions renamed."""
    out = list(pool[:size])
    copy = 0
    while len(out) < size:
        copy += 1
        for entry in pool[: size - len(out)]:
            function = dict(entry["function"], name=f"{entry['function']['name']}_copy{copy}")
            out.append({"type": "function", "function": function})
    return out


def long_conversation(questions: list[Question], i: int) -> list[dict[str, Any]]:
    """Question ``i`` after the questions before it, as earlier turns: a query as long as the gateway makes."""
    earlier = [questions[(i - j) % len(questions)] for j in range(LONG_CONTEXT, 0, -1)]
    return [m for q in earlier for m in q.messages if m.get("role") == "user"] + questions[i].messages


def meaning(messages: list[dict[str, Any]]) -> str:
    """What a hybrid ranker embeds of a conversation, as the gateway cuts it."""
    return latest_user_text(messages, MAX_MEANING_CHARS)


def rank_cost(ranker: ToolRanker, queries: list[tuple[str, str]], rounds: int) -> tuple[float, float]:
    """p50 and p99 of one ``rank(query, 8, meaning)``, in µs."""
    samples = []
    for _ in range(rounds):
        for query, said in queries:
            start = time.perf_counter_ns()
            ranker.rank(query, max(KS), said)
            samples.append((time.perf_counter_ns() - start) / 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def built(pool: list[dict[str, Any]], embedder: StaticEmbedder | None) -> tuple[ToolRanker, float]:
    """A ranker for ``pool``, and how long building it took, in ms."""
    start = time.perf_counter()
    ranker = ToolRanker(pool, embedder)
    return ranker, (time.perf_counter() - start) * 1000


def percent(hits: list[bool]) -> float:
    return sum(hits) / len(hits) if hits else 0.0


def run(
    sets: dict[str, tuple[list[str], list[str]]], source: str, misses: int, rounds: int, hybrid: bool
) -> tuple[str, bool]:
    """The Markdown report, and whether every goal was met."""
    start = time.perf_counter()
    import bm25s  # noqa: F401  (here, so that the build times below are the index's alone)

    embedder = tool_embedding.embedder() if hybrid else None
    import_ms = (time.perf_counter() - start) * 1000
    pool, questions = load(sets)
    ranker, build_ms = built(pool, embedder)
    by_name = {entry["function"]["name"]: entry for entry in pool}
    queries = [(conversation_query(q.messages), meaning(q.messages)) for q in questions]
    ranked = [[name for name, _ in ranker.rank(query, max(KS), said)] for query, said in queries]

    columns = [*sorted({q.set_name for q in questions}), "all"]
    found: dict[tuple[str, int], list[bool]] = {(c, k): [] for c in columns for k in KS}
    offered: dict[int, list[float]] = {k: [] for k in KS}
    missed = []
    for question, names in zip(questions, ranked, strict=True):
        for k in KS:
            hit = question.expected <= set(names[:k])
            found[question.set_name, k].append(hit)
            found["all", k].append(hit)
            offered[k].append(sum(tokens(by_name[name]) for name in names[:k]))
        if not question.expected <= set(names):
            missed.append((question, names))
    pool_tokens = sum(map(tokens, pool))
    cuts = {k: 1 - statistics.mean(offered[k]) / pool_tokens for k in KS}

    p50, p99 = rank_cost(ranker, queries, rounds)
    big, big_build_ms = built(padded(pool, COST_TOOLS), embedder)
    big_p50, big_p99 = rank_cost(big, queries, rounds)
    long_conversations = [long_conversation(questions, i) for i in range(len(questions))]
    long_queries = [(conversation_query(messages), meaning(messages)) for messages in long_conversations]
    long_p50, long_p99 = rank_cost(big, long_queries, rounds)
    worst = max(big_p99, long_p99)
    top = max(KS)

    kind = "hybrid (BM25 and static word embeddings)" if hybrid else "lexical (BM25)"
    out = [f"Data: {source}. Pool: {len(pool)} tools (deduplicated by name), {len(questions)} questions."]
    out += [f"Ranker: {kind}.", ""]
    header = " | ".join(f"{c} ({len(found[c, top])})" for c in columns)
    out += [f"| recall: every ground-truth function in the top k | {header} |", "|---" * (len(columns) + 1) + "|"]
    out += [f"| k = {k} | " + " | ".join(f"{percent(found[c, k]):.1%}" for c in columns) + " |" for k in KS]
    out += ["", "| tools offered | mean schema tokens per request | cut |", "|---|---|---|"]
    out += [f"| the whole pool ({len(pool)}) | {pool_tokens:,.0f} | - |"]
    out += [f"| top {k} | {statistics.mean(offered[k]):,.0f} | {cuts[k]:.2%} |" for k in KS]
    out += ["", "| tools ranked | index build | rank p50 | rank p99 |", "|---|---|---|---|"]
    out += [f"| {len(pool)} (the pool) | {build_ms:,.0f} ms | {p50:.0f} µs | {p99:.0f} µs |"]
    out += [
        f"| {COST_TOOLS} (padded with renamed copies) | {big_build_ms:,.0f} ms | {big_p50:.0f} µs | {big_p99:.0f} µs |"
    ]
    long_chars = statistics.mean(len(query) for query, _ in long_queries)
    out += [
        f"| {COST_TOOLS}, long conversations ({long_chars:,.0f} chars) | - | {long_p50:.0f} µs | {long_p99:.0f} µs |"
    ]
    out += [
        "",
        f"Ranking is `rank(query, {top}, meaning)` alone, the query made beforehand, {rounds} pass(es) over every "
        f"question; a long conversation is each question after the {LONG_CONTEXT} before it, as "
        "`conversation_query` cuts it. "
        + ("Importing bm25s and numpy and loading the embeddings" if hybrid else "Importing bm25s and numpy")
        + f" took {import_ms:,.0f} ms, once, before the first build.",
        "",
    ]
    recall_at_top = percent(found["all", top])
    goals = [
        (f"recall at {top} >= {GOAL_RECALL:.0%}", f"{recall_at_top:.1%}", recall_at_top >= GOAL_RECALL),
        (f"schema tokens at {top} cut by >= {GOAL_CUT:.0%}", f"{cuts[top]:.2%}", cuts[top] >= GOAL_CUT),
        (f"rank p99 for {COST_TOOLS} tools < {GOAL_RANK_US:,.0f} µs", f"{worst:.0f} µs", worst < GOAL_RANK_US),
    ]
    out += ["| goal | measured | verdict |", "|---|---|---|"]
    out += [f"| {label} | {shown} | {'met' if ok else '**not met**'} |" for label, shown, ok in goals]
    if misses and missed:
        out += ["", f"Misses at {top} (the first {min(misses, len(missed))} of {len(missed)}):", ""]
        for question, names in missed[:misses]:
            text = conversation_query(question.messages, 300).split("\n", 1)[0]
            out += [f"- {question.id}: expected {sorted(question.expected)}, ranked first {names[:3]}: {text!r}"]
    return "\n".join(out) + "\n", all(ok for _, _, ok in goals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tool_selection", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a built-in sample of a dozen tools, no download")
    parser.add_argument("--ranker", choices=("hybrid", "lexical"), default="hybrid", help="tools.selection.ranker")
    parser.add_argument("--wheel", type=Path, help=f"a bfcl_eval-{BFCL_VERSION} wheel already at hand")
    parser.add_argument("--misses", type=int, default=0, help="list this many questions missed at k=8")
    parser.add_argument("--rounds", type=int, help="timed passes over the questions (default 3; 20 with --smoke)")
    parser.add_argument("--output", type=Path, help="also write the Markdown report to this file")
    args = parser.parse_args(argv)
    if args.smoke:
        sets, source = sample_sets(), f"the built-in sample ({SAMPLE.name})"
    else:
        wheel = args.wheel or fetch_wheel()
        sets, source = bfcl_sets(wheel), f"bfcl-eval {BFCL_VERSION} ({', '.join(SETS)})"
    rounds = args.rounds or (20 if args.smoke else 3)
    report, _ = run(sets, source, args.misses, rounds, args.ranker == "hybrid")
    print(report, end="")
    if args.output:
        args.output.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
