"""Which pilot runs to buy: the (selector, k) runs within a pilot budget that most reduce the
expected regret of the final recommendation.

**Criterion.** The final recommendation at budget ``K`` is the affordable option (selector and
training share, its exact cost from the cost table) with the best mean relative gain under the
posterior (:meth:`~hf_cads.planner.prior.MeasuredPrior.update`). Its regret under a cell ``h``
taken as the truth is ``max_o g_h(o) - g_h(chosen)`` over the affordable options. The *expected
regret* of a pilot set is this regret averaged over the truths ``h`` (weighted as the prior does)
and over simulated pilot outcomes (``y = D * g_h(pilot)`` plus noise of the cells' measured seed
spread, ``D`` the cells' typical scale), the recommendation recomputed from the posterior after
each simulated outcome. Pilots are chosen greedily: each step adds the candidate, among those the
remaining pilot budget affords, with the lowest expected regret (ties: the cheaper one), until
``N`` are chosen or nothing more fits. Their outcomes are simulated from the curves of the
measured cells, so the design is as good as the prior's spread of shapes is representative.

Example:
    >>> from hf_cads.planner.prior import MeasuredPrior
    >>> prior = MeasuredPrior.load("target_loss")
    >>> options = [PlanCandidate(s, f, f * 1e15 + (3e14 if s == "less" else 0)) for s in prior.selectors
    ...            for f in (0.05, 0.1, 0.25)]
    >>> design = propose_pilots(prior, options, options, budget=3e14, pilot_budget=4e14, count=2, draws=2)
    >>> len(design.pilots) <= 2 and design.pilot_flops <= 4e14
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .prior import MeasuredPrior, Observation


@dataclass(frozen=True)
class PlanCandidate:
    """A run one could buy: ``selector`` trained on ``share`` of the pool, costing ``flops`` in all
    (selection + training, from the cost table)."""

    selector: str
    share: float
    flops: float


@dataclass(frozen=True)
class PilotDesign:
    """The proposed pilots, their FLOPs, and the expected regret before and after buying them
    (relative-gain units: 1 = the best run of a measured cell)."""

    pilots: tuple[PlanCandidate, ...]
    pilot_flops: float
    expected_regret_before: float
    expected_regret_after: float


def recommend_candidate(prior: MeasuredPrior, options: Sequence[PlanCandidate], budget: float) -> PlanCandidate | None:
    """The affordable option with the best posterior mean relative gain (``None``: none affordable)."""
    affordable = [o for o in options if o.flops <= budget]
    if not affordable:
        return None
    return max(affordable, key=lambda o: (prior.predict(o.selector, o.share)[0], -o.flops))


def expected_regret(
    prior: MeasuredPrior,
    options: Sequence[PlanCandidate],
    budget: float,
    pilots: Sequence[PlanCandidate] = (),
    *,
    draws: int = 8,
    seed: int = 0,
) -> float:
    """The criterion of the module docstring for buying ``pilots`` before recommending at ``budget``."""
    affordable = [o for o in options if o.flops <= budget]
    if not affordable:
        return math.nan
    truth = np.stack([np.array([cell.gain(o.selector, o.share) for o in affordable]) for cell in prior.cells])
    best = truth.max(axis=1)
    index = {o: i for i, o in enumerate(affordable)}
    weights = prior.cell_weights
    if not pilots:
        chosen = recommend_candidate(prior, affordable, budget)
        return float(weights @ (best - truth[:, index[chosen]]))
    rng = np.random.default_rng(seed)
    scale = math.exp(prior.log_scale_mean)
    regret = np.zeros(len(prior.cells))
    for h, cell in enumerate(prior.cells):
        means = np.array([cell.gain(p.selector, p.share) for p in pilots]) * scale
        for _ in range(draws):
            outcome = means + prior.noise * scale * rng.standard_normal(len(pilots))
            posterior = prior.update([Observation(p.selector, p.share, float(y)) for p, y in zip(pilots, outcome)])
            chosen = recommend_candidate(posterior, affordable, budget)
            regret[h] += (best[h] - truth[h, index[chosen]]) / draws
    return float(weights @ regret)


def propose_pilots(
    prior: MeasuredPrior,
    candidates: Sequence[PlanCandidate],
    options: Sequence[PlanCandidate],
    budget: float,
    pilot_budget: float,
    count: int,
    *,
    draws: int = 8,
    seed: int = 0,
) -> PilotDesign:
    """Greedily choose up to ``count`` pilots from ``candidates`` within ``pilot_budget`` FLOPs that
    minimise the expected regret of the recommendation among ``options`` at ``budget``."""
    if count < 1:
        raise ValueError(f"--propose takes the number of pilot runs (>= 1), got {count}.")
    if not pilot_budget > 0:
        raise ValueError(f"The pilot budget must be > 0 FLOPs, got {pilot_budget!r}.")
    before = expected_regret(prior, options, budget)
    chosen: list[PlanCandidate] = []
    spent = 0.0
    current = before
    while len(chosen) < count:
        scored = [
            (expected_regret(prior, options, budget, [*chosen, c], draws=draws, seed=seed), c.flops, i)
            for i, c in enumerate(candidates)
            if c not in chosen and spent + c.flops <= pilot_budget
        ]
        if not scored:
            break
        value, _, i = min(scored)
        chosen.append(candidates[i])
        spent += candidates[i].flops
        current = value
    return PilotDesign(tuple(chosen), spent, before, current)
