"""What selection produces: per-row scores (:class:`ScoreOutput`, :class:`PreparedScoring`), the
chosen rows (:class:`SelectionResult`), how many to keep (:func:`resolve_k`, :func:`top_k_indices`)
and a selection re-expressed on a larger parent pool (:func:`restore_pool_rows`).

Example:
    >>> import numpy as np
    >>> from hf_cads.selectors.result import resolve_k, top_k_indices
    >>> top_k_indices(np.array([0.2, 0.9, 0.5, 0.9]), resolve_k(4, None, 0.5)).tolist()
    [1, 3]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

INDEX_COLUMN = "pool_index"
"""Column of a selected subset holding each row's index in the pool as given."""
SCORE_COLUMN = "score"
"""Column of a selected subset holding each row's selector score."""


@dataclass
class ScoreOutput:
    """What :meth:`Selector.score` returns: one score per pool row and the FLOPs spent.

    Example:
        >>> import numpy as np
        >>> ScoreOutput(np.array([0.2, 0.9]), flops=1e6, extras={"loss": np.array([2.1, 0.4])}).flops
        1000000.0
    """

    scores: np.ndarray
    flops: float
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreparedScoring:
    """What :meth:`Selector.prepare` computes once for the whole pool and target (e.g. BM25's IDF,
    the target embedding), and the FLOPs that cost. It is sent to every process, so keep it
    picklable and small (no model objects).

    Example:
        >>> PreparedScoring(state={"idf": [1.2, 0.3]}, flops=0.0).state["idf"]
        [1.2, 0.3]
    """

    state: Any = None
    flops: float = 0.0


@dataclass
class SelectionResult:
    """The outcome of :meth:`Selector.select`.

    Attributes:
        dataset: the chosen rows in their original pool order, with a ``score`` column and the
            original row index in ``pool_index``.
        indices: chosen pool row indices, ascending.
        scores: the chosen rows' scores, aligned with ``indices`` and ``dataset``.
        flops: FLOPs spent scoring (what the budget is charged).
        selector: registry name of the selector.
        config: the selector's full configuration.
        all_scores: the score of every pool row (for histograms and cards).
        extras: selector-specific details (e.g. CADS-S's learned mixture).

    Share it on the Hub with :func:`hf_cads.hub.push_selection` (``push_selection(result, repo_id,
    parent=pool)``).

    Example:
        >>> from datasets import Dataset
        >>> from hf_cads import get_selector
        >>> pool = Dataset.from_dict({"text": ["a cat sat", "stock prices fell", "the cat ran"]})
        >>> result = get_selector("random", seed=0, show_progress=False).select(pool, k=2)
        >>> len(result), result.pool_size, result.dataset.column_names
        (2, 3, ['text', 'score', 'pool_index'])
    """

    dataset: Any
    indices: np.ndarray
    scores: np.ndarray
    flops: float
    selector: str
    config: dict[str, Any]
    pool_size: int
    all_scores: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.indices)


def resolve_k(pool_size: int, k: int | None, fraction: float | None) -> int:
    """Turn ``k`` or ``fraction`` into a row count, with errors that say what to pass instead.

    Example:
        >>> resolve_k(1000, None, 0.05), resolve_k(1000, 30, None)
        (50, 30)
    """
    if k is not None and fraction is not None:
        raise ValueError("Pass either k or fraction, not both.")
    if k is None and fraction is None:
        raise ValueError("Pass k (number of rows to keep) or fraction (share of the pool, in (0, 1]).")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an integer number of rows, got {type(k).__name__} {k!r}.")
        if k <= 0:
            raise ValueError(f"k must be >= 1, got {k}.")
        if k > pool_size:
            raise ValueError(f"k={k} is larger than the pool ({pool_size} rows); pass k <= {pool_size} or a fraction.")
        return int(k)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction):
        raise TypeError(f"fraction must be a number in (0, 1], got {fraction!r}.")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    return max(1, int(round(fraction * pool_size)))


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, ties broken by the lower index, returned ascending.

    Example:
        >>> top_k_indices(np.array([0.5, 0.9, 0.5, 0.1]), 2).tolist()
        [0, 1]
    """
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores, dtype=np.float64)))
    return np.sort(order[:k])


def is_per_row(value: Any, rows: int) -> bool:
    """Whether ``value`` is a numeric array with one entry (or row) per pool row."""
    return (
        isinstance(value, np.ndarray)
        and value.ndim >= 1
        and len(value) == rows
        and np.issubdtype(value.dtype, np.number)
    )


def spread_rows(values: np.ndarray, rows: Sequence[int] | np.ndarray, size: int) -> np.ndarray:
    """Per-row ``values`` of a subset placed at its ``rows`` of a pool of ``size`` rows (NaN elsewhere)."""
    full = np.full((size, *values.shape[1:]), np.nan, dtype=np.float64)
    full[rows] = values
    return full


def restore_pool_rows(
    result: SelectionResult, parent: Any, kept_rows: Sequence[int], extras: Mapping[str, Any]
) -> SelectionResult:
    """A selection made on ``parent.select(kept_rows)`` (e.g. a decontaminated pool) re-expressed on
    ``parent``: ``indices`` and ``pool_index`` point at ``parent``'s rows, per-row scores are NaN on
    the rows left out, and ``extras`` (what was left out and why) are added."""
    kept = np.asarray(kept_rows, dtype=np.int64)
    if len(kept) != result.pool_size:
        raise ValueError(f"kept_rows has {len(kept)} rows but the selection was made from {result.pool_size}.")
    indices = kept[result.indices]

    def spread(values: np.ndarray) -> np.ndarray:
        return spread_rows(values, kept, len(parent))

    dataset = result.dataset.remove_columns(INDEX_COLUMN).add_column(INDEX_COLUMN, indices.tolist())
    new_extras = {
        name: spread(value) if is_per_row(value, result.pool_size) else value for name, value in result.extras.items()
    }
    return dataclasses.replace(
        result,
        dataset=dataset,
        indices=indices,
        pool_size=len(parent),
        all_scores=spread(result.all_scores) if result.all_scores is not None else None,
        extras={**new_extras, **extras},
    )
