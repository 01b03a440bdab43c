"""Ranking the server tools against a conversation, to offer only the relevant ones (``selection.mode: relevant``).

BM25 (the ``bm25s`` library builds the index) over each tool's words: its name, split into words
as well as whole, its description, and its parameters' names, descriptions and enum values. The
ranker is built once per tool set; ranking one request is a handful of numpy operations over the
posting lists of the query's words, well under a millisecond for a thousand tools.

Given an embedder (``ranker: hybrid``, ``gateway.tool_embedding``), each tool's name and description
are embedded too, and a tool's score adds the cosine of its vector with the latest user message's to
its BM25 score (scaled by the best BM25 score of the query): words find the tool a query names, and
meaning finds the one it describes in other words ("play some music" for ``play_song``).

``bm25s`` and numpy are imported when a ranker is built, never at module import: a gateway that
offers every tool does not load them.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from gateway.tool_embedding import StaticEmbedder

# Tuned on the BFCL pool (bench/tool_selection.py, bench/TOOL_SELECTION.md): the name's words count three
# times; a low length normalisation (B), because a long schema is long for its parameters, not for being vague.
NAME_WEIGHT = 3
K1 = 1.2
B = 0.3
# Hybrid ranking: BM25 scaled to [0, 1] by the query's best, plus this many times the cosine (recall at 8 on BFCL
# within 0.3 point from 2 to 3, bench/TOOL_SELECTION.md). A tool that shares no word with the query is ranked in
# only from SEMANTIC_FLOOR on: small talk ("Say hello.", "Hi!") comes to at most 0.3 against BFCL's 894 tools and
# is offered nothing, while a plain request in other words ("Book me a plane ticket" for searchFlights) passes.
SEMANTIC_WEIGHT = 2.0
SEMANTIC_FLOOR = 0.35
# The latest user message counts twice against earlier context.
LATEST_USER_REPEAT = 2
# Bounds on what one tool contributes, whatever its schema holds.
MAX_DEPTH = 4
MAX_PROPERTIES = 64
MAX_ENUM_VALUES = 16
MAX_FIELD_CHARS = 2000
MAX_DOC_CHARS = 16000
MAX_CACHED_WORDS = 50000
# Bounds on what a conversation contributes to the query: its latest messages, their first parts.
MAX_MESSAGES = 256
MAX_PARTS = 64
MAX_QUERY_CHARS = 8000  # rank() reads no more of a query than this, whoever made it

_COMPOUND = re.compile(r"\w+(?:[.\-/:]\w+)*")
_SEPARATORS = re.compile(r"[._\-/:]+")
# camelCase, HTTPServer, and letters against digits.
_CAMEL = re.compile(
    r"(?<=[^\W\d_])(?<![A-Z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])"
)


def _stem(word: str) -> str:
    """A light suffix strip (no stemming library), so that inflections meet: 'cities' and 'city' -> 'citi',
    'movies' and 'movie' -> 'movi', 'booking' and 'booked' -> 'book'. Short words and non-letters stay as they are."""
    if len(word) <= 3 or not word.isascii() or not word.isalpha():
        return word
    if word.endswith("sses"):
        word = word[:-2]
    elif word.endswith("ies"):
        word = word[:-3] + "i"
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz":  # running -> run
                word = word[:-1]
            break
    if len(word) > 3 and word[-1] in "ye":
        word = word[:-1] + ("i" if word[-1] == "y" else "")
    return word


def _split(compound: str) -> list[str]:
    """The lowercase words of one identifier or word: 'getCurrentWeather' -> ['get', 'current', 'weather']."""
    return [part.lower() for piece in _SEPARATORS.split(compound) for part in _CAMEL.split(piece) if part]


class _Tokenizer:
    """Text to index words: lowercase, identifiers split (and kept whole), stopwords dropped, lightly stemmed.

    Each whitespace-separated chunk's words are cached: chat text repeats its words, and one regex pass over a
    long query costs more than the rest of ranking it.
    """

    def __init__(self, stopwords: frozenset[str]) -> None:
        self._stopwords = stopwords
        self._cache: dict[str, tuple[str, ...]] = {}

    def _words(self, chunk: str) -> tuple[str, ...]:
        out = []
        for compound in _COMPOUND.findall(chunk):
            parts = _split(compound)
            out += [_stem(p) for p in parts if p not in self._stopwords and not p.isdigit()]
            whole = "".join(parts)
            if len(parts) > 1 and not whole.isdigit():
                out.append(whole)  # the whole identifier: a query naming the tool matches it outright
        return tuple(out)

    def __call__(self, text: str) -> list[str]:
        cache = self._cache
        out: list[str] = []
        for chunk in text.split():
            words = cache.get(chunk)
            if words is None:
                words = self._words(chunk)
                if len(cache) >= MAX_CACHED_WORDS:
                    cache.clear()
                cache[chunk] = words
            out += words
        return out


def _texts(definition: dict[str, Any]) -> Iterator[str]:
    """One tool entry's text fields, name first and repeated; anything malformed is skipped."""
    function = definition.get("function") if isinstance(definition, dict) else None
    if not isinstance(function, dict):
        return
    name = function.get("name")
    if isinstance(name, str):
        for _ in range(NAME_WEIGHT):
            yield name[:MAX_FIELD_CHARS]
    description = function.get("description")
    if isinstance(description, str):
        yield description[:MAX_FIELD_CHARS]
    budget = [MAX_PROPERTIES]
    yield from _schema_texts(function.get("parameters"), 0, budget)


