"""Lexical selection with Okapi BM25: each pool row is scored as a document against the target texts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..data import get_texts
from ..flops import bm25_flops
from .base import PreparedScoring, ScoreOutput, Selector, SelectorConfig
from .registry import register_selector
from .round_robin import PerTargetChoiceMixin, aggregate_target_scores

_TOKEN = re.compile(r"\w+", re.UNICODE)


def bm25_tokenize(text: str) -> list[str]:
    """BM25's terms of ``text``: lower-cased words and numbers.

    Example:
        >>> bm25_tokenize("Solve 2 + 3, then x!")
        ['solve', '2', '3', 'then', 'x']
    """
    return _TOKEN.findall(text.lower())


@dataclass
class BM25Statistics:
    """The pool-wide part of Okapi BM25: vocabulary, each term's IDF and the mean document length.

    Fitted once on the whole pool, they make a document's score independent of which other
    documents are scored with it, so the pool can be scored in shards (and on several processes)
    with exactly the single-pass result.
    """

    vocabulary: dict[str, int]
    idf: np.ndarray
    mean_length: float

    @classmethod
    def fit(cls, documents: list[list[str]], epsilon: float = 0.25) -> BM25Statistics:
        """Robertson IDF with negative IDFs floored at ``epsilon * mean IDF``, as rank-bm25 does."""
        vocabulary: dict[str, int] = {}
        doc_freq: list[int] = []
        for document in documents:
            for token in dict.fromkeys(document):  # first-occurrence order keeps columns deterministic
                column = vocabulary.setdefault(token, len(vocabulary))
                if column == len(doc_freq):
                    doc_freq.append(0)
                doc_freq[column] += 1
        frequency = np.asarray(doc_freq, dtype=float)
        idf = np.log(len(documents) - frequency + 0.5) - np.log(frequency + 0.5)
        idf = np.where(idf < 0, epsilon * idf.mean(), idf)
        mean_length = float(np.array([len(d) for d in documents], dtype=float).mean())
        return cls(vocabulary, idf, mean_length)

    def scores(self, documents: list[list[str]], queries: list[list[str]], k1: float, b: float) -> np.ndarray:
        """BM25 of ``documents`` (rows of the fitted pool) against every query, as one sparse
        product ``Q @ W^T``; shape ``(len(queries), len(documents))``."""
        from scipy import sparse

        rows, cols, counts = [], [], []
        for row, document in enumerate(documents):
            term_counts: dict[int, int] = {}
            for token in document:
                column = self.vocabulary.get(token)
                if column is not None:
                    term_counts[column] = term_counts.get(column, 0) + 1
            rows += [row] * len(term_counts)
            cols += list(term_counts)
            counts += list(term_counts.values())
        shape = (len(documents), len(self.vocabulary))
        tf = sparse.csr_matrix((np.asarray(counts, float), (rows, cols)), shape=shape)
        lengths = np.array([len(d) for d in documents], dtype=float)
        norm = k1 * (1 - b + b * lengths / self.mean_length)
        weights = tf.tocoo()
        values = self.idf[weights.col] * weights.data * (k1 + 1) / (weights.data + norm[weights.row])
        weight_matrix = sparse.csr_matrix((values, (weights.row, weights.col)), shape=shape)
        q_rows, q_cols = [], []
        for row, query in enumerate(queries):
            for token in query:
                if token in self.vocabulary:
                    q_rows.append(row)
                    q_cols.append(self.vocabulary[token])
        query_matrix = sparse.csr_matrix(
            (np.ones(len(q_rows)), (q_rows, q_cols)), shape=(len(queries), len(self.vocabulary))
        )
        return np.asarray((query_matrix @ weight_matrix.T).todense())


def okapi_bm25_scores(
    documents: list[list[str]], queries: list[list[str]], k1: float, b: float, epsilon: float = 0.25
) -> np.ndarray:
    """Okapi BM25 of every document against every query, as one sparse matrix product.

    Same scoring as rank-bm25's ``BM25Okapi`` (Robertson IDF, negative IDFs floored at
    ``epsilon * mean IDF``, repeated query terms counted each time), but the per-(document, term)
    weights are computed once and all queries are scored together: ``W @ Q^T``.
    Returns an array of shape ``(len(queries), len(documents))``.
    """
    return BM25Statistics.fit(documents, epsilon).scores(documents, queries, k1, b)


@dataclass
class BM25SelectorConfig(SelectorConfig):
    """Options of :class:`BM25Selector`.

    Args:
        k1: term-frequency saturation.
        b: document-length normalisation.
        aggregate: how the scores against several target texts make a subset: top-k by their
            ``mean`` or ``max``, or ``round_robin`` (each target text in turn takes its best
            remaining pool row; see :mod:`hf_cads.selectors.round_robin`).

    Example:
        >>> BM25SelectorConfig(aggregate="max").k1
        1.5
    """

    k1: float = 1.5
    b: float = 0.75
    aggregate: Literal["mean", "max", "round_robin"] = "mean"

    def __post_init__(self) -> None:
        if self.aggregate not in ("mean", "max", "round_robin"):
            raise ValueError(f"aggregate must be 'mean', 'max' or 'round_robin', got {self.aggregate!r}.")
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={self.k1}, b={self.b}.")


@register_selector("bm25")
class BM25Selector(PerTargetChoiceMixin, Selector):
    """Okapi BM25 over the pool, one query per target text (rank-bm25's scoring, vectorised).

    Example:
        >>> from datasets import Dataset
        >>> from hf_cads import get_selector
        >>> pool = Dataset.from_dict({"text": ["solve 2 + 3", "write a poem", "solve 7 * 8"]})
        >>> target = Dataset.from_dict({"text": ["solve 4 + 4"]})
        >>> get_selector("bm25", show_progress=False).select(pool, target=target, k=2).indices.tolist()
        [0, 2]
    """

    config_class = BM25SelectorConfig
    shardable = True

    def _queries(self, target: Any) -> list[list[str]]:
        column = self.config.target_text_column or self.config.text_column
        queries = [bm25_tokenize(t) for t in get_texts(target, column, role="target")]
        if not any(queries):
            raise ValueError("The target texts contain no word tokens; BM25 needs target texts with words.")
        return queries

    def _documents(self, pool: Any) -> list[list[str]]:
        return [bm25_tokenize(t) for t in get_texts(pool, self.config.text_column, role="pool")]

    def prepare(self, pool: Any, target: Any | None) -> PreparedScoring:
        documents = self._documents(pool)
        if not any(documents):
            raise ValueError("No pool row contains a word token; BM25 cannot score it.")
        return PreparedScoring(state=(BM25Statistics.fit(documents), self._queries(target)))

    def score_rows(
        self, pool: Any, target: Any | None, rows: range, prepared: PreparedScoring, progress: Any = None
    ) -> ScoreOutput:
        statistics, queries = prepared.state
        documents = self._documents(pool.select(rows))
        per_query = statistics.scores(documents, queries, self.config.k1, self.config.b)
        scores, extras = aggregate_target_scores(per_query.T, self.config.aggregate)
        return ScoreOutput(scores, bm25_flops(len(documents), [len(q) for q in queries]), extras)

    def estimate_flops(self, pool: Any, target: Any | None) -> float:
        return bm25_flops(len(pool), [len(q) for q in self._queries(target)])
