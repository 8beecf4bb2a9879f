"""The compute/performance Pareto frontier of a set of runs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


# -- Pareto frontier ---------------------------------------------------------------------------
def pareto_frontier(flops: Sequence[float], metric: Sequence[float], higher_is_better: bool = True) -> np.ndarray:
    """Indices of the runs on the compute/performance frontier, by increasing FLOPs.

    A run is on the frontier when every cheaper-or-equal run is strictly worse: the frontier is the
    best metric reachable at each total FLOPs. Among runs with equal FLOPs only the best counts.
    """
    flops = np.asarray(flops, dtype=np.float64)
    score = np.asarray(metric, dtype=np.float64) * (1.0 if higher_is_better else -1.0)
    if flops.shape != score.shape:
        raise ValueError(f"flops and metric must have the same length, got {flops.shape} and {score.shape}.")
    order = np.lexsort((np.arange(len(flops)), -score, flops))  # by FLOPs, best first within ties
    frontier: list[int] = []
    best = -np.inf
    for index in order:
        if score[index] > best:
            frontier.append(int(index))
            best = score[index]
    return np.array(frontier, dtype=np.int64)