def _schema_texts(schema: Any, depth: int, budget: list[int]) -> Iterator[str]:
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return
    if depth > 0:
        description = schema.get("description")
        if isinstance(description, str):
            yield description[:MAX_FIELD_CHARS]
        enum = schema.get("enum")
        if isinstance(enum, list):
            yield " ".join(v for v in enum[:MAX_ENUM_VALUES] if isinstance(v, str))[:MAX_FIELD_CHARS]
    properties = schema.get("properties")
    if isinstance(properties, dict):
        for key, sub in properties.items():
            if budget[0] <= 0:
                return
            budget[0] -= 1
            if isinstance(key, str):
                yield key[:MAX_FIELD_CHARS]
            yield from _schema_texts(sub, depth + 1, budget)
    yield from _schema_texts(schema.get("items"), depth + 1, budget)


def _meaning_text(definition: dict[str, Any]) -> str:
    """What a tool is for, to embed: its name's words and its description (parameters blur it: BFCL says so)."""
    function = definition["function"]
    name = " ".join(_split(function["name"][:MAX_FIELD_CHARS]))
    description = function.get("description")
    return f"{name}. {description[:MAX_FIELD_CHARS]}" if isinstance(description, str) else name


class ToolRanker:
    """BM25 over each tool's name (split on _ - . and camelCase into words as well as whole), description and
    parameter names and descriptions (nested properties too, bounded), built once per tool set; with an
    embedder, BM25 plus the cosine of the tool's name and description with the latest user message."""

    def __init__(self, definitions: list[dict[str, Any]], embedder: StaticEmbedder | None = None) -> None:
        import bm25s  # type: ignore[import-untyped]
        import numpy

        self._np = numpy
        self._tokenize = _Tokenizer(frozenset(bm25s.stopwords.STOPWORDS_EN_PLUS))
        self._names: list[str] = []
        self._embedder = embedder
        corpus: list[list[str]] = []
        meanings: list[str] = []
        for definition in definitions:
            function = definition.get("function") if isinstance(definition, dict) else None
            name = function.get("name") if isinstance(function, dict) else None
            if not isinstance(name, str):
                continue
            text = "\n".join(_texts(definition))[:MAX_DOC_CHARS]
            self._names.append(name)
            corpus.append(self._tokenize(text))
            meanings.append(_meaning_text(definition))
        self._n = len(corpus)
        self._vocab: dict[str, int] = {}
        self._meanings: npt.NDArray[np.float32] | None = embedder.embed(meanings) if embedder and meanings else None
        if not any(corpus):  # bm25s averages document lengths: an empty corpus would warn
            return
        model = bm25s.BM25(k1=K1, b=B, method="lucene")
        scores, self._vocab = model.build_index_from_tokens(corpus, show_progress=False)
        self._data: npt.NDArray[np.float64] = numpy.asarray(scores["data"], dtype=numpy.float64)
        self._docs: npt.NDArray[np.intp] = numpy.asarray(scores["indices"], dtype=numpy.intp)
        self._indptr: npt.NDArray[np.intp] = numpy.asarray(scores["indptr"], dtype=numpy.intp)

    @property
    def names(self) -> list[str]:
        """The ranked tools' names, in the order they were given."""
        return list(self._names)

    def __len__(self) -> int:
        return self._n

    @property
    def hybrid(self) -> bool:
        return self._meanings is not None

    def rank(self, query: str, k: int, meaning: str = "") -> list[tuple[str, float]]:
        """The names of at most ``k`` tools, with their scores, best first: those that share words with ``query``
        and, when the ranker is hybrid, those whose meaning is close enough to ``meaning`` (the latest user
        message; the query's words rank, its meaning re-orders)."""
        if k <= 0 or not isinstance(query, str):
            return []
        np = self._np
        scores = self._lexical(query)
        if self._meanings is not None and self._embedder is not None and isinstance(meaning, str) and meaning:
            cosines = self._meanings @ self._embedder.embed([meaning[:MAX_QUERY_CHARS]])[0]
            best = float(scores.max()) if scores is not None else 0.0
            lexical = scores / best if scores is not None and best > 0 else np.zeros(self._n)
            hits = np.flatnonzero((lexical > 0) | (cosines >= SEMANTIC_FLOOR))
            scores = lexical + SEMANTIC_WEIGHT * cosines.astype(np.float64)
        elif scores is not None:
            hits = np.flatnonzero(scores > 0)
        else:
            return []
        if len(hits) > k:
            hits = hits[np.argpartition(-scores[hits], k - 1)[:k]]
        ordered = sorted(hits.tolist(), key=lambda i: (-scores[i], i))
        return [(self._names[i], float(scores[i])) for i in ordered]

    def _lexical(self, query: str) -> npt.NDArray[np.float64] | None:
        """Every tool's BM25 score for ``query``; None when no word of it is indexed."""
        vocab = self._vocab
        if not vocab:
            return None
        counts = Counter(word for word in self._tokenize(query[:MAX_QUERY_CHARS]) if word in vocab)
        if not counts:
            return None
        xp = self._np
        ids = xp.array([vocab[word] for word in counts], dtype=xp.intp)
        weights = xp.array(list(counts.values()), dtype=xp.float64)
        starts = self._indptr[ids]
        lengths = self._indptr[ids + 1] - starts
        total = int(lengths.sum())
        # The postings of every query word in one gather: position j of word i is starts[i] + j.
        offsets = xp.repeat(starts - (xp.cumsum(lengths) - lengths), lengths) + xp.arange(total)
        scores: npt.NDArray[np.float64] = xp.bincount(
            self._docs[offsets], weights=self._data[offsets] * xp.repeat(weights, lengths), minlength=self._n
        )
        return scores


