"""Static word embeddings for ranking tools by meaning (``tools.selection.ranker: hybrid``).

A lexical ranker cannot offer ``play_song`` for "I'd like to listen to some music by David Guetta":
they share no word. A static embedding (one vector per token, averaged over a text) places such
texts close together at a cost of tens of microseconds per query, with no model server and no GPU.

The model is WordLlama's ``l2_supercat`` at 256 dimensions, which the ``wordllama`` package ships
inside its wheel (16 MB): it is loaded from the installed package with downloads disabled, so a
gateway never reaches for a model hub. ``wordllama`` (the ``semantic`` extra) and numpy are
imported when an embedder is first made, never at module import.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

PACKAGE = "wordllama"
MODEL = "l2_supercat"
DIMENSIONS = 256
# What one text contributes: the model averages its tokens, so a text's first few thousand characters say
# what it is about, and a bound keeps a hostile tool description or message from costing more.
MAX_TEXT_CHARS = 4000


def available() -> bool:
    """Whether the embedding package is installed (a look-up, not an import)."""
    return importlib.util.find_spec(PACKAGE) is not None


MISSING = (
    f"tools.selection.ranker 'hybrid' needs the '{PACKAGE}' package: "
    "pip install 'llm-tool-gateway[semantic]' (the container image has it)"
)


class StaticEmbedder:
    """Texts to unit vectors (the mean of their tokens' vectors); the cosine of two texts is the dot product."""

    def __init__(self, tokenizer: Any, vectors: npt.NDArray[np.float32]) -> None:
        self._tokenizer = tokenizer
        self._vectors = vectors

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """One unit row per text (a text without tokens gives a zero row, which matches nothing)."""
        import numpy

        out = numpy.zeros((len(texts), self._vectors.shape[1]), dtype=numpy.float32)
        bounded = [text[:MAX_TEXT_CHARS] if isinstance(text, str) else "" for text in texts]
        # One by one: encode_batch pads to the longest text (the pads would count in the mean) and hands even a
        # single text to a thread pool, which costs more than encoding it.
        encoded = [self._tokenizer.encode(text, add_special_tokens=False) for text in bounded]
        for row, encoding in enumerate(encoded):
            ids = numpy.asarray(encoding.ids, dtype=numpy.intp)
            ids = ids[ids < len(self._vectors)]
            if len(ids):
                mean = self._vectors[ids].mean(axis=0)
                norm = float(numpy.linalg.norm(mean))
                if norm > 0:
                    out[row] = mean / norm
        return out


@functools.cache
def embedder() -> StaticEmbedder:
    """The process's embedder, loaded once (about 0.2 s) from the installed package, never downloaded."""
    if not available():
        raise RuntimeError(MISSING)
    import wordllama  # type: ignore[import-untyped]

    # The wheel keeps the weights in <package>/weights and the tokenizer in <package>/tokenizers, the layout
    # the library expects of a cache folder: naming the package folder as the cache finds both offline.
    folder = Path(wordllama.__file__).parent
    model = wordllama.WordLlama.load(config=MODEL, dim=DIMENSIONS, cache_dir=folder, disable_download=True)
    return StaticEmbedder(model.tokenizer, model.embedding)
