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


def okapi_bm25_scores(documents: list[list[str]], queries: list[list[str]], k1: float, b: float, epsilon: float = 0.25) -> np.ndarray:
    """Okapi BM25 of every document against every query, as one sparse matrix product.

    Same scoring as rank-bm25's ``BM25Okapi`` (Robertson IDF, negative IDFs floored at
    ``epsilon * mean IDF``, repeated query terms counted each time), but the per-(document, term)
    weights are computed once and all queries are scored together: ``W @ Q^T``.
    Returns an array of shape ``(len(queries), len(documents))``.
    """
    from scipy import sparse

    vocabulary: dict[str, int] = {}
    rows, cols, counts = [], [], []
    for row, document in enumerate(documents):
        term_counts: dict[int, int] = {}
        for token in document:
            column = vocabulary.setdefault(token, len(vocabulary))
            term_counts[column] = term_counts.get(column, 0) + 1
        rows += [row] * len(term_counts)
        cols += list(term_counts)
        counts += list(term_counts.values())
    tf = sparse.csr_matrix((np.asarray(counts, float), (rows, cols)), shape=(len(documents), len(vocabulary)))
    num_docs = len(documents)
    lengths = np.array([len(d) for d in documents], dtype=float)
    doc_freq = np.bincount(tf.indices, minlength=len(vocabulary)).astype(float)
    idf = np.log(num_docs - doc_freq + 0.5) - np.log(doc_freq + 0.5)
    idf = np.where(idf < 0, epsilon * idf.mean(), idf)
    norm = k1 * (1 - b + b * lengths / lengths.mean())
    weights = tf.tocoo()
    values = idf[weights.col] * weights.data * (k1 + 1) / (weights.data + norm[weights.row])
    weight_matrix = sparse.csr_matrix((values, (weights.row, weights.col)), shape=tf.shape)
    q_rows, q_cols = [], []
    for row, query in enumerate(queries):
        for token in query:
            if token in vocabulary:
                q_rows.append(row)
                q_cols.append(vocabulary[token])
    query_matrix = sparse.csr_matrix((np.ones(len(q_rows)), (q_rows, q_cols)), shape=(len(queries), len(vocabulary)))
    return np.asarray((query_matrix @ weight_matrix.T).todense())


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
    """Okapi BM25 over the pool, one query per target text (rank-bm25's scoring, vectorised).

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
        documents = [bm25_tokenize(t) for t in get_texts(pool, self.config.text_column, role="pool")]
        if not any(documents):
            raise ValueError("No pool row contains a word token; BM25 cannot score it.")
        queries = self._queries(target)
        per_query = okapi_bm25_scores(documents, queries, self.config.k1, self.config.b)
        scores = per_query.max(axis=0) if self.config.aggregate == "max" else per_query.mean(axis=0)
        return ScoreOutput(scores, bm25_flops(len(documents), [len(q) for q in queries]))

    def estimate_flops(self, pool: Any, target: Any | None) -> float:
        return bm25_flops(len(pool), [len(q) for q in self._queries(target)])