def _text(content: Any, limit: int) -> str:
    """At most ``limit`` characters of a message's text: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content[:limit].strip()
    if not isinstance(content, list):
        return ""
    texts: list[str] = []
    for part in content[:MAX_PARTS]:
        if limit <= 0:
            break
        text = part.get("text") if isinstance(part, dict) and part.get("type") == "text" else None
        if isinstance(text, str) and (text := text[:limit].strip()):
            texts.append(text)
            limit -= len(text) + 1
    return "\n".join(texts)


def latest_user_text(messages: list[Any], max_chars: int = sys.maxsize) -> str:
    """The latest user message's text (of its first ``MAX_PARTS`` parts), at most ``max_chars`` long."""
    for message in reversed(messages[-MAX_MESSAGES:]):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text(message.get("content"), max_chars)
    return ""


def conversation_query(messages: list[dict[str, Any]], max_chars: int = 2000) -> str:
    """The text to rank against, at most ``max_chars`` long: the latest user message first, twice (its words
    count double), then the context before and after it (user and assistant text, most recent first).

    Content may be a string or a list of parts (``{"type": "text", "text": ...}``); anything else, system and tool
    messages among it, is skipped. Only the last ``MAX_MESSAGES`` messages and each one's first ``MAX_PARTS``
    parts are read; hostile input (huge, nested, wrong types) gives what text it has, or "", and never raises.
    """
    if not isinstance(messages, list) or not isinstance(max_chars, int) or max_chars <= 0:
        return ""
    recent = [
        m for m in reversed(messages[-MAX_MESSAGES:]) if isinstance(m, dict) and m.get("role") in ("user", "assistant")
    ]
    latest = next((i for i, m in enumerate(recent) if m.get("role") == "user"), None)
    pieces: list[str] = []
    if latest is not None:
        text = _text(recent[latest].get("content"), max_chars // LATEST_USER_REPEAT - 1)
        pieces = [text] * LATEST_USER_REPEAT if text else []
    left = max_chars - sum(len(p) + 1 for p in pieces)
    for i, message in enumerate(recent):
        if left <= 0:
            break
        if i != latest and (text := _text(message.get("content"), left)):
            pieces.append(text)
            left -= len(text) + 1
    return "\n".join(pieces)[:max_chars]
