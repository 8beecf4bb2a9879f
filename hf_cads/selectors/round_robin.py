"""Turning per-target-row similarities into one subset: ``mean``, ``max`` or ``round_robin``.

Selectors that compare each pool row with every target row (BM25, embedding, LESS, RDS) end up
with a ``pool rows x target rows`` score matrix. ``mean`` and ``max`` reduce it to one score per
pool row and keep the top k; a few target rows with many close neighbours then take the whole
subset. ``round_robin`` (RDS+, Ivison et al. 2025, arXiv:2503.01807; found the best aggregation at
small budgets by "A Critical Look at Targeted Instruction Selection", arXiv:2602.14696) lets each
target row in turn take its best pool row not yet chosen, until k rows are chosen, so every target
row gets about ``k / target rows`` neighbours.

A selector keeps the matrix as a per-row extra (so it is sharded, cached and resumed with the
scores) and inherits :class:`PerTargetChoiceMixin`, whose :meth:`~PerTargetChoiceMixin.choose`
runs the round robin when its config says ``aggregate="round_robin"``.

Example:
    >>> import numpy as np
    >>> from hf_cads.selectors.result import top_k_indices
    >>> from hf_cads.selectors.round_robin import round_robin_indices
    >>> per_target = np.array([[0.9, 0.1], [0.8, 0.3], [0.7, 0.2], [0.1, 0.6]])
    >>> top_k_indices(per_target.mean(axis=1), 2).tolist()  # mean: both rows near target row 0
    [0, 1]
    >>> round_robin_indices(per_target, k=2, seed=0).tolist()  # one row for each target row
    [0, 3]
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .result import top_k_indices

TARGET_SCORES = "target_scores"
"""The extras entry holding a shardable selector's ``pool rows x target rows`` scores."""


def aggregate_target_scores(per_target: np.ndarray, aggregate: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One score per pool row from a ``rows x target rows`` matrix, and the extras to return.

    ``mean`` / ``max`` reduce the matrix; ``round_robin`` scores a row by its best target row (what
    results show) and keeps the matrix in the extras (``target_scores``) for the choice.

    Example:
        >>> scores, extras = aggregate_target_scores(np.array([[1.0, 3.0], [2.0, 2.0]]), "round_robin")
        >>> scores.tolist(), extras["target_scores"].shape
        ([3.0, 2.0], (2, 2))
    """
    per_target = np.asarray(per_target, dtype=np.float64)
    if aggregate == "mean":
        return per_target.mean(axis=1), {}
    if aggregate == "max":
        return per_target.max(axis=1), {}
    if aggregate == "round_robin":
        return per_target.max(axis=1), {TARGET_SCORES: per_target}
    raise ValueError(f"aggregate must be 'mean', 'max' or 'round_robin', got {aggregate!r}.")


def _ranked_rows(column: np.ndarray, tiebreak: np.ndarray, depth: int) -> np.ndarray:
    """The ``depth`` best rows of one target column, best first; equal scores in ``tiebreak`` order.

    Only the rows at or above the ``depth``-th best score are sorted, so a target row's ranking
    costs about ``rows + depth log depth`` rather than a full sort (every row tied with the
    boundary is included, so the seeded tie order is exact)."""
    rows = len(column)
    if depth < rows:
        boundary = np.partition(column, rows - depth)[rows - depth]
        candidates = np.flatnonzero(column >= boundary)
    else:
        candidates = np.arange(rows)
    order = np.lexsort((tiebreak[candidates], -column[candidates]))
    return candidates[order[:depth]]


def round_robin_indices(target_scores: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Choose ``k`` pool rows by letting each target row in turn take its best remaining pool row.

    ``target_scores`` has one row per pool row and one column per target row (higher = closer).
    Target rows take turns in column order; a pool row already taken by another target row is
    skipped. Equal scores are ordered by a permutation of the pool rows seeded by ``seed``.
    Returns the chosen pool rows ascending.

    Example:
        >>> import numpy as np
        >>> round_robin_indices(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.5]]), k=2, seed=0).tolist()
        [0, 2]
    """
    scores = np.asarray(target_scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(
            f"round_robin needs a pool rows x target rows score matrix, got shape {scores.shape}; "
            "score against a non-empty target."
        )
    rows, targets = scores.shape
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 < k <= rows:
        raise ValueError(f"round_robin needs 0 < k <= {rows} pool rows, got k={k!r}.")
    tiebreak = np.empty(rows, dtype=np.int64)
    tiebreak[np.random.default_rng(seed).permutation(rows)] = np.arange(rows)
    taken = np.zeros(rows, dtype=bool)
    # Each target row needs about k / targets rows, plus the ones other target rows took first.
    depth = [min(rows, -(-int(k) // targets) + 8)] * targets
    ranked = [_ranked_rows(scores[:, t], tiebreak, depth[t]) for t in range(targets)]
    position = [0] * targets
    chosen: list[int] = []
    while len(chosen) < k:
        for t in range(targets):
            while True:
                if position[t] == len(ranked[t]):
                    depth[t] = min(rows, 2 * depth[t])
                    ranked[t] = _ranked_rows(scores[:, t], tiebreak, depth[t])
                row = int(ranked[t][position[t]])
                position[t] += 1
                if not taken[row]:
                    break
            taken[row] = True
            chosen.append(row)
            if len(chosen) == k:
                break
    return np.sort(np.asarray(chosen, dtype=np.int64))


class PerTargetChoiceMixin:
    """``choose`` for selectors with an ``aggregate`` option: round robin over the target rows'
    scores (the ``per_target_scores`` extra) for ``aggregate="round_robin"``, else top-k."""

    config: Any
    per_target_scores: ClassVar[str] = TARGET_SCORES
    """The extras entry holding the ``pool rows x target rows`` matrix."""

    def choose(self, scores: np.ndarray, k: int, pool: Any, extras: dict[str, Any]) -> np.ndarray:
        if self.config.aggregate != "round_robin":
            return top_k_indices(scores, k)
        if self.per_target_scores not in extras:
            raise RuntimeError(
                f"{type(self).__name__} ran with aggregate='round_robin' but returned no "
                f"{self.per_target_scores!r} extra to choose by."
            )
        return round_robin_indices(extras[self.per_target_scores], k, self.config.seed)
