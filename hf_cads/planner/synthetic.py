"""Run records whose metric follows known saturating curves: for examples, tests and simulations
of the planner where the right answer is known."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..records import RunRecord

DEFAULT_RATES = {"random": 2.0, "bm25": 4.0, "perplexity": 8.0}
"""``lambda`` of each synthetic selector's curve: random slowest, bm25 faster, perplexity fastest."""


def synthetic_records(
    selection_cost_share: float = 0.3,
    noise: float = 0.004,
    seeds: Sequence[int] = (0, 1, 2),
    rates: Mapping[str, float] | None = None,
    model: str = "m",
    target: str = "t",
    fractions: Sequence[float] = (0.05, 0.1, 0.25),
) -> list[RunRecord]:
    """Runs whose target loss is ``2 + exp(-rate * C_train / C_full)`` plus seed noise, per selector.

    The pool has 1000 rows of 1e9 training FLOPs each; perplexity pays ``selection_cost_share`` x
    ``C_full`` for its selection (and scores with a model as large as the trained one), bm25 1e6
    FLOPs, random nothing; the untrained loss is 3.

    Example:
        >>> records = synthetic_records(seeds=(0,))
        >>> len(records), sorted({r.selector for r in records})
        (9, ['bm25', 'perplexity', 'random'])
    """
    rates = dict(rates or DEFAULT_RATES)
    pool, per_row = 1000, 1e9
    c_full = pool * per_row
    records = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for selector, rate in rates.items():
            selection = {"perplexity": selection_cost_share * c_full, "bm25": 1e6}.get(selector, 0.0)
            for fraction in fractions:
                k = int(fraction * pool)
                loss = 2.0 + np.exp(-rate * k * per_row / c_full) + noise * rng.standard_normal()
                records.append(
                    RunRecord(
                        selector=selector,
                        selector_config={},
                        model=model,
                        model_params=1000,
                        selection_model_params=1000 if selector == "perplexity" else 0,
                        pool_size=pool,
                        k=k,
                        tokens_trained=k * 100,
                        selection_flops=selection,
                        train_flops=k * per_row,
                        metrics={"target_loss": float(loss)},
                        baseline_metrics={"target_loss": 3.0},
                        seed=seed,
                        target=target,
                        label=selector,
                        selection_fraction=fraction,
                    )
                )
    return records
