"""Lexical selection with Okapi BM25: each pool row is scored as a document against the target texts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..data import get_texts
from ..flops import bm25_flops
from .base import ScoreOutput, Selector, SelectorConfig
from .registry import register_selector

_TOKEN = re.compile(r"\w+", re.UNICODE)


def bm25_tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


@dataclass
class BM25SelectorConfig(SelectorConfig):
    """Options of :class:`BM25Selector`.

    Args:
        k1: term-frequency saturation.
        b: document-length normalisation.
        aggregate: how the scores against several target texts are combined: ``mean`` or ``max``.
    """

    k1: float = 1.5
    b: float = 0.75
    aggregate: Literal["mean", "max"] = "mean"

    def __post_init__(self) -> None:
        if self.aggregate not in ("mean", "max"):
            raise ValueError(f"aggregate must be 'mean' or 'max', got {self.aggregate!r}.")
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={self.k1}, b={self.b}.")


@register_selector("bm25")
class BM25Selector(Selector):
    """Okapi BM25 (rank-bm25's ``BM25Okapi``) over the pool, one query per target text.

    Example:
        >>> from datasets import Dataset
        >>> from hf_cads import get_selector
        >>> pool = Dataset.from_dict({"text": ["solve 2 + 3", "write a poem", "solve 7 * 8"]})
        >>> target = Dataset.from_dict({"text": ["solve 4 + 4"]})
        >>> list(get_selector("bm25").select(pool, target=target, k=2).indices)
        [0, 2]
    """

    config_class = BM25SelectorConfig

    def _queries(self, target: Any) -> list[list[str]]:
        column = self.config.target_text_column or self.config.text_column
        queries = [bm25_tokenize(t) for t in get_texts(target, column, role="target")]
        if not any(queries):
            raise ValueError("The target texts contain no word tokens; BM25 needs target texts with words.")
        return queries

    def score(self, pool: Any, target: Any | None) -> ScoreOutput:
        from rank_bm25 import BM25Okapi

        documents = [bm25_tokenize(t) for t in get_texts(pool, self.config.text_column, role="pool")]
        if not any(documents):
            raise ValueError("No pool row contains a word token; BM25 cannot score it.")
        index = BM25Okapi([d if d else [""] for d in documents], k1=self.config.k1, b=self.config.b)
        queries = self._queries(target)
        per_query = np.stack([index.get_scores(q) for q in queries])
        scores = per_query.max(axis=0) if self.config.aggregate == "max" else per_query.mean(axis=0)
        return ScoreOutput(scores, bm25_flops(len(documents), [len(q) for q in queries]))

    def estimate_flops(self, pool: Any, target: Any | None) -> float:
        return bm25_flops(len(pool), [len(q) for q in self._queries(target)])
